package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/nodestream"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/qga"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// The guest agent watcher (docs/guest-agent.md): one goroutine per running QEMU with a
// guest-agent channel. It pings the guest agent every guestPingEvery (each call bounded by
// guestCallTimeout; a ready agent is taken as not responding after two rounds in a row
// without an answer in time, not one), reads the OS, host name and interfaces when it first answers and then
// every guestInfoEvery, and writes the AgentReady condition, status.guestOSInfo and the
// guest's addresses in status.networks when they change.
var (
	guestPingEvery   = 5 * time.Second
	guestCallTimeout = 2 * time.Second
	guestInfoEvery   = 30 * time.Second
)

// Reasons of the AgentReady condition.
const (
	ReasonAgentReady         = "AgentReady"
	ReasonAgentNotResponding = "AgentNotResponding"
	ReasonAgentProtocolError = "AgentProtocolError"
)

// guestAgent is the node agent's connection to one VM's guest agent. Calls are serialised
// (the channel carries one conversation at a time); a broken connection is replaced at the
// next call.
type guestAgent struct {
	sock string
	mu   sync.Mutex
	c    *qga.Client
}

func newGuestAgent(runDir string) *guestAgent {
	return &guestAgent{sock: filepath.Join(runDir, qemu.GuestAgentSocketName)}
}

// do runs f on a synchronised connection, dialling one if needed; ctx bounds the dial and f.
func (g *guestAgent) do(ctx context.Context, f func(ctx context.Context, c *qga.Client) error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.c != nil && g.c.Broken() {
		_ = g.c.Close()
		g.c = nil
	}
	if g.c == nil {
		c, err := qga.Dial(ctx, g.sock)
		if err != nil {
			return err
		}
		g.c = c
	}
	err := f(ctx, g.c)
	if g.c.Broken() {
		_ = g.c.Close()
		g.c = nil
	}
	return err
}

func (g *guestAgent) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.c != nil {
		_ = g.c.Close()
		g.c = nil
	}
}

// guestView is what the watcher last learnt from the guest agent.
type guestView struct {
	ready   bool
	reason  string
	message string
	os      *v1alpha1.GuestOSInfo
	ifaces  []qga.Interface
}

// agentCondition classifies a failed call into the AgentReady condition; its message is
// stable for one kind of failure so that a guest that keeps failing causes no writes.
func agentCondition(err error) (reason, msg string) {
	var ae *qga.AgentError
	switch {
	case err == nil:
		return ReasonAgentReady, "the guest agent answers"
	case errors.Is(err, os.ErrNotExist):
		return ReasonAgentNotResponding, "the guest agent channel does not exist"
	case errors.Is(err, qga.ErrTooLarge):
		return ReasonAgentProtocolError, fmt.Sprintf("the guest agent sent a response larger than %d bytes", qga.MaxResponse)
	case errors.Is(err, qga.ErrNoSync):
		return ReasonAgentProtocolError, "the guest agent sent data that is not an answer to the sync request"
	case errors.As(err, &ae):
		return ReasonAgentProtocolError, "the guest agent refused a command: " + ae.Class
	case strings.Contains(err.Error(), "malformed") || strings.Contains(err.Error(), "neither return") || strings.Contains(err.Error(), "other requests"):
		return ReasonAgentProtocolError, "the guest agent sent a malformed response"
	case errors.Is(err, context.DeadlineExceeded):
		return ReasonAgentNotResponding, fmt.Sprintf("the guest agent did not answer within %s", guestCallTimeout)
	}
	return ReasonAgentNotResponding, "the guest agent is not connected"
}

// watchGuestAgent runs until ctx ends or QEMU exits.
func (a *Agent) watchGuestAgent(ctx context.Context, in *instance) {
	g := in.guest
	defer g.close()
	if !waitGuestSocket(ctx, in, g.sock) {
		return
	}
	t := time.NewTimer(0)
	defer t.Stop()
	var w guestWatch
	for {
		select {
		case <-ctx.Done():
			return
		case <-in.exited:
			return
		case <-t.C:
		}
		if !a.guestRound(ctx, in, &w) {
			return
		}
		t.Reset(guestPingEvery)
	}
}

