package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/authzmatrix"
)

// matrixTenants are the projects and users of TestIsolationMatrix: a user per role of the
// matrix (internal/authzmatrix.Roles), members of p1 by their role; p2 has a member who is
// none of them.
func matrixTenants() string {
	var b strings.Builder
	b.WriteString("apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: Project\nmetadata: {name: " + authzmatrix.P1 + "}\nspec:\n  members:\n")
	for _, r := range authzmatrix.Roles {
		if r.P1 != "" {
			fmt.Fprintf(&b, "  - {name: \"user:%s\", role: %s}\n", r.User, r.P1)
		}
	}
	b.WriteString("---\napiVersion: virtualization.rakhsh.io/v1alpha1\nkind: Project\nmetadata: {name: " + authzmatrix.P2 + "}\nspec:\n  members:\n  - {name: \"user:owner2\", role: Admin}\n")
	for _, u := range append(authzmatrixUsers(), "owner2") {
		b.WriteString("---\napiVersion: virtualization.rakhsh.io/v1alpha1\nkind: User\nmetadata: {name: " + u + "}\nspec: {")
		for _, r := range authzmatrix.Roles {
			if r.User == u && r.ClusterRole != "" {
				b.WriteString("clusterRole: " + string(r.ClusterRole))
			}
		}
		b.WriteString("}\n")
	}
	return b.String()
}

func authzmatrixUsers() []string {
	var out []string
	for _, r := range authzmatrix.Roles {
		out = append(out, r.User)
	}
	return out
}

// matrixBody is what a mutating cell sends: not a valid object, so an allowed request is
// refused after authorization (400) and nothing is written.
const matrixBody = `{"kind":`

