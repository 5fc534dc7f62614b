package agent

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/nodestream"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// Moves between two nodes' Local storage (docs/storage.md, "Moving a disk"). The disk
// controller hands the move to the target node's agent (status.nodeName) and names the node
// that holds the file (status.moveSourceNodeName). The target's agent fetches the file through
// the API (virtualdisks/NAME/data), which proxies to the source node's stream service; the
// source's agent serves the disk's file as it is when it has no backing file, or a flattened
// copy of it, with its sha256 as ETag. The fetch resumes where it stopped, is checked against
// that sha256 and then as an untrusted image (no backing or data file), and only then does
// the target write the disk's new class and node. The source's agent keeps a record of each
// export under run/disk-exports and, once the disk lives elsewhere (or is gone), removes its
// old file and the export; while the disk is still its own (the move failed or was called
// off) it removes only the export.

// diskExportDir holds the export records and flattened copies of disks moving away.
func diskExportDir(dataDir string) string { return filepath.Join(dataDir, "run", "disk-exports") }

// diskExportRecord is what a source node remembers of a disk it exported.
type diskExportRecord struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
	// Source is the disk's file; Export the file served (Source itself, or a flattened copy).
	Source string `json:"source"`
	Export string `json:"export"`
	SHA256 string `json:"sha256"`
	// SourceSize and SourceModTime (unix ns) tell whether Source changed since.
	SourceSize    int64 `json:"sourceSize"`
	SourceModTime int64 `json:"sourceModTime"`
}

func readDiskExportRecord(path string) (*diskExportRecord, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rec diskExportRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("export record %s: %w", path, err)
	}
	return &rec, nil
}

// exportWait is how long a request for a disk's data waits for the export to be prepared
// before it is answered 503 (the fetching node tries again): a small disk is served at once,
// a large linked clone is flattened in the background, never cut short by a request's end.
const exportWait = 20 * time.Second

// diskExportJob is an export being prepared; err is set before done is closed.
type diskExportJob struct {
	done chan struct{}
	err  error
}

// exportDisk prepares the file of a disk that moves away from this node for the node that
// fetches it (nodestream.DiskExportFunc). Only a disk whose status names this node as the
// move's source is served.
func (a *Agent) exportDisk(ctx context.Context, ref nodestream.DiskRef) (nodestream.DiskExport, error) {
	var d v1alpha1.VirtualDisk
	if err := a.c.Get(ctx, "virtualdisks", ref.Namespace, ref.Name, &d); err != nil {
		if client.IsNotFound(err) {
			return nodestream.DiskExport{}, errs.New(errs.ErrNotFound, "VirtualDisk %s/%s does not exist", ref.Namespace, ref.Name)
		}
		return nodestream.DiskExport{}, err
	}
	if d.UID != ref.UID || storage.CheckUID(d.UID) != nil {
		return nodestream.DiskExport{}, errs.New(errs.ErrNotFound, "VirtualDisk %s/%s was replaced", ref.Namespace, ref.Name)
	}
	if d.Status.MoveSourceNodeName != a.cfg.NodeName {
		return nodestream.DiskExport{}, errs.New(errs.ErrConflict, "VirtualDisk %s/%s is not moving away from node %s", ref.Namespace, ref.Name, a.cfg.NodeName)
	}
	var sc *v1alpha1.StorageClass
	if err := a.getClass(ctx, d.Status.StorageClassName, &sc); err != nil {
		return nodestream.DiskExport{}, err
	}
	if sc != nil && sc.Spec.Type != v1alpha1.StorageClassTypeLocal {
		return nodestream.DiskExport{}, errs.New(errs.ErrConflict, "VirtualDisk %s/%s is in storage class %q, which is not Local", ref.Namespace, ref.Name, sc.Name)
	}
	src := storage.ClassDiskPath(a.cfg.DataDir, sc, d.UID)
	st, err := os.Stat(src)
	if errors.Is(err, os.ErrNotExist) {
		return nodestream.DiskExport{}, errs.New(errs.ErrNotFound, "the file of VirtualDisk %s/%s is not on node %s", ref.Namespace, ref.Name, a.cfg.NodeName)
	}
	if err != nil {
		return nodestream.DiskExport{}, err
	}
	for {
		exp, job, err := a.exportState(&d, src, st)
		if err != nil || job == nil {
			return exp, err
		}
		select {
		case <-job.done:
			// Its outcome is read on the next turn.
		case <-time.After(exportWait):
			return nodestream.DiskExport{}, errs.New(errs.ErrUnavailable, "node %s is still preparing the file of VirtualDisk %s/%s for the move (flattening or hashing it); try again",
				a.cfg.NodeName, ref.Namespace, ref.Name)
		case <-ctx.Done():
			return nodestream.DiskExport{}, ctx.Err()
		}
	}
}