// guestWatch is what the watcher of one guest agent keeps from round to round.
type guestWatch struct {
	written  *guestView // what was last written (nil: nothing yet)
	view     guestView
	lastInfo time.Time
	lateOnce bool // the last ping of a ready guest agent got no answer in time
	lateRead bool // the last read of its OS and interfaces got none
}

func (w *guestWatch) wasReady() bool { return w.written != nil && w.written.ready }

// guestRound pings the guest agent, reads its OS and interfaces when due, and writes what
// changed. False: ctx ended.
func (a *Agent) guestRound(ctx context.Context, in *instance, w *guestWatch) bool {
	g := in.guest
	cctx, cancel := context.WithTimeout(ctx, guestCallTimeout)
	err := g.do(cctx, func(ctx context.Context, c *qga.Client) error { return c.Ping(ctx) })
	cancel()
	if ctx.Err() != nil {
		return false
	}
	// One late answer from a guest agent that answered before (a busy guest, a loaded host)
	// is not a lost agent: the next round decides, so that AgentReady does not flap.
	late := errors.Is(err, context.DeadlineExceeded)
	if late && !w.lateOnce && w.wasReady() {
		w.lateOnce = true
		a.log.Debug("the guest agent did not answer a ping in time; the next ping decides", "vm", string(in.key), "limit", guestCallTimeout)
		return true
	}
	w.lateOnce = late
	refresh := false
	view := &w.view
	view.ready = err == nil
	view.reason, view.message = agentCondition(err)
	// Read at every ping until the guest reports an address (a guest still waiting for
	// DHCP), then every guestInfoEvery.
	if err == nil && (!w.wasReady() || !hasGuestAddress(view.ifaces) || time.Since(w.lastInfo) >= guestInfoEvery) {
		info, ierr := a.readGuestInfo(ctx, g)
		switch {
		case ierr == nil:
			view.os, view.ifaces = info.os, info.ifaces
			w.lastInfo = time.Now()
			refresh, w.lateRead = true, false
		case errors.Is(ierr, context.DeadlineExceeded) && !w.lateRead && w.wasReady():
			// A late answer to a read, as to a ping: the next read decides.
			w.lateRead = true
			return true
		default:
			view.ready = false
			view.reason, view.message = agentCondition(ierr)
		}
	}
	// Between reads, what the last read found is compared with the cached status: a list of
	// NICs written after it (the network controller's, at a VM's first start) or a write
	// that dropped the guest's fields gets them at the next ping, not 30 s later.
	if !refresh && view.ready && view.os != nil {
		if cur, ok := a.vms.Get(in.key); ok && cur.UID == in.uid {
			nets := slices.Clone(cur.Status.Networks)
			if mergeGuestNetworks(nets, view.ifaces) {
				refresh = true
			}
		}
	}
	// A refresh compares with the stored status (so that a write another component undid
	// is repaired) and writes nothing when that matches.
	if wr := w.written; wr == nil || view.ready != wr.ready || view.reason != wr.reason || view.message != wr.message || refresh {
		if werr := a.writeGuestView(ctx, in, *view); werr == nil {
			v := *view
			w.written = &v
		} else if ctx.Err() == nil {
			a.log.Warn("could not write the guest agent status", "vm", string(in.key), "err", werr)
		}
	}
	if err != nil && !view.ready {
		a.log.Debug("guest agent not ready", "vm", string(in.key), "reason", view.reason, "err", err)
	}
	return true
}

// waitGuestSocket waits up to a minute for the guest agent's socket: QEMU creates it as it
// starts (or the agent bound it before, with passed descriptors); a VM without
// paravirtualization has none and is never watched. False: no socket, the VM exited, or ctx
// ended.
func waitGuestSocket(ctx context.Context, in *instance, sock string) bool {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(time.Minute); ; {
		if _, err := os.Stat(sock); err == nil {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-in.exited:
			return false
		case <-tick.C:
		}
	}
}

