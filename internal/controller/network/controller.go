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
	"log/slog"
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
	Client *client.Client
	Log    *slog.Logger
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
	c   *client.Client
	log *slog.Logger
	rec *runtime.Recorder

	vms, ips, ipls, macs, macls, cnets *runtime.Informer
	queue                              *runtime.Queue
}

// New returns a controller; Run starts it.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil {
		return nil, errors.New("network controller: a client is required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
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
	if cfg.MACReuseDelay <= 0 {
		cfg.MACReuseDelay = DefaultMACReuseDelay
	}
	if cfg.IPReuseDelay <= 0 {
		cfg.IPReuseDelay = DefaultIPReuseDelay
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Log.With("component", "network-controller")
	return &Controller{cfg: cfg, c: cfg.Client, log: log,
		rec: &runtime.Recorder{C: cfg.Client, Component: "rakhsh-network-controller", Log: log}}, nil
}

const (
	kindVM  = "vm\x00"
	kindIP  = "ip\x00"
	kindMAC = "mac\x00"
	sweep   = runtime.Key("sweep\x00")
)

// Run reconciles until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	c.queue = runtime.NewQueue("network", c.log)
	c.queue.MaxBackoff = 10 * time.Second
	c.vms = runtime.NewInformer(c.c, "virtualmachines", "", c.log)
	c.ips = runtime.NewInformer(c.c, "virtualmachineipaddresses", "", c.log)
	c.ipls = runtime.NewInformer(c.c, "virtualmachineipaddressleases", "", c.log)
	c.macs = runtime.NewInformer(c.c, "virtualmachinemacaddresses", "", c.log)
	c.macls = runtime.NewInformer(c.c, "virtualmachinemacaddressleases", "", c.log)
	c.cnets = runtime.NewInformer(c.c, "clusternetworks", "", c.log)
	c.vms.OnChange(func(k runtime.Key) { c.queue.Add(kindVM + k) })
	c.ips.OnChange(func(k runtime.Key) {
		c.queue.Add(kindIP + k)
		c.queueVMsOf(c.ips, k)
	})
	c.macs.OnChange(func(k runtime.Key) {
		c.queue.Add(kindMAC + k)
		c.queueVMsOf(c.macs, k)
	})
	c.ipls.OnChange(func(k runtime.Key) {
		c.queueClaimOfLease(c.ipls, c.ips, kindIP, k, func(addr string) string {
			a, err := netip.ParseAddr(addr)
			if err != nil {
				return ""
			}
			return v1alpha1.IPLeaseName(a)
		})
	})
	c.macls.OnChange(func(k runtime.Key) {
		c.queueClaimOfLease(c.macls, c.macs, kindMAC, k, func(addr string) string {
			n, _ := v1alpha1.MACLeaseName(addr)
			return n
		})
	})
	c.cnets.OnChange(func(runtime.Key) { c.queueAll() })
	infs := []*runtime.Informer{c.vms, c.ips, c.ipls, c.macs, c.macls, c.cnets}
	for _, inf := range infs {
		go inf.Run(ctx)
	}
	for _, inf := range infs {
		select {
		case <-ctx.Done():
			return nil
		case <-inf.Synced():
		}
	}
	if err := c.ensureMain(ctx); err != nil {
		c.log.Error("creating the default network", "err", err)
	}
	c.queueAll()
	go func() {
		t := time.NewTicker(c.cfg.SweepInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				c.queue.Add(sweep)
			}
		}
	}()
	c.queue.Run(ctx, 2, c.reconcile)
	return nil
}

func (c *Controller) queueAll() {
	for _, k := range c.vms.Keys() {
		c.queue.Add(kindVM + k)
	}
	for _, k := range c.ips.Keys() {
		c.queue.Add(kindIP + k)
	}
	for _, k := range c.macs.Keys() {
		c.queue.Add(kindMAC + k)
	}
	c.queue.Add(sweep)
}

