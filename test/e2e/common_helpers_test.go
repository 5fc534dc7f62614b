package e2e

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// adminToken is the admin token the serve wrote to its data dir.
func adminToken(t *testing.T, s *Serve) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.DataDir, "admin.token"))
	if err != nil {
		t.Fatalf("admin token not written: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// guestISOServe starts a serve of its own (vmServe) holding the test guest's ISO as the
// ClusterVirtualImage guest-iso and the blank disks of applyGuestISO; base is the URL the
// guest's files are served from.
func guestISOServe(t *testing.T, disks ...string) (s *Serve, base string) {
	t.Helper()
	dir := vmGuestDir(t)
	s = vmServe(t)
	base = vmImageServer(t, dir)
	applyGuestISO(t, s, base, disks...)
	return s, base
}

// vmCondIs is a vmWait condition: the VM has the condition typ with the status status.
func vmCondIs(typ, status string) func(v *v1alpha1.VirtualMachine) bool {
	return func(v *v1alpha1.VirtualMachine) bool {
		c := v1alpha1.FindCondition(v.Status.Conditions, typ)
		return c != nil && c.Status == status
	}
}

// waitCVI waits until the ClusterVirtualImage is in one of the phases.
func waitCVI(t *testing.T, s *Serve, name string, phases ...v1alpha1.ImagePhase) *v1alpha1.ClusterVirtualImage {
	t.Helper()
	return waitObj(t, s, "clustervirtualimages", "", name, phaseList(phases), func(i *v1alpha1.ClusterVirtualImage) bool {
		return slices.Contains(phases, i.Status.Phase)
	})
}

// waitDisk waits until the VirtualDisk of the default project is in one of the phases.
func waitDisk(t *testing.T, s *Serve, name string, phases ...v1alpha1.DiskPhase) *v1alpha1.VirtualDisk {
	t.Helper()
	return waitObj(t, s, "virtualdisks", "default", name, phaseList(phases), func(d *v1alpha1.VirtualDisk) bool {
		return slices.Contains(phases, d.Status.Phase)
	})
}

func phaseList[P ~string](phases []P) string {
	s := make([]string, len(phases))
	for i, p := range phases {
		s[i] = string(p)
	}
	return strings.Join(s, " or ")
}

// serveGuestIn serves the test guest's files of dir over HTTP inside the network namespace
// ns and returns the URL.
func serveGuestIn(t *testing.T, ns, dir string) string {
	t.Helper()
	ln := listenIn(t, ns, "127.0.0.1:0")
	go func() { _ = http.Serve(ln, http.FileServer(http.Dir(dir))) }()
	return "http://" + ln.Addr().String()
}

// getObj reads an object of the default project through the API; it must exist.
func getObj[T any](t *testing.T, s *Serve, resource, name string) *T {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var o T
	if err := s.Client().Get(ctx, resource, "default", name, &o); err != nil {
		t.Fatal(err)
	}
	return &o
}

// benchCount is the whole number in the environment variable env; a benchmark skips itself
// when it is not set to more than 0, saying to set it to N of what (e.g. "runs").
func benchCount(t *testing.T, env, what string) int {
	t.Helper()
	n, _ := strconv.Atoi(os.Getenv(env))
	if n <= 0 {
		t.Skipf("a benchmark: set %s=N (%s) to run it", env, what)
	}
	return n
}

// vmStartGuest starts the VM (without --wait) and waits until it runs and its guest is ready.
func vmStartGuest(t *testing.T, s *Serve, name string) {
	t.Helper()
	s.MustCLI("", "vm", "start", name)
	vmWait(t, s, name, 2*time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	vmWaitSerial(t, s, name, "RAKHSH-GUEST: ready", 1)
}

// startOwnServe starts s, a Serve the test set up itself, and stops it at the end of the
// test, printing its log when the test failed.
func startOwnServe(s *Serve) {
	s.t.Helper()
	s.Start()
	s.t.Cleanup(func() {
		s.Stop()
		if s.t.Failed() {
			s.t.Logf("rakhsh serve log:\n%s", s.logs.String())
		}
	})
}

// vmRunningOn waits until the VM runs and checks that it runs on the node.
func vmRunningOn(t *testing.T, s *Serve, name, node string, timeout time.Duration) *v1alpha1.VirtualMachine {
	t.Helper()
	v := vmWait(t, s, name, timeout, "Running on "+node, vmPhase(v1alpha1.VMPhaseRunning))
	if v.Status.NodeName != node {
		t.Fatalf("the VM runs on %q, want %s", v.Status.NodeName, node)
	}
	return v
}
