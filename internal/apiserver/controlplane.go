package apiserver

import (
	"encoding/json"
	"net/http"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/store"
)

const controlPlaneResource = "controlplanes"

// serveControlPlane answers get and list of the read-only ControlPlane kind: one object,
// "cluster", computed on each read by Config.ControlPlane. Only admin may read it.
func (s *Server) serveControlPlane(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	a := attributes{Verb: verbGet, Resource: controlPlaneResource, Name: name}
	if name == "" {
		a.Verb = verbList
	}
	if err := authorize(identityOf(r.Context()), a); err != nil {
		s.writeError(w, r, err)
		return
	}
	if !s.allowOnly(w, r, http.MethodGet) {
		return
	}
	if q := r.URL.Query().Get("watch"); q == "true" || q == "1" {
		s.writeError(w, r, errs.New(errs.ErrBadRequest, "controlplanes cannot be watched: the object is computed on each read"))
		return
	}
	if name != "" && name != v1alpha1.ControlPlaneName {
		s.writeError(w, r, errs.New(errs.ErrNotFound, "controlplane %q not found: the one ControlPlane is %q", name, v1alpha1.ControlPlaneName))
		return
	}
	if s.controlPlane == nil {
		s.writeError(w, r, errs.New(errs.ErrUnavailable, "this server does not report its control plane"))
		return
	}
	st, err := s.controlPlane(r.Context())
	if err != nil {
		s.writeError(w, r, errs.New(errs.ErrUnavailable, "control plane: %v", err))
		return
	}
	now := s.now()
	obj := v1alpha1.ControlPlane{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "ControlPlane"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: v1alpha1.ControlPlaneName}, Status: st}
	if len(st.Members) > 0 && st.Members[0].Since != nil {
		obj.CreationTimestamp = st.Members[0].Since
	}
	data, err := json.Marshal(obj)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	info := &v1alpha1.ReadOnlyKinds[0]
	if wantsTable(r) {
		t, err := newTable(info, []store.KV{{Key: "/" + controlPlaneResource + "/" + obj.Name, Value: data}}, map[string]any{}, now)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeRaw(w, 200, t)
		return
	}
	if name != "" {
		writeRaw(w, 200, data)
		return
	}
	writeJSON(w, 200, v1alpha1.List{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "ControlPlaneList"},
		Items: []json.RawMessage{data}})
}
