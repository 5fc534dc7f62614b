package agent

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const mi = int64(1) << 20

func TestPlanBalloons(t *testing.T) {
	vms := []balloonVM{
		{full: 1024 * mi, floor: 512 * mi, actual: 1024 * mi}, // can give 512
		{full: 1024 * mi, floor: 0, actual: 1024 * mi},        // no class minimum: never
		{full: 2048 * mi, floor: 512 * mi, actual: 2048 * mi}, // can give 1536
		{full: 512 * mi, floor: 512 * mi, actual: 512 * mi},   // at its floor
	}
	// Short by 400 MiB: taken 1:3 from the two that can give.
	got := planBalloons(vms, 600*mi, 1000*mi)
	if got[1] != -1 || got[3] != -1 {
		t.Errorf("VMs that cannot give were touched: %v", got)
	}
	if g0, g2 := (1024*mi-got[0])/mi, (2048*mi-got[2])/mi; g0 < 99 || g0 > 102 || g2 < 299 || g2 > 302 {
		t.Errorf("taken %d and %d MiB, want about 100 and 300", g0, g2)
	}
	for i, v := range got {
		if v >= 0 && (v%mi != 0 || v < vms[i].floor) {
			t.Errorf("target %d of VM %d: not whole MiB or below its floor", v, i)
		}
	}
	// Far short: never below the floors.
	got = planBalloons(vms, 0, 100000*mi)
	if got[0] != 512*mi || got[2] != 512*mi {
		t.Errorf("far short: %v, want the floors", got)
	}
	// A little short: at least 64 MiB moves.
	got = planBalloons(vms, 999*mi, 1000*mi)
	if taken := (1024*mi - got[0]) + (2048*mi - got[2]); taken < 64*mi {
		t.Errorf("a 1 MiB shortfall took %d MiB, want at least 64", taken/mi)
	}
	// Between the reserve and twice it: hold; above twice it: all back.
	vms[0].actual, vms[2].actual = 700*mi, 900*mi
	for i, v := range planBalloons(vms, 1500*mi, 1000*mi) {
		if v != -1 {
			t.Errorf("holding: VM %d gets %d", i, v)
		}
	}
	got = planBalloons(vms, 2500*mi, 1000*mi)
	if got[0] != 1024*mi || got[2] != 2048*mi || got[1] != -1 || got[3] != -1 {
		t.Errorf("plenty: %v, want the full sizes of the ballooned VMs", got)
	}
}

func TestTookBack(t *testing.T) {
	for _, c := range []struct {
		target, last, actual int64
		want                 bool
	}{
		{128 * mi, 300 * mi, 250 * mi, false}, // inflating toward the target
		{128 * mi, 128 * mi, 200 * mi, true},  // the guest deflated it (out of memory)
		{128 * mi, 128 * mi, 140 * mi, false}, // within 16 MiB
		{0, 128 * mi, 384 * mi, false},        // never asked
		{384 * mi, 128 * mi, 300 * mi, false}, // let out by the node
		{128 * mi, 0, 300 * mi, false},        // first look
	} {
		if got := tookBack(c.target, c.last, c.actual); got != c.want {
			t.Errorf("tookBack(%d, %d, %d MiB) = %v", c.target/mi, c.last/mi, c.actual/mi, got)
		}
	}
}

func TestReadMeminfo(t *testing.T) {
	p := filepath.Join(t.TempDir(), "meminfo")
	_ = os.WriteFile(p, []byte("MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:   12000000 kB\n"), 0o644)
	total, avail, err := readMeminfo(p)
	if err != nil || total != 24000000<<10 || avail != 12000000<<10 {
		t.Errorf("%d %d %v", total, avail, err)
	}
	_ = os.WriteFile(p, []byte("MemTotal: 1 kB\n"), 0o644)
	if _, _, err := readMeminfo(p); err == nil || !strings.Contains(err.Error(), "no MemTotal or MemAvailable") {
		t.Errorf("no MemAvailable: %v", err)
	}
}

// TestTuneKSM runs the modes against a fake /sys/kernel/mm/ksm.
func TestTuneKSM(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "kernel", "mm", "ksm")
	old := sysRoot
	sysRoot = root
	t.Cleanup(func() { sysRoot = old })
	write := func(name, v string) {
		_ = os.MkdirAll(dir, 0o755)
		_ = os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o644)
	}
	readf := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		return strings.TrimSpace(string(b))
	}
	a := &Agent{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	a.cfg.DataDir = t.TempDir()
	if st := a.tuneKSM(true); st != nil {
		t.Fatalf("no KSM in the kernel: %+v", st)
	}
	write("run", "0")
	write("pages_to_scan", "100")
	write("pages_shared", "10")
	write("pages_sharing", "250")
	a.cfg.KSM = KSMAuto
	if st := a.tuneKSM(false); st.Running || readf("run") != "0" {
		t.Errorf("auto, memory plentiful: %+v run=%s", st, readf("run"))
	}
	st := a.tuneKSM(true)
	if !st.Running || readf("run") != "1" || readf("pages_to_scan") != "1000" || st.PagesSharing != 250 || st.PagesShared != 10 || st.Mode != KSMAuto {
		t.Errorf("auto, memory short: %+v run=%s pages_to_scan=%s", st, readf("run"), readf("pages_to_scan"))
	}
	if st.Saved == "" {
		t.Errorf("no saved bytes: %+v", st)
	}
	// A new agent process (the marker in the data dir) stops what the old one started.
	a = &Agent{log: a.log, cfg: a.cfg}
	if st := a.tuneKSM(false); st.Running || readf("run") != "0" {
		t.Errorf("auto, memory back: %+v", st)
	}
	// Started by someone else: auto leaves it running when memory is plentiful.
	write("run", "1")
	if st := a.tuneKSM(false); !st.Running || readf("run") != "1" {
		t.Errorf("auto stopped a ksmd it did not start: %+v", st)
	}
	// off leaves it alone either way.
	a.cfg.KSM = KSMOff
	if st := a.tuneKSM(true); !st.Running || readf("run") != "1" {
		t.Errorf("off touched KSM: %+v", st)
	}
	write("run", "0")
	a.cfg.KSM = KSMOn
	if st := a.tuneKSM(false); !st.Running || readf("run") != "1" {
		t.Errorf("on: %+v", st)
	}
}
