package nodestream

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/internal/errs"
)

// TestDiskDataThroughTickets: the data of a disk is served by the registered exporter through
// a ticket for that disk's data, with ranges and the sha256 as ETag; a ticket for another
// stream, a missing exporter and an exporter's refusal are answered with errors; the Remote
// passes ranges through and the answer's headers back.
func TestDiskDataThroughTickets(t *testing.T) {
	n := newTestNode(t)
	file := filepath.Join(n.dataDir, "export.qcow2")
	if err := os.WriteFile(file, []byte("0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	const sha = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	var asked []DiskRef
	undo := RegisterDiskExporter(n.dataDir, func(ctx context.Context, ref DiskRef) (DiskExport, error) {
		asked = append(asked, ref)
		if ref.Name == "refused" {
			return DiskExport{}, errs.New(errs.ErrConflict, "VirtualDisk default/refused is not moving away from node n1")
		}
		return DiskExport{Path: file, SHA256: sha}, nil
	})
	r := n.remote(n.fp, Grant{Node: "n1", Namespace: "default", Name: "d1"}, nil)
	serve := func(method, rng string, ref DiskRef, via Streams) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, "/apis/x/virtualdisks/d1/data", nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		w := httptest.NewRecorder()
		via.ServeDiskData(w, req, ref)
		return w
	}
	ref := DiskRef{Namespace: "default", Name: "d1", UID: testUID}
	for _, via := range []Streams{r, &Service{DataDir: n.dataDir}} {
		w := serve(http.MethodGet, "", ref, via)
		if w.Code != http.StatusOK || w.Body.String() != "0123456789abcdef" || w.Header().Get("ETag") != `"`+sha+`"` {
			t.Fatalf("%T: GET: %d %q ETag %q", via, w.Code, w.Body.String(), w.Header().Get("ETag"))
		}
		w = serve(http.MethodGet, "bytes=10-", ref, via)
		if w.Code != http.StatusPartialContent || w.Body.String() != "abcdef" || w.Header().Get("Content-Range") != "bytes 10-15/16" {
			t.Fatalf("%T: ranged GET: %d %q %q", via, w.Code, w.Body.String(), w.Header().Get("Content-Range"))
		}
		w = serve(http.MethodGet, "bytes=16-", ref, via)
		if w.Code != http.StatusRequestedRangeNotSatisfiable || w.Header().Get("Content-Range") != "bytes */16" {
			t.Fatalf("%T: a range past the end: %d Content-Range %q, want 416 with the size", via, w.Code, w.Header().Get("Content-Range"))
		}
		w = serve(http.MethodHead, "", ref, via)
		if w.Code != http.StatusOK || w.Body.Len() != 0 || w.Header().Get("Content-Length") != "16" {
			t.Fatalf("%T: HEAD: %d %q length %q", via, w.Code, w.Body.String(), w.Header().Get("Content-Length"))
		}
		if w := serve(http.MethodPut, "", ref, via); w.Code != http.StatusMethodNotAllowed {
			t.Fatalf("%T: PUT: %d", via, w.Code)
		}
	}
	rr := n.remote(n.fp, Grant{Node: "n1", Namespace: "default", Name: "refused"}, nil)
	if w := serve(http.MethodGet, "", DiskRef{Namespace: "default", Name: "refused", UID: testUID}, rr); w.Code != http.StatusConflict ||
		!strings.Contains(w.Body.String(), "not moving away from node n1") {
		t.Fatalf("a refused export: %d %s", w.Code, w.Body.String())
	}
	if len(asked) != 9 || asked[0] != ref {
		t.Fatalf("the exporter was asked %d times (%v), want 4 GET and HEAD of d1 by each way and 1 of refused", len(asked), asked)
	}

	// A ticket for another stream of the same uid does not open the disk's data.
	n.tickets.issue(tk("console-ticket"), Grant{Node: "n1", Namespace: "default", Name: "vm1", UID: testUID, Stream: StreamConsole})
	if code := n.get(t, tk("console-ticket"), DiskDataPath(testUID)); code != http.StatusForbidden {
		t.Fatalf("a console ticket for the disk's data: %d, want 403", code)
	}
	if code := n.get(t, "", DiskDataPath(testUID)); code != http.StatusUnauthorized {
		t.Fatalf("no ticket: %d, want 401", code)
	}
	undo()
	w := serve(http.MethodGet, "", ref, r)
	if body, _ := io.ReadAll(w.Body); w.Code != http.StatusServiceUnavailable || !strings.Contains(string(body), "no node agent runs") {
		t.Fatalf("without an exporter: %d %s", w.Code, body)
	}
}
