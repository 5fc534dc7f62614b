package agent

import (
	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// agentStatusFields are the VM status fields the agent writes.
// networks: only the guest agent's InterfaceName and GuestIPAddresses of its entries.
var agentStatusFields = []string{"phase", "nodeName", "stateNodeName", "conditions", "stats", "versions", "resources", "lastExit", "observedRestartID", "guestOSInfo", "networks", "blockDeviceRefs", "blockDevicesCount"}

// lastTransition returns when the VM last entered phase p, or the zero time.
func lastTransition(vm *v1alpha1.VirtualMachine, p v1alpha1.VirtualMachinePhase) v1alpha1.Time {
	if vm.Status.Stats == nil {
		return v1alpha1.Time{}
	}
	tr := vm.Status.Stats.PhasesTransitions
	for i := len(tr) - 1; i >= 0; i-- {
		if tr[i].Phase == p {
			return tr[i].Timestamp
		}
	}
	return v1alpha1.Time{}
}
