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
	"strings"
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

// WithPrefix puts prefix before each of keys (in place), for a queue of several kinds of work.
func WithPrefix(prefix Key, keys []Key) []Key {
	for i := range keys {
		keys[i] = prefix + keys[i]
	}
	return keys
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
	typed *TypedInformer[json.RawMessage]
}

// NewInformer returns an informer over resource (e.g. "virtualmachines"), optionally limited
// by a label selector.
func NewInformer(c client.Interface, resource, labelSelector string, log *slog.Logger) *Informer {
	return &Informer{typed: NewTypedInformer[json.RawMessage](c, resource, client.ListOptions{LabelSelector: labelSelector}, log)}
}

// OnChange registers a handler, as TypedInformer.OnChange does: one added after the first
// list is called at once for every cached key.
func (inf *Informer) OnChange(h func(Key)) { inf.typed.OnChange(h) }

// Synced is closed after the first full list.
func (inf *Informer) Synced() <-chan struct{} { return inf.typed.Synced() }

// Get decodes the cached object into out and reports whether it exists.
func (inf *Informer) Get(k Key, out any) (bool, error) {
	raw, ok := inf.typed.Get(k)
	if !ok {
		return false, nil
	}
	return true, json.Unmarshal(*raw, out)
}

// Keys returns every cached key, sorted.
func (inf *Informer) Keys() []Key { return inf.typed.Keys() }

// Raw returns the cached JSON of every object.
func (inf *Informer) Raw() []json.RawMessage {
	l := inf.typed.List()
	out := make([]json.RawMessage, 0, len(l))
	for _, v := range l {
		out = append(out, *v)
	}
	return out
}

// Run lists and watches until ctx ends.
func (inf *Informer) Run(ctx context.Context) { inf.typed.Run(ctx) }

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

var errExpired = errors.New("watch expired")
