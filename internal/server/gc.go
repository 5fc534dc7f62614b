package server

import (
	"os"
	"runtime/debug"
)

// DaemonGCPercent is the garbage collector's target for serve and agent when GOGC is not
// set: a new collection once the heap has grown by half of what is live (Go's default is
// all of it). Both are long-lived daemons that spend very little CPU (a few seconds for
// twenty VMs from create to booted) and whose memory grows with the VMs they hold, so the
// trade is little CPU for a third less heap headroom (docs/benchmarks.md).
const DaemonGCPercent = 50

// tuneGC applies DaemonGCPercent unless the operator set GOGC.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(DaemonGCPercent)
	}
}
