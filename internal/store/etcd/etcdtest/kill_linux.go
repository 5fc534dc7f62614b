package etcdtest

import (
	"os/exec"
	"syscall"
)

// killWithParent makes the kernel kill etcd if the test process dies before its cleanup runs.
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
