package runtime_test

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/objpatch"
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
		merged, _ := json.Marshal(objpatch.Merge(target, p))
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

func TestConditionsPatch(t *testing.T) {
	t0 := v1alpha1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	now := v1alpha1.NewTime(time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC))
	cur := []v1alpha1.Condition{
		{Type: "A", Status: "True", Reason: "Ok", LastTransitionTime: &t0},
		{Type: "B", Status: "False", Reason: "No", LastTransitionTime: &t0},
		{Type: "Other", Status: "True", LastTransitionTime: &t0},
	}
	owned := []string{"A", "B", "C"}
	enc := func(v any) string { b, _ := json.Marshal(v); return string(b) }

	if p := runtime.ConditionsPatch(cur, []v1alpha1.Condition{{Type: "A", Status: "True", Reason: "Ok"}, {Type: "B", Status: "False", Reason: "No"}}, owned, now); p != nil {
		t.Errorf("no change gave %s", enc(p))
	}
	// A's message changes (time kept), B flips (time now), C is new, nothing about Other.
	p := runtime.ConditionsPatch(cur, []v1alpha1.Condition{{Type: "A", Status: "True", Reason: "Ok", Message: "m"},
		{Type: "B", Status: "True", Reason: "Yes"}, {Type: "C", Status: "Unknown"}}, owned, now)
	want := `[{"type":"A","status":"True","reason":"Ok","message":"m","lastTransitionTime":"2026-01-01T00:00:00.000000Z"},` +
		`{"type":"B","status":"True","reason":"Yes","lastTransitionTime":"2026-01-02T00:00:00.000000Z"},` +
		`{"type":"C","status":"Unknown","lastTransitionTime":"2026-01-02T00:00:00.000000Z"}]`
	if got := enc(p); got != want {
		t.Errorf("patch\n got %s\nwant %s", got, want)
	}
	// Owned types no longer wanted are deleted; unowned ones never are.
	p = runtime.ConditionsPatch(cur, []v1alpha1.Condition{{Type: "A", Status: "True", Reason: "Ok"}}, owned, now)
	if got := enc(p); got != `[{"$patch":"delete","type":"B"}]` {
		t.Errorf("delete patch %s", got)
	}

	// Applied by the server, the patch leaves Other and the order alone.
	var target, patch any
	_ = json.Unmarshal([]byte(`{"conditions":`+enc(cur)+`}`), &target)
	_ = json.Unmarshal([]byte(`{"conditions":`+enc(p)+`}`), &patch)
	got, err := objpatch.Strategic(target, patch)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, c := range got.(map[string]any)["conditions"].([]any) {
		types = append(types, c.(map[string]any)["type"].(string))
	}
	if !reflect.DeepEqual(types, []string{"A", "Other"}) {
		t.Errorf("after the server applied it: %v", types)
	}
}
