package network

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/network"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// claimResult is the outcome of an allocation attempt, written to the claim's Bound
// condition.
type claimResult struct {
	address string
	reason  string
	message string
}

// reconcileIP binds a VirtualMachineIPAddress to an address: it creates the address's
// lease, whose name is the address, so the API server's uniqueness of names is the
// cluster-wide uniqueness of addresses.
func (c *Controller) reconcileIP(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	ip, ok := get(c.ips, key)
	if !ok {
		return runtime.Result{}, nil
	}
	if ip.Status.Address == "" {
		// About to allocate: the cache may not show an address this controller wrote a
		// moment ago, and allocating on it would lease a second one.
		if ok, err := c.freshClaim(ctx, "virtualmachineipaddresses", &ip.ObjectMeta, &ip); !ok {
			return runtime.Result{}, err
		}
	}
	if ip.DeletionTimestamp != nil {
		return runtime.Result{}, nil
	}
	ref := &v1alpha1.VirtualMachineIPAddressRef{Name: ip.Name, Namespace: ip.Namespace}
	var res claimResult
	if ip.Status.Address != "" {
		// Bound: make sure the lease still says so (repair a deleted lease).
		addr := parseIP(ip.Status.Address)
		res = c.takeIPLease(ctx, addr, ref, true)
		if res.reason == ReasonAddressInUse {
			c.Log.Warn("the lease of a bound address is held by another claim", "claim", string(key), "address", ip.Status.Address, "msg", res.message)
		}
	} else {
		res = c.allocateIP(ctx, &ip, ref)
	}
	st := ip.Status
	return c.writeClaimStatus(ctx, "VirtualMachineIPAddress", "virtualmachineipaddresses", &ip, res, claimStatus{
		Address: st.Address, VirtualMachineName: st.VirtualMachineName, Phase: string(st.Phase),
		Conditions: st.Conditions, ObservedGeneration: st.ObservedGeneration})
}

func (c *Controller) allocateIP(ctx context.Context, ip *v1alpha1.VirtualMachineIPAddress, ref *v1alpha1.VirtualMachineIPAddressRef) claimResult {
	netName := ip.Spec.Network
	if netName == "" {
		netName = v1alpha1.DefaultClusterNetworkName
	}
	n, ok := c.network(netName)
	if !ok {
		return claimResult{reason: ReasonNetworkNotFound, message: fmt.Sprintf("ClusterNetwork %q does not exist", netName)}
	}
	pool, err := network.PoolOf(n.Spec)
	if err != nil {
		return claimResult{reason: ReasonNoAddressing, message: fmt.Sprintf("ClusterNetwork %q: %v", netName, err)}
	}
	if ip.Spec.Type == v1alpha1.VirtualMachineIPAddressTypeStatic {
		addr := parseIP(ip.Spec.StaticIP)
		if !addr.IsValid() || !pool.Contains(addr) {
			return claimResult{reason: ReasonInvalidAddress, message: fmt.Sprintf("static IP %s is not a host address of ClusterNetwork %q (subnet %s, gateway %s)",
				ip.Spec.StaticIP, netName, pool.Subnet, pool.Gateway)}
		}
		return c.takeIPLease(ctx, addr, ref, true)
	}
	tried := map[netip.Addr]bool{}
	for {
		addr, ok := pool.NextFree(func(a netip.Addr) bool {
			if tried[a] {
				return true
			}
			_, found := c.ipls.Get(runtime.NewKey("", v1alpha1.IPLeaseName(a)))
			return found
		})
		if !ok {
			return claimResult{reason: ReasonPoolExhausted, message: fmt.Sprintf("the address pool of ClusterNetwork %q is exhausted: all %d addresses of %s-%s are leased",
				netName, pool.Size(), pool.First, pool.Last)}
		}
		tried[addr] = true
		r := c.takeIPLease(ctx, addr, ref, false)
		if r.reason == ReasonBound || r.reason != ReasonAddressInUse {
			return r
		}
	}
}

