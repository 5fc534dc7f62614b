package v1alpha1

import "time"

// NodeLease is a node agent's liveness lease (cluster-scoped, named after its Node), in the
// shape of Kubernetes' coordination.k8s.io Lease. The agent renews it about every second;
// a lease not renewed for leaseDurationSeconds has expired: the node lifecycle controller
// then marks the Node NotReady (reason NodeLeaseExpired), and the agent itself, which could
// not renew it for its shorter fence timeout, has already killed the QEMUs of its HA VMs
// (docs/ha.md). Only the node's own credential (and admins) may write it.
//
// It is a kind of its own rather than a field of the Node so that the renewal every second
// is a small write that does not wake every watcher of Nodes (the scheduler, the network
// controller, clients) nor race the heartbeat's status patches.
type NodeLease struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`
	Spec       NodeLeaseSpec `json:"spec"`
}

// NodeLeaseSpec is the lease's state: who holds it and until when.
type NodeLeaseSpec struct {
	// HolderIdentity is who holds the lease: the node's name while its agent does. Anything
	// else (for instance a controller that took the lease over before recovering the node's
	// VMs elsewhere, or empty: released) means the agent lost it and must not run its HA VMs
	// until it has acquired it again.
	HolderIdentity string `json:"holderIdentity,omitempty"`
	// LeaseDurationSeconds is how long the lease lasts after renewTime (the agent's
	// --lease-duration).
	LeaseDurationSeconds int32 `json:"leaseDurationSeconds,omitempty"`
	// AcquireTime is when the current holder acquired the lease.
	AcquireTime *Time `json:"acquireTime,omitempty"`
	// RenewTime is when the holder last renewed it (the holder's clock, taken before the
	// write was sent).
	RenewTime *Time `json:"renewTime,omitempty"`
	// LeaseTransitions counts the acquisitions: each time an agent acquires the lease anew
	// (at its start, or after it lost the lease) it increments it.
	LeaseTransitions int32 `json:"leaseTransitions,omitempty"`
}

// Duration is the lease's duration.
func (s *NodeLeaseSpec) Duration() time.Duration {
	return time.Duration(s.LeaseDurationSeconds) * time.Second
}

// ExpiredAt reports whether the lease, judged by its renewTime, has expired at now. A lease
// never renewed has expired. Judging by renewTime compares clocks of two hosts; the node
// lifecycle controller judges by when it saw the lease change instead (no clock skew), the
// agent by its own clock.
func (s *NodeLeaseSpec) ExpiredAt(now time.Time) bool {
	return s.RenewTime == nil || now.Sub(s.RenewTime.Time) > s.Duration()
}

// NodeLease defaults and reasons.
const (
	// DefaultNodeLeaseDuration is the default duration of a node lease.
	DefaultNodeLeaseDuration = 10 * time.Second
	// DefaultNodeFenceTimeout is how long by default an agent that cannot renew its lease
	// keeps its HA VMs running before it kills their QEMUs.
	DefaultNodeFenceTimeout = 6 * time.Second
	// NodeFenceMargin is the least time between the fence timeout and the lease's end: the
	// time the agent has to kill its QEMUs (and to be late doing it) before anyone may
	// consider the lease expired.
	NodeFenceMargin = 2 * time.Second
	// ReasonNodeLeaseExpired is the Ready condition's reason on a Node whose lease expired.
	ReasonNodeLeaseExpired = "NodeLeaseExpired"
	// ExitFenced is a VM's lastExit reason when its node's agent killed its QEMU because it
	// could not renew, or had lost, its node lease (self-fencing).
	ExitFenced = "Fenced"
	// AnnotationHA set to "enabled" on a VM whose runPolicy keeps it running makes it a
	// high-availability VM: its QEMU is fenced when its node loses its lease (and, later, it is
	// recovered on another node). HA is opt-in: fencing kills the guest of a node that loses
	// the control plane for longer than the fence timeout, which a VM not asked to be HA must
	// live through (a control-plane restart or outage never stops it).
	AnnotationHA = "virtualization.rakhsh.io/high-availability"
)

// IsHA reports whether vm is a high-availability VM: annotated AnnotationHA: enabled, with
// runPolicy AlwaysOn or AlwaysOnUnlessStoppedManually (the default).
func IsHA(vm *VirtualMachine) bool {
	if vm.Annotations[AnnotationHA] != "enabled" {
		return false
	}
	switch vm.Spec.RunPolicy {
	case RunPolicyAlwaysOn, RunPolicyAlwaysOnUnlessStoppedManually, "":
		return true
	}
	return false
}

// CheckNodeLeaseTimes checks that a fence timeout fits in a lease duration: positive, and
// shorter than the duration by at least NodeFenceMargin. It returns why not, or "".
func CheckNodeLeaseTimes(duration, fence time.Duration) string {
	switch {
	case duration < time.Second || duration%time.Second != 0:
		return "the lease duration must be whole seconds, at least 1s (is " + duration.String() + ")"
	case fence <= 0:
		return "the fence timeout must be positive (is " + fence.String() + ")"
	case fence > duration-NodeFenceMargin:
		return "the fence timeout (" + fence.String() + ") must be shorter than the lease duration (" + duration.String() +
			") by at least " + NodeFenceMargin.String() + ": the agent must have killed its HA VMs' QEMUs before anyone may find its lease expired"
	}
	return ""
}
