package bolt

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/store"
)

// entry is one committed change kept in the in-memory history.
type entry struct {
	ev store.Event
	// prevRev is the ModRevision of ev.PrevValue, 0 when the key did not exist before.
	// Lists at a past revision use it to rebuild the key as it was.
	prevRev int64
	// prevCreate is the CreateRevision of ev.PrevValue.
	prevCreate int64
}

// hub keeps the recent history of committed changes and fans them out to watchers.
//
// Every write advances the revision by exactly one, so the history holds the contiguous
// revisions minRev+1 .. last and the entry of revision r sits at a fixed offset from start.
type hub struct {
	mu   sync.Mutex
	cond *sync.Cond // broadcast when last advances or the hub closes

	ring  []entry
	start int   // ring index of revision minRev+1
	min   int64 // oldest revision a watch may start after
	last  int64 // newest published revision

	queueMax int
	watchers map[*watcher]struct{}
	closed   bool
}

func newHub(rev int64, historySize, queueMax int) *hub {
	h := &hub{
		ring:     make([]entry, historySize),
		min:      rev,
		last:     rev,
		queueMax: queueMax,
		watchers: make(map[*watcher]struct{}),
	}
	h.cond = sync.NewCond(&h.mu)
	return h
}

// at returns the history entry of revision r; the caller holds mu and ensures min < r <= last.
func (h *hub) at(r int64) *entry {
	return &h.ring[(h.start+int(r-h.min-1))%len(h.ring)]
}

// publish appends committed entries (in revision order) to the history and hands the
// matching ones to every watcher. It never blocks on a watcher.
func (h *hub) publish(entries []entry) {
	if len(entries) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range entries {
		if int(h.last-h.min) == len(h.ring) {
			h.ring[h.start] = entry{}
			h.start = (h.start + 1) % len(h.ring)
			h.min++
		}
		h.last = e.ev.KV.ModRevision
		*h.at(h.last) = e
	}
	for w := range h.watchers {
		var evs []store.Event
		for i := range entries {
			ev := &entries[i].ev
			if ev.KV.ModRevision > w.after && strings.HasPrefix(ev.KV.Key, w.prefix) {
				evs = append(evs, *ev)
			}
		}
		if len(evs) > 0 && !w.push(evs) {
			delete(h.watchers, w)
		}
	}
	h.cond.Broadcast()
}

// compact drops the history up to and including rev.
func (h *hub) compact(rev int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	rev = min(rev, h.last)
	for h.min < rev {
		h.ring[h.start] = entry{}
		h.start = (h.start + 1) % len(h.ring)
		h.min++
	}
}

// changes returns the history entries with revisions in (from, to] whose key passes keep.
// It waits until revision to is published (a reader may see a commit a moment before the
// writer publishes it) and fails with ErrCompacted when from is older than the history.
func (h *hub) changes(from, to int64, keep func(key string) bool) ([]entry, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for h.last < to && !h.closed {
		h.cond.Wait()
	}
	if h.closed {
		return nil, errClosed
	}
	if from < h.min {
		return nil, fmt.Errorf("revision %d is older than the oldest kept revision %d: %w", from, h.min, errs.ErrCompacted)
	}
	var out []entry
	for r := from + 1; r <= to; r++ {
		if e := h.at(r); keep(e.ev.KV.Key) {
			out = append(out, *e)
		}
	}
	return out, nil
}

// watch registers a watcher for keys under prefix after revision fromRev (0 = from now).
func (h *hub) watch(ctx context.Context, prefix string, fromRev int64) <-chan store.WatchResult {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return endedWatch(fmt.Errorf("watch %q: %w", prefix, errClosed))
	}
	if err := ctx.Err(); err != nil {
		ch := make(chan store.WatchResult)
		close(ch)
		return ch
	}
	w := &watcher{
		prefix: prefix,
		after:  h.last,
		out:    make(chan store.WatchResult, 1),
		wake:   make(chan struct{}, 1),
		limit:  h.queueMax,
	}
	if fromRev > 0 {
		if fromRev < h.min {
			return endedWatch(fmt.Errorf("watch %q from revision %d: oldest revision kept is %d: %w",
				prefix, fromRev, h.min, errs.ErrCompacted))
		}
		w.after = fromRev
		for r := fromRev + 1; r <= h.last; r++ {
			if e := h.at(r); strings.HasPrefix(e.ev.KV.Key, prefix) {
				w.queue = append(w.queue, e.ev)
			}
		}
		w.limit += len(w.queue)
		if len(w.queue) > 0 {
			w.wake <- struct{}{}
		}
	}
	h.watchers[w] = struct{}{}
	go w.run(ctx, h)
	return w.out
}

func (h *hub) remove(w *watcher) {
	h.mu.Lock()
	delete(h.watchers, w)
	h.mu.Unlock()
}

// close ends every watch with ErrUnavailable and wakes waiting readers.
func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for w := range h.watchers {
		w.end(fmt.Errorf("watch %q: %w", w.prefix, errClosed))
		delete(h.watchers, w)
	}
	h.cond.Broadcast()
}

// endedWatch returns a closed channel carrying the single terminal error err.
func endedWatch(err error) <-chan store.WatchResult {
	ch := make(chan store.WatchResult, 1)
	ch <- store.WatchResult{Err: err}
	close(ch)
	return ch
}

// watcher buffers the events of one watch. The hub appends under mu without blocking;
// the watcher's own goroutine moves them to the consumer's channel.
type watcher struct {
	prefix string
	after  int64 // events at or before this revision are not delivered
	out    chan store.WatchResult
	wake   chan struct{} // capacity 1: "queue or endErr changed"

	mu     sync.Mutex
	queue  []store.Event
	limit  int
	endErr error
}

// push queues evs; it returns false (and ends the watch with ErrCompacted) when the
// consumer is too far behind.
func (w *watcher) push(evs []store.Event) bool {
	w.mu.Lock()
	if w.endErr != nil {
		w.mu.Unlock()
		return false
	}
	if len(w.queue)+len(evs) > w.limit {
		w.endErr = fmt.Errorf("watch %q fell more than %d events behind at revision %d: %w",
			w.prefix, w.limit, evs[len(evs)-1].KV.ModRevision, errs.ErrCompacted)
		w.queue = nil
		w.mu.Unlock()
		w.signal()
		return false
	}
	w.queue = append(w.queue, evs...)
	w.mu.Unlock()
	w.signal()
	return true
}

func (w *watcher) end(err error) {
	w.mu.Lock()
	if w.endErr == nil {
		w.endErr = err
	}
	w.mu.Unlock()
	w.signal()
}

func (w *watcher) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *watcher) run(ctx context.Context, h *hub) {
	defer close(w.out)
	for {
		select {
		case <-ctx.Done():
			h.remove(w)
			return
		case <-w.wake:
		}
		w.mu.Lock()
		evs, endErr := w.queue, w.endErr
		w.queue = nil
		w.mu.Unlock()
		if len(evs) > 0 {
			select {
			case w.out <- store.WatchResult{Events: evs}:
			case <-ctx.Done():
				h.remove(w)
				return
			}
		}
		if endErr != nil {
			select {
			case w.out <- store.WatchResult{Err: endErr}:
			case <-ctx.Done():
			}
			return
		}
	}
}
