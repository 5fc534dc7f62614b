package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/nodestream"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// TestDiskMoveCleanup: what a source node exported and what a target node fetched is removed
// by the disk's status alone, and never a file the status says the node holds. Here node1 is
// the source (export records) and then the target (fetch records) of the same disk.
func TestDiskMoveCleanup(t *testing.T) {
	e := newInternalEnv(t)
	d := &v1alpha1.VirtualDisk{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualDisk"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: "d1", Namespace: "default"},
		Spec:       v1alpha1.VirtualDiskSpec{PersistentVolumeClaim: v1alpha1.VirtualDiskPersistentVolumeClaim{Size: "1Mi"}}}
	if err := e.c.Create(e.ctx, "virtualdisks", "default", d, d); err != nil {
		t.Fatal(err)
	}
	src := storage.ClassDiskPath(e.a.cfg.DataDir, nil, d.UID)
	setStatus := func(phase v1alpha1.DiskPhase, node, source string) {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"status": map[string]any{"phase": phase, "storageClassName": "local", "format": "qcow2",
			"nodeName": node, "moveSourceNodeName": source}})
		if err := e.c.PatchStatus(e.ctx, "virtualdisks", "default", "d1", body, nil); err != nil {
			t.Fatal(err)
		}
	}
	touch := func(p string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := storage.CreateBlank(e.ctx, src, 1<<20); err != nil {
		t.Fatal(err)
	}

	// node1 exports the disk to node2: the export is made in the background and served.
	setStatus(v1alpha1.DiskPhaseMigrating, "node2", "node1")
	exp, err := e.a.exportDisk(e.ctx, nodestream.DiskRef{Namespace: "default", Name: "d1", UID: d.UID})
	if err != nil || exp.Path != src || !storage.IsSHA256Hex(exp.SHA256) {
		t.Fatalf("export of a disk that stands alone: %+v %v, want its own file and a sha256", exp, err)
	}
	if _, err := e.a.exportDisk(e.ctx, nodestream.DiskRef{Namespace: "default", Name: "d1", UID: "00000000-0000-4000-8000-000000000000"}); err == nil {
		t.Fatal("an export asked for by another uid was served")
	}
	// While it moves, the cleanup keeps everything.
	if err := e.a.settleDiskExports(e.ctx); err != nil {
		t.Fatal(err)
	}
	if !fileExists(src) {
		t.Fatal("the source file went while the disk moved away")
	}
	// The move failed: the disk is back on node1, its file stays.
	setStatus(v1alpha1.DiskPhaseReady, "node1", "")
	if err := e.a.settleDiskExports(e.ctx); err != nil {
		t.Fatal(err)
	}
	if !fileExists(src) {
		t.Fatal("the file of a disk that stayed was removed")
	}
	if recs, _ := os.ReadDir(diskExportDir(e.a.cfg.DataDir)); len(recs) != 0 {
		t.Fatalf("the export record of a disk that stayed is kept: %v", recs)
	}
	// Moved again, and this time it lives on node2: node1's file goes.
	setStatus(v1alpha1.DiskPhaseMigrating, "node2", "node1")
	if _, err := e.a.exportDisk(e.ctx, nodestream.DiskRef{Namespace: "default", Name: "d1", UID: d.UID}); err != nil {
		t.Fatal(err)
	}
	setStatus(v1alpha1.DiskPhaseReady, "node2", "")
	if err := e.a.settleDiskExports(e.ctx); err != nil {
		t.Fatal(err)
	}
	if fileExists(src) {
		t.Fatal("the old file of a disk that moved to node2 is still there")
	}
	// A disk that is not moving away is not exported.
	if _, err := e.a.exportDisk(e.ctx, nodestream.DiskRef{Namespace: "default", Name: "d1", UID: d.UID}); err == nil {
		t.Fatal("a disk that does not move away from node1 was exported")
	}

	// node1 fetches it back from node2: a staged download of an older version goes at once;
	// while it moves here the cleanup keeps the staged one; given back to node2, the staged
	// download and a fetched file both go; a fetch record of a disk node1 holds keeps its file.
	setStatus(v1alpha1.DiskPhaseMigrating, "node1", "node2")
	rec, _ := json.Marshal(diskFetchRecord{Namespace: "default", Name: "d1", UID: d.UID, Dst: src})
	touch(filepath.Join(diskFetchDir(e.a.cfg.DataDir), d.UID+".json"))
	if err := os.WriteFile(filepath.Join(diskFetchDir(e.a.cfg.DataDir), d.UID+".json"), rec, 0o600); err != nil {
		t.Fatal(err)
	}
	old, cur := src+".fetch-"+sha('a'), src+".fetch-"+sha('b')
	touch(old + ".part")
	touch(cur + ".part")
	removeStaged(src, cur)
	if fileExists(old+".part") || !fileExists(cur+".part") {
		t.Fatal("removeStaged kept another version's part file or removed the current one")
	}
	if err := e.a.settleDiskFetches(e.ctx); err != nil {
		t.Fatal(err)
	}
	if !fileExists(cur + ".part") {
		t.Fatal("the staged download of a disk still moving here was removed")
	}
	touch(src) // fetched, but the status write never landed
	setStatus(v1alpha1.DiskPhaseReady, "node2", "")
	if err := e.a.settleDiskFetches(e.ctx); err != nil {
		t.Fatal(err)
	}
	if fileExists(cur+".part") || fileExists(src) {
		t.Fatal("what a fetch left behind stayed after the disk was given back to node2")
	}
	touch(src)
	if err := os.WriteFile(filepath.Join(diskFetchDir(e.a.cfg.DataDir), d.UID+".json"), rec, 0o600); err != nil {
		t.Fatal(err)
	}
	setStatus(v1alpha1.DiskPhaseMigrating, "node3", "node1") // node1 holds it, and it moves on
	if err := e.a.settleDiskFetches(e.ctx); err != nil {
		t.Fatal(err)
	}
	if !fileExists(src) {
		t.Fatal("a stale fetch record removed the file of a disk node1 holds")
	}
}

func sha(c byte) string {
	b := make([]byte, 64)
	for i := range b {
		b[i] = c
	}
	return string(b)
}
