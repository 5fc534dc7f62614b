// Package vmclass holds the VM class controller and the project usage controller.
//
// The class controller creates the class "generic" when it is missing (a Nehalem CPU every
// x86-64 node of the last fifteen years can run, without sizing restrictions), and keeps each
// class's status: the nodes that can run its VMs (status.availableNodes: Ready, matching the
// class's nodeSelector, tolerating its taints and, for types Features and Discovery, having
// its CPU features), the most cpu and memory free on one of them
// (status.maxAllocatableResources), and for Discovery the CPU features common to the nodes its
// discovery selector matches (status.cpuFeatures). It also checks every VM against its class's
// sizing policies and sets the VM condition SizingPolicyMatched: a class edit that puts a
// running VM out of policy never stops it, but the API then refuses spec edits that do not
// bring it back.
//
// The usage controller sums, per project, the cores, memory, disk bytes, VMs and images its
// objects use and writes them to the Project's status.used, with condition QuotaExceeded when
// a quota was lowered below the usage.
package vmclass

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/placement"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// GenericClass is the class created at start-up when missing.
const GenericClass = "generic"

// GenericCPUModel is the CPU model of the generic class.
const GenericCPUModel = "Nehalem"

// Reasons of the VM condition SizingPolicyMatched.
const (
	ReasonSizingMatched    = "SizingPolicyMatched"
	ReasonSizingNotMatched = "SizingPolicyNotMatched"
)

// Config configures the controller.
type Config struct {
	runtime.Deps
	// NodeStaleAfter is how old a node's heartbeat may be for it to count as available;
	// default 40 s.
	NodeStaleAfter time.Duration
	// Resync is how often every class is recomputed (node capacity changes arrive with
	// heartbeats, which are many); default 15 s.
	Resync time.Duration
}

// Controller is the class and usage controller.
type Controller struct {
	cfg Config

	runtime.Base
	classes  *runtime.TypedInformer[v1alpha1.VirtualMachineClass]
	nodes    *runtime.TypedInformer[v1alpha1.Node]
	vms      *runtime.TypedInformer[v1alpha1.VirtualMachine]
	disks    *runtime.TypedInformer[v1alpha1.VirtualDisk]
	images   *runtime.TypedInformer[v1alpha1.VirtualImage]
	projects *runtime.TypedInformer[v1alpha1.Project]
	ctl      *runtime.Controller
}

// New returns a controller; Run starts it.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil {
		return nil, errors.New("vmclass: a client is required")
	}
	cfg.NodeStaleAfter = runtime.OrDefault(cfg.NodeStaleAfter, 40*time.Second)
	cfg.Resync = runtime.OrDefault(cfg.Resync, 15*time.Second)
	b := runtime.NewBase(cfg.Deps, "vmclass-controller")
	c := &Controller{cfg: cfg, Base: b}
	f := b.Informers
	c.classes, c.nodes, c.vms = f.VirtualMachineClasses(), f.Nodes(), f.VirtualMachines()
	c.disks, c.images, c.projects = f.VirtualDisks(), f.VirtualImages(), f.Projects()
	projectOf := func(k runtime.Key) []runtime.Key {
		ns, _ := k.Split()
		return []runtime.Key{pfxProject + runtime.Key(ns)}
	}
	c.ctl = runtime.NewController("vmclass", c.Log).
		Watches(c.classes, func(k runtime.Key) []runtime.Key { return append(c.vmsOf(string(k)), pfxClass+k) }).
		Reads(c.nodes). // classes follow nodes on the resync
		Watches(c.vms, func(k runtime.Key) []runtime.Key { return append(projectOf(k), pfxVM+k) }).
		Watches(c.disks, projectOf).
		Watches(c.images, projectOf).
		Watches(c.projects, func(k runtime.Key) []runtime.Key { return []runtime.Key{pfxProject + k} }).
		Every(cfg.Resync, func(_ context.Context, q *runtime.Queue) {
			for _, k := range c.classes.Keys() {
				q.Add(pfxClass + k)
			}
		}).
		Workers(1).
		MaxBackoff(10 * time.Second).
		Build(c.reconcile)
	return c, nil
}

