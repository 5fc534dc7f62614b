package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu"
)

// hostFacts is what the agent probes of its host once at start-up.
type hostFacts struct {
	qemu          qemu.NodeFacts
	qemuErr       error // why QEMU is unusable, if it is
	cpus          int64
	memoryBytes   int64
	cpuModel      string
	cpuFeatures   []string
	kernelVersion string
}

var qemuVersionRe = regexp.MustCompile(`version (\d+\.\d+(?:\.\d+)?)`)

// probeHost gathers the host facts. A missing or broken QEMU is recorded in qemuErr, not
// returned: the node then registers as NotReady and says why.
func probeHost(ctx context.Context, binary string) hostFacts {
	f := hostFacts{cpus: int64(runtime.NumCPU())}
	f.qemu.QEMUBinary = binary
	if path, err := exec.LookPath(binary); err != nil {
		f.qemuErr = fmt.Errorf("QEMU binary %q not found: install qemu-system-x86 (%w)", binary, err)
	} else {
		f.qemu.QEMUBinary = path
		out, err := runTool(ctx, path, "--version")
		if m := qemuVersionRe.FindStringSubmatch(out); err == nil && m != nil {
			f.qemu.QEMUVersion = m[1]
		} else {
			f.qemuErr = fmt.Errorf("running %s --version: %v: %s", path, err, tail([]byte(out), 400))
		}
		if help, err := runTool(ctx, path, "-help"); err == nil {
			f.qemu.HasSandbox = strings.Contains(help, "\n-sandbox")
		}
	}
	f.qemu.VhostNet = usableDevice("/dev/vhost-net")
	f.qemu.HostCPUs = runtime.NumCPU()
	for _, p := range []struct {
		dst  *string
		path string
	}{
		{&f.qemu.OVMFCode, "/usr/share/OVMF/OVMF_CODE_4M.fd"},
		{&f.qemu.OVMFVars, "/usr/share/OVMF/OVMF_VARS_4M.fd"},
		{&f.qemu.OVMFSecureCode, "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"},
		{&f.qemu.OVMFSecureVarsTemplate, "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"},
	} {
		// A distribution may ship the firmware as symlinks; QEMU gets the file itself (the
		// descriptors handed to QEMU are opened without following a symlink).
		if real, err := filepath.EvalSymlinks(p.path); err == nil {
			if fi, err := os.Stat(real); err == nil && fi.Mode().IsRegular() {
				*p.dst = real
			}
		}
	}
	f.memoryBytes = memTotal()
	f.cpuModel, f.cpuFeatures = cpuInfo()
	f.cpuFeatures = qemuKnownFeatures(ctx, f.qemu.QEMUBinary, f.cpuFeatures)
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		f.kernelVersion = strings.TrimSpace(string(b))
	}
	return f
}

// acceleratorName is the Node's status.accelerator.
func (a *Agent) acceleratorName() v1alpha1.Accelerator {
	if a.kvm() {
		return v1alpha1.AcceleratorKVM
	}
	return v1alpha1.AcceleratorTCG
}

// runTool runs a program with explicit arguments (no shell) and a timeout, returning its
// combined output.
func runTool(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

func usableDevice(path string) bool {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

func memTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(fields[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// cpuInfo returns the model name and the feature flags (named as QEMU names them) of the
// first CPU in /proc/cpuinfo.
func cpuInfo() (string, []string) {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "", nil
	}
	var model string
	var flags []string
	for _, line := range bytes.Split(data, []byte("\n")) {
		k, v, ok := strings.Cut(string(line), ":")
		if !ok {
			if model != "" && flags != nil {
				break // end of the first processor
			}
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "model name":
			if model == "" {
				model = v
			}
		case "flags":
			if flags == nil {
				flags = qemuFeatureNames(strings.Fields(v))
			}
		}
	}
	return model, flags
}

// qemuFeatureNames maps kernel cpuinfo flag names to QEMU's feature names, sorted and unique.
func qemuFeatureNames(kernel []string) []string {
	seen := map[string]bool{}
	out := make([]string, 0, len(kernel))
	for _, k := range kernel {
		n := k
		switch k {
		case "sse4_1":
			n = "sse4.1"
		case "sse4_2":
			n = "sse4.2"
		default:
			n = strings.ReplaceAll(k, "_", "-")
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// freeBytes is the space available to unprivileged users on the file system of path.
func freeBytes(path string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0
	}
	return int64(st.Bavail) * st.Bsize
}

// tail returns at most n bytes from the end of b, starting at a line boundary when possible.
func tail(b []byte, n int) string {
	b = bytes.TrimRight(b, "\n ")
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 && i < len(b)-1 {
			b = b[i+1:]
		}
	}
	return string(b)
}
