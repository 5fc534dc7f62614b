package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"sync"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// TypedInformer lists and watches one resource and keeps every object decoded, once, as a
// *T: readers share the cached objects, so they must not change them (copy first, e.g. with
// DeepCopy). It relists after a watch error or an Expired event. Handlers get the key of
// every changed object (added, modified or deleted) and, on every relist, every key.
//
// Informers are made through a Factory, which makes one per resource and selector for the
// whole process.
type TypedInformer[T any] struct {
	c        client.Interface
	resource string
	opts     client.ListOptions
	log      *slog.Logger

	mu       sync.RWMutex
	items    map[Key]*T
	synced   bool
	syncedCh chan struct{}
	handlers []func(Key)
}

// NewTypedInformer returns an informer of resource whose objects decode into T (a kind's Go
// type, e.g. v1alpha1.VirtualMachine). Only opts.LabelSelector and opts.FieldSelector count.
// Most code gets informers from a Factory instead.
func NewTypedInformer[T any](c client.Interface, resource string, opts client.ListOptions, log *slog.Logger) *TypedInformer[T] {
	if log == nil {
		log = slog.Default()
	}
	opts = client.ListOptions{LabelSelector: opts.LabelSelector, FieldSelector: opts.FieldSelector}
	return &TypedInformer[T]{c: c, resource: resource, opts: opts, log: log.With("informer", resource),
		items: map[Key]*T{}, syncedCh: make(chan struct{})}
}

// Resource returns the informer's resource.
func (inf *TypedInformer[T]) Resource() string { return inf.resource }

// OnChange registers a handler. Handlers run one at a time, on the informer's goroutine, and
// should only queue work. A handler added after the first list is called at once for every
// cached key.
func (inf *TypedInformer[T]) OnChange(h func(Key)) {
	inf.mu.Lock()
	inf.handlers = append(inf.handlers, h)
	synced := inf.synced
	var keys []Key
	if synced {
		keys = make([]Key, 0, len(inf.items))
		for k := range inf.items {
			keys = append(keys, k)
		}
	}
	inf.mu.Unlock()
	for _, k := range keys {
		h(k)
	}
}

// Synced is closed after the first full list.
func (inf *TypedInformer[T]) Synced() <-chan struct{} { return inf.syncedCh }

// HasSynced says whether the first full list arrived.
func (inf *TypedInformer[T]) HasSynced() bool {
	select {
	case <-inf.syncedCh:
		return true
	default:
		return false
	}
}

// Get returns the cached object of key k. The object is shared: do not change it.
func (inf *TypedInformer[T]) Get(k Key) (*T, bool) {
	inf.mu.RLock()
	defer inf.mu.RUnlock()
	o, ok := inf.items[k]
	return o, ok
}