// readGuestInfo reads the OS, host name and interfaces, each call bounded by guestCallTimeout.
func (a *Agent) readGuestInfo(ctx context.Context, g *guestAgent) (guestView, error) {
	var v guestView
	call := func(f func(ctx context.Context, c *qga.Client) error) error {
		cctx, cancel := context.WithTimeout(ctx, guestCallTimeout)
		defer cancel()
		return g.do(cctx, f)
	}
	var osi qga.OSInfo
	var host string
	if err := call(func(ctx context.Context, c *qga.Client) (err error) { osi, err = c.OSInfo(ctx); return }); err != nil {
		var ae *qga.AgentError
		if !errors.As(err, &ae) { // an agent without guest-get-osinfo (older Windows ones) is fine
			return v, err
		}
	}
	if err := call(func(ctx context.Context, c *qga.Client) (err error) { host, err = c.HostName(ctx); return }); err != nil {
		var ae *qga.AgentError
		if !errors.As(err, &ae) {
			return v, err
		}
	}
	if err := call(func(ctx context.Context, c *qga.Client) (err error) { v.ifaces, err = c.Interfaces(ctx); return }); err != nil {
		var ae *qga.AgentError
		if !errors.As(err, &ae) {
			return v, err
		}
	}
	v.os = &v1alpha1.GuestOSInfo{Name: osi.Name, PrettyName: osi.PrettyName, Version: osi.Version, VersionID: osi.VersionID,
		KernelRelease: osi.KernelRelease, KernelVersion: osi.KernelVersion, Machine: osi.Machine, ID: osi.ID, Hostname: host}
	return v, nil
}

// hasGuestAddress says whether an interface the guest reports has an address that is not
// loopback or link-local.
func hasGuestAddress(ifaces []qga.Interface) bool {
	for _, it := range ifaces {
		for _, ip := range it.IPAddresses {
			if !ip.Address.IsLoopback() && !ip.Address.IsLinkLocalUnicast() {
				return true
			}
		}
	}
	return false
}

// agentReadyCondition is the AgentReady condition of a view.
func agentReadyCondition(v guestView) v1alpha1.Condition {
	st := v1alpha1.ConditionFalse
	if v.ready {
		st = v1alpha1.ConditionTrue
	}
	return v1alpha1.Condition{Type: v1alpha1.VMConditionAgentReady, Status: st, Reason: v.reason, Message: v.message}
}

// mergeGuestNetworks sets the guest's name and addresses of each interface of nets whose MAC
// address the guest reports (matched case-insensitively); interfaces the guest does not
// report lose what an earlier answer said. It reports whether anything changed.
func mergeGuestNetworks(nets []v1alpha1.NetworkStatus, ifaces []qga.Interface) bool {
	changed := false
	for i := range nets {
		name, addrs := "", []string(nil)
		for _, it := range ifaces {
			if it.HardwareAddress == "" || !strings.EqualFold(it.HardwareAddress, nets[i].MACAddress) {
				continue
			}
			name = it.Name
			for _, ip := range it.IPAddresses {
				if ip.Address.IsLoopback() || ip.Address.IsLinkLocalUnicast() {
					continue
				}
				addrs = append(addrs, fmt.Sprintf("%s/%d", ip.Address, ip.Prefix))
			}
			break
		}
		if nets[i].InterfaceName != name || !reflect.DeepEqual(nets[i].GuestIPAddresses, addrs) {
			nets[i].InterfaceName, nets[i].GuestIPAddresses = name, addrs
			changed = true
		}
	}
	return changed
}

// clearGuestNetworks removes what the guest agent reported from nets, and the slots of
// hot-plugged interfaces (QEMU stopped).
func clearGuestNetworks(nets []v1alpha1.NetworkStatus) {
	for i := range nets {
		nets[i].InterfaceName, nets[i].GuestIPAddresses, nets[i].Slot = "", nil, ""
	}
}

