package placement

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// sizingClass is the operator's-guide class of the class issue (four policies).
const sizingClass = `{"metadata":{"name":"discovery"},"spec":{"cpu":{"type":"Discovery"},"sizingPolicies":[
 {"cores":{"min":1,"max":4},"memory":{"min":"1Gi","max":"8Gi","step":"512Mi"},"dedicatedCores":[false],"coreFractions":[5,10,20,50,100]},
 {"cores":{"min":5,"max":8},"memory":{"min":"5Gi","max":"16Gi","step":"1Gi"},"dedicatedCores":[false],"coreFractions":[20,50,100]},
 {"cores":{"min":9,"max":16,"step":2},"memory":{"min":"9Gi","max":"32Gi","step":"1Gi"},"dedicatedCores":[true,false],"coreFractions":[50,100],"defaultCoreFraction":"50%"},
 {"cores":{"min":17,"max":1024},"memory":{"perCore":{"min":"1Gi","max":"2Gi"}},"dedicatedCores":[true],"coreFractions":[100]}]}}`

func loadSizingClass(t testing.TB) *v1alpha1.VirtualMachineClass {
	var c v1alpha1.VirtualMachineClass
	if err := json.Unmarshal([]byte(sizingClass), &c); err != nil {
		t.Fatal(err)
	}
	return &c
}

func sizingVM(cores int, fraction, mem string, dedicated bool) *v1alpha1.VirtualMachine {
	vm := &v1alpha1.VirtualMachine{}
	vm.Spec.CPU = v1alpha1.VirtualMachineCPU{Cores: cores, CoreFraction: fraction, DedicatedCores: dedicated}
	vm.Spec.Memory.Size = v1alpha1.Quantity(mem)
	return vm
}

func TestCheckSizing(t *testing.T) {
	c := loadSizingClass(t)
	cases := []struct {
		name string
		vm   *v1alpha1.VirtualMachine
		want []string // substrings of the causes; none: admitted
		n    int      // number of causes
	}{
		{"fits first", sizingVM(2, "20%", "1536Mi", false), nil, 0},
		{"fits per core", sizingVM(20, "100%", "30Gi", true), nil, 0},
		{"memory step", sizingVM(2, "20%", "1280Mi", false), []string{"spec.memory.size: Invalid value: \"1280Mi\": the sizing policy for 1-4 cores of class \"discovery\" allows memory from 1Gi in steps of 512Mi"}, 1},
		{"memory min", sizingVM(6, "50%", "4Gi", false), []string{"needs at least 5Gi of memory"}, 1},
		{"memory max", sizingVM(4, "50%", "9Gi", false), []string{"allows at most 8Gi of memory"}, 1},
		{"per core min", sizingVM(20, "100%", "10Gi", true), []string{"needs at least 1Gi of memory per core (20 cores: at least 20Gi)"}, 1},
		{"per core max", sizingVM(20, "100%", "60Gi", true), []string{"allows at most 2Gi of memory per core (20 cores: at most 40Gi)"}, 1},
		{"fraction", sizingVM(6, "10%", "6Gi", false), []string{"spec.cpu.coreFraction", "allows the core fractions 20%, 50%, 100%"}, 1},
		{"dedicated forbidden", sizingVM(2, "100%", "2Gi", true), []string{"spec.cpu.dedicatedCores", "does not allow dedicated cores"}, 1},
		{"dedicated required", sizingVM(20, "100%", "30Gi", false), []string{"requires dedicated cores"}, 1},
		{"core step", sizingVM(10, "50%", "10Gi", false), []string{"spec.cpu.cores", "allows cores from 9 in steps of 2"}, 1},
		{"all at once", sizingVM(6, "5%", "4Gi", true), []string{"spec.memory.size", "spec.cpu.coreFraction", "spec.cpu.dedicatedCores"}, 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fe := CheckSizing(tc.vm, c)
			if len(fe) != tc.n {
				t.Fatalf("causes %v, want %d", fe, tc.n)
			}
			var parts []string
			for _, f := range fe {
				parts = append(parts, f.Error())
			}
			all := strings.Join(parts, "; ")
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("causes %q lack %q", all, w)
				}
			}
		})
	}
	// Room to grow: the cores and memory it may grow to must fit the class too.
	grow := func(cores, maxCores int, mem, maxMem string) *v1alpha1.VirtualMachine {
		vm := sizingVM(cores, "50%", mem, false)
		vm.Spec.CPU.MaxCores, vm.Spec.Memory.MaxSize = maxCores, v1alpha1.Quantity(maxMem)
		return vm
	}
	if fe := CheckSizing(grow(2, 4, "2Gi", "8Gi"), c); len(fe) != 0 {
		t.Fatalf("growth within the policy: %v", fe)
	}
	if fe := CheckSizing(grow(2, 4, "2Gi", "9Gi"), c); len(fe) != 1 || !strings.Contains(fe[0].Error(), "spec.memory.maxSize") || !strings.Contains(fe[0].Error(), "at most 8Gi") {
		t.Fatalf("maxSize above the policy: %v", fe)
	}
	// No policy covers the cores (a class with gaps).
	c.Spec.SizingPolicies = c.Spec.SizingPolicies[:2]
	fe := CheckSizing(sizingVM(12, "50%", "12Gi", false), c)
	if len(fe) != 1 || !strings.Contains(fe[0].Error(), "no sizing policy of class \"discovery\" covers 12 cores (allowed core ranges: 1-4, 5-8)") {
		t.Fatalf("gap: %v", fe)
	}
	if fe := CheckSizing(grow(2, 12, "2Gi", ""), c); len(fe) != 1 || !strings.Contains(fe[0].Error(), "spec.cpu.maxCores") || !strings.Contains(fe[0].Error(), "never grow") {
		t.Fatalf("maxCores beyond the policies: %v", fe)
	}
	// A class without policies allows anything.
	if fe := CheckSizing(sizingVM(200, "1%", "1Ti", true), &v1alpha1.VirtualMachineClass{}); len(fe) != 0 {
		t.Fatalf("no policies: %v", fe)
	}
}

