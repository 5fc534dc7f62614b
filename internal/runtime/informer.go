// Package runtime is the small controller runtime every Rakhsh reconciler and the node agent
// build on. A Factory makes one TypedInformer per kind (and selector) for the whole process: a
// watch-fed cache that decodes each object once, shared by every controller. NewController
// builds a controller from the informers it watches, how their changes map to the keys it
// reconciles, and its workers; its Queue hands keys to workers with de-duplication and retry
// backoff. Jobs runs long background work (imports, uploads) at most once per key. Controllers
// talk to the API through client.Interface, which internal/runtime/fake implements in memory
// for unit tests. The untyped Informer (raw JSON, decoded on every read) remains for the
// node agent.
//
// Reconcilers are level-triggered: they get a key, read the current state from the cache (or
// the API), and make the world match.
package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// Key names one object: "project/name", or "name" for cluster-scoped kinds.
type Key string

// NewKey builds a key.
func NewKey(namespace, name string) Key {
	if namespace == "" {
		return Key(name)
	}
	return Key(namespace + "/" + name)
}

// Split returns the key's project and name.
func (k Key) Split() (namespace, name string) {
	if i := strings.IndexByte(string(k), '/'); i >= 0 {
		return string(k[:i]), string(k[i+1:])
	}
	return "", string(k)
}

// KeyOf returns the key of an object.
func KeyOf(obj v1alpha1.Object) Key {
	m := obj.GetObjectMeta()
	return NewKey(m.Namespace, m.Name)
}

// Informer lists and watches one resource (in all projects) and keeps the latest raw JSON of
// every object. It relists after a watch error or an Expired event. Handlers get the key of
// every changed object (added, modified or deleted) and on every relist every key.
type Informer struct {
	c        client.Interface
	resource string
	log      *slog.Logger
	selector string

	mu       sync.RWMutex
	items    map[Key]json.RawMessage
	synced   bool
	syncedCh chan struct{}
	handlers []func(Key)
}

// NewInformer returns an informer over resource (e.g. "virtualmachines"), optionally limited
// by a label selector.
func NewInformer(c client.Interface, resource, labelSelector string, log *slog.Logger) *Informer {
	if log == nil {
		log = slog.Default()
	}
	return &Informer{c: c, resource: resource, selector: labelSelector, log: log.With("informer", resource),
		items: map[Key]json.RawMessage{}, syncedCh: make(chan struct{})}
}

// OnChange registers a handler; call before Run.
func (inf *Informer) OnChange(h func(Key)) { inf.handlers = append(inf.handlers, h) }

// Synced is closed after the first full list.
func (inf *Informer) Synced() <-chan struct{} { return inf.syncedCh }

// Get decodes the cached object into out and reports whether it exists.
func (inf *Informer) Get(k Key, out any) (bool, error) {
	inf.mu.RLock()
	raw, ok := inf.items[k]
	inf.mu.RUnlock()
	if !ok {
		return false, nil
	}
	return true, json.Unmarshal(raw, out)
}

// Keys returns every cached key, sorted.
func (inf *Informer) Keys() []Key {
	inf.mu.RLock()
	out := make([]Key, 0, len(inf.items))
	for k := range inf.items {
		out = append(out, k)
	}
	inf.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Raw returns the cached JSON of every object.
func (inf *Informer) Raw() []json.RawMessage {
	inf.mu.RLock()
	defer inf.mu.RUnlock()
	out := make([]json.RawMessage, 0, len(inf.items))
	for _, v := range inf.items {
		out = append(out, v)
	}
	return out
}

// Run lists and watches until ctx ends.
func (inf *Informer) Run(ctx context.Context) { listAndWatch(ctx, inf.log, inf.relist, inf.watch) }

// listAndWatch lists, then watches from the list's revision, and starts again after a
// failure with a backoff from 200 ms up to about 5 s, until ctx ends: the loop of both
// informers.
func listAndWatch(ctx context.Context, log *slog.Logger, relist func(context.Context) (string, error), watch func(context.Context, string) error) {
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		rv, err := relist(ctx)
		if err == nil {
			backoff = 200 * time.Millisecond
			err = watch(ctx, rv)
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			log.Debug("informer restarting", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		if backoff < 5*time.Second {
			backoff *= 2
		}
	}
}

type metaOnly struct {
	Metadata v1alpha1.ObjectMeta `json:"metadata"`
}

func keyOfRaw(raw []byte) (Key, error) {
	var m metaOnly
	if err := json.Unmarshal(raw, &m); err != nil {
		return "", err
	}
	return NewKey(m.Metadata.Namespace, m.Metadata.Name), nil
}

func (inf *Informer) relist(ctx context.Context) (string, error) {
	l, err := inf.c.ListAll(ctx, inf.resource, "", client.ListOptions{LabelSelector: inf.selector})
	if err != nil {
		return "", err
	}
	fresh := make(map[Key]json.RawMessage, len(l.Items))
	for _, it := range l.Items {
		k, err := keyOfRaw(it)
		if err != nil {
			continue
		}
		fresh[k] = it
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
	inf.mu.Unlock()
	if first {
		close(inf.syncedCh)
	}
	for _, k := range changed {
		inf.notify(k)
	}
	return l.Metadata.ResourceVersion, nil
}

func (inf *Informer) notify(k Key) {
	for _, h := range inf.handlers {
		h(k)
	}
}

var errExpired = errors.New("watch expired")

func (inf *Informer) watch(ctx context.Context, rv string) error {
	w, err := inf.c.Watch(ctx, inf.resource, "", client.ListOptions{ResourceVersion: rv, LabelSelector: inf.selector})
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
		k, err := keyOfRaw(ev.Object)
		if err != nil {
			continue
		}
		inf.mu.Lock()
		if ev.Type == v1alpha1.WatchDeleted {
			delete(inf.items, k)
		} else {
			inf.items[k] = ev.Object
		}
		inf.mu.Unlock()
		inf.notify(k)
	}
	if err := w.Err(); err != nil {
		return err
	}
	return errors.New("watch stream ended")
}
