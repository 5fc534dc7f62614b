package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// errNoChange, returned by a mutate function, skips the write.
var errNoChange = errors.New("no change")

// errGone says the VM object went away or was replaced by another with the same name.
var errGone = errors.New("virtual machine is gone")

// agentStatusFields are the VM status fields the agent writes.
// networks: only the guest agent's InterfaceName and GuestIPAddresses of its entries.
var agentStatusFields = []string{"phase", "nodeName", "stateNodeName", "conditions", "stats", "versions", "resources", "lastExit", "observedRestartID", "guestOSInfo", "networks", "blockDeviceRefs", "blockDevicesCount"}

// patchVMStatus reads the VM, lets mutate change it, and writes the changed fields among
// owned (and the changed conditions) as a JSON patch whose preconditions are the values it
// read of exactly those (runtime.StatusPatch): writes of other fields by other components
// never conflict with it. It retries when another writer changed one of them. uid, when set,
// must match (errGone otherwise). It returns the VM as written (or as read when nothing
// changed).
func patchVMStatus(ctx context.Context, c *client.Client, ns, name, uid string, owned []string, mutate func(vm *v1alpha1.VirtualMachine) error) (*v1alpha1.VirtualMachine, error) {
	var lastErr error
	for attempt := 0; attempt < 8; attempt++ {
		var vm v1alpha1.VirtualMachine
		if err := c.Get(ctx, "virtualmachines", ns, name, &vm); err != nil {
			if client.IsNotFound(err) {
				return nil, errGone
			}
			return nil, err
		}
		if uid != "" && vm.UID != uid {
			return nil, errGone
		}
		// A copy as JSON: mutate may change what the status points to.
		before, err := json.Marshal(vm.Status)
		if err != nil {
			return nil, err
		}
		if err := mutate(&vm); err != nil {
			if errors.Is(err, errNoChange) {
				return &vm, nil
			}
			return nil, err
		}
		body, err := runtime.StatusPatch(vm.UID, json.RawMessage(before), vm.Status, owned, nil)
		if err != nil {
			return nil, err
		}
		if body == nil {
			return &vm, nil
		}
		var out v1alpha1.VirtualMachine
		err = c.JSONPatchStatus(ctx, "virtualmachines", ns, name, body, &out)
		if err == nil {
			return &out, nil
		}
		if client.IsNotFound(err) {
			return nil, errGone
		}
		if !client.IsConflict(err) {
			return nil, err
		}
		lastErr = err
	}
	return nil, fmt.Errorf("updating status of %s/%s: %w", ns, name, lastErr)
}

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