// writeGuestView writes AgentReady, guestOSInfo and the guest's addresses; the OS and the
// addresses only when the view carries them (a failing agent keeps the last ones known).
func (a *Agent) writeGuestView(ctx context.Context, in *instance, view guestView) error {
	if strings.HasPrefix(string(in.key), orphanPrefix) {
		return nil
	}
	ns, name := in.key.Split()
	_, err := runtime.UpdateVMStatus(ctx, a.c, ns, name, in.uid, agentStatusFields, nil, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.NodeName != a.cfg.NodeName || in.isExited() {
			return runtime.ErrNoChange
		}
		old := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionAgentReady)
		wasReady := old != nil && old.Status == v1alpha1.ConditionTrue
		changed := v1alpha1.SetCondition(&v.Status.Conditions, agentReadyCondition(view))
		if view.ready && !wasReady && v.Status.Stats != nil && v.Status.Stats.LastStartTime != nil {
			// Running → guest agent answering, for this start.
			st := v.Status.Stats
			if st.LaunchTimeDuration == nil {
				st.LaunchTimeDuration = &v1alpha1.VirtualMachineLaunchTimeDuration{}
			}
			st.LaunchTimeDuration.GuestOSAgentStarting = a.cfg.Now().Sub(st.LastStartTime.Time).Round(time.Millisecond).String()
			changed = true
		}
		if view.ready && view.os != nil && !reflect.DeepEqual(v.Status.GuestOSInfo, view.os) {
			v.Status.GuestOSInfo = view.os
			changed = true
		}
		if view.ready && view.os != nil && mergeGuestNetworks(v.Status.Networks, view.ifaces) {
			changed = true
		}
		if !changed {
			return runtime.ErrNoChange
		}
		return nil
	})
	return ignoreGone(err)
}

// GuestFreeze freezes the filesystems of a running VM's guest through its guest agent and
// returns how many were frozen. The caller must call GuestThaw once its disk snapshots are
// taken, also when they fail: qemu-ga keeps the filesystems frozen until told otherwise.
func (a *Agent) GuestFreeze(ctx context.Context, uid string) (int, error) {
	var n int
	err := a.guestCall(ctx, uid, func(ctx context.Context, c *qga.Client) (err error) { n, err = c.FreezeFilesystems(ctx); return })
	return n, err
}

// GuestThaw thaws the filesystems of a running VM's guest and returns how many were thawed.
func (a *Agent) GuestThaw(ctx context.Context, uid string) (int, error) {
	var n int
	err := a.guestCall(ctx, uid, func(ctx context.Context, c *qga.Client) (err error) { n, err = c.ThawFilesystems(ctx); return })
	return n, err
}

// GuestFreezeStatus returns qga.FreezeThawed or qga.FreezeFrozen.
func (a *Agent) GuestFreezeStatus(ctx context.Context, uid string) (string, error) {
	var s string
	err := a.guestCall(ctx, uid, func(ctx context.Context, c *qga.Client) (err error) { s, err = c.FreezeStatus(ctx); return })
	return s, err
}

// GuestSetPassword sets the password of a guest user through the guest agent.
func (a *Agent) GuestSetPassword(ctx context.Context, uid, user string, password []byte) error {
	if err := qga.CheckUser(user); err != nil {
		return err
	}
	if err := qga.CheckPassword(password); err != nil {
		return err
	}
	return a.guestCall(ctx, uid, func(ctx context.Context, c *qga.Client) error { return c.SetUserPassword(ctx, user, password) })
}

// ErrNoGuestAgent: the VM does not run here or has no guest agent channel.
var ErrNoGuestAgent = errors.New("the virtual machine does not run on this node with a guest agent channel")

// guestCall runs f against the guest agent of the running VM uid, by ctx's deadline, or
// qga.DefaultTimeout when ctx has none (fs-freeze may take long: the caller may set more).
func (a *Agent) guestCall(ctx context.Context, uid string, f func(ctx context.Context, c *qga.Client) error) error {
	in := a.inst(uid)
	if in == nil || in.isExited() || in.guest == nil {
		return ErrNoGuestAgent
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, qga.DefaultTimeout)
		defer cancel()
	}
	return in.guest.do(ctx, f)
}

