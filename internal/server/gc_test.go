package server

import (
	"runtime/debug"
	"testing"
)

func TestTuneGC(t *testing.T) {
	old := debug.SetGCPercent(100)
	defer debug.SetGCPercent(old)
	t.Setenv("GOGC", "")
	tuneGC()
	if got := debug.SetGCPercent(77); got != DaemonGCPercent {
		t.Errorf("without GOGC: GC percent %d, want %d", got, DaemonGCPercent)
	}
	t.Setenv("GOGC", "200")
	tuneGC()
	if got := debug.SetGCPercent(100); got != 77 {
		t.Errorf("with GOGC set: GC percent changed to %d", got)
	}
}
