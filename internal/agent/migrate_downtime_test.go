package agent

import (
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TestDowntimeFor: the growing limit starts at 50 ms and doubles every two passes up to the
// maximum; a maximum below the first step is the limit from the start.
func TestDowntimeFor(t *testing.T) {
	cases := []struct {
		passes, max, want int64
	}{
		{0, 300, 50}, {1, 300, 50}, {2, 300, 50}, {3, 300, 100}, {4, 300, 100}, {5, 300, 200}, {6, 300, 200},
		{7, 300, 300}, {50, 300, 300}, {0, 20, 20}, {9, 20, 20}, {0, 2000, 50}, {9, 2000, 800}, {11, 2000, 1600}, {13, 2000, 2000},
	}
	for _, c := range cases {
		if got := downtimeFor(c.passes, c.max); got != c.want {
			t.Errorf("downtimeFor(%d passes, max %d) = %d, want %d", c.passes, c.max, got, c.want)
		}
	}
	if maxDowntime(nil) != 300 || maxDowntime(&v1alpha1.MigrationPolicySettings{MaxDowntimeMs: 120}) != 120 {
		t.Errorf("maximum: default %d, policy of 120 ms %d", maxDowntime(nil), maxDowntime(&v1alpha1.MigrationPolicySettings{MaxDowntimeMs: 120}))
	}
}

// TestDowntimePlan: under KVM the limit grows with the passes; under TCG (and whatever is
// not KVM) it stays at its first value for the whole stream, so that QEMU is never asked to
// change it mid-stream (a TCG dirty-tracking bug of QEMU before 9.0 then loses guest writes).
func TestDowntimePlan(t *testing.T) {
	kvm := planDowntime(nil, "kvm")
	if got := kvm.limitAfter(0); got != 50 {
		t.Errorf("KVM: first limit %d, want 50", got)
	}
	if got := kvm.limitAfter(7); got != 300 {
		t.Errorf("KVM: limit after 7 passes %d, want 300", got)
	}
	for _, accel := range []string{"tcg", ""} {
		p := planDowntime(&v1alpha1.MigrationPolicySettings{MaxDowntimeMs: 500}, accel)
		for passes := int64(0); passes < 30; passes++ {
			if got := p.limitAfter(passes); got != 50 {
				t.Fatalf("%q: limit after %d passes %d, want 50 throughout", accel, passes, got)
			}
		}
	}
	if got := planDowntime(&v1alpha1.MigrationPolicySettings{MaxDowntimeMs: 20}, "tcg").limitAfter(9); got != 20 {
		t.Errorf("TCG with a 20 ms maximum: %d, want 20", got)
	}
}

// TestPausedTransfer: only a VM with memory plugged through virtio-mem, under TCG with a QEMU
// before 9.0 (or of an unknown version), is paused for its migration stream.
func TestPausedTransfer(t *testing.T) {
	plugged := &v1alpha1.VirtualMachineResources{Memory: v1alpha1.VirtualMachineMemoryStatus{Size: "512Mi", MaxSize: "1Gi", BootSize: "256Mi", Hotplugged: "256Mi"}}
	asked := &v1alpha1.VirtualMachineResources{Memory: v1alpha1.VirtualMachineMemoryStatus{Size: "512Mi", MaxSize: "1Gi", BootSize: "256Mi", Hotplugged: "0"}}
	unplugged := &v1alpha1.VirtualMachineResources{Memory: v1alpha1.VirtualMachineMemoryStatus{Size: "256Mi", MaxSize: "1Gi", BootSize: "256Mi", Hotplugged: "0"}}
	plain := &v1alpha1.VirtualMachineResources{Memory: v1alpha1.VirtualMachineMemoryStatus{Size: "256Mi"}}
	for _, c := range []struct {
		accel, version string
		res            *v1alpha1.VirtualMachineResources
		want           bool
	}{
		{"tcg", "7.2.22", plugged, true},
		{"tcg", "", plugged, true},
		{"tcg", "7.2.22", asked, true},
		{"tcg", "8.2.2", unplugged, false},
		{"tcg", "7.2.22", plain, false},
		{"tcg", "7.2.22", nil, false},
		{"tcg", "9.0.0", plugged, false},
		{"kvm", "7.2.22", plugged, false},
	} {
		vm := &v1alpha1.VirtualMachine{}
		vm.Status.Resources = c.res
		if got := pausedTransfer(c.accel, c.version, vm); got != c.want {
			t.Errorf("%s QEMU %q resources %+v: paused %v, want %v", c.accel, c.version, c.res, got, c.want)
		}
	}
}
