package vmclass

import (
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
)

// TestRunsAgainstFake: the controller creates the generic class and makes it Ready on a Ready
// node, gives a VM of the class its ClassReady condition and writes the project's usage.
func TestRunsAgainstFake(t *testing.T) {
	now := time.Now()
	n := testNode("n1", nil, []string{"aes"}, now)
	p := &v1alpha1.Project{ObjectMeta: v1alpha1.ObjectMeta{Name: "p1"}}
	vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: "web", Namespace: "p1"}}
	vm.Spec.CPU.Cores = 2
	vm.Spec.Memory.Size = "1Gi"
	vm.Spec.VirtualMachineClassName = GenericClass
	fc := fake.New()
	if err := fc.Add(&n, p, vm); err != nil {
		t.Fatal(err)
	}
	fake.Start(t, fc, nil, func(f *runtime.Factory) (*Controller, error) {
		return New(Config{Deps: runtime.Deps{Client: fc, Informers: f}, Resync: 20 * time.Millisecond})
	})
	var cl v1alpha1.VirtualMachineClass
	fc.WaitFor(t, 10*time.Second, "virtualmachineclasses", "", GenericClass, &cl, func() bool {
		return cl.Status.Phase == v1alpha1.VMClassPhaseReady
	})
	var got v1alpha1.VirtualMachine
	fc.WaitFor(t, 10*time.Second, "virtualmachines", "p1", "web", &got, func() bool {
		c := v1alpha1.FindCondition(got.Status.Conditions, v1alpha1.VMConditionClassReady)
		return c != nil && c.Status == v1alpha1.ConditionTrue
	})
	var gotP v1alpha1.Project
	fc.WaitFor(t, 10*time.Second, "projects", "", "p1", &gotP, func() bool {
		return gotP.Status.Used != nil && gotP.Status.Used.VirtualMachines == 1 && gotP.Status.Used.Cores == 2
	})
}
