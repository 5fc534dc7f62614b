package disk

import (
	"context"
	"fmt"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// ReasonProvisioningOnNode: a new Local disk is made by the agent of the node it is to live
// on (annotation virtualization.rakhsh.io/storage-node), not by the control plane.
const ReasonProvisioningOnNode = v1alpha1.DiskReasonProvisioningOnNode

// provisionOnNode hands a new disk of a Local class on another node to that node's agent
// (internal/agent/diskmake.go): phase Provisioning with condition Ready=False reason
// ProvisioningOnNode. The agent makes the file in its pool (blank, or from an image in its
// image cache) and writes the disk Ready or Failed. A disk that needs the control plane's
// files (an upload, an import, another disk or a snapshot) or names no node that exists
// waits with a condition saying why.
func (c *Controller) provisionOnNode(ctx context.Context, d *v1alpha1.VirtualDisk, st v1alpha1.VirtualDiskStatus) (runtime.Result, error) {
	st.ObservedGeneration = d.Generation
	if ds := d.Spec.DataSource; ds != nil && (ds.Type != v1alpha1.DataSourceTypeObjectRef || ds.ObjectRef == nil ||
		(ds.ObjectRef.Kind != v1alpha1.DataSourceKindClusterVirtualImage && ds.ObjectRef.Kind != v1alpha1.DataSourceKindVirtualImage)) {
		st.Phase = v1alpha1.DiskPhasePending
		msg := fmt.Sprintf("a disk made on node %s's Local storage (annotation %s) is blank or made from a ClusterVirtualImage or VirtualImage; "+
			"make this one on the control plane's node or on Shared storage, then move it (rakhsh disk move --node %s)", st.NodeName, v1alpha1.AnnotationStorageNode, st.NodeName)
		setCond(&st, d, v1alpha1.DiskConditionReady, v1alpha1.ConditionFalse, ReasonNotSupported, msg)
		return runtime.Result{}, c.writeStatus(ctx, d, st)
	}
	if ds := d.Spec.DataSource; ds != nil {
		// The image must be Ready first, as for a disk made here (the agent fetches it).
		if src, reason, wait := c.imageSource(d); src == nil {
			st.Phase = v1alpha1.DiskPhasePending
			setCond(&st, d, v1alpha1.DiskConditionDatasourceReady, v1alpha1.ConditionFalse, reason, wait)
			setCond(&st, d, v1alpha1.DiskConditionReady, v1alpha1.ConditionFalse, reason, wait)
			return runtime.Result{}, c.writeStatus(ctx, d, st)
		}
		setCond(&st, d, v1alpha1.DiskConditionDatasourceReady, v1alpha1.ConditionTrue, ReasonDataSourceReady, "")
	}
	var n v1alpha1.Node
	if err := c.C.Get(ctx, "nodes", "", st.NodeName, &n); err != nil {
		if !client.IsNotFound(err) {
			return runtime.Result{}, err
		}
		st.Phase = v1alpha1.DiskPhasePending
		setCond(&st, d, v1alpha1.DiskConditionReady, v1alpha1.ConditionFalse, ReasonProvisioningOnNode,
			fmt.Sprintf("node %q (annotation %s) does not exist; the disk is made once it joins", st.NodeName, v1alpha1.AnnotationStorageNode))
		return runtime.Result{RequeueAfter: FetchRetryDelay}, c.writeStatus(ctx, d, st)
	}
	st.Phase = v1alpha1.DiskPhaseProvisioning
	setCond(&st, d, v1alpha1.DiskConditionReady, v1alpha1.ConditionFalse, ReasonProvisioningOnNode,
		"node "+st.NodeName+"'s agent makes the disk file in its Local storage")
	return runtime.Result{}, c.writeStatus(ctx, d, st)
}
