package authzmatrix

import (
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "write the matrix into docs/security.md")

const (
	docPath   = "../../docs/security.md"
	beginMark = "<!-- isolation matrix: made by internal/authzmatrix (go test ./internal/authzmatrix -update) -->\n"
	endMark   = "<!-- end of the isolation matrix -->\n"
)

// TestTableInDocs: docs/security.md shows the matrix the tests check.
func TestTableInDocs(t *testing.T) {
	b, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i, j := strings.Index(doc, beginMark), strings.Index(doc, endMark)
	if i < 0 || j < i {
		t.Fatalf("%s has no isolation matrix between the markers %q and %q", docPath, beginMark, endMark)
	}
	want := doc[:i+len(beginMark)] + Table() + doc[j:]
	if want == doc {
		return
	}
	if *update {
		if err := os.WriteFile(docPath, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("the isolation matrix in %s is not the one the tests check: go test ./internal/authzmatrix -update", docPath)
}

// TestCells: every kind has a class, cells are unique, and every role is allowed something
// and refused something.
func TestCells(t *testing.T) {
	cells, missing := Cells("x")
	if len(missing) > 0 {
		t.Errorf("kinds without a class: %v", missing)
	}
	seen := map[string]bool{}
	allowed, refused := map[string]int{}, map[string]int{}
	for _, c := range cells {
		if seen[c.String()] {
			t.Errorf("cell %s twice", c)
		}
		seen[c.String()] = true
		if c.Allowed {
			allowed[c.Role.Name]++
		} else {
			refused[c.Role.Name]++
		}
		if c.Sub == "status" && !IsRead(c.Verb) && c.Allowed {
			t.Errorf("%s: a status write allowed to a person", c)
		}
	}
	for _, r := range Roles {
		if allowed[r.Name] == 0 || refused[r.Name] == 0 {
			t.Errorf("role %s: %d allowed, %d refused", r.Name, allowed[r.Name], refused[r.Name])
		}
	}
}
