package e2e

import (
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TestUIListBenchmark measures the web UI's VM list with 500 VMs in Debian's chromium: the
// time from the start of a page load to the list showing all 500 rows (the page is usable
// then: its watch is open and every row is a link), for docs/benchmarks.md. It runs only when
// RAKHSH_BENCH_UI is set (to the number of page loads); its figures are what it is for.
func TestUIListBenchmark(t *testing.T) {
	runs := benchCount(t, "RAKHSH_BENCH_UI", "page loads")
	const n = 500
	addr := freeAddr(t)
	s := StartServe(t, "--listen", addr)
	c := s.Client()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	work := make(chan int)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				vm := v1alpha1.VirtualMachine{
					TypeMeta:   v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine"},
					ObjectMeta: v1alpha1.ObjectMeta{Name: fmt.Sprintf("vm-%03d", i), Namespace: "default"},
					Spec: v1alpha1.VirtualMachineSpec{RunPolicy: v1alpha1.RunPolicyAlwaysOff,
						CPU: v1alpha1.VirtualMachineCPU{Cores: 1}, Memory: v1alpha1.VirtualMachineMemory{Size: "256Mi"}},
				}
				if err := c.Create(ctxT(t), "virtualmachines", "default", &vm, nil); err != nil {
					errs <- err
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("creating the VMs: %v", err)
	}
	tok := adminToken(t, s)
	base := "https://" + addr
	ctx := uiBrowser(t)
	uiRun(t, ctx, 60*time.Second, "log in",
		chromedp.Navigate(base+"/ui/"),
		chromedp.WaitVisible("#token", chromedp.ByID),
		chromedp.SendKeys("#token", tok, chromedp.ByID),
		chromedp.Click("#login", chromedp.ByID),
		chromedp.WaitVisible("#vm-list", chromedp.ByID))
	var ms []float64
	for i := 0; i < runs; i++ {
		var at float64
		uiRun(t, ctx, 2*time.Minute, "load the list",
			chromedp.Navigate(fmt.Sprintf("%s/ui/?load=%d#/vms", base, i)),
			chromedp.Poll(fmt.Sprintf(`document.querySelectorAll('#vm-list tr[data-vm]').length === %d ? performance.now() : 0`, n), &at, chromedp.WithPollingInterval(5*time.Millisecond)))
		ms = append(ms, at)
	}
	sort.Float64s(ms)
	t.Logf("VM list with %d VMs, navigation start to %d rows shown, %d loads: median %.0f ms, min %.0f ms, max %.0f ms",
		n, n, runs, ms[len(ms)/2], ms[0], ms[len(ms)-1])
}