// TestIsolationMatrix sends every cell of the isolation matrix (internal/authzmatrix: every
// kind × verb × status subresource × role × scope, docs/security.md) to a real serve over TLS
// with a real token per role: a refused cell is answered 403, an allowed one neither 401 nor
// 403 (nor a 5xx); lists and watches across projects return nothing of p2 to its non-members;
// the audit log holds exactly one line per mutating cell, with its request id and answer.
func TestIsolationMatrix(t *testing.T) {
	sideBySide(t)
	addr := freeAddr(t)
	s := StartServe(t, "--no-agent", "--listen", addr)
	server := "https://" + addr
	s.MustCLI(matrixTenants(), "apply", "-f", "-")
	// One object in each project, for the filtered lists below.
	for _, p := range []string{authzmatrix.P1, authzmatrix.P2} {
		s.MustCLI(classVM("vm-"+p, "", "1", "", "128Mi", "AlwaysOff"), "apply", "-n", p, "-f", "-")
	}
	tokens := map[string]string{}
	for _, r := range authzmatrix.Roles {
		tokens[r.Name] = strings.TrimSpace(s.MustCLI("", "token", "create", "--user", r.User, "--description", "isolation matrix"))
	}
	pem, err := os.ReadFile(filepath.Join(s.DataDir, "tls.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("serve's tls.crt holds no certificate")
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, MaxIdleConnsPerHost: 4}}
	t.Cleanup(hc.CloseIdleConnections)

	cells, missing := authzmatrix.Cells("x")
	if len(missing) > 0 {
		t.Fatalf("kinds without a class in the matrix: %v", missing)
	}
	// An allowed delete of a Project would delete it (the other cells name objects that do
	// not exist): those go last, and are refused with 409 as both projects hold a VM.
	sort.SliceStable(cells, func(i, j int) bool { return !lastCell(cells[i]) && lastCell(cells[j]) })
	ids := map[string]int{} // request id -> answer, of the mutating cells
	var allowed, refused int
	for n, c := range cells {
		id := fmt.Sprintf("matrix-%05d", n)
		code := matrixRequest(t, hc, server, tokens[c.Role.Name], id, c)
		if !authzmatrix.IsRead(c.Verb) {
			ids[id] = code
		}
		switch {
		case code >= 500 || code == 0:
			t.Errorf("%s: answered %d", c, code)
		case c.Allowed && (code == http.StatusForbidden || code == http.StatusUnauthorized):
			t.Errorf("%s: answered %d, want allowed", c, code)
		case !c.Allowed && code != http.StatusForbidden:
			t.Errorf("%s: answered %d, want 403", c, code)
		case lastCell(c) && code != http.StatusConflict:
			t.Errorf("%s: answered %d, want 409 (the project holds a VM)", c, code)
		}
		if c.Allowed {
			allowed++
		} else {
			refused++
		}
	}
	t.Logf("%d cells over TLS: %d allowed, %d refused (403)", len(cells), allowed, refused)

	// Lists across projects (-A) hold only the caller's projects' objects.
	for _, r := range authzmatrix.Roles {
		c, err := client.New(client.Config{Server: server, CAFile: filepath.Join(s.DataDir, "tls.crt"), Token: tokens[r.Name]})
		if err != nil {
			t.Fatal(err)
		}
		var list struct {
			Items []struct {
				Metadata struct{ Name, Namespace string }
			}
		}
		if err := c.Do(ctxT(t), http.MethodGet, client.Path("virtualmachines", "", ""), nil, "", nil, &list); err != nil {
			t.Errorf("%s lists VMs of all projects: %v", r.Name, err)
			continue
		}
		var got []string
		for _, it := range list.Items {
			got = append(got, it.Metadata.Namespace)
		}
		sort.Strings(got)
		want := []string{}
		switch {
		case r.ClusterRole != "":
			want = []string{authzmatrix.P1, authzmatrix.P2}
		case r.P1 != "":
			want = []string{authzmatrix.P1}
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s lists VMs of all projects: projects %v, want %v", r.Name, got, want)
		}
	}

	// A watch across projects sends a member of p1 the events of p1 only: a VM made in p2,
	// then one in p1; the first event the watch sends is p1's.
	for _, r := range authzmatrix.Roles {
		if r.Name != "Viewer" && r.Name != "NoRole" {
			continue
		}
		matrixWatchAll(t, hc, server, tokens[r.Name], s, r)
	}

	// The audit log: one line per mutating cell, with its answer.
	f, err := os.Open(filepath.Join(s.DataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lines := map[string][]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l struct {
			RequestID string `json:"requestID"`
			Code      int    `json:"code"`
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		if strings.HasPrefix(l.RequestID, "matrix-") {
			lines[l.RequestID] = append(lines[l.RequestID], l.Code)
		}
		for _, tok := range tokens {
			if strings.Contains(sc.Text(), tok[strings.LastIndexByte(tok, '.')+1:]) {
				t.Errorf("the audit log holds a token's secret: %s", sc.Text())
			}
		}
	}
	for id, code := range ids {
		if got := lines[id]; len(got) != 1 || got[0] != code {
			t.Errorf("audit lines of mutating request %s (answered %d): %v, want one", id, code, got)
		}
	}
	for id := range lines {
		if _, ok := ids[id]; !ok {
			t.Errorf("read request %s is in the audit log", id)
		}
	}
	t.Logf("audit log: %d lines of the matrix's %d mutating requests", len(lines), len(ids))
}

// lastCell is a cell that changes the matrix's projects when it is allowed.
func lastCell(c authzmatrix.Cell) bool {
	return c.Kind == "Project" && c.Verb == "delete" && c.Allowed
}

// matrixRequest sends cell c with token as request id and returns the answer's status code
// (0 when there was none).
func matrixRequest(t *testing.T, hc *http.Client, server, token, id string, c authzmatrix.Cell) int {
	t.Helper()
	var method string
	var body io.Reader
	query := ""
	ns := c.Namespace
	name := c.Name
	switch c.Verb {
	case "get":
		method = http.MethodGet
	case "list":
		method = http.MethodGet
	case "watch":
		method, query = http.MethodGet, "?watch=true"
	case "create":
		method, body = http.MethodPost, strings.NewReader(matrixBody)
		if c.Sub == "" {
			name = "" // to the collection
		}
	case "update":
		method, body = http.MethodPut, strings.NewReader(matrixBody)
	case "patch":
		method, body = http.MethodPatch, strings.NewReader(matrixBody)
	case "delete":
		method = http.MethodDelete
	}
	var path string
	if c.Sub != "" {
		path = client.Path(c.Resource, ns, name, c.Sub)
	} else {
		path = client.Path(c.Resource, ns, name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, server+path+query, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("X-Request-Id", id)
	if body != nil {
		ct := "application/json"
		if method == http.MethodPatch {
			ct = "application/merge-patch+json"
		}
		req.Header.Set("Content-Type", ct)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Errorf("%s: %v", c, err)
		return 0
	}
	if c.Verb != "watch" {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 16<<20))
	}
	resp.Body.Close() // a watch ends here
	return resp.StatusCode
}

// matrixWatchAll watches VMs across projects as role r and checks that a VM made in p2 is not
// sent, and one made in p1 is sent to a member of p1 only.
func matrixWatchAll(t *testing.T, hc *http.Client, server, token string, s *Serve, r authzmatrix.Role) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, server+client.Path("virtualmachines", "", "")+"?watch=true", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%s watches VMs of all projects: %v %v", r.Name, err, resp)
	}
	defer resp.Body.Close()
	events := make(chan string, 16)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			var ev struct {
				Type   string
				Object struct {
					Metadata struct{ Name, Namespace string }
				}
			}
			if json.Unmarshal(sc.Bytes(), &ev) == nil && ev.Type != "BOOKMARK" && ev.Object.Metadata.Name != "" {
				events <- ev.Object.Metadata.Namespace + "/" + ev.Object.Metadata.Name
			}
		}
	}()
	suffix := strings.ToLower(r.Name)
	s.MustCLI(classVM("w2-"+suffix, "", "1", "", "128Mi", "AlwaysOff"), "apply", "-n", authzmatrix.P2, "-f", "-")
	s.MustCLI(classVM("w1-"+suffix, "", "1", "", "128Mi", "AlwaysOff"), "apply", "-n", authzmatrix.P1, "-f", "-")
	want := authzmatrix.P1 + "/w1-" + suffix
	// A member's event comes at once; a watcher with no role is given 5 s to (wrongly) get it.
	limit := 20 * time.Second
	if r.P1 == "" {
		limit = 5 * time.Second
	}
	deadline := time.After(limit)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("%s's watch ended", r.Name)
			}
			if strings.HasPrefix(ev, authzmatrix.P2+"/") {
				t.Fatalf("%s's watch across projects sent %s of project p2", r.Name, ev)
			}
			if ev == want {
				if r.P1 == "" {
					t.Fatalf("%s (no role) got %s through a watch across projects", r.Name, ev)
				}
				return
			}
		case <-deadline:
			if r.P1 != "" {
				t.Fatalf("%s's watch across projects did not send %s", r.Name, want)
			}
			return // no role: nothing at all
		}
	}
}
