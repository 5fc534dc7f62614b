package apiserver

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/internal/errs"
)

// aliasBomb is a YAML body of about size bytes: one anchored scalar filling most of it and
// n aliases of it, which sigs.k8s.io/yaml would expand to n copies.
func aliasBomb(size, n int) []byte {
	var b bytes.Buffer
	b.WriteString("apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: Secret\nmetadata:\n  name: bomb\n  annotations:\n    a: &a ")
	b.WriteString(strings.Repeat("x", size-600-4*n))
	b.WriteString("\nstringData:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "  k%03d: *a\n", i)
	}
	return b.Bytes()
}

func yamlRequest(body []byte) (*httptest.ResponseRecorder, *http.Request) {
	r := httptest.NewRequest("POST", "/apis/x", bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/yaml")
	return httptest.NewRecorder(), r
}

// TestReadBodyRefusesYAMLAliases: a YAML body with aliases is refused as a bad request that
// names them, before they are expanded (the allocation stays a small multiple of the body).
func TestReadBodyRefusesYAMLAliases(t *testing.T) {
	bomb := aliasBomb(2<<20, 120)
	if len(bomb) > MaxBodyBytes {
		t.Fatalf("test body of %d bytes is over the body limit", len(bomb))
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	w, r := yamlRequest(bomb)
	_, err := readBody(w, r)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, errs.ErrBadRequest) || !strings.Contains(err.Error(), "YAML aliases are not accepted") || !strings.Contains(err.Error(), "*a at line") {
		t.Fatalf("alias bomb: err %v, want a bad request naming the aliases", err)
	}
	if st := statusFor(err); st.Code != http.StatusBadRequest {
		t.Errorf("alias bomb: HTTP %d, want 400", st.Code)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 40<<20 {
		t.Errorf("refusing a %d-byte alias bomb allocated %d MiB; expanding it would take %d MiB", len(bomb), alloc>>20, (120*len(bomb))>>20)
	}

	// A recursive alias and a merge key are aliases too.
	for _, body := range []string{"kind: Secret\nmetadata: &m {name: x, labels: *m}\n", "base: &b {a: 1}\nkind: Secret\nmetadata:\n  <<: *b\n  name: x\n"} {
		w, r := yamlRequest([]byte(body))
		if _, err := readBody(w, r); !errors.Is(err, errs.ErrBadRequest) || !strings.Contains(err.Error(), "alias") {
			t.Errorf("%q: err %v, want a bad request about aliases", body, err)
		}
	}
}

// TestReadBodyYAML: YAML without aliases still converts, anchors alone and '*' inside strings
// included; malformed YAML is a bad request.
func TestReadBodyYAML(t *testing.T) {
	cases := map[string]string{
		"kind: Secret\nmetadata: {name: x}\n":                        `{"kind":"Secret","metadata":{"name":"x"}}`,
		"kind: Secret\nmetadata: &m {name: x}\n":                     `{"kind":"Secret","metadata":{"name":"x"}}`,
		"kind: Secret\nstringData: {a: 'x * y', b: \"*z\", c: a*}\n": `{"kind":"Secret","stringData":{"a":"x * y","b":"*z","c":"a*"}}`,
	}
	for in, want := range cases {
		w, r := yamlRequest([]byte(in))
		got, err := readBody(w, r)
		if err != nil || string(got) != want {
			t.Errorf("%q: got %s, %v; want %s", in, got, err, want)
		}
	}
	w, r := yamlRequest([]byte("kind: [\n*"))
	if _, err := readBody(w, r); !errors.Is(err, errs.ErrBadRequest) || !strings.Contains(err.Error(), "malformed YAML") {
		t.Errorf("malformed YAML: err %v", err)
	}
}

// TestReadBodyRefusesDenseYAML: a body of a million tiny nodes is refused before it is parsed
// (parsing it took about 360 MB), with the limit named; a large manifest of ordinary shape
// (long strings, a few hundred keys) passes.
func TestReadBodyRefusesDenseYAML(t *testing.T) {
	dense := []byte("apiVersion: v1\nkind: Secret\nmetadata: {name: x}\ndata: [" + strings.Repeat("1,", 1<<20) + "1]\n")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	w, r := yamlRequest(dense)
	_, err := readBody(w, r)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, errs.ErrTooLarge) || !strings.Contains(err.Error(), "more than the limit of 100000") {
		t.Fatalf("dense YAML: %v", err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<20 {
		t.Errorf("refusing a %d-byte body allocated %d MiB", len(dense), grew>>20)
	}
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: Secret\nmetadata: {name: x}\nstringData:\n")
	for i := range 500 {
		fmt.Fprintf(&b, "  key%d: %s\n", i, strings.Repeat("v", 2000))
	}
	w, r = yamlRequest([]byte(b.String()))
	if _, err := readBody(w, r); err != nil {
		t.Errorf("a 1 MB manifest of 500 keys: %v", err)
	}
}
