package runtime_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/apiserver"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// TestOwnedPatchDropsRemovedFields: the patch, applied by the API server's merge-patch code,
// gives exactly the new owned fields. A forced stop's force:true must not survive a later
// graceful request (it did when the patch carried the new powerRequest as a whole object).
func TestOwnedPatchDropsRemovedFields(t *testing.T) {
	before := v1alpha1.VirtualMachineStatus{
		Phase:        v1alpha1.VMPhaseStopped,
		PowerRequest: &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateStopped, Force: true, RestartID: "r1", Operation: "stop-force"},
		NodeName:     "n1",
	}
	steps := []v1alpha1.VirtualMachineStatus{
		{Phase: v1alpha1.VMPhaseStopped, NodeName: "n1",
			PowerRequest: &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning, RestartID: "r2", Operation: "start"}},
		{Phase: v1alpha1.VMPhaseStopped, NodeName: "n1",
			PowerRequest: &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateStopped, RestartID: "r2"}},
		{Phase: v1alpha1.VMPhaseStopped, NodeName: "n1"},
	}
	cur := before
	for i, next := range steps {
		b, _ := json.Marshal(cur)
		a, _ := json.Marshal(next)
		patch, err := runtime.OwnedPatch(b, a, []string{"powerRequest"})
		if err != nil {
			t.Fatal(err)
		}
		var target any
		_ = json.Unmarshal(b, &target)
		var p any
		pb, _ := json.Marshal(patch)
		_ = json.Unmarshal(pb, &p)
		merged, _ := json.Marshal(apiserver.MergePatch(target, p))
		var got v1alpha1.VirtualMachineStatus
		if err := json.Unmarshal(merged, &got); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, next) {
			t.Fatalf("step %d: patch %s gave %+v (powerRequest %+v), want %+v", i, pb, got, got.PowerRequest, next.PowerRequest)
		}
		cur = got
	}
	// Fields another writer owns are never in the patch.
	b, _ := json.Marshal(before)
	after := before
	after.NodeName = "n2"
	a, _ := json.Marshal(after)
	if p, err := runtime.OwnedPatch(b, a, []string{"powerRequest"}); err != nil || p != nil {
		t.Errorf("patch of a field not owned: %v, %v", p, err)
	}
}
