package runtime_test

import (
	"context"
	"fmt"
	goruntime "runtime"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
)

// benchVMs fills a fake with n VMs with a status as agents and controllers write it.
func benchVMs(b *testing.B, n int) *fake.Client {
	fc := fake.New()
	for i := range n {
		v := vm(fmt.Sprintf("vm-%05d", i), "node-1")
		v.Labels = map[string]string{"app": "web", "tier": "frontend"}
		v.Spec.BlockDeviceRefs = []v1alpha1.BlockDeviceSpecRef{{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: "root"}}
		v.Spec.RunPolicy = v1alpha1.RunPolicyAlwaysOn
		v.Status.Phase = v1alpha1.VMPhaseRunning
		v.Status.IPAddress = "10.66.0.2"
		now := v1alpha1.Now()
		for _, c := range []string{"BlockDevicesReady", "Scheduled", "IPAddressReady", "MACAddressReady", "Running"} {
			v.Status.Conditions = append(v.Status.Conditions, v1alpha1.Condition{Type: c, Status: "True", Reason: c,
				Message: "a message of a typical length for " + c, LastTransitionTime: &now})
		}
		if err := fc.Add(v); err != nil {
			b.Fatal(err)
		}
	}
	return fc
}

func heapInUse() uint64 {
	goruntime.GC()
	goruntime.GC()
	var m goruntime.MemStats
	goruntime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkVMCacheMemory reports the heap the controllers of one serve process hold for
// their caches of VMs: six untyped informers (one per controller, as before the shared
// factory) against one shared typed informer.
func BenchmarkVMCacheMemory(b *testing.B) {
	const n = 5000
	fc := benchVMs(b, n)
	for _, tc := range []struct {
		name string
		make func(ctx context.Context) []runtime.Syncer
	}{
		{"six-untyped", func(ctx context.Context) []runtime.Syncer {
			var out []runtime.Syncer
			for range 6 {
				inf := runtime.NewInformer(fc, "virtualmachines", "", nil)
				go inf.Run(ctx)
				out = append(out, inf)
			}
			return out
		}},
		{"one-shared-typed", func(ctx context.Context) []runtime.Syncer {
			f := runtime.NewFactory(fc, nil)
			vms := f.VirtualMachines()
			f.Start(ctx)
			return []runtime.Syncer{vms}
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				before := heapInUse()
				ctx, cancel := context.WithCancel(context.Background())
				infs := tc.make(ctx)
				if !runtime.WaitForSync(ctx, infs...) {
					b.Fatal("not synced")
				}
				after := heapInUse()
				b.ReportMetric(float64(after-before)/n, "B/vm")
				goruntime.KeepAlive(infs)
				cancel()
			}
		})
	}
}
