// Package benchhost reads, for the benchmarks' reports, what the machine they run on is doing.
package benchhost

import (
	"os"
	"strings"
)

// LoadAvg returns the 1, 5 and 15 minute load averages of /proc/loadavg ("?" when it cannot
// be read).
func LoadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
