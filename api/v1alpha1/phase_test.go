package v1alpha1

import (
	"testing"
	"time"
)

func TestSetPhaseRecordsChangesOnly(t *testing.T) {
	var vm VirtualMachine
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	vm.SetPhase(VMPhasePending, NewTime(t0))
	vm.SetPhase(VMPhasePending, NewTime(t0.Add(time.Second))) // no change: no entry
	vm.SetPhase(VMPhaseRunning, NewTime(t0.Add(2*time.Second)))
	if vm.Status.Phase != VMPhaseRunning {
		t.Fatalf("phase %q", vm.Status.Phase)
	}
	tr := vm.Status.Stats.PhasesTransitions
	if len(tr) != 2 || tr[0].Phase != VMPhasePending || tr[1].Phase != VMPhaseRunning || !tr[1].Timestamp.Equal(t0.Add(2*time.Second)) {
		t.Fatalf("transitions %+v", tr)
	}
}

func TestSetPhaseKeepsTheLastTransitions(t *testing.T) {
	var vm VirtualMachine
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 2*MaxPhaseTransitions + 1 {
		p := VMPhaseRunning
		if i%2 == 1 {
			p = VMPhaseStopped
		}
		vm.SetPhase(p, NewTime(t0.Add(time.Duration(i)*time.Second)))
	}
	tr := vm.Status.Stats.PhasesTransitions
	if len(tr) != MaxPhaseTransitions {
		t.Fatalf("%d transitions kept, want %d", len(tr), MaxPhaseTransitions)
	}
	if last := tr[len(tr)-1]; last.Phase != VMPhaseRunning || !last.Timestamp.Equal(t0.Add(2*MaxPhaseTransitions*time.Second)) {
		t.Fatalf("last transition %+v", last)
	}
	if first := tr[0]; !first.Timestamp.Equal(t0.Add((MaxPhaseTransitions + 1) * time.Second)) {
		t.Fatalf("oldest kept %+v", first)
	}
}
