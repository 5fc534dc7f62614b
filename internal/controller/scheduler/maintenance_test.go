package scheduler

import (
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TestMaintenanceRefused: a node in maintenance takes no VM, cordoned or not, and the reason
// counted in the Scheduled message names maintenance; the other node still takes it.
func TestMaintenanceRefused(t *testing.T) {
	inMaint := func(n *v1alpha1.Node) { n.Spec.Maintenance = true }
	if why := fits(vmOf(1, "1Gi"), nil, node("a", 2, "4Gi", inMaint), now, time.Minute, ""); why != whyMaintenance {
		t.Fatalf("fits on a node in maintenance = %q, want %q", why, whyMaintenance)
	}
	both := func(n *v1alpha1.Node) { n.Spec.Maintenance, n.Spec.Unschedulable = true, true }
	if why := fits(vmOf(1, "1Gi"), nil, node("a", 2, "4Gi", both), now, time.Minute, ""); why != whyMaintenance {
		t.Fatalf("fits on a cordoned node in maintenance = %q, want %q", why, whyMaintenance)
	}
	// The idle node in maintenance would win on score; the busier one is picked.
	idle := node("a", 8, "16Gi", inMaint)
	busy := node("b", 2, "2Gi")
	busy.usedCPU = 4
	if got, why := pick(vmOf(1, "512Mi"), nil, []*nodeState{idle, busy}, now, time.Minute, ""); got != "b" {
		t.Fatalf("picked %q (%s), want b: a is in maintenance", got, why)
	}
	got, why := pick(vmOf(1, "512Mi"), nil, []*nodeState{idle}, now, time.Minute, "")
	if got != "" || !strings.Contains(why, "1 in maintenance") {
		t.Fatalf("pick with only a node in maintenance = %q, %q; want none, naming maintenance", got, why)
	}
	// A VM whose local disks are on the node in maintenance is told why it waits.
	msg := pinnedWhy(vmOf(1, "512Mi"), nil, []*nodeState{idle}, now, time.Minute, diskPin{node: "a", disks: []string{`VirtualDisk "root"`}})
	if !strings.Contains(msg, "cannot take it (in maintenance)") {
		t.Fatalf("pinned message %q does not name maintenance", msg)
	}
}
