package client

import (
	"context"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// Interface is what controllers and other in-process components need of the API: reads,
// lists, watches and writes of objects and their status. *Client implements it over HTTP; an
// in-memory fake (internal/runtime/fake) implements it for unit tests.
type Interface interface {
	Get(ctx context.Context, resource, namespace, name string, out any) error
	List(ctx context.Context, resource, namespace string, opts ListOptions) (*v1alpha1.List, error)
	ListAll(ctx context.Context, resource, namespace string, opts ListOptions) (*v1alpha1.List, error)
	Watch(ctx context.Context, resource, namespace string, opts ListOptions) (*Watcher, error)
	Create(ctx context.Context, resource, namespace string, obj, out any) error
	Update(ctx context.Context, resource, namespace, name string, obj, out any) error
	UpdateStatus(ctx context.Context, resource, namespace, name string, obj, out any) error
	Patch(ctx context.Context, resource, namespace, name string, patch []byte, out any) error
	JSONPatch(ctx context.Context, resource, namespace, name string, patch []byte, out any) error
	PatchStatus(ctx context.Context, resource, namespace, name string, patch []byte, out any) error
	JSONPatchStatus(ctx context.Context, resource, namespace, name string, patch []byte, out any) error
	PatchStatusStrategic(ctx context.Context, resource, namespace, name string, patch []byte, out any) error
	Bind(ctx context.Context, namespace, name string, b *v1alpha1.VirtualMachineBinding, out any) error
	Delete(ctx context.Context, resource, namespace, name string) error
	DeleteWithGrace(ctx context.Context, resource, namespace, name string, grace time.Duration) error
}

var _ Interface = (*Client)(nil)

// WatchFeed feeds a Watcher made by NewWatcher.
type WatchFeed struct {
	w    *Watcher
	ctx  context.Context
	once sync.Once
}

// NewWatcher returns a Watcher whose events come from the returned feed, for implementations
// of Interface other than *Client. Feed it from one goroutine.
func NewWatcher() (*Watcher, *WatchFeed) {
	ctx, cancel := context.WithCancel(context.Background())
	w := &Watcher{ch: make(chan v1alpha1.WatchEvent, 64), cancel: cancel, done: make(chan struct{})}
	return w, &WatchFeed{w: w, ctx: ctx}
}

// Send delivers one event; it reports false once the watcher was stopped.
func (f *WatchFeed) Send(ev v1alpha1.WatchEvent) bool {
	select {
	case <-f.ctx.Done():
		return false
	default:
	}
	select {
	case f.w.ch <- ev:
		return true
	case <-f.ctx.Done():
		return false
	}
}

// Stopped is closed when the watcher's Stop was called.
func (f *WatchFeed) Stopped() <-chan struct{} { return f.ctx.Done() }

// Finish ends the stream; the watcher's Err then returns err. Send may not follow.
func (f *WatchFeed) Finish(err error) {
	f.once.Do(func() {
		f.w.err = err
		close(f.w.ch)
		close(f.w.done)
		f.w.cancel()
	})
}