// takeIPLease creates the lease of addr for ref, or finds it already ours. A Released lease
// is taken over only when takeReleased (a Static claim asks for exactly this address).
func (c *Controller) takeIPLease(ctx context.Context, addr netip.Addr, ref *v1alpha1.VirtualMachineIPAddressRef, takeReleased bool) claimResult {
	name := v1alpha1.IPLeaseName(addr)
	bound := claimResult{address: addr.String(), reason: ReasonBound, message: "address " + addr.String() + " is leased"}
	// Already ours and bound in the cache: no create that would only meet AlreadyExists.
	if cached, found := c.ipls.Get(runtime.NewKey("", name)); found && cached.DeletionTimestamp == nil &&
		cached.Spec.VirtualMachineIPAddressRef != nil && *cached.Spec.VirtualMachineIPAddressRef == *ref && cached.Status.Phase == v1alpha1.LeasePhaseBound {
		return bound
	}
	l := v1alpha1.VirtualMachineIPAddressLease{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineIPAddressLease"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name}, Spec: v1alpha1.VirtualMachineIPAddressLeaseSpec{VirtualMachineIPAddressRef: ref}}
	err := c.C.Create(ctx, "virtualmachineipaddressleases", "", &l, &l)
	if err == nil {
		_ = c.patchStatus(ctx, "virtualmachineipaddressleases", "", name, "", v1alpha1.VirtualMachineIPAddressLeaseStatus{Phase: v1alpha1.LeasePhaseBound})
		return bound
	}
	if !client.IsAlreadyExists(err) {
		return claimResult{reason: "Error", message: err.Error()}
	}
	// A fresh object: decoding into l would write through its spec's pointer into ref.
	l = v1alpha1.VirtualMachineIPAddressLease{}
	if err := c.C.Get(ctx, "virtualmachineipaddressleases", "", name, &l); err != nil {
		return claimResult{reason: "Error", message: err.Error()}
	}
	cur := l.Spec.VirtualMachineIPAddressRef
	switch {
	case cur != nil && *cur == *ref:
		if l.Status.Phase != v1alpha1.LeasePhaseBound {
			_ = c.patchStatus(ctx, "virtualmachineipaddressleases", "", name, "", v1alpha1.VirtualMachineIPAddressLeaseStatus{Phase: v1alpha1.LeasePhaseBound})
		}
		return bound
	case cur == nil && takeReleased:
		l.Spec.VirtualMachineIPAddressRef = ref
		delete(l.Annotations, AnnotationReleasedAt)
		if err := c.C.Update(ctx, "virtualmachineipaddressleases", "", name, &l, &l); err != nil {
			return claimResult{reason: "Error", message: err.Error()}
		}
		_ = c.patchStatus(ctx, "virtualmachineipaddressleases", "", name, "", v1alpha1.VirtualMachineIPAddressLeaseStatus{Phase: v1alpha1.LeasePhaseBound})
		return bound
	case cur == nil:
		return claimResult{reason: ReasonAddressInUse, message: fmt.Sprintf("address %s was released recently and is not reused yet", addr)}
	}
	return claimResult{reason: ReasonAddressInUse, message: fmt.Sprintf("IP address %s is already leased to VirtualMachineIPAddress %s/%s", addr, cur.Namespace, cur.Name)}
}

// reconcileMAC binds a VirtualMachineMACAddress to an address of the MAC pool (or to the
// address it names) through the address's lease.
func (c *Controller) reconcileMAC(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	m, ok := get(c.macs, key)
	if ok && m.Status.Address == "" {
		// As for IP claims: read before allocating.
		if ok, err := c.freshClaim(ctx, "virtualmachinemacaddresses", &m.ObjectMeta, &m); !ok {
			return runtime.Result{}, err
		}
	}
	if !ok || m.DeletionTimestamp != nil {
		return runtime.Result{}, nil
	}
	ref := &v1alpha1.VirtualMachineMACAddressRef{Name: m.Name, Namespace: m.Namespace}
	var res claimResult
	switch {
	case m.Status.Address != "":
		res = c.takeMACLease(ctx, m.Status.Address, ref, true)
	case m.Spec.Address != "" && !c.macAllowed(m.Spec.Address, ref):
		res = claimResult{reason: ReasonOutsideMACRanges, message: fmt.Sprintf("MAC address %s is outside the cluster's MAC ranges (%s): "+
			"a VM could take the address of a router or another host of a bridged LAN; a cluster administrator may grant it by creating "+
			"the VirtualMachineMACAddressLease %s for this claim", m.Spec.Address, network.RangesString(c.cfg.MACRanges), leaseNameOf(m.Spec.Address))}
	case m.Spec.Address != "":
		res = c.takeMACLease(ctx, m.Spec.Address, ref, true)
	default:
		tried := map[string]bool{}
		for {
			mac, ok := network.NextFreeMAC(c.cfg.MACRanges, macStart(m.Namespace, m.Name, m.UID), func(mac string) bool {
				if tried[mac] {
					return true
				}
				n, _ := v1alpha1.MACLeaseName(mac)
				_, found := c.macls.Get(runtime.NewKey("", n))
				return found
			})
			if !ok {
				res = claimResult{reason: ReasonPoolExhausted, message: fmt.Sprintf("the MAC address pool is exhausted: all %d addresses are leased", network.Size(c.cfg.MACRanges))}
				break
			}
			tried[mac] = true
			res = c.takeMACLease(ctx, mac, ref, false)
			if res.reason != ReasonAddressInUse {
				break
			}
		}
	}
	st := m.Status
	r, err := c.writeClaimStatus(ctx, "VirtualMachineMACAddress", "virtualmachinemacaddresses", &m, res, claimStatus{
		Address: st.Address, VirtualMachineName: st.VirtualMachineName, Phase: string(st.Phase),
		Conditions: st.Conditions, ObservedGeneration: st.ObservedGeneration})
	if err == nil && res.reason == ReasonOutsideMACRanges {
		// An administrator may grant the address by making its lease: look again now and then
		// (lease events do not queue claims).
		r.RequeueAfter = c.cfg.SweepInterval
	}
	return r, err
}

func (c *Controller) takeMACLease(ctx context.Context, mac string, ref *v1alpha1.VirtualMachineMACAddressRef, takeReleased bool) claimResult {
	norm, err := v1alpha1.NormalizeMAC(mac)
	if err != nil {
		return claimResult{reason: ReasonInvalidAddress, message: err.Error()}
	}
	name, _ := v1alpha1.MACLeaseName(norm)
	bound := claimResult{address: norm, reason: ReasonBound, message: "MAC address " + norm + " is leased"}
	if cached, found := c.macls.Get(runtime.NewKey("", name)); found && cached.DeletionTimestamp == nil &&
		cached.Spec.VirtualMachineMACAddressRef != nil && *cached.Spec.VirtualMachineMACAddressRef == *ref && cached.Status.Phase == v1alpha1.LeasePhaseBound {
		return bound
	}
	l := v1alpha1.VirtualMachineMACAddressLease{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineMACAddressLease"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name}, Spec: v1alpha1.VirtualMachineMACAddressLeaseSpec{VirtualMachineMACAddressRef: ref}}
	err = c.C.Create(ctx, "virtualmachinemacaddressleases", "", &l, &l)
	if err == nil {
		_ = c.patchStatus(ctx, "virtualmachinemacaddressleases", "", name, "", v1alpha1.VirtualMachineMACAddressLeaseStatus{Phase: v1alpha1.LeasePhaseBound})
		return bound
	}
	if !client.IsAlreadyExists(err) {
		return claimResult{reason: "Error", message: err.Error()}
	}
	// A fresh object: decoding into l would write through its spec's pointer into ref.
	l = v1alpha1.VirtualMachineMACAddressLease{}
	if err := c.C.Get(ctx, "virtualmachinemacaddressleases", "", name, &l); err != nil {
		return claimResult{reason: "Error", message: err.Error()}
	}
	cur := l.Spec.VirtualMachineMACAddressRef
	switch {
	case cur != nil && *cur == *ref:
		if l.Status.Phase != v1alpha1.LeasePhaseBound {
			_ = c.patchStatus(ctx, "virtualmachinemacaddressleases", "", name, "", v1alpha1.VirtualMachineMACAddressLeaseStatus{Phase: v1alpha1.LeasePhaseBound})
		}
		return bound
	case cur == nil && takeReleased:
		l.Spec.VirtualMachineMACAddressRef = ref
		delete(l.Annotations, AnnotationReleasedAt)
		if err := c.C.Update(ctx, "virtualmachinemacaddressleases", "", name, &l, &l); err != nil {
			return claimResult{reason: "Error", message: err.Error()}
		}
		_ = c.patchStatus(ctx, "virtualmachinemacaddressleases", "", name, "", v1alpha1.VirtualMachineMACAddressLeaseStatus{Phase: v1alpha1.LeasePhaseBound})
		return bound
	case cur == nil:
		return claimResult{reason: ReasonAddressInUse, message: fmt.Sprintf("MAC address %s was released recently and is not reused yet", norm)}
	}
	return claimResult{reason: ReasonAddressInUse, message: fmt.Sprintf("MAC address %s is already leased to VirtualMachineMACAddress %s/%s", norm, cur.Namespace, cur.Name)}
}

// freshClaim reads the claim (resource, named by md) into obj; false means it is gone or
// replaced (err says why when it is neither).
func (c *Controller) freshClaim(ctx context.Context, resource string, md *v1alpha1.ObjectMeta, obj v1alpha1.Object) (bool, error) {
	uid := md.UID
	if err := c.C.Get(ctx, resource, md.Namespace, md.Name, obj); err != nil {
		if client.IsNotFound(err) {
			return false, nil
		}
		return false, err
	}
	return obj.GetObjectMeta().UID == uid, nil
}

// claimStatus is the status of a VirtualMachineIPAddress or VirtualMachineMACAddress: the two
// kinds have the same fields, and this type marshals to either.
type claimStatus struct {
	Address            string               `json:"address,omitempty"`
	VirtualMachineName string               `json:"virtualMachineName,omitempty"`
	Phase              string               `json:"phase,omitempty"`
	Conditions         []v1alpha1.Condition `json:"conditions,omitempty"`
	ObservedGeneration int64                `json:"observedGeneration,omitempty"`
}

// writeClaimStatus records the outcome of a claim's reconcile: the address, the phase (Bound,
// or Attached when a VM uses it; else Pending) and the Bound condition, with a Warning event
// when the reason for not binding changes. Nothing is written when nothing changed; a full
// pool is looked at again after the sweep interval.
func (c *Controller) writeClaimStatus(ctx context.Context, kind, resource string, obj v1alpha1.Object, res claimResult, cur claimStatus) (runtime.Result, error) {
	md := obj.GetObjectMeta()
	// The cache may not have seen the claim's latest write yet (the VM side attaches and
	// detaches it): decide on the claim as it is now.
	var fresh struct {
		Metadata v1alpha1.ObjectMeta `json:"metadata"`
		Status   claimStatus         `json:"status"`
	}
	if err := c.C.Get(ctx, resource, md.Namespace, md.Name, &fresh); err != nil {
		if client.IsNotFound(err) {
			return runtime.Result{}, nil
		}
		return runtime.Result{}, err
	}
	if fresh.Metadata.UID != md.UID || fresh.Status.Address != cur.Address {
		// Replaced, or bound meanwhile: the decision was made on an older claim. Its update
		// is on its way to the cache and queues the claim again.
		return runtime.Result{}, nil
	}
	cur = fresh.Status
	phase := "Pending"
	if res.reason == ReasonBound {
		phase = "Bound"
		if cur.VirtualMachineName != "" {
			phase = "Attached"
		}
	}
	st := cur
	st.Conditions = append([]v1alpha1.Condition(nil), cur.Conditions...)
	if res.address != "" {
		st.Address = res.address
	}
	prevMsg := ""
	if p := v1alpha1.FindCondition(st.Conditions, v1alpha1.AddressConditionBound); p != nil {
		prevMsg = p.Message
	}
	changedCond := v1alpha1.SetCondition(&st.Conditions, cond(v1alpha1.AddressConditionBound, res.reason == ReasonBound, res.reason, res.message, md.Generation))
	if st.Address == cur.Address && st.Phase == phase && !changedCond && st.ObservedGeneration == md.Generation {
		return runtime.Result{}, nil
	}
	if res.reason != ReasonBound && prevMsg != res.message {
		c.Rec.Event(ctx, kind, obj, "Warning", res.reason, res.message)
	}
	st.Phase = phase
	st.ObservedGeneration = md.Generation
	// Guarded by the fields as read (and the claim's user, which decides the phase), not by
	// the resourceVersion: adopting and attaching the claim change other parts of it.
	var guards []string
	if st.Phase != cur.Phase {
		guards = []string{"virtualMachineName"} // the phase is Attached when a VM uses the claim
	}
	body, err := runtime.StatusPatch(md.UID, cur, st, []string{"address", "phase", "conditions", "observedGeneration"}, guards)
	if err != nil {
		return runtime.Result{}, err
	}
	if err := c.C.JSONPatchStatus(ctx, resource, md.Namespace, md.Name, body, nil); err != nil {
		if client.IsConflict(err) || client.IsNotFound(err) {
			return runtime.Result{}, nil
		}
		return runtime.Result{}, err
	}
	if res.reason == ReasonPoolExhausted {
		// A lease may be released later: look again now and then.
		return runtime.Result{RequeueAfter: c.cfg.SweepInterval}, nil
	}
	return runtime.Result{}, nil
}

// macAllowed says whether a claim may take the explicit address mac: one inside the
// cluster's MAC ranges, or one whose lease a cluster administrator made for this claim (a
// lease is cluster-scoped: granting an address outside the ranges is an administrator's act).
func (c *Controller) macAllowed(mac string, ref *v1alpha1.VirtualMachineMACAddressRef) bool {
	norm, err := v1alpha1.NormalizeMAC(mac)
	if err != nil {
		return true // takeMACLease reports the bad address
	}
	if network.InRanges(c.cfg.MACRanges, norm) {
		return true
	}
	name, _ := v1alpha1.MACLeaseName(norm)
	l, found := c.macls.Get(runtime.NewKey("", name))
	return found && l.DeletionTimestamp == nil && l.Spec.VirtualMachineMACAddressRef != nil && *l.Spec.VirtualMachineMACAddressRef == *ref
}

func leaseNameOf(mac string) string {
	norm, err := v1alpha1.NormalizeMAC(mac)
	if err != nil {
		return "(invalid address)"
	}
	n, _ := v1alpha1.MACLeaseName(norm)
	return n
}
