package eventgc_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/apiserver"
	"github.com/rakhsh/rakhsh/internal/controller/eventgc"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/store/bolt"
)

func apiClient(t *testing.T) *client.Client {
	t.Helper()
	dir := t.TempDir()
	st, err := bolt.Open(filepath.Join(dir, "rakhsh.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	api := apiserver.New(apiserver.Config{Store: st})
	if err := api.EnsureProject(context.Background(), apiserver.DefaultProject); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: api.LocalHandler()}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	c, err := client.New(client.Config{Server: "unix://" + filepath.Join(dir, "api.sock")})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func events(t *testing.T, c *client.Client) []v1alpha1.Event {
	t.Helper()
	l, err := c.ListAll(context.Background(), "events", "", client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := make([]v1alpha1.Event, len(l.Items))
	for i, raw := range l.Items {
		if err := json.Unmarshal(raw, &out[i]); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestRecorderMergesRepeats: the same event recorded three times is one Event with count 3.
func TestRecorderMergesRepeats(t *testing.T) {
	c := apiClient(t)
	rec := &runtime.Recorder{C: c, Component: "test"}
	vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: "vm1", Namespace: "default", UID: "u1"}}
	ctx := context.Background()
	for range 3 {
		rec.Event(ctx, "VirtualMachine", vm, "Warning", "Crashed", "QEMU exited: boom")
	}
	rec.Event(ctx, "VirtualMachine", vm, "Normal", "Started", "QEMU started")
	evs := events(t, c)
	if len(evs) != 2 {
		t.Fatalf("%d events, want 2 (repeats merged): %+v", len(evs), evs)
	}
	for _, ev := range evs {
		want := int32(1)
		if ev.Reason == "Crashed" {
			want = 3
			if !ev.LastTimestamp.After(ev.FirstTimestamp.Time) {
				t.Errorf("merged event: first %v, last %v", ev.FirstTimestamp, ev.LastTimestamp)
			}
		}
		if ev.Count != want {
			t.Errorf("%s: count %d, want %d", ev.Reason, ev.Count, want)
		}
	}
}

// TestSweep: events past the TTL go; of one object's events only the newest MaxPerObject stay.
func TestSweep(t *testing.T) {
	c := apiClient(t)
	ctx := context.Background()
	now := time.Now()
	mk := func(obj string, i int, age time.Duration) {
		ts := v1alpha1.NewTime(now.Add(-age))
		ev := v1alpha1.Event{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Event"},
			ObjectMeta:     v1alpha1.ObjectMeta{Name: fmt.Sprintf("%s-%d", obj, i), Namespace: "default"},
			InvolvedObject: v1alpha1.EventObjectReference{Kind: "VirtualMachine", Name: obj, Namespace: "default", UID: obj},
			Reason:         "R", Message: fmt.Sprint(i), FirstTimestamp: &ts, LastTimestamp: &ts}
		if err := c.Create(ctx, "events", "default", &ev, nil); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 8 {
		mk("busy", i, time.Duration(8-i)*time.Minute) // busy-7 is the newest
	}
	mk("old", 0, 2*time.Hour)
	mk("fresh", 0, time.Minute)
	g := eventgc.New(eventgc.Config{Client: c, TTL: time.Hour, MaxPerObject: 3})
	n, err := g.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 6 {
		t.Errorf("deleted %d, want 6 (5 of busy beyond 3, and old)", n)
	}
	left := map[string]bool{}
	for _, ev := range events(t, c) {
		left[ev.Name] = true
	}
	for _, name := range []string{"busy-5", "busy-6", "busy-7", "fresh-0"} {
		if !left[name] {
			t.Errorf("%s was deleted", name)
		}
	}
	if len(left) != 4 {
		t.Errorf("left %v", left)
	}
}
