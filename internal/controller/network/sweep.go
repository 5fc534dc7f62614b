package network

import (
	"context"
	"encoding/json"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// claimMeta is what the sweep reads of a claim.
type claimMeta struct {
	Metadata v1alpha1.ObjectMeta `json:"metadata"`
	Status   struct {
		Address            string `json:"address"`
		VirtualMachineName string `json:"virtualMachineName"`
	} `json:"status"`
}

// leaseMeta is what the sweep reads of a lease (IP and MAC leases alike).
type leaseMeta struct {
	Metadata v1alpha1.ObjectMeta `json:"metadata"`
	Spec     struct {
		IPRef  *v1alpha1.VirtualMachineIPAddressRef  `json:"virtualMachineIPAddressRef"`
		MACRef *v1alpha1.VirtualMachineMACAddressRef `json:"virtualMachineMACAddressRef"`
	} `json:"spec"`
	Status struct {
		Phase v1alpha1.LeasePhase `json:"phase"`
	} `json:"status"`
}

// sweep deletes the automatic claims of deleted VMs, detaches claims from deleted VMs,
// releases the leases of deleted claims and deletes released leases whose reuse delay has
// passed; it also refreshes the ClusterNetworks' status.
func (c *Controller) sweep(ctx context.Context) error {
	uids := map[string]bool{}
	names := map[runtime.Key]bool{}
	for _, raw := range c.vms.Raw() {
		var m struct {
			Metadata v1alpha1.ObjectMeta `json:"metadata"`
		}
		if json.Unmarshal(raw, &m) == nil {
			uids[m.Metadata.UID] = true
			names[runtime.NewKey(m.Metadata.Namespace, m.Metadata.Name)] = true
		}
	}
	for _, kind := range []struct {
		inf      *runtime.Informer
		resource string
		attached string
	}{{c.ips, "virtualmachineipaddresses", string(v1alpha1.VirtualMachineIPAddressPhaseBound)},
		{c.macs, "virtualmachinemacaddresses", string(v1alpha1.VirtualMachineMACAddressPhaseBound)}} {
		for _, raw := range kind.inf.Raw() {
			var m claimMeta
			if json.Unmarshal(raw, &m) != nil {
				continue
			}
			md := m.Metadata
			if uid, auto := md.Annotations[AnnotationAutoFor]; auto && !uids[uid] && !names[runtime.NewKey(md.Namespace, md.Labels[LabelVM])] {
				if err := c.c.Delete(ctx, kind.resource, md.Namespace, md.Name); err != nil && !client.IsNotFound(err) {
					return err
				}
				c.log.Info("deleted the automatic address claim of a deleted VM", "resource", kind.resource, "claim", md.Namespace+"/"+md.Name)
				continue
			}
			if vm := m.Status.VirtualMachineName; vm != "" && !names[runtime.NewKey(md.Namespace, vm)] {
				st := map[string]any{"virtualMachineName": nil, "phase": kind.attached}
				if err := c.patchStatus(ctx, kind.resource, md.Namespace, md.Name, md.ResourceVersion, st); err != nil && !client.IsConflict(err) && !client.IsNotFound(err) {
					return err
				}
			}
		}
	}
	if err := c.sweepLeases(ctx, c.ipls, c.ips, "virtualmachineipaddressleases", c.cfg.IPReuseDelay); err != nil {
		return err
	}
	if err := c.sweepLeases(ctx, c.macls, c.macs, "virtualmachinemacaddressleases", c.cfg.MACReuseDelay); err != nil {
		return err
	}
	return c.networkStatus(ctx)
}

func (c *Controller) sweepLeases(ctx context.Context, leases, claims *runtime.Informer, resource string, delay time.Duration) error {
	now := c.cfg.Now()
	for _, raw := range leases.Raw() {
		var l leaseMeta
		if json.Unmarshal(raw, &l) != nil {
			continue
		}
		var ns, name string
		switch {
		case l.Spec.IPRef != nil:
			ns, name = l.Spec.IPRef.Namespace, l.Spec.IPRef.Name
		case l.Spec.MACRef != nil:
			ns, name = l.Spec.MACRef.Namespace, l.Spec.MACRef.Name
		}
		md := l.Metadata
		if name != "" {
			var cm claimMeta
			if ok, _ := claims.Get(runtime.NewKey(ns, name), &cm); ok {
				continue
			}
			// The claim is gone: release the lease (it keeps the address taken until the
			// reuse delay has passed).
			var obj map[string]any
			if err := json.Unmarshal(raw, &obj); err != nil {
				continue
			}
			meta, _ := obj["metadata"].(map[string]any)
			ann, _ := meta["annotations"].(map[string]any)
			if ann == nil {
				ann = map[string]any{}
			}
			ann[AnnotationReleasedAt] = now.UTC().Format(time.RFC3339)
			meta["annotations"] = ann
			obj["spec"] = map[string]any{}
			if err := c.c.Update(ctx, resource, "", md.Name, obj, nil); err != nil {
				if client.IsConflict(err) || client.IsNotFound(err) {
					continue
				}
				return err
			}
			_ = c.patchStatus(ctx, resource, "", md.Name, "", map[string]any{"phase": v1alpha1.LeasePhaseReleased})
			c.log.Info("released a lease", "lease", md.Name, "claim", ns+"/"+name)
			continue
		}
		at, err := time.Parse(time.RFC3339, md.Annotations[AnnotationReleasedAt])
		if err != nil || now.Sub(at) >= delay {
			if err := c.c.Delete(ctx, resource, "", md.Name); err != nil && !client.IsNotFound(err) {
				return err
			}
			c.log.Info("deleted a released lease: its address may be reused", "lease", md.Name)
		}
	}
	return nil
}

// networkStatus writes each ClusterNetwork's phase and number of leased addresses.
func (c *Controller) networkStatus(ctx context.Context) error {
	var leased []string
	for _, k := range c.ipls.Keys() {
		_, n := k.Split()
		leased = append(leased, n)
	}
	for _, k := range c.cnets.Keys() {
		var n v1alpha1.ClusterNetwork
		if ok, err := c.cnets.Get(k, &n); !ok || err != nil {
			continue
		}
		count := 0
		if n.Spec.Subnet != "" {
			if p, err := parsePrefix(n.Spec.Subnet); err == nil {
				for _, ln := range leased {
					if a, err := v1alpha1.ParseIPLeaseName(ln); err == nil && p.Contains(a) {
						count++
					}
				}
			}
		}
		st := n.Status
		changed := v1alpha1.SetCondition(&st.Conditions, cond(v1alpha1.ClusterNetworkConditionReady, true, "Accepted", "the network is accepted; node agents create its host side when a VM on it starts", n.Generation))
		if !changed && st.Phase == v1alpha1.ClusterNetworkPhaseReady && st.AllocatedIPs == count && st.ObservedGeneration == n.Generation {
			continue
		}
		st.Phase, st.AllocatedIPs, st.ObservedGeneration = v1alpha1.ClusterNetworkPhaseReady, count, n.Generation
		if err := c.patchStatus(ctx, "clusternetworks", "", n.Name, n.ResourceVersion, st); err != nil && !client.IsConflict(err) && !client.IsNotFound(err) {
			return err
		}
	}
	return nil
}
