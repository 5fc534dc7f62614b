package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestLivePID(t *testing.T) {
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "x.pid")
	self := os.Getpid()
	isTest := func(argv []string) bool { return strings.HasSuffix(argv[0], ".test") }

	if livePID(pidfile, isTest) != 0 {
		t.Fatal("a pid without a pid file")
	}
	for _, junk := range []string{"", "x", "1", "0", "-5", "99999999999999999999", "12 13"} {
		if err := os.WriteFile(pidfile, []byte(junk), 0o600); err != nil {
			t.Fatal(err)
		}
		if readPIDFile(pidfile) != 0 || livePID(pidfile, isTest) != 0 {
			t.Errorf("pid file %q read as a pid", junk)
		}
	}
	if err := os.WriteFile(pidfile, []byte(strconv.Itoa(self)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := livePID(pidfile, isTest); got != self {
		t.Fatalf("livePID = %d, want this test's pid %d", got, self)
	}
	if livePID(pidfile, func([]string) bool { return false }) != 0 {
		t.Fatal("a process whose command line does not match was accepted")
	}

	// A zombie (exited, not yet reaped) is not alive, whatever its command line was.
	cmd := exec.Command("sleep", "0")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	pid := cmd.Process.Pid
	deadline := time.Now().Add(10 * time.Second)
	for {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			t.Fatal(err)
		}
		if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && stat[i+2] == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("sleep 0 did not become a zombie within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if liveProcess(pid, func([]string) bool { return true }) {
		t.Fatal("a zombie counts as alive")
	}
}
