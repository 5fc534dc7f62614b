package apiserver

import (
	"strings"
	"testing"
)

// FuzzParseUserToken: any string parses to a valid id and secret or is refused; a parsed token
// is put back together unchanged.
func FuzzParseUserToken(f *testing.F) {
	for _, s := range []string{"rakhsh-user.0123456789ab.c2VjcmV0", "rakhsh-user.", "rakhsh-user.0123456789ab.", "rakhsh-user.zz.x",
		"rakhsh-user.0123456789ab.a.b", "rakhsh-node.n1.x", "", "rakhsh-user.0123456789AB." + strings.Repeat("x", 200)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		id, secret, ok := ParseUserToken(tok)
		if !ok {
			if id != "" || secret != "" {
				t.Fatalf("refused %q but returned %q %q", tok, id, secret)
			}
			return
		}
		if !validJoinID(id) || secret == "" || strings.Contains(secret, ".") || len(secret) > 128 {
			t.Fatalf("accepted %q as id %q secret %q", tok, id, secret)
		}
		if userTokenPrefix+id+"."+secret != tok {
			t.Fatalf("%q does not round-trip", tok)
		}
	})
}