// Queue keys: one kind of work per prefix.
const (
	pfxClass   = "class:"
	pfxVM      = "vm:"
	pfxProject = "project:"
)

// Run works until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	c.Base.StartInformers(ctx)
	go func() {
		if runtime.WaitForSync(ctx, c.classes) {
			c.ensureGeneric(ctx)
		}
	}()
	return c.ctl.Run(ctx)
}

// ensureGeneric creates the generic class when it does not exist, retrying until it is there.
func (c *Controller) ensureGeneric(ctx context.Context) {
	for {
		err := c.C.Create(ctx, "virtualmachineclasses", "", GenericClassObject(), nil)
		if err == nil {
			c.Log.Info("created the generic VM class", "model", GenericCPUModel)
			return
		}
		if client.IsAlreadyExists(err) {
			return
		}
		c.Log.Warn("creating the generic VM class", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}

// GenericClassObject is the class "generic": CPU model Nehalem and no sizing restrictions.
func GenericClassObject() *v1alpha1.VirtualMachineClass {
	return &v1alpha1.VirtualMachineClass{
		TypeMeta:   v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineClass"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: GenericClass},
		Spec: v1alpha1.VirtualMachineClassSpec{
			CPU: v1alpha1.VirtualMachineClassCPU{Type: v1alpha1.CPUTypeModel, Model: GenericCPUModel},
		},
	}
}

// vmsOf returns the queue keys of the VMs of a class.
func (c *Controller) vmsOf(class string) []runtime.Key {
	return runtime.WithPrefix(pfxVM, c.vms.KeysWhere(func(vm *v1alpha1.VirtualMachine) bool { return vm.Spec.VirtualMachineClassName == class }))
}

func (c *Controller) reconcile(ctx context.Context, k runtime.Key) (runtime.Result, error) {
	s := string(k)
	switch {
	case strings.HasPrefix(s, pfxClass):
		return runtime.Result{}, c.syncClass(ctx, runtime.Key(s[len(pfxClass):]))
	case strings.HasPrefix(s, pfxVM):
		return runtime.Result{}, c.syncVM(ctx, runtime.Key(s[len(pfxVM):]))
	case strings.HasPrefix(s, pfxProject):
		return runtime.Result{}, c.syncProject(ctx, s[len(pfxProject):])
	}
	return runtime.Result{}, nil
}

// ClassStatus computes a class's status from the nodes and the VMs bound to them. now is the
// clock the heartbeats are judged by.
func ClassStatus(cl *v1alpha1.VirtualMachineClass, nodes []v1alpha1.Node, vms []v1alpha1.VirtualMachine, now time.Time, staleAfter time.Duration) v1alpha1.VirtualMachineClassStatus {
	st := v1alpha1.VirtualMachineClassStatus{ObservedGeneration: cl.Generation}
	// Discovery: the features every node of the discovery selector has.
	var want []string
	switch cl.Spec.CPU.Type {
	case v1alpha1.CPUTypeDiscovery:
		var common map[string]bool
		sel := cl.Spec.CPU.Discovery.Selector()
		for i := range nodes {
			n := &nodes[i]
			if !placement.MatchLabelSelector(sel, n) || len(n.Status.CPUFeatures) == 0 {
				continue
			}
			if common == nil {
				common = map[string]bool{}
				for _, f := range n.Status.CPUFeatures {
					common[f] = true
				}
				continue
			}
			have := map[string]bool{}
			for _, f := range n.Status.CPUFeatures {
				have[f] = true
			}
			for f := range common {
				if !have[f] {
					delete(common, f)
				}
			}
		}
		for f := range common {
			want = append(want, f)
		}
		sort.Strings(want)
		if len(want) > 0 {
			st.CPUFeatures = &v1alpha1.CPUFeatures{Enabled: want}
		}
	case v1alpha1.CPUTypeFeatures:
		want = cl.Spec.CPU.Features
		st.CPUFeatures = &v1alpha1.CPUFeatures{Enabled: append([]string(nil), want...)}
	}
	used := map[string][2]int64{}
	for i := range vms {
		vm := &vms[i]
		if vm.Status.NodeName == "" {
			continue
		}
		u := used[vm.Status.NodeName]
		mem, _ := vm.Spec.Memory.Size.Value()
		u[0] += int64(vm.Spec.CPU.Cores)
		u[1] += mem
		used[vm.Status.NodeName] = u
	}
	var maxCPU, maxMem int64 = -1, -1
	var notEnabled map[string]bool
	for i := range nodes {
		n := &nodes[i]
		if n.Status.Phase != v1alpha1.NodePhaseReady || n.Spec.Unschedulable || n.Status.Capacity == nil {
			continue
		}
		if hb := n.Status.LastHeartbeatTime; hb == nil || now.Sub(hb.Time) > staleAfter {
			continue
		}
		if !placement.MatchClassSelector(cl.Spec.NodeSelector, n) || !placement.ToleratesNode(n, cl.Spec.Tolerations) {
			continue
		}
		if cl.Spec.CPU.Type == v1alpha1.CPUTypeDiscovery && len(want) == 0 {
			continue
		}
		if len(want) > 0 && !placement.HasFeatures(n, want) {
			continue
		}
		st.AvailableNodes = append(st.AvailableNodes, n.Name)
		cpu, mem, _ := placement.NodeAllocatable(n)
		u := used[n.Name]
		maxCPU = max(maxCPU, cpu-u[0])
		maxMem = max(maxMem, mem-u[1])
		if cl.Spec.CPU.Type == v1alpha1.CPUTypeFeatures {
			have := map[string]bool{}
			for _, f := range n.Status.CPUFeatures {
				have[f] = true
			}
			if notEnabled == nil {
				notEnabled = have
			} else {
				for f := range notEnabled {
					if !have[f] {
						delete(notEnabled, f)
					}
				}
			}
		}
	}
	sort.Strings(st.AvailableNodes)
	if st.CPUFeatures != nil && notEnabled != nil {
		for _, f := range want {
			delete(notEnabled, f)
		}
		for f := range notEnabled {
			st.CPUFeatures.NotEnabledCommon = append(st.CPUFeatures.NotEnabledCommon, f)
		}
		sort.Strings(st.CPUFeatures.NotEnabledCommon)
	}
	if maxCPU >= 0 {
		st.MaxAllocatableResources = map[string]v1alpha1.Quantity{
			"cpu":    v1alpha1.Quantity(fmt.Sprint(max(maxCPU, 0))),
			"memory": v1alpha1.BytesQuantity(max(maxMem, 0)),
		}
	}
	cond := v1alpha1.Condition{Type: v1alpha1.VMClassConditionDiscovered, Status: v1alpha1.ConditionTrue, Reason: "Discovered",
		Message: fmt.Sprintf("%d node(s) can run VMs of this class", len(st.AvailableNodes))}
	st.Phase = v1alpha1.VMClassPhaseReady
	switch {
	case cl.Spec.CPU.Type == v1alpha1.CPUTypeDiscovery && len(want) == 0:
		cond.Status, cond.Reason, cond.Message = v1alpha1.ConditionFalse, "NoCPUFeatures",
			"no node matching the discovery selector reports CPU features"
		st.Phase = v1alpha1.VMClassPhasePending
	case len(st.AvailableNodes) == 0:
		cond.Status, cond.Reason, cond.Message = v1alpha1.ConditionFalse, "NoAvailableNodes",
			"no Ready node matches the class's nodeSelector, tolerations and CPU features"
		st.Phase = v1alpha1.VMClassPhasePending
	}
	if cl.DeletionTimestamp != nil {
		st.Phase = v1alpha1.VMClassPhaseTerminating
	}
	st.Conditions = []v1alpha1.Condition{cond}
	return st
}

func (c *Controller) syncClass(ctx context.Context, k runtime.Key) error {
	cached, ok := c.classes.Get(k)
	if !ok {
		return nil
	}
	cl := runtime.DeepCopy(cached)
	// ClassStatus reads the nodes and VMs: shallow copies of the shared cache do.
	var nodes []v1alpha1.Node
	for _, n := range c.nodes.List() {
		nodes = append(nodes, *n)
	}
	var vms []v1alpha1.VirtualMachine
	inUse := 0
	for _, vm := range c.vms.List() {
		vms = append(vms, *vm)
		if vm.Spec.VirtualMachineClassName == cl.Name {
			inUse++
		}
	}
	st := ClassStatus(cl, nodes, vms, time.Now(), c.cfg.NodeStaleAfter)
	use := v1alpha1.Condition{Type: v1alpha1.VMClassConditionInUse, Status: v1alpha1.ConditionFalse, Reason: "NotInUse", Message: "no VM uses the class"}
	if inUse > 0 {
		use.Status, use.Reason, use.Message = v1alpha1.ConditionTrue, "InUse", fmt.Sprintf("%d VM(s) use the class", inUse)
	}
	st.Conditions = append(st.Conditions, use)
	// Keep transition times of conditions that did not change.
	for i := range st.Conditions {
		if old := v1alpha1.FindCondition(cl.Status.Conditions, st.Conditions[i].Type); old != nil && old.Status == st.Conditions[i].Status {
			st.Conditions[i].LastTransitionTime = old.LastTransitionTime
		}
	}
	stripTimes := func(s v1alpha1.VirtualMachineClassStatus) v1alpha1.VirtualMachineClassStatus {
		s.Conditions = append([]v1alpha1.Condition(nil), s.Conditions...)
		for i := range s.Conditions {
			s.Conditions[i].LastTransitionTime = nil
		}
		return s
	}
	if jsonEqual(stripTimes(st), stripTimes(cl.Status)) {
		return nil
	}
	for i := range st.Conditions {
		if st.Conditions[i].LastTransitionTime == nil {
			t := v1alpha1.NewTime(time.Now())
			st.Conditions[i].LastTransitionTime = &t
		}
	}
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"resourceVersion": cl.ResourceVersion}, "status": st})
	if err != nil {
		return err
	}
	err = c.C.PatchStatus(ctx, "virtualmachineclasses", "", cl.Name, body, nil)
	if client.IsNotFound(err) || client.IsConflict(err) {
		return nil // the newer object is on its way and queues the class again
	}
	return err
}

