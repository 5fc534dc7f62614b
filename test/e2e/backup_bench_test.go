package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// bkBenchContent writes size bytes of disk-like content to path: the files of /usr/lib as a
// tar stream (binaries, libraries, text) up to three quarters, then zeros (unused space).
func bkBenchContent(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("tar", "-C", "/usr/lib", "-cf", "-", ".")
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	var n int64
	for n < size*3/4 {
		k, err := pipe.Read(buf[:min(int64(len(buf)), size*3/4-n)])
		if k > 0 {
			if _, werr := f.Write(buf[:k]); werr != nil {
				t.Fatal(werr)
			}
			n += int64(k)
		}
		if err != nil {
			break
		}
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

func medianDur(d []time.Duration) time.Duration {
	d = slices.Clone(d)
	slices.Sort(d)
	return d[len(d)/2]
}

// TestBackupBenchmark measures, side by side in one run, on a 2 GiB disk of which three
// quarters hold the files of /usr/lib: zstd -T0 (level 3) of the raw disk, a full backup of
// it (the platform: QEMU's NBD export of the disk, chunking, hashing, compression), an
// unchanged incremental, and a restore into a new disk. It runs only when RAKHSH_BENCH_BACKUP is set (to the
// number of rounds); see docs/benchmarks.md.
func TestBackupBenchmark(t *testing.T) {
	rounds := benchCount(t, "RAKHSH_BENCH_BACKUP", "rounds")
	const size = 2 << 30
	work := t.TempDir()
	raw := filepath.Join(work, "disk.raw")
	bkBenchContent(t, raw, size)

	s := vmServe(t)
	vmSetupGuest(t, s, "root")
	bkSetup(t, s, filepath.Join(work, "target"), "2Gi")
	d := getObj[v1alpha1.VirtualDisk](t, s, "virtualdisks", "data")
	if out, err := exec.Command("qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", raw, storage.ClassDiskPath(s.DataDir, nil, d.UID)).CombinedOutput(); err != nil {
		t.Fatalf("filling the disk: %v: %s", err, out)
	}
	// The 1.5 GiB just written would otherwise still be dirty in the page cache when the
	// first backup syncs the file system before its manifest, and count against it.
	_ = exec.Command("sync").Run()
	s.MustCLI("", "vm", "start", "vm1", "--wait")
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 1)

	var zstdT, fullT, incT, restT []time.Duration
	var zsize, stored, incStored int64
	for r := range rounds {
		// The file is in the page cache for zstd as the disk is for QEMU (read just before).
		_ = exec.Command("cat", raw).Run()
		start := time.Now()
		if out, err := exec.Command("zstd", "-T0", "-3", "-q", "-f", raw, "-o", raw+".zst").CombinedOutput(); err != nil {
			t.Fatalf("zstd: %v: %s", err, out)
		}
		zstdT = append(zstdT, time.Since(start))
		if fi, err := os.Stat(raw + ".zst"); err == nil {
			zsize = fi.Size()
		}
		os.Remove(raw + ".zst")

		// Each round's full backup goes to a fresh target (a target that has the chunks
		// stores nothing), named per round.
		tname := fmt.Sprintf("t%d", r)
		s.MustCLI(fmt.Sprintf("apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: BackupTarget\nmetadata: {name: %s}\nspec: {type: Directory, directory: {path: %s}}\n",
			tname, filepath.Join(work, tname)), "apply", "-f", "-")
		take := func(name string) (time.Duration, *v1alpha1.VirtualMachineBackup) {
			start := time.Now()
			s.MustCLI("", "backup", "create", "vm1", "--target", tname, "--name", name, "--wait")
			took := time.Since(start)
			return took, bkGet(t, s, name)
		}
		ft, fb := take(fmt.Sprintf("full%d", r))
		t.Logf("round %d: %s", r, v1alpha1.FindCondition(fb.Status.Conditions, v1alpha1.BackupConditionCompleted).Message)
		// The agent's phases of the full backup (debug lines of serve's log).
		for _, line := range strings.Split(s.Logs(), "\n") {
			if strings.Contains(line, "backup=default/"+fb.Name) && strings.Contains(line, "took=") {
				t.Logf("round %d: serve: %s", r, line)
			}
		}
		it, ib := take(fmt.Sprintf("inc%d", r))
		fullT, incT = append(fullT, ft), append(incT, it)
		stored, incStored = fb.Status.Size.Stored, ib.Status.Size.Stored
		t.Logf("round %d: zstd -T0 %s; full backup %s (status %s, read %s, stored %s); unchanged incremental %s (read %d, stored %d)",
			r, zstdT[r].Round(time.Millisecond), ft.Round(time.Millisecond), fb.Status.Duration, v1alpha1.HumanBytes(fb.Status.Size.Read),
			v1alpha1.HumanBytes(fb.Status.Size.Stored), it.Round(time.Millisecond), ib.Status.Size.Read, ib.Status.Size.Stored)

		start = time.Now()
		rname := fmt.Sprintf("restored%d", r)
		s.MustCLI(fmt.Sprintf("apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: VirtualDisk\nmetadata: {name: %s}\nspec:\n  dataSource:\n    type: ObjectRef\n    objectRef: {kind: VirtualMachineBackup, name: %s, diskName: data}\n",
			rname, fb.Name), "apply", "-f", "-")
		s.MustCLI("", "wait", "vd", rname, "--for", "phase=Ready", "--timeout", "10m")
		restT = append(restT, time.Since(start))
		t.Logf("round %d: restore of the data disk %s", r, restT[r].Round(time.Millisecond))
		s.MustCLI("", "delete", "vd", rname)
	}
	mib := func(d time.Duration) float64 { return float64(size) / (1 << 20) / d.Seconds() }
	z, f, i, rs := medianDur(zstdT), medianDur(fullT), medianDur(incT), medianDur(restT)
	t.Logf("BENCH | zstd -T0 -3 of the raw disk | %s | %.0f MiB/s | %s |", z.Round(time.Millisecond), mib(z), v1alpha1.HumanBytes(zsize))
	t.Logf("BENCH | full backup (create → Completed) | %s | %.0f MiB/s | %s stored | ratio to zstd %.2f", f.Round(time.Millisecond), mib(f), v1alpha1.HumanBytes(stored), mib(f)/mib(z))
	t.Logf("BENCH | unchanged incremental | %s | | %d B stored |", i.Round(time.Millisecond), incStored)
	t.Logf("BENCH | restore (create → Ready) | %s | %.0f MiB/s | |", rs.Round(time.Millisecond), mib(rs))
	s.MustCLI("", "vm", "stop", "vm1", "--wait")
}
