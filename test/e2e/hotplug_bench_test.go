package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestHotplugBenchmark measures, on one running test guest, the time from the API call
// (`rakhsh vm attach` / `rakhsh vm detach`, without --wait) to the guest seeing the change on
// its serial console, for a blank VirtualDisk (virtio-blk in a PCIe root port) and an ISO
// (SCSI CD-ROM), and prints every run and the medians. It runs only when
// RAKHSH_BENCH_HOTPLUG is set to the number of runs (docs/benchmarks.md).
func TestHotplugBenchmark(t *testing.T) {
	runs := benchCount(t, "RAKHSH_BENCH_HOTPLUG", "runs")
	s, _ := guestISOServe(t, "bd=64Mi")
	applyDocs(s, vmDoc{Name: "hb", Policy: "Manual", Memory: "256Mi", Refs: []string{cviRef("guest-iso")}}.String())
	vmStartGuest(t, s, "hb")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	con := openConsole(t, ctx, s.Client(), "hb")
	type devCase struct {
		label, name, kind, present string
	}
	cases := []devCase{
		{"disk", "bd", "VirtualDisk", "[ -e /sys/block/vda ]"},
		{"cdrom", "guest-iso", "ClusterVirtualImage", "[ -e /sys/block/sr1 ]"},
	}
	for _, c := range cases {
		var in, outT []float64
		for i := 0; i < runs; i++ {
			// The guest polls every 20 ms; the marker line says when it saw the change.
			con.sh(fmt.Sprintf(`while ! %s; do sleep 0.02; done; echo HPB-%s-IN-%d`, c.present, c.label, i))
			t0 := time.Now()
			s.MustCLI("", "vm", "attach", "hb", c.name, "--kind", c.kind)
			con.wait(fmt.Sprintf("HPB-%s-IN-%d", c.label, i), 2*time.Minute, c.label+" attach")
			in = append(in, time.Since(t0).Seconds())
			con.sh(fmt.Sprintf(`while %s; do sleep 0.02; done; echo HPB-%s-OUT-%d`, c.present, c.label, i))
			t0 = time.Now()
			s.MustCLI("", "vm", "detach", "hb", c.name)
			con.wait(fmt.Sprintf("HPB-%s-OUT-%d", c.label, i), 2*time.Minute, c.label+" detach")
			outT = append(outT, time.Since(t0).Seconds())
			waitObjGone(t, s, "virtualmachineblockdeviceattachments", "hb-"+c.name)
			t.Logf("%s run %d: attach→guest sees it %.2f s, detach→guest lost it %.2f s", c.label, i+1, in[i], outT[i])
		}
		mi, loi, hii := median(in)
		mo, loo, hio := median(outT)
		t.Logf("%s: attach median %.2f s (%.2f–%.2f), detach median %.2f s (%.2f–%.2f), %d runs", c.label, mi, loi, hii, mo, loo, hio, runs)
	}
	con.Close()
	s.MustCLI("", "delete", "vm", "hb", "--wait", "--timeout", "2m")
}

// waitObjGone waits until the object of the default project is gone.
func waitObjGone(t *testing.T, s *Serve, resource, name string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		var o map[string]any
		if err := s.Client().Get(context.Background(), resource, "default", name, &o); err != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s %s is not gone within a minute", resource, name)
}
