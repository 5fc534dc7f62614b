package eventgc_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/controller/eventgc"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
)

// TestRunsAgainstFake: the recorder merges repeats and the collector removes expired events
// through the fake client as through the API server.
func TestRunsAgainstFake(t *testing.T) {
	fc := fake.New()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := &runtime.Recorder{C: fc, Component: "test"}
	vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: "vm1", Namespace: "default", UID: "u1"}}
	for range 3 {
		rec.Event(ctx, "VirtualMachine", vm, "Warning", "Crashed", "boom")
	}
	l, err := fc.List(ctx, "events", "", client.ListOptions{})
	if err != nil || len(l.Items) != 1 {
		t.Fatalf("%v, %d events, want one merged", err, len(l.Items))
	}
	old := v1alpha1.NewTime(time.Now().Add(-2 * time.Hour))
	ev := v1alpha1.Event{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Event"},
		ObjectMeta:     v1alpha1.ObjectMeta{Name: "old", Namespace: "default"},
		InvolvedObject: v1alpha1.EventObjectReference{Kind: "VirtualMachine", Name: "x", Namespace: "default", UID: "x"},
		Reason:         "R", Message: "m", FirstTimestamp: &old, LastTimestamp: &old}
	if err := fc.Create(ctx, "events", "default", &ev, nil); err != nil {
		t.Fatal(err)
	}
	g := eventgc.New(eventgc.Config{Client: fc, TTL: time.Hour, Interval: 10 * time.Millisecond})
	go func() { _ = g.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for !client.IsNotFound(fc.Get(ctx, "events", "default", "old", nil)) {
		if time.Now().After(deadline) {
			t.Fatal("the expired event is still there")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if l, _ := fc.List(ctx, "events", "", client.ListOptions{}); len(l.Items) != 1 {
		t.Errorf("%d events left, want the fresh one: %s", len(l.Items), fmt.Sprint(l.Items))
	}
}
