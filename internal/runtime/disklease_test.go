package runtime_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
)

func token(t *testing.T, l *v1alpha1.VirtualDiskLease) int64 {
	t.Helper()
	n, err := strconv.ParseInt(l.ResourceVersion, 10, 64)
	if err != nil {
		t.Fatalf("token %q: %v", l.ResourceVersion, err)
	}
	return n
}

// TestDiskLeaseLifecycle: a lease is granted to one holder at a time, and each new grant has a
// larger token than every earlier one.
func TestDiskLeaseLifecycle(t *testing.T) {
	ctx := context.Background()
	c := fake.New()
	now := time.Now()
	l1, err := runtime.AcquireDiskLease(ctx, c, "p", "d1", "n1", "vm1", "u1", now, nil)
	if err != nil || !l1.HeldBy("n1", "u1") || l1.Spec.LeaseTransitions != 1 {
		t.Fatalf("first acquisition: %+v %v", l1, err)
	}
	again, err := runtime.AcquireDiskLease(ctx, c, "p", "d1", "n1", "vm1", "u1", now, nil)
	if err != nil || again.ResourceVersion != l1.ResourceVersion {
		t.Fatalf("the holder acquiring again must keep its token %s: %+v %v", l1.ResourceVersion, again, err)
	}
	held, err := runtime.AcquireDiskLease(ctx, c, "p", "d1", "n2", "vm1", "u1", now, nil)
	if !errors.Is(err, runtime.ErrDiskLeaseHeld) || held == nil || held.Spec.HolderNode != "n1" {
		t.Fatalf("another node acquiring a held lease: %+v %v", held, err)
	}
	// Another instance of a VM on the same node: only when mayTake says so.
	if _, err := runtime.AcquireDiskLease(ctx, c, "p", "d1", "n1", "vm1", "u2", now, func(*v1alpha1.VirtualDiskLease) bool { return false }); !errors.Is(err, runtime.ErrDiskLeaseHeld) {
		t.Fatalf("a second instance took a lease its first still holds: %v", err)
	}
	// Only the holder releases.
	if ok, err := runtime.ReleaseDiskLease(ctx, c, "p", "d1", "n2", "", "test"); ok || err != nil {
		t.Fatalf("a non-holder released the lease: %v %v", ok, err)
	}
	if ok, err := runtime.ReleaseDiskLease(ctx, c, "p", "d1", "n1", "u1", "test"); !ok || err != nil {
		t.Fatalf("the holder's release: %v %v", ok, err)
	}
	l2, err := runtime.AcquireDiskLease(ctx, c, "p", "d1", "n2", "vm1", "u1", now, nil)
	if err != nil || !l2.HeldBy("n2", "u1") || token(t, l2) <= token(t, l1) || l2.Spec.LeaseTransitions != 3 {
		t.Fatalf("acquisition after the release: %+v %v (first token %s)", l2, err, l1.ResourceVersion)
	}
	// The migration controller hands it over; a move from a node that does not hold it does
	// nothing.
	if ok, err := runtime.MoveDiskLease(ctx, c, "p", "d1", "n1", "n3", "u1", "test"); ok || err != nil {
		t.Fatalf("a move from a non-holder: %v %v", ok, err)
	}
	if ok, err := runtime.MoveDiskLease(ctx, c, "p", "d1", "n2", "n3", "u1", "test"); !ok || err != nil {
		t.Fatalf("the move: %v %v", ok, err)
	}
	var l3 v1alpha1.VirtualDiskLease
	if err := c.Get(ctx, runtime.DiskLeaseResource, "p", "d1", &l3); err != nil || !l3.HeldBy("n3", "u1") || token(t, &l3) <= token(t, l2) {
		t.Fatalf("after the move: %+v %v", l3, err)
	}
	// Releasing a lease that does not exist is no error.
	if ok, err := runtime.ReleaseDiskLease(ctx, c, "p", "nope", "n1", "", "test"); ok || err != nil {
		t.Fatalf("release of a missing lease: %v %v", ok, err)
	}
}

func TestWritableDisks(t *testing.T) {
	vm := &v1alpha1.VirtualMachine{}
	vm.Spec.BlockDeviceRefs = []v1alpha1.BlockDeviceSpecRef{{Kind: v1alpha1.BlockDeviceKindClusterVirtualImage, Name: "img"},
		{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: "a"}, {Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: "b"}}
	vm.Status.BlockDeviceRefs = []v1alpha1.BlockDeviceStatusRef{{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: "a"}, {Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: "c"}}
	got := runtime.WritableDisks(vm)
	if len(got) != 3 || got[0] != "a" || got[1] != "b" || got[2] != "c" {
		t.Fatalf("WritableDisks = %v, want [a b c]", got)
	}
}
