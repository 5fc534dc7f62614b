package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/client"
)

// TestFetchResumable: a fetch continues a partial file with a range request; a server that
// answers the whole file restarts it; a file whose hash is wrong is discarded.
func TestFetchResumable(t *testing.T) {
	data := bytes.Repeat([]byte("rakhsh image bytes "), 100000) // ~1.9 MB
	sum := sha256.Sum256(data)
	sha := hex.EncodeToString(sum[:])
	var mu sync.Mutex
	var ranges []string
	ignoreRanges := false
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		ranges = append(ranges, r.Header.Get("Range"))
		ignore := ignoreRanges
		mu.Unlock()
		if ignore {
			r.Header.Del("Range")
		}
		w.Header().Set("ETag", `"`+sha+`"`)
		http.ServeContent(w, r, "", time.Unix(0, 0), bytes.NewReader(data))
	}))
	defer srv.Close()
	c, err := client.New(client.Config{Server: srv.URL, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx := context.Background()
	check := func(dst string) {
		t.Helper()
		got, err := os.ReadFile(dst)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: %d bytes, err %v", dst, len(got), err)
		}
		if _, err := os.Stat(dst + ".part"); !os.IsNotExist(err) {
			t.Fatalf("the part file is left: %v", err)
		}
	}

	// Resume: the first 700,000 bytes are there; only the rest is asked for.
	dst := filepath.Join(dir, "a")
	if err := os.WriteFile(dst+".part", data[:700000], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := fetchResumable(ctx, c, "/x", dst, sha); err != nil {
		t.Fatal(err)
	}
	check(dst)
	if len(ranges) != 1 || ranges[0] != "bytes=700000-" {
		t.Fatalf("requests with ranges %q, want one for bytes=700000-", ranges)
	}

	// A server that ignores the range: the whole file comes and replaces the part.
	dst = filepath.Join(dir, "b")
	if err := os.WriteFile(dst+".part", []byte("garbage that is not the start"), 0o600); err != nil {
		t.Fatal(err)
	}
	ignoreRanges = true
	if err := fetchResumable(ctx, c, "/x", dst, sha); err != nil {
		t.Fatal(err)
	}
	check(dst)
	ignoreRanges = false

	// Wrong bytes before the resume point: the hash fails and nothing is kept.
	dst = filepath.Join(dir, "c")
	bad := append([]byte(nil), data[:700000]...)
	bad[10] ^= 0xff
	if err := os.WriteFile(dst+".part", bad, 0o600); err != nil {
		t.Fatal(err)
	}
	err = fetchResumable(ctx, c, "/x", dst, sha)
	if err == nil || !strings.Contains(err.Error(), "discarded") {
		t.Fatalf("a corrupt partial file: got %v, want a discarded fetch", err)
	}
	for _, p := range []string{dst, dst + ".part"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%s is left after a failed fetch", p)
		}
	}
	// The next try starts from zero and succeeds.
	if err := fetchResumable(ctx, c, "/x", dst, sha); err != nil {
		t.Fatal(err)
	}
	check(dst)
}