// queueClaimOfLease queues the claim a lease names or, for a lease that is gone, the claims
// that hold its address: a lease deleted by hand under a bound claim is made again at once,
// and a lease an administrator makes for a waiting claim binds it at once.
func (c *Controller) queueClaimOfLease(leases, claims *runtime.Informer, kind, k runtime.Key, leaseName func(addr string) string) {
	var l struct {
		Spec struct {
			IP  *v1alpha1.VirtualMachineIPAddressRef  `json:"virtualMachineIPAddressRef"`
			MAC *v1alpha1.VirtualMachineMACAddressRef `json:"virtualMachineMACAddressRef"`
		} `json:"spec"`
	}
	if ok, _ := leases.Get(k, &l); ok {
		switch {
		case l.Spec.IP != nil:
			c.queue.Add(kind + runtime.NewKey(l.Spec.IP.Namespace, l.Spec.IP.Name))
		case l.Spec.MAC != nil:
			c.queue.Add(kind + runtime.NewKey(l.Spec.MAC.Namespace, l.Spec.MAC.Name))
		}
		return
	}
	_, name := k.Split()
	for _, ck := range claims.Keys() {
		var cl struct {
			Status struct {
				Address string `json:"address"`
			} `json:"status"`
		}
		if ok, _ := claims.Get(ck, &cl); ok && cl.Status.Address != "" && leaseName(cl.Status.Address) == name {
			c.queue.Add(kind + ck)
		}
	}
}

// queueVMsOf queues the VM a claim is labelled with or attached to (or, for a claim that is
// gone, every VM of its namespace).
func (c *Controller) queueVMsOf(inf *runtime.Informer, k runtime.Key) {
	ns, name := k.Split()
	var obj struct {
		Metadata v1alpha1.ObjectMeta `json:"metadata"`
		Status   struct {
			VirtualMachineName string `json:"virtualMachineName"`
		} `json:"status"`
	}
	if ok, err := inf.Get(k, &obj); !ok || err != nil {
		_ = name
		for _, vk := range c.vms.Keys() {
			if vns, _ := vk.Split(); vns == ns {
				c.queue.Add(kindVM + vk)
			}
		}
		c.queue.Add(sweep)
		return
	}
	if v := obj.Metadata.Labels[LabelVM]; v != "" {
		c.queue.Add(kindVM + runtime.NewKey(ns, v))
	}
	if v := obj.Status.VirtualMachineName; v != "" {
		c.queue.Add(kindVM + runtime.NewKey(ns, v))
	}
	// A claim named like the VM (the default IP claim) or named in its spec.
	for _, vk := range c.vms.Keys() {
		if vns, _ := vk.Split(); vns == ns {
			c.queue.Add(kindVM + vk)
		}
	}
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
	err := c.c.Get(ctx, "clusternetworks", "", v1alpha1.DefaultClusterNetworkName, &n)
	if err == nil {
		return nil
	}
	if !client.IsNotFound(err) {
		return err
	}
	n = v1alpha1.ClusterNetwork{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "ClusterNetwork"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: v1alpha1.DefaultClusterNetworkName},
		Spec:       v1alpha1.ClusterNetworkSpec{Type: v1alpha1.ClusterNetworkTypeNAT, Subnet: c.cfg.DefaultSubnet}}
	err = c.c.Create(ctx, "clusternetworks", "", &n, nil)
	if client.IsAlreadyExists(err) {
		return nil
	}
	if err == nil {
		c.log.Info("created the default network", "name", n.Name, "subnet", c.cfg.DefaultSubnet)
	}
	return err
}

func (c *Controller) network(name string) (*v1alpha1.ClusterNetwork, bool) {
	var n v1alpha1.ClusterNetwork
	ok, err := c.cnets.Get(runtime.NewKey("", name), &n)
	if !ok || err != nil {
		return nil, false
	}
	return &n, true
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
	return c.c.PatchStatus(ctx, resource, ns, name, b, nil)
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
