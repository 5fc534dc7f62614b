package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// runOwnerFileName, in a VM's run directory, names the VM the directory belongs to. The
// agent caches only the VMs bound to its node, so a directory whose VM is not in the cache
// may belong to a VM that was stopped and released, or placed on another node: the owner
// file lets the agent ask the API about that one VM before it removes anything.
const runOwnerFileName = "owner.json"

type runOwner struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
}

func writeRunOwner(runDir string, vm *v1alpha1.VirtualMachine) error {
	return writeJSONAtomic(runDir, runOwnerFileName, runOwner{Namespace: vm.Namespace, Name: vm.Name, UID: vm.UID})
}

func readRunOwner(runDir string) (runOwner, bool) {
	var o runOwner
	b, err := os.ReadFile(filepath.Join(runDir, runOwnerFileName))
	if err != nil || json.Unmarshal(b, &o) != nil || o.Name == "" {
		return runOwner{}, false
	}
	return o, true
}

// lookupVM asks the API for the VM of uid, whose run directory is runDir: nil when it is
// gone (deleted, or its name now belongs to another object). An error means the agent
// cannot tell, and must keep everything of it.
func (a *Agent) lookupVM(ctx context.Context, uid, runDir string) (*v1alpha1.VirtualMachine, error) {
	if o, ok := readRunOwner(runDir); ok && o.UID == uid {
		var vm v1alpha1.VirtualMachine
		err := a.c.Get(ctx, "virtualmachines", o.Namespace, o.Name, &vm)
		switch {
		case client.IsNotFound(err):
			return nil, nil
		case err != nil:
			return nil, err
		case vm.UID != uid:
			return nil, nil
		}
		return &vm, nil
	}
	// A directory made before owner files: find the VM by uid in every project.
	l, err := a.c.List(ctx, "virtualmachines", "", client.ListOptions{FieldSelector: "metadata.uid=" + uid})
	if err != nil {
		return nil, fmt.Errorf("looking up the VM of run directory %s: %w", uid, err)
	}
	for _, raw := range l.Items {
		var vm v1alpha1.VirtualMachine
		if json.Unmarshal(raw, &vm) == nil && vm.UID == uid {
			// Name the VM in its directory, so that later sweeps ask for it by name instead
			// of listing every project's VMs again.
			_ = writeRunOwner(runDir, &vm)
			return &vm, nil
		}
	}
	return nil, nil
}

// vmOfRunningInstance returns the API's VM of key when a QEMU of that name runs here but the
// VM left this node's cache (released or bound elsewhere while it runs): the decision then
// works on the stored object, as it does for a VM bound here.
func (a *Agent) vmOfRunningInstance(ctx context.Context, key runtime.Key) (*v1alpha1.VirtualMachine, *instance, error) {
	var in *instance
	a.mu.Lock()
	for _, i := range a.insts {
		if i.key == key && !i.isExited() {
			in = i
			break
		}
	}
	a.mu.Unlock()
	if in == nil {
		return nil, nil, nil
	}
	vm, err := a.lookupVM(ctx, in.uid, in.runDir)
	if err != nil || vm == nil {
		return nil, nil, err
	}
	return vm, in, nil
}
