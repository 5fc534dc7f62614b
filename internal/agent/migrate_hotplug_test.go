package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// TestIncomingFilesOfOneMigration: the files a failed incoming migration made are removed,
// never those another (earlier, switched-over) migration's list names; a new list starts for
// a new migration.
func TestIncomingFilesOfOneMigration(t *testing.T) {
	dir := t.TempDir()
	a := &Agent{}
	old := filepath.Join(dir, "old-disk")
	mine := filepath.Join(dir, "new-disk")
	for _, f := range []string{old, mine} {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a.recordIncomingFile(dir, "m1", old)
	a.removeIncomingFiles(dir, "m2") // another migration fails: m1's file stays
	if _, err := os.Stat(old); err != nil {
		t.Fatalf("a file of migration m1 removed for m2: %v", err)
	}
	a.recordIncomingFile(dir, "m2", mine) // m2's list replaces m1's
	a.removeIncomingFiles(dir, "m2")
	if _, err := os.Stat(mine); !os.IsNotExist(err) {
		t.Errorf("m2's own file left: %v", err)
	}
	if _, err := os.Stat(old); err != nil {
		t.Errorf("m1's file removed with m2's: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, migrationInFile)); !os.IsNotExist(err) {
		t.Errorf("the list left after its files were removed: %v", err)
	}
}
