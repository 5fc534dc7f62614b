package apiserver

import (
	"fmt"
	"net/http"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/nodestream"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// serveDiskData is GET and HEAD of virtualdisks/{name}/data: the file of a disk that moves
// from one node's Local storage to another's, served by the agent of the node that holds it
// (status.moveSourceNodeName) to the agent of the node that copies it (status.nodeName),
// with ranges and the file's sha256 as ETag. This server reads no node's files: it proxies
// the request to the source node's stream service, or to the agent in this process.
//
// Only the admin and the copying node may read it (authorize and the check below); a disk
// that is not moving between nodes has no data to serve.
func (s *Server) serveDiskData(w http.ResponseWriter, r *http.Request, t target) {
	var d struct {
		Metadata v1alpha1.ObjectMeta        `json:"metadata"`
		Status   v1alpha1.VirtualDiskStatus `json:"status"`
	}
	if !s.readDataObject(w, r, t, &d) {
		return
	}
	if err := storage.CheckUID(d.Metadata.UID); err != nil {
		s.writeError(w, r, err)
		return
	}
	if id := identityOf(r.Context()); id.Node != "" && id.Node != d.Status.NodeName {
		s.writeError(w, r, errs.New(errs.ErrForbidden, "%s may not read the data of VirtualDisk %q in project %s: node %q copies it, and only that node may",
			id.describe(), t.name, t.namespace, d.Status.NodeName))
		return
	}
	source := d.Status.MoveSourceNodeName
	if source == "" {
		s.writeError(w, r, errs.New(errs.ErrConflict, "VirtualDisk %q is not moving between nodes: its data is served only to the node that copies it during a move (docs/storage.md)", t.name))
		return
	}
	streams, err := s.nodeStreams(r.Context(), source, fmt.Sprintf("the file of VirtualDisk %q", t.name), "data", t.namespace, t.name)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	streams.ServeDiskData(w, r, nodestream.DiskRef{Namespace: t.namespace, Name: t.name, UID: d.Metadata.UID})
}