// syncVM sets the VM's conditions ClassReady (its class exists and can run VMs) and
// SizingPolicyMatched (the VM is within the class's sizing policies). A VM without a class has
// neither.
func (c *Controller) syncVM(ctx context.Context, k runtime.Key) error {
	vm, ok := c.vms.Get(k)
	if !ok || vm.DeletionTimestamp != nil {
		return nil
	}
	var want []v1alpha1.Condition
	if name := vm.Spec.VirtualMachineClassName; name != "" {
		cl, ok := c.classes.Get(runtime.NewKey("", name))
		ready := v1alpha1.Condition{Type: v1alpha1.VMConditionClassReady, Status: v1alpha1.ConditionTrue, Reason: "ClassReady",
			Message: fmt.Sprintf("class %q is ready", name)}
		switch {
		case !ok:
			ready.Status, ready.Reason, ready.Message = v1alpha1.ConditionFalse, "ClassNotFound", fmt.Sprintf("VirtualMachineClass %q not found", name)
		case cl.Status.Phase != v1alpha1.VMClassPhaseReady:
			ready.Status, ready.Reason = v1alpha1.ConditionFalse, "ClassNotReady"
			ready.Message = fmt.Sprintf("class %q is %s", name, cl.Status.Phase)
			if d := v1alpha1.FindCondition(cl.Status.Conditions, v1alpha1.VMClassConditionDiscovered); d != nil && d.Message != "" {
				ready.Message += ": " + d.Message
			}
		}
		want = append(want, ready)
		if ok {
			sz := v1alpha1.Condition{Type: v1alpha1.VMConditionSizingPolicyMatched, Status: v1alpha1.ConditionTrue, Reason: ReasonSizingMatched,
				Message: fmt.Sprintf("the VM matches a sizing policy of class %q", name)}
			if fe := placement.CheckSizing(vm, cl); len(fe) > 0 {
				msgs := make([]string, len(fe))
				for i, f := range fe {
					msgs[i] = f.Error()
				}
				sz.Status, sz.Reason = v1alpha1.ConditionFalse, ReasonSizingNotMatched
				sz.Message = "the VM no longer matches the sizing policies of its class (it keeps running; spec edits must fix this): " + strings.Join(msgs, "; ")
			}
			want = append(want, sz)
		}
	}
	// The class controller owns these two conditions of the VM status: it sends only them,
	// merged by type on the server, so it needs no resourceVersion guard and meets no 409.
	owned := []string{v1alpha1.VMConditionClassReady, v1alpha1.VMConditionSizingPolicyMatched}
	conds := runtime.ConditionsPatch(vm.Status.Conditions, want, owned, v1alpha1.NewTime(time.Now()))
	if conds == nil {
		return nil
	}
	body, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": conds}})
	if err != nil {
		return err
	}
	err = c.C.PatchStatusStrategic(ctx, "virtualmachines", vm.Namespace, vm.Name, body, nil)
	if client.IsNotFound(err) {
		return nil
	}
	return err
}

