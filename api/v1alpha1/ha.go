package v1alpha1

import (
	"strconv"
	"time"
)

// High availability: recovery of the HA VMs of a failed node (docs/ha.md). The HA controller
// takes a dead node's lease over and releases its HA VMs (status.nodeName cleared, phase
// Stopped, lastExit NodeFailed), so the scheduler places them on another node and the VM
// controller starts them again; it records each recovery in status.recovered.

// VMRecovery is one recovery of a VM from a failed node (status.recovered).
type VMRecovery struct {
	// FromNode is the node the VM was released from.
	FromNode string `json:"fromNode"`
	// Time is when the HA controller released it.
	Time *Time `json:"time,omitempty"`
	// Message says why (the node's lease, how long it has been expired).
	Message string `json:"message,omitempty"`
}

// High availability constants.
const (
	// AnnotationHAPriority orders the recovery of a failed node's HA VMs: an integer, higher
	// first (default 0); VMs of one priority go by name.
	AnnotationHAPriority = "virtualization.rakhsh.io/high-availability-priority"
	// ExitNodeFailed is a VM's lastExit reason when the HA controller released it from a node
	// whose lease expired, to start it on another node.
	ExitNodeFailed = "NodeFailed"
	// VMConditionHighAvailability is False (reason ReasonLocalStorageOnFailedNode) on an HA VM
	// that cannot be recovered from its failed node; the HA controller removes it when the
	// node is back.
	VMConditionHighAvailability = "HighAvailability"
	// ReasonLocalStorageOnFailedNode: the VM has a VirtualDisk on the failed node's Local
	// storage, so it can run nowhere else; it runs again when the node comes back.
	ReasonLocalStorageOnFailedNode = "LocalStorageOnFailedNode"
	// MaxRecoveredHistory is how many recoveries status.recovered keeps (the newest).
	MaxRecoveredHistory = 5
	// DefaultHASafetyMargin is how long the HA controller waits, after it found a node's lease
	// expired, before it takes the lease over and recovers the node's HA VMs.
	DefaultHASafetyMargin = 5 * time.Second
	// MaxHASafetyMargin bounds the safety margin.
	MaxHASafetyMargin = 10 * time.Minute
)

// HAPriority is the VM's recovery priority (AnnotationHAPriority), 0 when absent, and an
// error naming the annotation when it is not an integer.
func HAPriority(vm *VirtualMachine) (int, error) {
	s, ok := vm.Annotations[AnnotationHAPriority]
	if !ok || s == "" {
		return 0, nil
	}
	p, err := strconv.Atoi(s)
	if err != nil {
		return 0, &haPriorityError{value: s}
	}
	return p, nil
}

type haPriorityError struct{ value string }

func (e *haPriorityError) Error() string {
	return "annotation " + AnnotationHAPriority + " is " + strconv.Quote(e.value) + ": want an integer (higher is recovered first)"
}

// CheckHASafetyMargin checks the HA controller's safety margin: not negative and at most
// MaxHASafetyMargin. It returns why not, or "".
func CheckHASafetyMargin(margin time.Duration) string {
	switch {
	case margin < 0:
		return "the HA safety margin must not be negative (is " + margin.String() + ")"
	case margin > MaxHASafetyMargin:
		return "the HA safety margin must be at most " + MaxHASafetyMargin.String() + " (is " + margin.String() + ")"
	}
	return ""
}

// HARecoveryFloor is the least time from a node's last lease renewal to the moment the HA
// controller may release its VMs: the lease duration, one check of the lifecycle (1 s) and
// the margin. Operators compare it with their recovery goal.
func HARecoveryFloor(leaseDuration, margin time.Duration) time.Duration {
	return leaseDuration + time.Second + margin
}
