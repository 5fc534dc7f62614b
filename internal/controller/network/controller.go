// Package network is the address controller: it gives every VM interface a MAC address
// from the cluster's MAC pool and an IP address from its ClusterNetwork, as the claims and
// leases Deckhouse Virtualization uses:
//
//   - VirtualMachineMACAddress (project) claims a MAC; its cluster-scoped
//     VirtualMachineMACAddressLease, named after the address, makes it unique cluster-wide.
//   - VirtualMachineIPAddress (project) claims an IP, Auto or Static; its
//     VirtualMachineIPAddressLease, named after the address, makes it unique.
//
// Creating a lease is the allocation: the API server refuses a second lease of the same
// name, so two claims can never hold one address, however many controllers race. A VM that
// names no claims gets them created (labelled with the VM, annotated with its uid) and keeps
// them for its life; when the VM is deleted its automatic claims are deleted, their leases
// become Released and are deleted after a delay (MAC addresses are reused only after
// MACReuseDelay, so a stale ARP or switch entry never points at a new VM).
//
// It owns the VM status fields networks, ipAddress, virtualMachineIPAddressName and the
// IPAddressReady and MACAddressReady conditions, and creates the default ClusterNetwork
// "main" on first start.
package network

import (
	"context"
	"encoding/json"
	"errors"
	"hash/fnv"
	"net/netip"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/network"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Labels and annotations on the claims this controller creates.
const (
	// LabelVM names the VM a claim was made for.
	LabelVM = "network.rakhsh.io/vm"
	// AnnotationAutoFor holds the uid of the VM an automatic claim belongs to; the claim is
	// deleted when that VM is gone.
	AnnotationAutoFor = "network.rakhsh.io/auto-for-uid"
	// AnnotationReleasedAt is when a lease was released (RFC 3339).
	AnnotationReleasedAt = "network.rakhsh.io/released-at"
)

// Condition reasons.
const (
	ReasonBound          = "Bound"
	ReasonAddressInUse   = "AddressInUse"
	ReasonPoolExhausted  = "PoolExhausted"
	ReasonInvalidAddress = "InvalidAddress"
	// ReasonOutsideMACRanges: an explicit MAC outside --mac-ranges that no administrator granted.
	ReasonOutsideMACRanges = "OutsideMACRanges"
	ReasonNetworkNotFound  = "NetworkNotFound"
	ReasonNoAddressing     = "NoAddressManagement"
	ReasonClaimNotFound    = "ClaimNotFound"
	ReasonClaimPending     = "ClaimPending"
	ReasonClaimInUse       = "ClaimInUse"
	ReasonUnsupported      = "Unsupported"
	ReasonAddressesReady   = "AddressesReady"
)

// Defaults.
const (
	DefaultSubnet        = "10.66.0.0/24"
	DefaultMACReuseDelay = 10 * time.Minute
	DefaultIPReuseDelay  = time.Minute
)

// Config configures the controller.
type Config struct {
	runtime.Deps
	// MACRanges is the cluster's MAC pool; default network.DefaultMACRange.
	MACRanges []network.MACRange
	// DefaultSubnet is the subnet of the "main" network when this controller creates it.
	DefaultSubnet string
	// MACReuseDelay and IPReuseDelay are how long a released lease is kept before its
	// address may be taken again.
	MACReuseDelay, IPReuseDelay time.Duration
	// SweepInterval is how often released leases and orphaned claims are looked for;
	// default 10 s.
	SweepInterval time.Duration
	Now           func() time.Time
}

// Controller is the address controller.
type Controller struct {
	cfg Config

	runtime.Base
	vms   *runtime.TypedInformer[v1alpha1.VirtualMachine]
	ips   *runtime.TypedInformer[v1alpha1.VirtualMachineIPAddress]
	ipls  *runtime.TypedInformer[v1alpha1.VirtualMachineIPAddressLease]
	macs  *runtime.TypedInformer[v1alpha1.VirtualMachineMACAddress]
	macls *runtime.TypedInformer[v1alpha1.VirtualMachineMACAddressLease]
	cnets *runtime.TypedInformer[v1alpha1.ClusterNetwork]
	ctl   *runtime.Controller
	queue *runtime.Queue
}

// New returns a controller; Run starts it.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil {
		return nil, errors.New("network controller: a client is required")
	}
	if len(cfg.MACRanges) == 0 {
		rs, err := network.ParseMACRanges(network.DefaultMACRange)
		if err != nil {
			return nil, err
		}
		cfg.MACRanges = rs
	}
	if cfg.DefaultSubnet == "" {
		cfg.DefaultSubnet = DefaultSubnet
	}
	cfg.MACReuseDelay = runtime.OrDefault(cfg.MACReuseDelay, DefaultMACReuseDelay)
	cfg.IPReuseDelay = runtime.OrDefault(cfg.IPReuseDelay, DefaultIPReuseDelay)
	cfg.SweepInterval = runtime.OrDefault(cfg.SweepInterval, 10*time.Second)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	b := runtime.NewBase(cfg.Deps, "rakhsh-network-controller", "component", "network-controller")
	c := &Controller{cfg: cfg, Base: b}
	f := b.Informers
	c.vms, c.ips, c.ipls = f.VirtualMachines(), f.VirtualMachineIPAddresses(), f.VirtualMachineIPAddressLeases()
	c.macs, c.macls, c.cnets = f.VirtualMachineMACAddresses(), f.VirtualMachineMACAddressLeases(), f.ClusterNetworks()
	c.ctl = runtime.NewController("network", c.Log).
		Watches(c.vms, func(k runtime.Key) []runtime.Key { return []runtime.Key{kindVM + k} }).
		Watches(c.ips, func(k runtime.Key) []runtime.Key {
			if ip, ok := c.ips.Get(k); ok {
				return c.vmsOfClaim(kindIP, k, &ip.ObjectMeta, ip.Status.VirtualMachineName)
			}
			return c.vmsOfClaim(kindIP, k, nil, "")
		}).
		Watches(c.macs, func(k runtime.Key) []runtime.Key {
			if m, ok := c.macs.Get(k); ok {
				return c.vmsOfClaim(kindMAC, k, &m.ObjectMeta, m.Status.VirtualMachineName)
			}
			return c.vmsOfClaim(kindMAC, k, nil, "")
		}).
		Watches(c.ipls, c.claimOfIPLease).
		Watches(c.macls, c.claimOfMACLease).
		Watches(c.cnets, func(runtime.Key) []runtime.Key { return c.allKeys() }).
		Every(cfg.SweepInterval, func(_ context.Context, q *runtime.Queue) { q.Add(sweep) }).
		Workers(2).
		MaxBackoff(10 * time.Second).
		Build(c.reconcile)
	c.queue = c.ctl.Queue()
	return c, nil
}