func TestDefaultFromClass(t *testing.T) {
	c := loadSizingClass(t)
	vm := sizingVM(9, "", "9Gi", false)
	DefaultFromClass(vm, c)
	if vm.Spec.CPU.CoreFraction != "50%" || vm.Spec.CPU.DedicatedCores {
		t.Fatalf("9 cores: %+v, want 50%% and shared cores", vm.Spec.CPU)
	}
	vm = sizingVM(2, "", "1Gi", false)
	DefaultFromClass(vm, c)
	if vm.Spec.CPU.CoreFraction != "100%" {
		t.Fatalf("policy without default: %q, want 100%%", vm.Spec.CPU.CoreFraction)
	}
	vm = sizingVM(32, "", "32Gi", false)
	DefaultFromClass(vm, c)
	if !vm.Spec.CPU.DedicatedCores {
		t.Fatal("a policy allowing only dedicated cores must give them")
	}
	vm = sizingVM(2, "5%", "1Gi", false)
	DefaultFromClass(vm, c)
	if vm.Spec.CPU.CoreFraction != "5%" {
		t.Fatalf("explicit fraction overwritten: %q", vm.Spec.CPU.CoreFraction)
	}
}

func TestQuotaExceeded(t *testing.T) {
	cores, vms := int64(4), int64(2)
	q := &v1alpha1.ProjectQuota{Cores: &cores, Memory: "4Gi", VirtualMachines: &vms}
	used := v1alpha1.ProjectUsage{Cores: 3, Memory: "3Gi", VirtualMachines: 2}
	msgs := QuotaExceeded("p", q, used, v1alpha1.ProjectUsage{Cores: 2, Memory: "512Mi", VirtualMachines: 1})
	if len(msgs) != 2 {
		t.Fatalf("%v", msgs)
	}
	if msgs[0] != `exceeded quota cores of project "p": requested 2, used 3, limited to 4` || !strings.Contains(msgs[1], "virtualMachines") {
		t.Fatalf("%v", msgs)
	}
	if msgs := QuotaExceeded("p", q, used, v1alpha1.ProjectUsage{Cores: 1}); len(msgs) != 0 {
		t.Fatalf("within quota: %v", msgs)
	}
	if got := OverQuota(q, v1alpha1.ProjectUsage{Cores: 5, Memory: "5Gi"}); strings.Join(got, ",") != "cores,memory" {
		t.Fatalf("OverQuota %v", got)
	}
}

// FuzzCheckSizing: sizing checks never panic on any VM size, and an admitted VM's cores lie
// in a policy's range.
func FuzzCheckSizing(f *testing.F) {
	f.Add(2, "20%", "1536Mi", false)
	f.Add(20, "100%", "30Gi", true)
	f.Add(0, "", "", false)
	f.Add(-5, "abc", "1e3", true)
	f.Fuzz(func(t *testing.T, cores int, fraction, mem string, dedicated bool) {
		c := loadSizingClass(t)
		vm := sizingVM(cores, fraction, mem, dedicated)
		DefaultFromClass(vm, c)
		fe := CheckSizing(vm, c)
		if len(fe) == 0 && FindSizingPolicy(c, cores) == nil {
			t.Fatalf("admitted %d cores outside every policy", cores)
		}
	})
}

func TestMemoryFloor(t *testing.T) {
	c := &v1alpha1.VirtualMachineClass{}
	c.Spec.SizingPolicies = []v1alpha1.SizingPolicy{
		{Cores: &v1alpha1.SizingPolicyCores{Min: 1, Max: 4}, Memory: &v1alpha1.SizingPolicyMemory{Min: "512Mi", PerCore: &v1alpha1.SizingPolicyMemoryPerCore{Min: "256Mi"}}},
		{Cores: &v1alpha1.SizingPolicyCores{Min: 5, Max: 8}},
	}
	for _, tc := range []struct {
		cores int
		want  int64
	}{{1, 512 << 20}, {3, 768 << 20}, {6, 0}, {9, 0}} {
		if got := MemoryFloor(c, tc.cores); got != tc.want {
			t.Errorf("%d cores: floor %d, want %d", tc.cores, got, tc.want)
		}
	}
}
