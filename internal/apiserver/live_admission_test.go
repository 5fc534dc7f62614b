package apiserver

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/registry"
)

// TestLiveGrowthAdmission: raising the cores or memory of an existing VM (a live change when
// it runs) goes through the class's sizing policy and the project's quota as a new VM does,
// and the refusal names the field or the quota and its limit; maxCores beyond the class's
// policies is refused too.
func TestLiveGrowthAdmission(t *testing.T) {
	four := int64(4)
	ctx, s, st := quotaTestServer(t, v1alpha1.ProjectQuota{Cores: &four, Memory: "2Gi"})
	var class v1alpha1.VirtualMachineClass
	if err := json.Unmarshal([]byte(`{"metadata":{"name":"small"},"spec":{"cpu":{"type":"Host"},"sizingPolicies":[
		{"cores":{"min":1,"max":8},"memory":{"min":"128Mi","max":"4Gi"}}]}}`), &class); err != nil {
		t.Fatal(err)
	}
	setTypeMeta(&class, "VirtualMachineClass")
	cst, _ := registry.ByKind("VirtualMachineClass")
	if _, _, err := s.Create(ctx, cst, "", &class); err != nil {
		t.Fatal(err)
	}
	vst, _ := registry.ByKind("VirtualMachine")
	vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: "vm1"}}
	setTypeMeta(vm, "VirtualMachine")
	vm.Spec.VirtualMachineClassName = "small"
	vm.Spec.RunPolicy = v1alpha1.RunPolicyAlwaysOff
	vm.Spec.CPU = v1alpha1.VirtualMachineCPU{Cores: 1, MaxCores: 8}
	vm.Spec.Memory = v1alpha1.VirtualMachineMemory{Size: "256Mi", MaxSize: "4Gi"}
	if _, _, err := s.Create(ctx, vst, "team", vm); err != nil {
		t.Fatal(err)
	}
	update := func(mut func(*v1alpha1.VirtualMachine)) error {
		var cur v1alpha1.VirtualMachine
		kv, err := st.Get(ctx, "/virtualmachines/team/vm1")
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(kv.Value, &cur); err != nil {
			t.Fatal(err)
		}
		mut(&cur)
		_, _, _, err = s.Update(ctx, target{st: vst, namespace: "team", name: "vm1"}, &cur, false)
		return err
	}
	// Within the quota and the class: admitted.
	if err := update(func(v *v1alpha1.VirtualMachine) { v.Spec.CPU.Cores, v.Spec.Memory.Size = 3, "1Gi" }); err != nil {
		t.Fatalf("growth within quota: %v", err)
	}
	for _, c := range []struct {
		name string
		mut  func(*v1alpha1.VirtualMachine)
		want []string
	}{
		{"cores over the quota", func(v *v1alpha1.VirtualMachine) { v.Spec.CPU.Cores = 5 }, []string{"exceeded quota cores", "limited to 4"}},
		{"memory over the quota", func(v *v1alpha1.VirtualMachine) { v.Spec.Memory.Size = "3Gi" }, []string{"exceeded quota memory", "limited to 2Gi"}},
		{"cores over maxCores", func(v *v1alpha1.VirtualMachine) { v.Spec.CPU.Cores = 9 }, []string{"spec.cpu.maxCores", "at least spec.cpu.cores (9)"}},
		{"maxCores beyond the class", func(v *v1alpha1.VirtualMachine) { v.Spec.CPU.MaxCores = 12 }, []string{"spec.cpu.maxCores", "no sizing policy of class \"small\" covers 12 cores"}},
		{"maxSize beyond the class", func(v *v1alpha1.VirtualMachine) { v.Spec.Memory.MaxSize = "8Gi" }, []string{"spec.memory.maxSize", "allows at most 4Gi"}},
	} {
		err := update(c.mut)
		if err == nil {
			t.Errorf("%s: admitted", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v lacks %q", c.name, err, w)
			}
		}
	}
}
