package apiserver

import (
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// TestAuditTail: the newest matching lines come first, across the rotated files, at most the
// limit; filters by user, project and time; a torn line is passed over; bad queries are
// refused naming the parameter.
func TestAuditTail(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	l, err := OpenAuditLog(path, 600, 3, nil) // rotates every few lines
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 5, 6, 0, 0, 0, time.UTC)
	for i := 0; i < 12; i++ {
		user, project := "alice", "p1"
		if i%3 == 0 {
			user, project = "bob", "p2"
		}
		if err := l.Write(AuditEntry{Time: t0.Add(time.Duration(i) * time.Minute), Identity: "user " + user, User: user, Source: "127.0.0.1",
			Verb: "create", Resource: "virtualmachines", Namespace: project, Name: fmt.Sprintf("vm%d", i), Code: 201}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	if _, err := os.Stat(path + ".1"); err != nil {
		t.Fatalf("no rotation happened: %v", err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	// A line far longer than any this version writes (passed over), then a torn last line.
	_, _ = f.WriteString(`{"time":"2026-12-05T07:00:00Z","identity":"user alice","user":"alice","name":"` + strings.Repeat("x", 200<<10) + `"}` + "\n")
	_, _ = f.WriteString(`{"time":"2026-12-05T07:00:00Z","identity":"user al`) // torn
	f.Close()
	names := func(es []AuditEntry) string {
		var out []string
		for _, e := range es {
			out = append(out, e.Name)
		}
		return strings.Join(out, ",")
	}
	l2 := &AuditLog{path: path, keep: 3}
	kept := func() []string { // what rotation kept: 3 rotated files and the current
		all, _ := l2.Tail(auditQuery{limit: 100})
		var out []string
		for _, e := range all {
			out = append(out, e.Name)
		}
		return out
	}()
	if len(kept) < 6 || kept[0] != "vm11" {
		t.Fatalf("all lines newest first: %v", kept)
	}
	for i := 1; i < len(kept); i++ {
		var a, b int
		fmt.Sscanf(kept[i-1], "vm%d", &a)
		fmt.Sscanf(kept[i], "vm%d", &b)
		if a != b+1 {
			t.Fatalf("not newest first without gaps: %v", kept)
		}
	}
	got, _ := l2.Tail(auditQuery{limit: 3})
	if names(got) != "vm11,vm10,vm9" {
		t.Errorf("limit 3: %s", names(got))
	}
	got, _ = l2.Tail(auditQuery{user: "bob", limit: 100})
	for _, e := range got {
		if e.User != "bob" || e.Namespace != "p2" {
			t.Errorf("user bob: %+v", e)
		}
	}
	if len(got) == 0 || got[0].Name != "vm9" {
		t.Errorf("user bob: %s", names(got))
	}
	got, _ = l2.Tail(auditQuery{project: "p1", since: t0.Add(10 * time.Minute), limit: 100})
	if names(got) != "vm11,vm10" {
		t.Errorf("project p1 since 06:10: %s", names(got))
	}
	for _, bad := range []string{"limit=0", "limit=5001", "limit=x", "since=yesterday"} {
		r := httptest.NewRequest("GET", "/identity/v1alpha1/audit?"+bad, nil)
		if _, err := parseAuditQuery(r); err == nil || !strings.Contains(err.Error(), strings.SplitN(bad, "=", 2)[0]) {
			t.Errorf("%s: %v, want a refusal naming the parameter", bad, err)
		}
	}
}

// TestAuditFieldBounded: a field of an audit line is cut to auditFieldMax bytes at a rune
// boundary, marked with an ellipsis.
func TestAuditFieldBounded(t *testing.T) {
	if got := auditField("vm1"); got != "vm1" {
		t.Errorf("a short field: %q", got)
	}
	long := strings.Repeat("é", auditFieldMax) // 2 bytes a rune
	got := auditField(long)
	if len(got) > auditFieldMax+len("…") || !strings.HasSuffix(got, "…") || !utf8.ValidString(got) {
		t.Errorf("a long field cut to %d bytes, valid UTF-8 %v", len(got), utf8.ValidString(got))
	}
}