// guestShutdown asks the guest agent to power the guest off; it reports whether the request
// was delivered (the agent answers nothing when it complies).
func (a *Agent) guestShutdown(ctx context.Context, in *instance) error {
	if in.guest == nil {
		return ErrNoGuestAgent
	}
	cctx, cancel := context.WithTimeout(ctx, guestCallTimeout)
	defer cancel()
	return in.guest.do(cctx, func(ctx context.Context, c *qga.Client) error {
		if err := c.Ping(ctx); err != nil {
			return err
		}
		return c.Shutdown(ctx)
	})
}

// agentShutdownWait is how long a guest asked to shut down by its guest agent gets before the
// quit: the grace period, at most guestShutdownMax.
func agentShutdownWait(grace time.Duration) time.Duration { return min(grace, guestShutdownMax) }

var guestShutdownMax = 30 * time.Second

// agentShutdown is the graceful stop's fallback once the ACPI power button has been ignored
// for the grace period: it asks the guest agent (once) to power the guest off. ok says the
// quit waits: the request was delivered and the guest has until the returned time is up.
func (m *Machine) agentShutdown(ctx context.Context, now time.Time, grace time.Duration) (time.Duration, bool) {
	in := m.in
	in.mu.Lock()
	at := in.agentShutdownAt
	in.mu.Unlock()
	if !at.IsZero() {
		if left := agentShutdownWait(grace) - now.Sub(at); left > 0 && in.agentShutdownSent {
			return left, true
		}
		return 0, false
	}
	err := m.a.guestShutdown(ctx, in)
	in.mu.Lock()
	in.agentShutdownAt, in.agentShutdownSent = now, err == nil
	in.mu.Unlock()
	if err != nil {
		m.a.log.Info("the guest ignored the ACPI power button and its guest agent does not answer: quitting",
			"vm", string(in.key), "err", err)
		return 0, false
	}
	m.a.log.Info("the guest ignored the ACPI power button: asked its guest agent to shut it down",
		"vm", string(in.key), "wait", agentShutdownWait(grace))
	return agentShutdownWait(grace), true
}

// guestRequest carries out a guest-agent request that came through the stream service
// (nodestream.StreamGuestAgent): the password is used and dropped, never written anywhere.
func (a *Agent) guestRequest(ctx context.Context, uid string, req nodestream.GuestRequest) (nodestream.GuestResult, error) {
	res := nodestream.GuestResult{Command: req.Command}
	var err error
	switch req.Command {
	case nodestream.GuestSetPassword:
		if e := qga.CheckUser(req.User); e != nil {
			return res, errs.New(errs.ErrBadRequest, "%v", e)
		}
		if e := qga.CheckPassword([]byte(req.Password)); e != nil {
			return res, errs.New(errs.ErrBadRequest, "%v", e)
		}
		err = a.GuestSetPassword(ctx, uid, req.User, []byte(req.Password))
	case nodestream.GuestFreeze:
		var n int
		n, err = a.GuestFreeze(ctx, uid)
		res.Count = &n
	case nodestream.GuestThaw:
		var n int
		n, err = a.GuestThaw(ctx, uid)
		res.Count = &n
	case nodestream.GuestFreezeStatus:
		res.FreezeStatus, err = a.GuestFreezeStatus(ctx, uid)
	default:
		return res, errs.New(errs.ErrBadRequest, "guest agent command %q is not known", req.Command)
	}
	var ae *qga.AgentError
	switch {
	case err == nil:
		a.log.Info("guest agent request carried out", "uid", uid, "command", req.Command, "user", req.User)
		return res, nil
	case errors.Is(err, ErrNoGuestAgent):
		return res, errs.New(errs.ErrUnavailable, "%v", err)
	case errors.As(err, &ae):
		return res, errs.New(errs.ErrBadRequest, "the guest refused %s: %s", req.Command, ae.Desc)
	}
	_, msg := agentCondition(err)
	return res, errs.New(errs.ErrUnavailable, "%s", msg)
}