// exportState returns the prepared export of disk d (whose file is src, as st says), or the
// job preparing it, started here when none runs; a job that failed gives its error once.
func (a *Agent) exportState(d *v1alpha1.VirtualDisk, src string, st os.FileInfo) (nodestream.DiskExport, *diskExportJob, error) {
	a.exportMu.Lock()
	defer a.exportMu.Unlock()
	if job := a.exportJobs[d.UID]; job != nil {
		select {
		case <-job.done:
			delete(a.exportJobs, d.UID)
			if job.err != nil {
				return nodestream.DiskExport{}, nil, job.err
			}
		default:
			return nodestream.DiskExport{}, job, nil
		}
	}
	recPath := filepath.Join(diskExportDir(a.cfg.DataDir), d.UID+".json")
	if rec, err := readDiskExportRecord(recPath); err == nil && rec.Source == src && rec.SourceSize == st.Size() &&
		rec.SourceModTime == st.ModTime().UnixNano() && fileExists(rec.Export) {
		return nodestream.DiskExport{Path: rec.Export, SHA256: rec.SHA256}, nil, nil
	}
	job := &diskExportJob{done: make(chan struct{})}
	if a.exportJobs == nil {
		a.exportJobs = map[string]*diskExportJob{}
	}
	a.exportJobs[d.UID] = job
	ctx := a.runCtx
	if ctx == nil {
		ctx = context.Background()
	}
	dc := *d
	go func() {
		job.err = a.prepareExport(ctx, &dc, src, st, recPath)
		close(job.done)
	}()
	return nodestream.DiskExport{}, job, nil
}

// prepareExport makes the export of disk d: its file src itself when it stands alone, else a
// flattened copy; then its sha256 and the record that remembers both.
func (a *Agent) prepareExport(ctx context.Context, d *v1alpha1.VirtualDisk, src string, st os.FileInfo, recPath string) error {
	format := diskFormat(d)
	// Without -U: a QEMU that has the file open (none may: the disk is moving) makes this
	// fail on the image lock rather than serve a file that changes.
	info, err := storage.Info(ctx, src, format)
	if storage.IsLocked(err) {
		return errs.New(errs.ErrConflict, "the file of VirtualDisk %s/%s on node %s is open in a QEMU (a VM started from it): %v", d.Namespace, d.Name, a.cfg.NodeName, err)
	}
	if err != nil {
		return failedExport(ctx, d, fmt.Errorf("reading the disk's file: %w", err))
	}
	dir := filepath.Dir(recPath)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	export := src
	if info.BackingFile != "" || info.DataFile != "" {
		// A linked clone: a flattened copy, which needs nothing else on the other node.
		export = filepath.Join(dir, d.UID+"."+format)
		_ = os.Remove(export)
		storage.CleanTempFor(export) // a flatten cut short by a restart
		if err := storage.Convert(ctx, src, format, export, format); err != nil {
			storage.CleanTempFor(export)
			return failedExport(ctx, d, fmt.Errorf("flattening the disk for the move: %w", err))
		}
	}
	sum, err := storage.FileSHA256(ctx, export)
	if err != nil {
		return err
	}
	rec := diskExportRecord{Namespace: d.Namespace, Name: d.Name, UID: d.UID, Source: src, Export: export, SHA256: sum,
		SourceSize: st.Size(), SourceModTime: st.ModTime().UnixNano()}
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(recPath, data, 0o600); err != nil {
		return err
	}
	a.log.Info("disk exported for a move to another node", "disk", d.Namespace+"/"+d.Name, "to", d.Status.NodeName, "flattened", export != src, "sha256", sum)
	return nil
}

// failedExport is the answer to the fetching node when preparing the export failed: a
// conflict, which ends the move (the file cannot be read or flattened, the disk is full),
// rather than a retry that would flatten again and again; when this agent was stopping,
// unavailable, which the fetching node tries again.
func failedExport(ctx context.Context, d *v1alpha1.VirtualDisk, err error) error {
	if ctx.Err() != nil {
		return errs.New(errs.ErrUnavailable, "preparing the file of VirtualDisk %s/%s was cut short: %v", d.Namespace, d.Name, err)
	}
	return errs.New(errs.ErrConflict, "preparing the file of VirtualDisk %s/%s for the move failed: %v", d.Namespace, d.Name, err)
}

// settleDiskExports removes what this node exported once it is no longer needed: the export
// and the old file of a disk that now lives on another node or is gone; only the export of a
// disk that stayed here (a failed or called-off move). A disk still moving away keeps both.
func (a *Agent) settleDiskExports(ctx context.Context) error {
	dir := diskExportDir(a.cfg.DataDir)
	return eachRecord(dir, func(name string) error { return a.settleDiskExport(ctx, dir, name) })
}

