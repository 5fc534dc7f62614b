package storage

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestContentStore: two images of the same content share one inode under the content name;
// the name goes when the last of them is deleted.
func TestContentStore(t *testing.T) {
	dd := t.TempDir()
	sha := strings.Repeat("ab", 32)
	a, b := ImagePath(dd, "a"), ImagePath(dd, "b")
	if err := os.MkdirAll(filepath.Dir(a), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{a, b} {
		if err := os.WriteFile(p, []byte("same bytes"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if shared, err := LinkContent(dd, a, sha); err != nil || shared {
		t.Fatalf("first: shared %v err %v", shared, err)
	}
	if shared, err := LinkContent(dd, b, sha); err != nil || !shared {
		t.Fatalf("second: shared %v err %v", shared, err)
	}
	sa, _ := os.Stat(a)
	sb, _ := os.Stat(b)
	sc, err := os.Stat(ContentPath(dd, sha))
	if err != nil || !os.SameFile(sa, sb) || !os.SameFile(sa, sc) {
		t.Fatal("the two images and the content name are not one file")
	}
	if shared, err := LinkContent(dd, a, sha); err != nil || shared {
		t.Fatalf("again: shared %v err %v", shared, err)
	}
	// A different size under the same digest is refused, never linked.
	other := ImagePath(dd, "c")
	if err := os.WriteFile(other, []byte("other"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LinkContent(dd, other, sha); err == nil {
		t.Fatal("a file of another size was linked to the content name")
	}
	if _, err := LinkContent(dd, other, "../x"); err == nil {
		t.Fatal("a bad digest was accepted")
	}
	// Releases: the name stays while an image links to it.
	os.Remove(a)
	if err := ReleaseContent(dd, sha); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ContentPath(dd, sha)); err != nil {
		t.Fatal("the content name went while image b still uses it")
	}
	os.Remove(b)
	if err := ReleaseContent(dd, sha); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ContentPath(dd, sha)); !os.IsNotExist(err) {
		t.Fatal("the content name outlived its last image")
	}
	ents, _ := os.ReadDir(filepath.Dir(a))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), TempPrefix) {
			t.Fatalf("temporary file left: %s", e.Name())
		}
	}
}