// List returns every cached object, sorted by key. The objects are shared: do not change them.
func (inf *TypedInformer[T]) List() []*T {
	inf.mu.RLock()
	keys := make([]Key, 0, len(inf.items))
	for k := range inf.items {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	out := make([]*T, 0, len(keys))
	for _, k := range keys {
		out = append(out, inf.items[k])
	}
	inf.mu.RUnlock()
	return out
}

// Keys returns every cached key, sorted.
func (inf *TypedInformer[T]) Keys() []Key {
	inf.mu.RLock()
	out := make([]Key, 0, len(inf.items))
	for k := range inf.items {
		out = append(out, k)
	}
	inf.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// KeysWhere returns the keys of the cached objects that match, sorted. The objects match
// sees are shared: it must not change them.
func (inf *TypedInformer[T]) KeysWhere(match func(*T) bool) []Key {
	type entry struct {
		k Key
		o *T
	}
	inf.mu.RLock()
	all := make([]entry, 0, len(inf.items))
	for k, o := range inf.items {
		all = append(all, entry{k, o})
	}
	inf.mu.RUnlock()
	sort.Slice(all, func(i, j int) bool { return all[i].k < all[j].k })
	var out []Key
	for _, e := range all {
		if match(e.o) {
			out = append(out, e.k)
		}
	}
	return out
}

// Len returns the number of cached objects.
func (inf *TypedInformer[T]) Len() int {
	inf.mu.RLock()
	defer inf.mu.RUnlock()
	return len(inf.items)
}

// Run lists and watches until ctx ends.
func (inf *TypedInformer[T]) Run(ctx context.Context) {
	listAndWatch(ctx, inf.log, inf.relist, inf.watch)
}

// decode turns one object's JSON into its cached form and key.
func (inf *TypedInformer[T]) decode(raw []byte) (Key, *T, error) {
	o := new(T)
	if err := json.Unmarshal(raw, o); err != nil {
		return "", nil, err
	}
	if obj, ok := any(o).(v1alpha1.Object); ok {
		return KeyOf(obj), o, nil
	}
	k, err := keyOfRaw(raw)
	return k, o, err
}

func (inf *TypedInformer[T]) relist(ctx context.Context) (string, error) {
	l, err := inf.c.ListAll(ctx, inf.resource, "", inf.opts)
	if err != nil {
		return "", err
	}
	fresh := make(map[Key]*T, len(l.Items))
	for _, it := range l.Items {
		k, o, err := inf.decode(it)
		if err != nil {
			inf.log.Warn("undecodable object in list", "err", err)
			continue
		}
		fresh[k] = o
	}
	inf.mu.Lock()
	changed := make([]Key, 0, len(fresh))
	for k := range inf.items {
		if _, ok := fresh[k]; !ok {
			changed = append(changed, k)
		}
	}
	for k := range fresh {
		changed = append(changed, k)
	}
	inf.items = fresh
	first := !inf.synced
	inf.synced = true
	handlers := inf.handlers
	inf.mu.Unlock()
	if first {
		close(inf.syncedCh)
	}
	for _, k := range changed {
		for _, h := range handlers {
			h(k)
		}
	}
	return l.Metadata.ResourceVersion, nil
}

func (inf *TypedInformer[T]) watch(ctx context.Context, rv string) error {
	opts := inf.opts
	opts.ResourceVersion = rv
	w, err := inf.c.Watch(ctx, inf.resource, "", opts)
	if err != nil {
		return err
	}
	defer w.Stop()
	for ev := range w.Events() {
		switch ev.Type {
		case v1alpha1.WatchBookmark:
			continue
		case v1alpha1.WatchError:
			return errExpired
		}
		k, o, err := inf.decode(ev.Object)
		if err != nil {
			inf.log.Warn("undecodable object in watch", "err", err)
			continue
		}
		inf.mu.Lock()
		if ev.Type == v1alpha1.WatchDeleted {
			delete(inf.items, k)
		} else {
			inf.items[k] = o
		}
		handlers := inf.handlers
		inf.mu.Unlock()
		for _, h := range handlers {
			h(k)
		}
	}
	if err := w.Err(); err != nil {
		return err
	}
	return errors.New("watch stream ended")
}

// DeepCopy returns a copy of a cached object that the caller may change.
func DeepCopy[T any](o *T) *T {
	data, err := json.Marshal(o)
	if err != nil {
		panic(fmt.Sprintf("runtime.DeepCopy: %v", err))
	}
	c := new(T)
	if err := json.Unmarshal(data, c); err != nil {
		panic(fmt.Sprintf("runtime.DeepCopy: %v", err))
	}
	return c
}

// runner is what a Factory starts: any TypedInformer.
type runner interface {
	Run(ctx context.Context)
	Synced() <-chan struct{}
	Resource() string
}

// Factory makes the informers of one process: one per resource and selector, shared by every
// controller that asks for it, so each kind is listed, watched and decoded once.
type Factory struct {
	c   client.Interface
	log *slog.Logger

	mu        sync.Mutex
	informers map[string]runner
	types     map[string]reflect.Type
	order     []string
	ctx       context.Context // set by Start
	wg        sync.WaitGroup
}

// NewFactory returns a factory whose informers read through c.
func NewFactory(c client.Interface, log *slog.Logger) *Factory {
	if log == nil {
		log = slog.Default()
	}
	return &Factory{c: c, log: log, informers: map[string]runner{}, types: map[string]reflect.Type{}}
}

// InformerOption narrows an informer.
type InformerOption func(*client.ListOptions)

// WithLabelSelector makes the informer see only objects with matching labels.
func WithLabelSelector(s string) InformerOption {
	return func(o *client.ListOptions) { o.LabelSelector = s }
}

// WithFieldSelector makes the informer see only objects with matching fields (e.g.
// "spec.nodeName=host1").
func WithFieldSelector(s string) InformerOption {
	return func(o *client.ListOptions) { o.FieldSelector = s }
}

// For returns the factory's informer of resource with objects of type T, making it on the
// first call. Asking for one resource with two different types is a programming error.
// An informer made after Start starts at once.
func For[T any](f *Factory, resource string, opts ...InformerOption) *TypedInformer[T] {
	var lo client.ListOptions
	for _, o := range opts {
		o(&lo)
	}
	id := resource + "?" + lo.LabelSelector + "?" + lo.FieldSelector
	f.mu.Lock()
	defer f.mu.Unlock()
	if r, ok := f.informers[id]; ok {
		inf, ok := r.(*TypedInformer[T])
		if !ok {
			panic(fmt.Sprintf("runtime.For: resource %s asked for as %v and as %T", resource, f.types[id], *new(T)))
		}
		return inf
	}
	inf := NewTypedInformer[T](f.c, resource, lo, f.log)
	f.informers[id] = inf
	f.types[id] = reflect.TypeFor[T]()
	f.order = append(f.order, id)
	if f.ctx != nil {
		f.start(inf)
	}
	return inf
}

func (f *Factory) start(r runner) {
	f.wg.Add(1)
	go func() { defer f.wg.Done(); r.Run(f.ctx) }()
}

// Start runs every informer made so far, and those made later, until ctx ends.
func (f *Factory) Start(ctx context.Context) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx != nil {
		return
	}
	f.ctx = ctx
	for _, id := range f.order {
		f.start(f.informers[id])
	}
	f.log.Info("shared informers started", "informers", len(f.order))
}

// Run starts the informers and blocks until ctx ends and they stopped.
func (f *Factory) Run(ctx context.Context) error {
	f.Start(ctx)
	<-ctx.Done()
	f.wg.Wait()
	return nil
}

// Count returns how many informers the factory made.
func (f *Factory) Count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.order)
}

// Resources returns the resource (and selectors) of every informer, in creation order.
func (f *Factory) Resources() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.order...)
}

// WaitForSync waits until every informer made so far has listed once; false if ctx ended.
func (f *Factory) WaitForSync(ctx context.Context) bool {
	f.mu.Lock()
	rs := make([]Syncer, 0, len(f.order))
	for _, id := range f.order {
		rs = append(rs, f.informers[id])
	}
	f.mu.Unlock()
	return WaitForSync(ctx, rs...)
}

// Syncer is anything that reports its first full list, such as an informer.
type Syncer interface {
	Synced() <-chan struct{}
}

// WaitForSync waits until every s has synced; false if ctx ended first.
func WaitForSync(ctx context.Context, ss ...Syncer) bool {
	for _, s := range ss {
		select {
		case <-s.Synced():
		case <-ctx.Done():
			return false
		}
	}
	return true
}
