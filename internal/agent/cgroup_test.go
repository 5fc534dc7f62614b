package agent

import (
	"reflect"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func TestParseCPUList(t *testing.T) {
	for in, want := range map[string][]int{
		"0-1":       {0, 1},
		"0,2-4,7":   {0, 2, 3, 4, 7},
		"":          nil,
		"3":         {3},
		" 1 , 5-5 ": {1, 5},
		"4-2":       nil, // reversed range ignored
		"x,1":       {1},
	} {
		if got := parseCPUList(in); !reflect.DeepEqual(got, want) {
			t.Errorf("parseCPUList(%q) = %v, want %v", in, got, want)
		}
	}
	if got := formatCPUList([]int{0, 3}); got != "0,3" {
		t.Errorf("formatCPUList = %q", got)
	}
}

// FuzzParseCPUList: the kernel CPU list parser never panics, never returns a huge list, and
// what formatCPUList writes reads back the same.
func FuzzParseCPUList(f *testing.F) {
	for _, s := range []string{"0-1", "0,2-4,7", "", "1-", "-", "9999999999-1", "0-4096"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := parseCPUList(s)
		if len(got) > 4097*(strings.Count(s, ",")+1) {
			t.Fatalf("%q gave %d cores", s, len(got))
		}
		if back := parseCPUList(formatCPUList(got)); !reflect.DeepEqual(back, got) && len(got) > 0 {
			t.Fatalf("round trip of %v: %v", got, back)
		}
	})
}

func TestComputeLimits(t *testing.T) {
	vm := &v1alpha1.VirtualMachine{}
	vm.Spec.CPU = v1alpha1.VirtualMachineCPU{Cores: 2, CoreFraction: "20%"}
	vm.Spec.Memory.Size = "1Gi"
	l := computeLimits(vm, true)
	if l.cpuQuotaUsec != 40000 || l.dedicated != 0 {
		t.Errorf("2 cores at 20%%: %+v, want a 40000 us quota per 100000 us", l)
	}
	if want := int64(1<<30 + 256<<20 + (1<<30)/16 + 1<<30); l.memoryBytes != want {
		t.Errorf("memory limit %d, want %d", l.memoryBytes, want)
	}
	vm.Spec.CPU.CoreFraction = "100%"
	if l := computeLimits(vm, false); l.cpuQuotaUsec != 0 || l.memoryBytes != 1<<30+256<<20+(1<<30)/16 {
		t.Errorf("100%% under KVM: %+v", l)
	}
	vm.Spec.CPU = v1alpha1.VirtualMachineCPU{Cores: 1, CoreFraction: "1%"}
	if l := computeLimits(vm, false); l.cpuQuotaUsec != 1000 {
		t.Errorf("1%% of 1 core: quota %d, want the 1000 us minimum", l.cpuQuotaUsec)
	}
	vm.Spec.CPU = v1alpha1.VirtualMachineCPU{Cores: 3, CoreFraction: "50%", DedicatedCores: true}
	if l := computeLimits(vm, false); l.cpuQuotaUsec != 0 || l.dedicated != 3 {
		t.Errorf("dedicated: %+v, want no quota and 3 dedicated cores", l)
	}
}

func TestClassCPU(t *testing.T) {
	cl := func(typ v1alpha1.CPUType) *v1alpha1.VirtualMachineClass {
		c := &v1alpha1.VirtualMachineClass{}
		c.Name = "c"
		c.Spec.CPU.Type = typ
		return c
	}
	for _, tc := range []struct {
		c     *v1alpha1.VirtualMachineClass
		kvm   bool
		model string
		feats []string
	}{
		{cl(v1alpha1.CPUTypeHost), true, "host", nil},
		{cl(v1alpha1.CPUTypeHost), false, "max", nil},
		{cl(v1alpha1.CPUTypeHostPassthrough), true, "host", []string{"-migratable"}},
		{cl(v1alpha1.CPUTypeHostPassthrough), false, "max", nil},
	} {
		m, f, err := classCPU(tc.c, tc.kvm)
		if err != nil || m != tc.model || !reflect.DeepEqual(f, tc.feats) {
			t.Errorf("%s kvm=%v: %q %v %v", tc.c.Spec.CPU.Type, tc.kvm, m, f, err)
		}
	}
	c := cl(v1alpha1.CPUTypeModel)
	c.Spec.CPU.Model = "IvyBridge"
	if m, _, _ := classCPU(c, false); m != "IvyBridge" {
		t.Errorf("Model: %q", m)
	}
	c = cl(v1alpha1.CPUTypeFeatures)
	c.Spec.CPU.Features = []string{"sse4.2", "avx"}
	if m, f, _ := classCPU(c, false); m != "qemu64" || !reflect.DeepEqual(f, []string{"+sse4.2", "+avx"}) {
		t.Errorf("Features: %q %v", m, f)
	}
	c = cl(v1alpha1.CPUTypeDiscovery)
	if _, _, err := classCPU(c, false); err == nil || !strings.Contains(err.Error(), "not discovered") {
		t.Errorf("Discovery without features: %v", err)
	}
	c.Status.CPUFeatures = &v1alpha1.CPUFeatures{Enabled: []string{"aes"}}
	if m, f, _ := classCPU(c, false); m != "qemu64" || !reflect.DeepEqual(f, []string{"+aes"}) {
		t.Errorf("Discovery: %q %v", m, f)
	}
}

func TestParseCPUIDFlags(t *testing.T) {
	help := "Available CPUs:\nx86 Nehalem\n\nRecognized CPUID flags:\n  3dnow abm aes\n  avx sse4.2\n\nOther:\n  nothing\n"
	got := parseCPUIDFlags(help)
	for _, f := range []string{"3dnow", "abm", "aes", "avx", "sse4.2"} {
		if !got[f] {
			t.Errorf("flag %s missing", f)
		}
	}
	if got["nothing"] || got["Nehalem"] || len(got) != 5 {
		t.Errorf("parsed %v", got)
	}
	if parseCPUIDFlags("no such section") != nil {
		t.Error("want nil without the section")
	}
}

func TestRequestedCores(t *testing.T) {
	for _, tc := range []struct {
		cores     int
		fraction  string
		dedicated bool
		want      v1alpha1.Quantity
	}{{1, "20%", false, "200m"}, {2, "50%", false, "1"}, {4, "100%", false, "4"}, {3, "10%", true, "3"}, {1, "", false, "1"}} {
		vm := &v1alpha1.VirtualMachine{}
		vm.Spec.CPU = v1alpha1.VirtualMachineCPU{Cores: tc.cores, CoreFraction: tc.fraction, DedicatedCores: tc.dedicated}
		if got := requestedCores(vm); got != tc.want {
			t.Errorf("%d cores at %q (dedicated %v): %q, want %q", tc.cores, tc.fraction, tc.dedicated, got, tc.want)
		}
	}
}
