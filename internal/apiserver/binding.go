package apiserver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/registry"
)

// SubBinding is the VM subresource through which the scheduler binds a VM to a node.
const SubBinding = "binding"

// serveBinding binds a VM to a node (see v1alpha1.VirtualMachineBinding). The preconditions
// are checked against the stored VM inside the same compare-and-swap loop as the write, so a
// binding never needs the VM's resourceVersion and meets a 409 only when a precondition
// fails: writes of other status fields in between do not matter.
func (s *Server) serveBinding(w http.ResponseWriter, r *http.Request, t target) {
	if !s.allowOnly(w, r, http.MethodPost) {
		return
	}
	data, err := readBody(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var b v1alpha1.VirtualMachineBinding
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		s.writeError(w, r, errs.New(errs.ErrBadRequest, "malformed VirtualMachineBinding: %s", jsonErrorText(data, err)))
		return
	}
	var fe errs.FieldErrors
	if b.Name != "" && b.Name != t.name {
		fe.Invalid("metadata.name", b.Name, fmt.Sprintf("must be the VM's name %q (or empty)", t.name))
	}
	if b.NodeName == "" {
		fe.Required("nodeName", "the node to bind the VM to")
	}
	if len(fe) > 0 {
		s.writeError(w, r, errs.NewInvalid("VirtualMachineBinding", t.name, fe))
		return
	}
	nodes, _ := registry.ByResource("nodes")
	if _, err := s.store.Get(r.Context(), key(nodes.Info, "", b.NodeName)); err != nil {
		s.writeError(w, r, s.notFound(err, target{st: nodes, name: b.NodeName}))
		return
	}
	for attempt := 0; ; attempt++ {
		kv, err := s.store.Get(r.Context(), key(t.st.Info, t.namespace, t.name))
		if err != nil {
			s.writeError(w, r, s.notFound(err, t))
			return
		}
		obj, err := DecodeObject(withRV(kv.Value, kv.ModRevision, kv.CreateRevision), t.st)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		vm := obj.(*v1alpha1.VirtualMachine)
		refuse := func(format string, a ...any) {
			s.writeError(w, r, errs.New(errs.ErrConflict, "cannot bind virtualmachine %q to node %q: "+format, append([]any{t.name, b.NodeName}, a...)...))
		}
		switch {
		case b.UID != "" && vm.UID != b.UID:
			refuse("the VM was replaced (uid %s, the binding is for %s)", vm.UID, b.UID)
			return
		case vm.DeletionTimestamp != nil:
			refuse("it is being deleted")
			return
		case vm.Status.NodeName == b.NodeName:
			writeRaw(w, http.StatusOK, withRV(kv.Value, kv.ModRevision, kv.CreateRevision))
			return
		case vm.Status.NodeName != "":
			refuse("it is bound to node %q", vm.Status.NodeName)
			return
		case !reflect.DeepEqual(vm.Status.PowerRequest, b.PowerRequest):
			refuse("its power request changed since the decision (now %s)", powerRequestText(vm.Status.PowerRequest))
			return
		}
		vm.Status.NodeName = b.NodeName
		msg := b.Message
		if msg == "" {
			msg = "bound to node " + b.NodeName
		}
		v1alpha1.SetCondition(&vm.Status.Conditions, v1alpha1.Condition{Type: v1alpha1.VMConditionScheduled,
			Status: v1alpha1.ConditionTrue, Reason: "Scheduled", Message: msg, LastTransitionTime: timePtr(v1alpha1.NewTime(s.now()))})
		out, rev, code, err := s.Update(r.Context(), t, vm, true)
		if err != nil {
			if errors.Is(err, errs.ErrConflict) && retryLostRace(r.Context(), attempt) {
				continue // another write in between: check again on what is stored now
			}
			s.writeError(w, r, err)
			return
		}
		writeRaw(w, code, withRV(out, rev.mod, rev.created))
		return
	}
}

func powerRequestText(pr *v1alpha1.VMPowerRequest) string {
	if pr == nil {
		return "none"
	}
	b, _ := json.Marshal(pr)
	return string(b)
}

func timePtr(t v1alpha1.Time) *v1alpha1.Time { return &t }
