package e2e

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// ansiEscape matches the terminal control sequences a shell prompt emits (e.g. ESC[6n).
var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

// consoleLines splits console output into lines without CRs and escape sequences.
func consoleLines(s string) []string {
	s = ansiEscape.ReplaceAllString(s, "")
	var out []string
	for _, l := range strings.Split(s, "\n") {
		out = append(out, strings.TrimSpace(strings.ReplaceAll(l, "\r", "")))
	}
	return out
}

// hasLine reports whether the console output has a line that is exactly want.
func hasLine(s, want string) bool {
	for _, l := range consoleLines(s) {
		if l == want {
			return true
		}
	}
	return false
}

// TestVMConsoleAndCDROM boots a VM from an ISO ClusterVirtualImage attached as a CD-ROM (with
// a blank VirtualDisk next to it), then uses its serial console through the API websocket and
// through `rakhsh console` (detaching with Ctrl-]), its display through `rakhsh vnc`, and
// finally deletes it.
func TestVMConsoleAndCDROM(t *testing.T) {
	sideBySide(t)
	s, _ := guestISOServe(t, "blank=1Gi")
	var img v1alpha1.ClusterVirtualImage
	if err := s.Client().Get(context.Background(), "clustervirtualimages", "", "guest-iso", &img); err != nil {
		t.Fatal(err)
	}
	if !img.Status.CDROM || img.Status.Format != "iso" {
		t.Fatalf("ISO image: cdrom=%v format=%q, want a CD-ROM in iso format", img.Status.CDROM, img.Status.Format)
	}

	applyDocs(s, isoBootVM("cd1", "blank"))
	v := vmWait(t, s, "cd1", time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	uid := v.UID
	// The blank disk holds no boot loader: reaching `ready` proves the VM booted the CD-ROM.
	vmWaitSerial(t, s, "cd1", "RAKHSH-GUEST: ready", 1)
	log := vmLog(t, s, "cd1")
	if !strings.Contains(log, " 1073741824") {
		t.Errorf("the guest does not list the blank 1 GiB disk; serial log:\n%s", log)
	}

	// The serial console through the API websocket.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	con := openConsole(t, ctx, s.Client(), "cd1")
	con.run("echo CONSOLE-$((6*7))", "CONSOLE-42", 30*time.Second, "the API console websocket")
	t.Logf("API console output: %q", con.out.String())
	con.Close()

	// `rakhsh console` with standard input from a pipe; Ctrl-] detaches.
	t.Logf("rakhsh console output: %q", cliConsoleDetach(t, s, "cd1", "rakhsh console"))
	time.Sleep(time.Second)
	if v := vmGet(t, s, "cd1"); v == nil || v.Status.Phase != v1alpha1.VMPhaseRunning || testutil.CountQEMU(uid) != 1 {
		t.Fatalf("after detaching the console the VM is not running: %+v (%d QEMU)", v, testutil.CountQEMU(uid))
	}

	// `rakhsh vnc`: a local TCP port that speaks RFB.
	vnc := exec.Command(rakhshBin(t), "vnc", "cd1", "--listen", "127.0.0.1:0")
	vnc.Env = append(os.Environ(), "RAKHSH_SERVER="+s.Server())
	vncOut, err := vnc.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	vncErr := &lockedBuffer{}
	vnc.Stderr = vncErr
	if err := vnc.Start(); err != nil {
		t.Fatal(err)
	}
	vncDone := make(chan struct{})
	defer func() {
		select {
		case <-vncDone:
		default:
			_ = syscall.Kill(vnc.Process.Pid, syscall.SIGKILL)
			<-vncDone
		}
	}()
	addrCh := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(vncOut)
		for sc.Scan() {
			// "VNC of cd1 on 127.0.0.1:PORT (Ctrl-C to stop)"
			if f := strings.Fields(sc.Text()); len(f) >= 5 && f[0] == "VNC" {
				addrCh <- f[4]
			}
		}
		close(addrCh)
	}()
	go func() { _ = vnc.Wait(); close(vncDone) }()
	var addr string
	select {
	case addr = <-addrCh:
	case <-time.After(15 * time.Second):
	}
	if addr == "" {
		t.Fatalf("rakhsh vnc printed no address; stderr:\n%s", vncErr.String())
	}
	tc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = tc.SetReadDeadline(time.Now().Add(15 * time.Second))
	greet := make([]byte, 12)
	if _, err := io.ReadFull(tc, greet); err != nil {
		t.Fatalf("reading the RFB greeting through %s: %v; rakhsh vnc stderr:\n%s", addr, err, vncErr.String())
	}
	tc.Close()
	if !regexp.MustCompile(`^RFB 003\.00[0-9]\n$`).Match(greet) {
		t.Fatalf("RFB greeting %q", greet)
	}
	t.Logf("VNC through %s: %q", addr, greet)
	if err := syscall.Kill(vnc.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-vncDone:
	case <-time.After(10 * time.Second):
		t.Errorf("rakhsh vnc did not end within 10s of SIGTERM")
	}

	// Deletion stops QEMU.
	s.MustCLI("", "delete", "vm", "cd1", "--wait", "--timeout", "90s")
	if n := testutil.CountQEMU(uid); n != 0 {
		t.Fatalf("%d QEMU processes of the deleted VM", n)
	}
	if pids := testutil.QEMUPIDs(s.DataDir); len(pids) != 0 {
		t.Fatalf("QEMU left: %v", pids)
	}
}

// consoleWait waits until out has a line that is exactly want.
func consoleWait(t *testing.T, out *lockedBuffer, want string, timeout time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if hasLine(out.String(), want) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: no line %q within %s; output:\n%q", what, want, timeout, out.String())
}