// get returns a copy of the cached object of k that the caller may change.
func get[T any](inf *runtime.TypedInformer[T], k runtime.Key) (T, bool) {
	o, ok := inf.Get(k)
	if !ok {
		var zero T
		return zero, false
	}
	return *runtime.DeepCopy(o), true
}

const (
	kindVM  = "vm\x00"
	kindIP  = "ip\x00"
	kindMAC = "mac\x00"
	sweep   = runtime.Key("sweep\x00")
)

// Run reconciles until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	c.Base.StartInformers(ctx)
	go func() {
		if !runtime.WaitForSync(ctx, c.vms, c.ips, c.ipls, c.macs, c.macls, c.cnets) {
			return
		}
		if err := c.ensureMain(ctx); err != nil {
			c.Log.Error("creating the default network", "err", err)
		}
		c.queueAll()
	}()
	return c.ctl.Run(ctx)
}

// allKeys returns the queue keys of every VM and claim, and the sweep.
func (c *Controller) allKeys() []runtime.Key {
	var out []runtime.Key
	for _, k := range c.vms.Keys() {
		out = append(out, kindVM+k)
	}
	for _, k := range c.ips.Keys() {
		out = append(out, kindIP+k)
	}
	for _, k := range c.macs.Keys() {
		out = append(out, kindMAC+k)
	}
	return append(out, sweep)
}

func (c *Controller) queueAll() {
	for _, k := range c.allKeys() {
		c.queue.Add(k)
	}
}

// claimOfIPLease returns the IP claim an IP lease names or, for a lease that is gone, the
// claims that hold its address: a lease deleted by hand under a bound claim is made again at
// once, and a lease an administrator makes for a waiting claim binds it at once.
func (c *Controller) claimOfIPLease(k runtime.Key) []runtime.Key {
	if l, ok := c.ipls.Get(k); ok {
		if r := l.Spec.VirtualMachineIPAddressRef; r != nil {
			return []runtime.Key{kindIP + runtime.NewKey(r.Namespace, r.Name)}
		}
		return nil
	}
	_, name := k.Split()
	return runtime.WithPrefix(kindIP, c.ips.KeysWhere(func(ip *v1alpha1.VirtualMachineIPAddress) bool {
		a, err := netip.ParseAddr(ip.Status.Address)
		return err == nil && v1alpha1.IPLeaseName(a) == name
	}))
}

