package backup

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/rakhsh/rakhsh/internal/storage"
)

// ManifestVersion is the version of the manifest format this package writes and reads.
const ManifestVersion = 1

// Manifest describes one backup: what it is of, and per disk the chunks of its data.
type Manifest struct {
	Version int `json:"version"`
	// Backup is the VirtualMachineBackup, VM the VM backed up.
	Backup Ref `json:"backup"`
	VM     Ref `json:"virtualMachine"`
	// Target is the BackupTarget's name.
	Target    string    `json:"target"`
	CreatedAt time.Time `json:"createdAt"`
	ChunkSize int       `json:"chunkSize"`
	// Consistent says the guest was frozen or paused at the backup's instant.
	Consistent bool   `json:"consistent"`
	Disks      []Disk `json:"disks"`
	// VMSpec is the VM's spec at the backup (JSON), for a restore to a new VM.
	VMSpec json.RawMessage `json:"vmSpec,omitempty"`
}

// Ref names an object.
type Ref struct {
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
}

// Disk is one disk of a backup.
type Disk struct {
	// Name is the VirtualDisk's name, UID its uid.
	Name string `json:"name"`
	UID  string `json:"uid"`
	// Size is the disk's virtual size in bytes.
	Size int64 `json:"size"`
	// Bitmap is the dirty bitmap QEMU keeps in the disk from this backup's instant on: the
	// next incremental backup reads the blocks it marks (empty: none was made).
	Bitmap string `json:"bitmap,omitempty"`
	// Chunks names the chunks of the disk's data in order ("" for a chunk of zeros).
	Chunks []string `json:"chunks"`
}

// Encode returns the manifest's JSON.
func (m *Manifest) Encode() ([]byte, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	return json.MarshalIndent(m, "", " ")
}

// DecodeManifest parses and checks a manifest.
func DecodeManifest(data []byte) (*Manifest, error) {
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	var m Manifest
	if err := d.Decode(&m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if d.More() {
		return nil, errors.New("manifest: data after the JSON object")
	}
	if err := m.check(); err != nil {
		return nil, err
	}
	return &m, nil
}

// maxDiskSize bounds a disk's size in a manifest (64 TiB): it keeps a crafted manifest from
// making a restore allocate without end.
const maxDiskSize = 64 << 40

func (m *Manifest) check() error {
	switch {
	case m.Version != ManifestVersion:
		return fmt.Errorf("manifest: version %d, this version of Rakhsh reads %d", m.Version, ManifestVersion)
	case m.ChunkSize != ChunkSize:
		return fmt.Errorf("manifest: chunk size %d, expected %d", m.ChunkSize, ChunkSize)
	case storage.CheckUID(m.Backup.UID) != nil:
		return fmt.Errorf("manifest: backup uid %q is not a uid", m.Backup.UID)
	case storage.CheckUID(m.VM.UID) != nil:
		return fmt.Errorf("manifest: virtual machine uid %q is not a uid", m.VM.UID)
	case !safeName(m.Backup.Namespace):
		return fmt.Errorf("manifest: namespace %q is not a name", m.Backup.Namespace)
	}
	seen := map[string]bool{}
	for i, d := range m.Disks {
		switch {
		case d.Name == "" || seen[d.Name]:
			return fmt.Errorf("manifest: disk %d has an empty or repeated name %q", i, d.Name)
		case d.Size <= 0 || d.Size > maxDiskSize:
			return fmt.Errorf("manifest: disk %q has size %d", d.Name, d.Size)
		case len(d.Chunks) != chunkCount(d.Size):
			return fmt.Errorf("manifest: disk %q of %d bytes lists %d chunks, not %d", d.Name, d.Size, len(d.Chunks), chunkCount(d.Size))
		}
		seen[d.Name] = true
		for j, c := range d.Chunks {
			if c != "" && !validSum(c) {
				return fmt.Errorf("manifest: disk %q chunk %d: %q is not a chunk name", d.Name, j, c)
			}
		}
	}
	return nil
}

// safeName says s may be a path element of the store: a DNS label, as namespaces are.
func safeName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' && i > 0 && i < len(s)-1) {
			return false
		}
	}
	return true
}

// ManifestPath is where the manifest of backup uid of the VM vmUID in namespace ns is kept,
// relative to the store's directory.
func ManifestPath(ns, vmUID, uid string) string {
	return filepath.Join("manifests", ns, vmUID, uid+".json")
}

// ReadManifestOf reads the manifest of backup uid of the VM vmUID in namespace ns from where
// WriteManifest puts it, and checks that it says so: a path given by a status field is never
// trusted.
func (s *Store) ReadManifestOf(ns, vmUID, uid string) (*Manifest, string, error) {
	rel := ManifestPath(ns, vmUID, uid)
	if !safeName(ns) || storage.CheckUID(vmUID) != nil || storage.CheckUID(uid) != nil {
		return nil, rel, fmt.Errorf("backup %s/%s of VM %s: not a valid name or uid", ns, uid, vmUID)
	}
	m, err := s.ReadManifest(rel)
	if err != nil {
		return nil, rel, err
	}
	if m.Backup.Namespace != ns || m.Backup.UID != uid || m.VM.UID != vmUID {
		return nil, rel, fmt.Errorf("%s: the manifest is of backup %s/%s of VM %s", rel, m.Backup.Namespace, m.Backup.UID, m.VM.UID)
	}
	return m, rel, nil
}

// WriteManifest stores m (replacing an earlier one of the same backup) and returns its path
// relative to the store's directory.
func (s *Store) WriteManifest(m *Manifest) (string, error) {
	data, err := m.Encode()
	if err != nil {
		return "", err
	}
	// The chunks it names first.
	if err := s.Sync(); err != nil {
		return "", err
	}
	rel := ManifestPath(m.Backup.Namespace, m.VM.UID, m.Backup.UID)
	p := filepath.Join(s.Dir, rel)
	f, err := storage.TempFile(p)
	if err != nil {
		return "", err
	}
	_, werr := f.Write(data)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = storage.Commit(f.Name(), p)
	}
	if werr != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("writing the manifest: %w", werr)
	}
	return rel, nil
}

// ReadManifest reads the manifest at rel (relative to the store's directory). A manifest that
// does not exist is an error that wraps fs.ErrNotExist.
func (s *Store) ReadManifest(rel string) (*Manifest, error) {
	if !filepath.IsLocal(rel) {
		return nil, fmt.Errorf("manifest path %q is not inside the target", rel)
	}
	data, err := os.ReadFile(filepath.Join(s.Dir, rel))
	if err != nil {
		return nil, err
	}
	m, err := DecodeManifest(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	return m, nil
}

// Manifests lists the manifests of the store (paths relative to its directory).
func (s *Store) Manifests() ([]string, error) {
	var out []string
	root := filepath.Join(s.Dir, "manifests")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() && filepath.Ext(p) == ".json" && !isTemp(d.Name()) {
			rel, _ := filepath.Rel(s.Dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out, err
}
