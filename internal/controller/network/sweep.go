package network

import (
	"context"
	"encoding/json"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// claimView is what the sweep reads of a claim (IP and MAC claims alike).
type claimView struct {
	meta               *v1alpha1.ObjectMeta
	virtualMachineName string
}

// leaseView is what the sweep reads of a lease (IP and MAC leases alike).
type leaseView struct {
	meta          *v1alpha1.ObjectMeta
	refNS, refRef string
	obj           any // the cached lease, to write it back released
}

// views returns view of every cached object of inf.
func views[T, V any](inf *runtime.TypedInformer[T], view func(*T) V) []V {
	var out []V
	for _, o := range inf.List() {
		out = append(out, view(o))
	}
	return out
}

func ipClaims(inf *runtime.TypedInformer[v1alpha1.VirtualMachineIPAddress]) []claimView {
	return views(inf, func(o *v1alpha1.VirtualMachineIPAddress) claimView {
		return claimView{meta: &o.ObjectMeta, virtualMachineName: o.Status.VirtualMachineName}
	})
}

func macClaims(inf *runtime.TypedInformer[v1alpha1.VirtualMachineMACAddress]) []claimView {
	return views(inf, func(o *v1alpha1.VirtualMachineMACAddress) claimView {
		return claimView{meta: &o.ObjectMeta, virtualMachineName: o.Status.VirtualMachineName}
	})
}

func ipLeases(inf *runtime.TypedInformer[v1alpha1.VirtualMachineIPAddressLease]) []leaseView {
	return views(inf, func(o *v1alpha1.VirtualMachineIPAddressLease) leaseView {
		v := leaseView{meta: &o.ObjectMeta, obj: o}
		if r := o.Spec.VirtualMachineIPAddressRef; r != nil {
			v.refNS, v.refRef = r.Namespace, r.Name
		}
		return v
	})
}

func macLeases(inf *runtime.TypedInformer[v1alpha1.VirtualMachineMACAddressLease]) []leaseView {
	return views(inf, func(o *v1alpha1.VirtualMachineMACAddressLease) leaseView {
		v := leaseView{meta: &o.ObjectMeta, obj: o}
		if r := o.Spec.VirtualMachineMACAddressRef; r != nil {
			v.refNS, v.refRef = r.Namespace, r.Name
		}
		return v
	})
}

// sweep deletes the automatic claims of deleted VMs, detaches claims from deleted VMs,
// releases the leases of deleted claims and deletes released leases whose reuse delay has
// passed; it also refreshes the ClusterNetworks' status.
func (c *Controller) sweep(ctx context.Context) error {
	uids := map[string]bool{}
	names := map[runtime.Key]bool{}
	for _, vm := range c.vms.List() {
		uids[vm.UID] = true
		names[runtime.KeyOf(vm)] = true
	}
	for _, kind := range []struct {
		claims   []claimView
		resource string
		attached string
	}{{ipClaims(c.ips), "virtualmachineipaddresses", string(v1alpha1.VirtualMachineIPAddressPhaseBound)},
		{macClaims(c.macs), "virtualmachinemacaddresses", string(v1alpha1.VirtualMachineMACAddressPhaseBound)}} {
		for _, m := range kind.claims {
			md := m.meta
			if uid, auto := md.Annotations[AnnotationAutoFor]; auto && !uids[uid] && !names[runtime.NewKey(md.Namespace, md.Labels[LabelVM])] {
				if err := c.C.Delete(ctx, kind.resource, md.Namespace, md.Name); err != nil && !client.IsNotFound(err) {
					return err
				}
				c.Log.Info("deleted the automatic address claim of a deleted VM", "resource", kind.resource, "claim", md.Namespace+"/"+md.Name)
				continue
			}
			if vm := m.virtualMachineName; vm != "" && !names[runtime.NewKey(md.Namespace, vm)] {
				st := map[string]any{"virtualMachineName": nil, "phase": kind.attached}
				if err := c.patchStatus(ctx, kind.resource, md.Namespace, md.Name, md.ResourceVersion, st); err != nil && !client.IsConflict(err) && !client.IsNotFound(err) {
					return err
				}
			}
		}
	}
	ipClaimExists := func(k runtime.Key) bool { _, ok := c.ips.Get(k); return ok }
	macClaimExists := func(k runtime.Key) bool { _, ok := c.macs.Get(k); return ok }
	if err := c.sweepLeases(ctx, ipLeases(c.ipls), ipClaimExists, "virtualmachineipaddressleases", c.cfg.IPReuseDelay); err != nil {
		return err
	}
	if err := c.sweepLeases(ctx, macLeases(c.macls), macClaimExists, "virtualmachinemacaddressleases", c.cfg.MACReuseDelay); err != nil {
		return err
	}
	return c.networkStatus(ctx)
}

func (c *Controller) sweepLeases(ctx context.Context, leases []leaseView, claimExists func(runtime.Key) bool, resource string, delay time.Duration) error {
	now := c.cfg.Now()
	for _, l := range leases {
		ns, name := l.refNS, l.refRef
		md := l.meta
		if name != "" {
			if claimExists(runtime.NewKey(ns, name)) {
				continue
			}
			// The claim is gone: release the lease (it keeps the address taken until the
			// reuse delay has passed).
			raw, err := json.Marshal(l.obj)
			if err != nil {
				continue
			}
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
			if err := c.C.Update(ctx, resource, "", md.Name, obj, nil); err != nil {
				if client.IsConflict(err) || client.IsNotFound(err) {
					continue
				}
				return err
			}
			_ = c.patchStatus(ctx, resource, "", md.Name, "", map[string]any{"phase": v1alpha1.LeasePhaseReleased})
			c.Log.Info("released a lease", "lease", md.Name, "claim", ns+"/"+name)
			continue
		}
		at, err := time.Parse(time.RFC3339, md.Annotations[AnnotationReleasedAt])
		if err != nil || now.Sub(at) >= delay {
			if err := c.C.Delete(ctx, resource, "", md.Name); err != nil && !client.IsNotFound(err) {
				return err
			}
			c.Log.Info("deleted a released lease: its address may be reused", "lease", md.Name)
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
	var all []v1alpha1.ClusterNetwork
	for _, n := range c.cnets.List() {
		all = append(all, *n)
	}
	vnis := assignVNIs(all)
	for _, k := range c.cnets.Keys() {
		n, ok := c.cnets.Get(k)
		if !ok {
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
		st := runtime.DeepCopy(&n.Status) // SetCondition changes the list in place
		changed := v1alpha1.SetCondition(&st.Conditions, cond(v1alpha1.ClusterNetworkConditionReady, true, "Accepted", "the network is accepted; node agents create its host side when a VM on it starts", n.Generation))
		vni := vnis[n.Name]
		if !changed && st.Phase == v1alpha1.ClusterNetworkPhaseReady && st.AllocatedIPs == count && st.ObservedGeneration == n.Generation && st.VNI == vni {
			continue
		}
		if st.VNI != 0 && st.VNI != vni {
			c.Log.Warn("a NAT network's VXLAN identifier is held by an older network: it gets another", "network", n.Name, "vni", st.VNI, "new", vni)
		} else if st.VNI == 0 && vni != 0 {
			c.Log.Info("gave a NAT network its VXLAN identifier", "network", n.Name, "vni", vni)
		}
		st.Phase, st.AllocatedIPs, st.ObservedGeneration, st.VNI = v1alpha1.ClusterNetworkPhaseReady, count, n.Generation, vni
		body, err := runtime.StatusPatch(n.UID, &n.Status, st, []string{"phase", "allocatedIPs", "conditions", "observedGeneration", "vni"}, nil)
		if err != nil {
			return err
		}
		if err := c.C.JSONPatchStatus(ctx, "clusternetworks", "", n.Name, body, nil); err != nil && !client.IsConflict(err) && !client.IsNotFound(err) {
			return err
		}
	}
	return nil
}