// syncProject writes the project's usage.
func (c *Controller) syncProject(ctx context.Context, name string) error {
	p, ok := c.projects.Get(runtime.NewKey("", name))
	if !ok {
		return nil
	}
	var u v1alpha1.ProjectUsage
	var mem, disk int64
	pfx := name + "/"
	for _, k := range c.vms.Keys() {
		if strings.HasPrefix(string(k), pfx) {
			if vm, ok := c.vms.Get(k); ok {
				cores, m := placement.VMQuotaUsage(vm)
				u.Cores += cores
				mem += m
				u.VirtualMachines++
			}
		}
	}
	for _, k := range c.disks.Keys() {
		if strings.HasPrefix(string(k), pfx) {
			if d, ok := c.disks.Get(k); ok {
				disk += placement.DiskQuotaUsage(d)
			}
		}
	}
	for _, k := range c.images.Keys() {
		if strings.HasPrefix(string(k), pfx) {
			u.Images++
		}
	}
	u.Memory, u.Disk = v1alpha1.BytesQuantity(mem), v1alpha1.BytesQuantity(disk)
	conds := append([]v1alpha1.Condition(nil), p.Status.Conditions...)
	over := placement.OverQuota(p.Spec.Quota, u)
	qc := v1alpha1.Condition{Type: v1alpha1.ProjectConditionQuotaExceeded, Status: v1alpha1.ConditionFalse, Reason: "WithinQuota", Message: "usage is within the quota"}
	if len(over) > 0 {
		qc.Status, qc.Reason, qc.Message = v1alpha1.ConditionTrue, "QuotaExceeded", "usage is over the quota of "+strings.Join(over, ", ")
	}
	if old := v1alpha1.FindCondition(conds, qc.Type); old != nil && old.Status == qc.Status && old.Message == qc.Message && p.Status.Used != nil && *p.Status.Used == u {
		return nil
	}
	v1alpha1.SetCondition(&conds, qc)
	// This controller alone writes the usage and the QuotaExceeded condition: a strategic
	// patch of just those needs no resourceVersion guard, and one reconcile of a project at a
	// time keeps the newest computation last.
	body, err := json.Marshal(map[string]any{"status": map[string]any{"used": u, "conditions": []v1alpha1.Condition{*v1alpha1.FindCondition(conds, qc.Type)}}})
	if err != nil {
		return err
	}
	err = c.C.PatchStatusStrategic(ctx, "projects", "", name, body, nil)
	if client.IsNotFound(err) {
		return nil
	}
	return err
}

func jsonEqual(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}