// claimOfMACLease is claimOfIPLease for MAC leases.
func (c *Controller) claimOfMACLease(k runtime.Key) []runtime.Key {
	if l, ok := c.macls.Get(k); ok {
		if r := l.Spec.VirtualMachineMACAddressRef; r != nil {
			return []runtime.Key{kindMAC + runtime.NewKey(r.Namespace, r.Name)}
		}
		return nil
	}
	_, name := k.Split()
	return runtime.WithPrefix(kindMAC, c.macs.KeysWhere(func(m *v1alpha1.VirtualMachineMACAddress) bool {
		if m.Status.Address == "" {
			return false
		}
		n, _ := v1alpha1.MACLeaseName(m.Status.Address)
		return n == name
	}))
}

// vmsOfClaim returns the claim itself and the VMs it is labelled with or attached to (or,
// for a claim that is gone, every VM of its namespace and the sweep). meta is nil for a
// claim that is gone.
func (c *Controller) vmsOfClaim(kind, k runtime.Key, meta *v1alpha1.ObjectMeta, attachedTo string) []runtime.Key {
	ns, _ := k.Split()
	out := []runtime.Key{kind + k}
	if meta != nil {
		if v := meta.Labels[LabelVM]; v != "" {
			out = append(out, kindVM+runtime.NewKey(ns, v))
		}
		if attachedTo != "" {
			out = append(out, kindVM+runtime.NewKey(ns, attachedTo))
		}
	}
	// A claim named like the VM (the default IP claim) or named in its spec.
	for _, vk := range c.vms.Keys() {
		if vns, _ := vk.Split(); vns == ns {
			out = append(out, kindVM+vk)
		}
	}
	if meta == nil {
		out = append(out, sweep)
	}
	return out
}

func (c *Controller) reconcile(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	s := string(key)
	switch {
	case key == sweep:
		return runtime.Result{}, c.sweep(ctx)
	case len(s) > len(kindVM) && s[:len(kindVM)] == kindVM:
		return c.reconcileVM(ctx, runtime.Key(s[len(kindVM):]))
	case len(s) > len(kindIP) && s[:len(kindIP)] == kindIP:
		return c.reconcileIP(ctx, runtime.Key(s[len(kindIP):]))
	case len(s) > len(kindMAC) && s[:len(kindMAC)] == kindMAC:
		return c.reconcileMAC(ctx, runtime.Key(s[len(kindMAC):]))
	}
	return runtime.Result{}, nil
}

// ensureMain creates the default NAT network "main" when it does not exist.
func (c *Controller) ensureMain(ctx context.Context) error {
	var n v1alpha1.ClusterNetwork
	err := c.C.Get(ctx, "clusternetworks", "", v1alpha1.DefaultClusterNetworkName, &n)
	if err == nil {
		return nil
	}
	if !client.IsNotFound(err) {
		return err
	}
	n = v1alpha1.ClusterNetwork{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "ClusterNetwork"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: v1alpha1.DefaultClusterNetworkName},
		Spec:       v1alpha1.ClusterNetworkSpec{Type: v1alpha1.ClusterNetworkTypeNAT, Subnet: c.cfg.DefaultSubnet}}
	err = c.C.Create(ctx, "clusternetworks", "", &n, nil)
	if client.IsAlreadyExists(err) {
		return nil
	}
	if err == nil {
		c.Log.Info("created the default network", "name", n.Name, "subnet", c.cfg.DefaultSubnet)
	}
	return err
}

func (c *Controller) network(name string) (*v1alpha1.ClusterNetwork, bool) {
	// Shared with the cache: callers only read it.
	return c.cnets.Get(runtime.NewKey("", name))
}

func (c *Controller) now() v1alpha1.Time { return v1alpha1.NewTime(c.cfg.Now()) }

// macStart is where the search for a free MAC of a claim starts: a hash of the claim, so
// concurrent allocations rarely try the same address.
func macStart(ns, name, uid string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(ns + "/" + name + "/" + uid))
	return h.Sum64()
}

// patchStatus merges status into an object's status, guarded by rv when given.
func (c *Controller) patchStatus(ctx context.Context, resource, ns, name, rv string, status any) error {
	body := map[string]any{"status": status}
	if rv != "" {
		body["metadata"] = map[string]any{"resourceVersion": rv}
	}
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	return c.C.PatchStatus(ctx, resource, ns, name, b, nil)
}

func cond(typ string, ok bool, reason, msg string, gen int64) v1alpha1.Condition {
	st := v1alpha1.ConditionFalse
	if ok {
		st = v1alpha1.ConditionTrue
	}
	return v1alpha1.Condition{Type: typ, Status: st, Reason: reason, Message: msg, ObservedGeneration: gen}
}

func parseIP(s string) netip.Addr {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}
	}
	return a
}

func parsePrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	return p.Masked(), err
}
