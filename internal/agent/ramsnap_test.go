package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/storage"
)

// TestDropFDSets: only the fd set that holds the named descriptor is removed.
func TestDropFDSets(t *testing.T) {
	mk := func(id int, opaque string) fdSet {
		s := fdSet{ID: id}
		s.FDs = append(s.FDs, struct {
			Opaque string `json:"opaque"`
		}{opaque})
		return s
	}
	m := &queryMon{query: "query-fdsets", record: "remove-fd", answer: []fdSet{mk(1, "snapshot:/d/a.qcow2.part"), mk(2, "ram:/d/ram/state.qcow2.part"), mk(3, "disk:/d/b.qcow2")}}
	dropFDSets(context.Background(), m, "ram:/d/ram/state.qcow2.part")
	if len(m.calls) != 1 || m.calls[0]["fdset-id"] != 2 {
		t.Errorf("removed fd sets %v, want [2]", m.calls)
	}
}

// TestLoadRAMRecord: a kept RAM state loads only when its record is there, names the snapshot,
// matches the state file's size and is of the VM that resumes it.
func TestLoadRAMRecord(t *testing.T) {
	dataDir := t.TempDir()
	const snap, vm = "8f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f", "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
	dir := storage.SnapshotRAMDir(dataDir, snap)
	if _, err := loadRAMRecord(dataDir, snap, vm); err == nil || !strings.Contains(err.Error(), "not on this node") {
		t.Errorf("no state: %v", err)
	}
	if _, err := loadRAMRecord(dataDir, "../x", vm); err == nil {
		t.Error("a uid that is not one was accepted")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ramStateFile), make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	write := func(rec ramRecord) {
		b, _ := json.Marshal(rec)
		if err := os.WriteFile(filepath.Join(dir, ramMetaFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(ramRecord{SnapshotUID: snap, VMUID: vm, SavedAt: time.Now(), Size: 1000})
	if _, err := loadRAMRecord(dataDir, snap, vm); err == nil || !strings.Contains(err.Error(), "has 4096 bytes") {
		t.Errorf("a state of another size: %v", err)
	}
	write(ramRecord{SnapshotUID: snap, VMUID: "other", SavedAt: time.Now(), Size: 4096})
	if _, err := loadRAMRecord(dataDir, snap, vm); err == nil || !strings.Contains(err.Error(), "not of this one") {
		t.Errorf("a state of another VM: %v", err)
	}
	write(ramRecord{SnapshotUID: snap, VMUID: vm, SavedAt: time.Now(), Size: 4096})
	if rec, err := loadRAMRecord(dataDir, snap, vm); err != nil || rec.Size != 4096 {
		t.Errorf("a whole state: %+v %v", rec, err)
	}
}

// TestCopyFile: the copy reads the same; a missing source is an error.
func TestCopyFile(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	data := make([]byte, 5<<20)
	copy(data, "head")
	copy(data[4<<20+10:], "tail")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := copyFile(src, dst); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the copy differs (%v)", err)
	}
	if err := copyFile(filepath.Join(dir, "missing"), dst); err == nil {
		t.Error("a missing source was copied")
	}
}
