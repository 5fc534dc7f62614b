package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TestLoadHibernation: only a complete saved state (its record written after the stream,
// with the stream's length) is resumed; a directory without a record, or a stream of another
// length, is an error that names the problem; no directory is no state.
func TestLoadHibernation(t *testing.T) {
	run := t.TempDir()
	if rec, err := loadHibernation(run); rec != nil || err != nil {
		t.Fatalf("no state: %+v, %v", rec, err)
	}
	dir := hibernationDir(run)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, hibernationPartial), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if rec, err := loadHibernation(run); rec != nil || err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Fatalf("a state without its record: %+v, %v", rec, err)
	}
	if err := os.WriteFile(filepath.Join(dir, hibernationState), []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	write := func(size int64) {
		b, _ := json.Marshal(hibernationRecord{SavedAt: time.Now(), Size: size, RunSpec: runSpec{BootCores: 2}})
		if err := os.WriteFile(filepath.Join(dir, hibernationMeta), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(11)
	if rec, err := loadHibernation(run); rec != nil || err == nil || !strings.Contains(err.Error(), "has 10 bytes, its record says 11") {
		t.Fatalf("a short stream: %+v, %v", rec, err)
	}
	write(10)
	rec, err := loadHibernation(run)
	if err != nil || rec == nil || rec.RunSpec.BootCores != 2 {
		t.Fatalf("a complete state: %+v, %v", rec, err)
	}
	if !removeHibernation(run) || removeHibernation(run) {
		t.Fatal("removeHibernation does not report what it removed")
	}
}

// TestResumeShape: a resumed QEMU is built with what the hibernated one ran with (its boot
// vCPUs and memory, hot-added vCPUs, the virtio-mem size and the padding), not with a spec
// changed since.
func TestResumeShape(t *testing.T) {
	vm := &v1alpha1.VirtualMachine{}
	vm.Spec.CPU.Cores, vm.Spec.CPU.MaxCores = 8, 8
	vm.Spec.Memory.Size, vm.Spec.Memory.MaxSize = "4Gi", "8Gi"
	saved := &runSpec{BootCores: 1, BootMemory: "1Gi", MemoryPadKiB: 8, Balloon: true}
	saved.Spec.CPU.Cores, saved.Spec.CPU.MaxCores = 3, 4
	saved.Spec.Memory.Size, saved.Spec.Memory.MaxSize = "1536Mi", "2Gi"
	in, rs := resumeShape(vm, saved)
	if in.vm.Spec.CPU.Cores != 1 || in.hotCPUs != 2 || in.vm.Spec.CPU.MaxCores != 4 {
		t.Errorf("vCPUs: boot %d, hot %d, max %d; want 1, 2, 4", in.vm.Spec.CPU.Cores, in.hotCPUs, in.vm.Spec.CPU.MaxCores)
	}
	if in.vm.Spec.Memory.Size != "1Gi" || in.memoryMiB != 512 || in.vm.Spec.Memory.MaxSize != "2Gi" {
		t.Errorf("memory: boot %s, virtio-mem %d MiB, max %s; want 1Gi, 512, 2Gi", in.vm.Spec.Memory.Size, in.memoryMiB, in.vm.Spec.Memory.MaxSize)
	}
	if in.padMemory == nil || !*in.padMemory {
		t.Error("the saved QEMU's padding is not kept")
	}
	if rs.Spec.CPU.Cores != 3 || rs.Spec.Memory.Size != "1536Mi" || rs.BootCores != 1 || !rs.Balloon {
		t.Errorf("the runspec of the resumed QEMU: %+v", rs)
	}
	if vm.Spec.CPU.Cores != 8 {
		t.Error("resumeShape changed the VM")
	}
}