// eachRecord calls f with the name of each record (NAME.json) in dir, which may not exist,
// and returns their errors joined.
func eachRecord(dir string, f func(name string) error) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errl []error
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".json") {
			errl = append(errl, f(e.Name()))
		}
	}
	return errors.Join(errl...)
}

// settleDiskExport settles one export record (name, in dir). It decides from the disk's
// status without the export lock (an API read may take long), and then, under it, removes
// files only if no export of the disk is being prepared and the record is still the one read.
func (a *Agent) settleDiskExport(ctx context.Context, dir, name string) error {
	recPath := filepath.Join(dir, name)
	raw, err := os.ReadFile(recPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	rec, err := readDiskExportRecord(recPath)
	if err != nil {
		a.log.Warn("an unreadable disk export record is removed", "path", recPath, "err", err)
		return removeIfSame(recPath, raw)
	}
	// The record names the disk's own files only: its file (UID.FORMAT in a pool) and the
	// export (the file itself, or UID.FORMAT here).
	if storage.CheckUID(rec.UID) != nil || rec.UID+".json" != name || !filepath.IsAbs(rec.Source) ||
		!strings.HasPrefix(filepath.Base(rec.Source), rec.UID+".") ||
		(rec.Export != rec.Source && (filepath.Dir(rec.Export) != dir || !strings.HasPrefix(filepath.Base(rec.Export), rec.UID+"."))) {
		a.log.Warn("a disk export record that names other files is removed", "path", recPath)
		return removeIfSame(recPath, raw)
	}
	d, gone, err := a.recordedDisk(ctx, rec.Namespace, rec.Name, rec.UID)
	if err != nil {
		return err
	}
	removeSource := false
	switch {
	case gone:
		removeSource = true
	case d.Status.MoveSourceNodeName == a.cfg.NodeName:
		return nil // still moving away
	case d.Status.NodeName == a.cfg.NodeName:
		// The disk stayed (the move failed or was called off): its file stays.
	case d.Status.NodeName == "" && d.Status.Phase != v1alpha1.DiskPhaseReady:
		return nil // not placed yet: decided on a later pass
	default:
		removeSource = true // on another node, or on Shared storage
	}
	a.exportMu.Lock()
	defer a.exportMu.Unlock()
	if job := a.exportJobs[rec.UID]; job != nil {
		select {
		case <-job.done:
			delete(a.exportJobs, rec.UID) // nobody asked for its outcome
		default:
			return nil // being prepared
		}
	}
	if now, err := os.ReadFile(recPath); err != nil || string(now) != string(raw) {
		return nil // a new export since: decided on a later pass
	}
	if rec.Export != rec.Source {
		if err := os.Remove(rec.Export); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if removeSource {
		if _, err := storage.Info(ctx, rec.Source, diskFormat(d)); storage.IsLocked(err) {
			a.log.Warn("the old file of a disk that moved away is open in a QEMU: it is kept", "path", rec.Source)
		} else if err := os.Remove(rec.Source); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		} else {
			a.log.Info("removed the old file of a disk that moved away", "disk", rec.Namespace+"/"+rec.Name, "path", rec.Source, "node", d.Status.NodeName)
		}
	}
	if err := os.Remove(recPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// removeIfSame removes the file at path if it still holds data.
func removeIfSame(path string, data []byte) error {
	now, err := os.ReadFile(path)
	if err != nil || string(now) != string(data) {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// diskFetchDir holds the records of the disks this node fetches from other nodes.
func diskFetchDir(dataDir string) string { return filepath.Join(dataDir, "run", "disk-fetches") }

// diskFetchRecord is what a target node remembers of a fetch, so that what it left behind is
// removed once the disk no longer moves here.
type diskFetchRecord struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
	// Dst is where the disk's file goes; the download is staged beside it, in
	// Dst.fetch-SHA (and its .part), one name per version of the source's file.
	Dst string `json:"dst"`
}

// recordedDisk reads the disk a record names; gone says it was deleted (or replaced by
// another of the same name).
func (a *Agent) recordedDisk(ctx context.Context, ns, name, uid string) (*v1alpha1.VirtualDisk, bool, error) {
	var d v1alpha1.VirtualDisk
	err := a.c.Get(ctx, "virtualdisks", ns, name, &d)
	if client.IsNotFound(err) || (err == nil && d.UID != uid) {
		return &d, true, nil
	}
	return &d, false, err
}

// fetchMovedDisk fetches the file of a disk that moves here from another node's Local
// storage into dst. A permanent failure (the source refuses, the file does not match its
// sha256, it is not a self-contained image of the disk's format) is returned as a
// *permanentMoveError; others (the source node cannot be reached, is still preparing the
// file) are tried again.
func (a *Agent) fetchMovedDisk(ctx context.Context, d *v1alpha1.VirtualDisk, dst string) error {
	path := client.Path("virtualdisks", d.Namespace, d.Name, "data")
	// The first byte, to learn the file's sha256 (the source prepares the export now).
	resp, err := a.c.Download(ctx, path, http.Header{"Range": {"bytes=0-0"}})
	if err != nil {
		return classifyFetch(err)
	}
	resp.Body.Close()
	sha := strings.Trim(resp.Header.Get("ETag"), `"`)
	if !storage.IsSHA256Hex(sha) {
		return &permanentMoveError{fmt.Errorf("the source node served the disk without a sha256 ETag (%q)", resp.Header.Get("ETag"))}
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	rec, err := json.Marshal(diskFetchRecord{Namespace: d.Namespace, Name: d.Name, UID: d.UID, Dst: dst})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(diskFetchDir(a.cfg.DataDir), 0o700); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(diskFetchDir(a.cfg.DataDir), d.UID+".json"), rec, 0o600); err != nil {
		return err
	}
	// Staged under the version's name: a part file of another version (the move was called
	// off, the disk changed, and it moves again) is never resumed, and goes now.
	stage := dst + ".fetch-" + sha
	removeStaged(dst, stage)
	if err := fetchResumable(ctx, a.c, path, stage, sha); err != nil {
		if strings.Contains(err.Error(), "was discarded") {
			return &permanentMoveError{err}
		}
		return classifyFetch(err)
	}
	res, err := images.Describe(ctx, stage)
	if err == nil && storage.DriveFormat(string(res.Format)) != diskFormat(d) {
		err = fmt.Errorf("the fetched file is a %s image, not %s", res.Format, diskFormat(d))
	}
	if err != nil {
		_ = os.Remove(stage)
		return &permanentMoveError{fmt.Errorf("checking the fetched file: %w", err)}
	}
	return storage.Commit(stage, dst)
}

// removeStaged removes the staged downloads beside dst other than keep ("": all of them).
func removeStaged(dst, keep string) {
	matches, _ := filepath.Glob(dst + ".fetch-*")
	for _, m := range matches {
		if keep == "" || (m != keep && m != keep+".part") {
			_ = os.Remove(m)
		}
	}
}

// settleDiskFetches removes what fetches left behind (staged downloads, and the file itself
// when the disk did not end up here) once a disk no longer moves to this node.
func (a *Agent) settleDiskFetches(ctx context.Context) error {
	dir := diskFetchDir(a.cfg.DataDir)
	return eachRecord(dir, func(name string) error { return a.settleDiskFetch(ctx, dir, name) })
}

// settleDiskFetch settles one fetch record (name, in dir).
func (a *Agent) settleDiskFetch(ctx context.Context, dir, name string) error {
	recPath := filepath.Join(dir, name)
	data, err := os.ReadFile(recPath)
	var rec diskFetchRecord
	if err == nil {
		err = json.Unmarshal(data, &rec)
	}
	if err != nil || storage.CheckUID(rec.UID) != nil || rec.UID+".json" != name || !filepath.IsAbs(rec.Dst) ||
		!strings.HasPrefix(filepath.Base(rec.Dst), rec.UID+".") {
		_ = os.Remove(recPath)
		return nil
	}
	d, gone, err := a.recordedDisk(ctx, rec.Namespace, rec.Name, rec.UID)
	if err != nil {
		return err
	}
	if !gone && d.Status.NodeName == a.cfg.NodeName && d.Status.MoveSourceNodeName != "" && d.Status.MoveSourceNodeName != a.cfg.NodeName {
		return nil // still moving here
	}
	removeStaged(rec.Dst, "")
	if holds := !gone && (d.Status.NodeName == a.cfg.NodeName || d.Status.MoveSourceNodeName == a.cfg.NodeName); !holds {
		// Fetched, but the disk did not end up here (its status names another node); a
		// file a QEMU holds open (a live migration into this node) stays.
		if _, err := storage.Info(ctx, rec.Dst, diskFormat(d)); storage.IsLocked(err) {
			return nil
		}
		if err := os.Remove(rec.Dst); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if err := os.Remove(recPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// diskFormat is the qemu format of the disk's file (qcow2 unless its status says raw).
func diskFormat(d *v1alpha1.VirtualDisk) string {
	return storage.DriveFormat(cmp.Or(d.Status.Format, "qcow2"))
}

// permanentMoveError is a move failure that trying again would not change.
type permanentMoveError struct{ err error }

func (e *permanentMoveError) Error() string { return e.err.Error() }
func (e *permanentMoveError) Unwrap() error { return e.err }

// classifyFetch makes the API's refusals permanent; anything else (the source node cannot be
// reached, the connection broke) is tried again.
func classifyFetch(err error) error {
	if client.IsNotFound(err) || client.IsConflict(err) || client.IsForbidden(err) || client.IsInvalid(err) {
		return &permanentMoveError{err}
	}
	return err
}
