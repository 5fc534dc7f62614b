package agent

import (
	"os"
	"strconv"
	"strings"
)

// readPIDFile reads a pid file: the pid, or 0 when the file is missing or does not hold a pid
// above 1.
func readPIDFile(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0
	}
	return pid
}

// liveProcess reports whether pid is a live process (not a zombie) whose command line, split
// into its arguments, match accepts. The command line identifies the process: a pid file may
// outlive its process, and the pid be reused by another.
func liveProcess(pid int, match func(argv []string) bool) bool {
	if pid <= 1 {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(cmdline) == 0 {
		return false // gone, or a zombie (whose cmdline is empty)
	}
	if stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil {
		// state is the field after the ")" that closes the command name
		if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
			return false
		}
	}
	return match(strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00"))
}

// livePID returns the pid in pidfile when liveProcess accepts it, else 0.
func livePID(pidfile string, match func(argv []string) bool) int {
	if pid := readPIDFile(pidfile); liveProcess(pid, match) {
		return pid
	}
	return 0
}
