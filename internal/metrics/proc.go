// Package metrics holds what Rakhsh's Prometheus metrics are made of that does not belong to
// one component: readers of a QEMU process's counters in /proc and of a tap's counters in
// /sys, the collector of a node's VMs (fed by the node agent at scrape time), and the catalog
// of every series Rakhsh exports (docs/metrics.md lists the same).
package metrics

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat: 100 on every Linux
// architecture Rakhsh runs on.
const clockTicks = 100

// ProcCPU is a process's CPU time in seconds.
type ProcCPU struct {
	User, System float64
}

// readProcStat reads utime and stime of /proc/PID/stat.
func readProcStat(proc string, pid int, buf []byte) (ProcCPU, error) {
	b, err := readSmall(filepath.Join(proc, strconv.Itoa(pid), "stat"), buf)
	if err != nil {
		return ProcCPU{}, err
	}
	// The command name (field 2) is in parentheses and may hold spaces: fields count from
	// the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ProcCPU{}, errors.New("malformed stat")
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return ProcCPU{}, errors.New("short stat")
	}
	u, err1 := strconv.ParseUint(string(f[11]), 10, 64)
	s, err2 := strconv.ParseUint(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return ProcCPU{}, errors.New("malformed stat times")
	}
	return ProcCPU{User: float64(u) / clockTicks, System: float64(s) / clockTicks}, nil
}

// readRSS reads the resident pages of /proc/PID/statm, in bytes.
func readRSS(proc string, pid int, buf []byte) (int64, error) {
	b, err := readSmall(filepath.Join(proc, strconv.Itoa(pid), "statm"), buf)
	if err != nil {
		return 0, err
	}
	f := bytes.Fields(b)
	if len(f) < 2 {
		return 0, errors.New("short statm")
	}
	n, err := strconv.ParseInt(string(f[1]), 10, 64)
	if err != nil {
		return 0, err
	}
	return n * int64(os.Getpagesize()), nil
}

// VCPUSched is one vCPU thread's scheduler counters, in seconds.
type VCPUSched struct {
	// VCPU is the vCPU's index as QEMU names its thread ("CPU 3/KVM", "CPU 3/TCG"), or "all"
	// for single-threaded TCG's one thread ("ALL CPUs/TCG").
	VCPU string
	// Run is the time the thread ran on a host CPU; Wait the time it was runnable but waited
	// for one (the run-queue delay: the guest's steal time).
	Run, Wait float64
}

// readVCPUs reads /proc/PID/task/*/schedstat of QEMU's vCPU threads, found by their names.
func readVCPUs(proc string, pid int, buf []byte) ([]VCPUSched, error) {
	dir := filepath.Join(proc, strconv.Itoa(pid), "task")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []VCPUSched
	for _, e := range ents {
		comm, err := readSmall(filepath.Join(dir, e.Name(), "comm"), buf)
		if err != nil {
			continue // the thread ended
		}
		vcpu, ok := vcpuOfThread(strings.TrimSpace(string(comm)))
		if !ok {
			continue
		}
		b, err := readSmall(filepath.Join(dir, e.Name(), "schedstat"), buf)
		if err != nil {
			continue
		}
		f := bytes.Fields(b)
		if len(f) < 2 {
			continue
		}
		run, err1 := strconv.ParseUint(string(f[0]), 10, 64)
		wait, err2 := strconv.ParseUint(string(f[1]), 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, VCPUSched{VCPU: vcpu, Run: float64(run) / 1e9, Wait: float64(wait) / 1e9})
	}
	return out, nil
}

// vcpuOfThread returns the vCPU index of a QEMU thread name: "CPU 0/KVM", "CPU 12/TCG" (the
// kernel keeps the first 15 bytes), or "all" for "ALL CPUs/TCG".
func vcpuOfThread(comm string) (string, bool) {
	if strings.HasPrefix(comm, "ALL CPUs/") {
		return "all", true
	}
	rest, ok := strings.CutPrefix(comm, "CPU ")
	if !ok {
		return "", false
	}
	n, _, ok := strings.Cut(rest, "/")
	if !ok || n == "" {
		return "", false
	}
	if _, err := strconv.ParseUint(n, 10, 16); err != nil {
		return "", false
	}
	return n, true
}

// TapCounters are a tap's counters from the host's side.
type TapCounters struct {
	RxBytes, TxBytes, RxPackets, TxPackets, RxDropped, TxDropped float64
}

var tapFiles = [...]string{"rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_dropped", "tx_dropped"}

// readTap reads /sys/class/net/TAP/statistics.
func readTap(sys, tap string, buf []byte) (TapCounters, error) {
	if tap == "" || strings.ContainsAny(tap, "/.") {
		return TapCounters{}, errors.New("bad tap name")
	}
	dir := filepath.Join(sys, "class", "net", tap, "statistics")
	var v [len(tapFiles)]float64
	for i, name := range tapFiles {
		b, err := readSmall(filepath.Join(dir, name), buf)
		if err != nil {
			return TapCounters{}, err
		}
		n, err := strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 64)
		if err != nil {
			return TapCounters{}, err
		}
		v[i] = float64(n)
	}
	return TapCounters{RxBytes: v[0], TxBytes: v[1], RxPackets: v[2], TxPackets: v[3], RxDropped: v[4], TxDropped: v[5]}, nil
}

// ReadKSM reads the kernel's same-page merging counters (/sys/kernel/mm/ksm): pages_shared
// (distinct pages kept) and pages_sharing (the pages they stand for, the saving).
func ReadKSM(sys string) (shared, sharing float64, err error) {
	buf := make([]byte, 64)
	var v [2]float64
	for i, name := range []string{"pages_shared", "pages_sharing"} {
		b, err := readSmall(filepath.Join(sys, "kernel", "mm", "ksm", name), buf)
		if err != nil {
			return 0, 0, err
		}
		n, err := strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 64)
		if err != nil {
			return 0, 0, err
		}
		v[i] = float64(n)
	}
	return v[0], v[1], nil
}

// readSmall reads a small proc or sys file into buf (one read: these files are made whole at
// open) and returns the bytes read. It uses the system calls directly: an *os.File would
// register each file with the runtime's poller and a finalizer, a third of a scrape's CPU.
func readSmall(path string, buf []byte) ([]byte, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	for {
		n, err := syscall.Read(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return nil, &os.PathError{Op: "read", Path: path, Err: io.EOF}
		}
		return buf[:n], nil
	}
}
