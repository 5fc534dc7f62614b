package qmp

import (
	"log/slog"
	"sync"
)

// queueWarn is the subscriber queue length that first triggers a warning;
// it doubles after each warning and resets when the queue drains.
const queueWarn = 1024

// subscriber is one Subscribe call: the reader appends to queue (never
// blocking), and pump moves events from queue to ch.
type subscriber struct {
	ch  chan Event
	log *slog.Logger

	mu     sync.Mutex
	queue  []Event
	final  bool // the last event is queued; close ch once it is delivered
	warnAt int

	wake     chan struct{} // capacity 1
	stop     chan struct{}
	stopOnce sync.Once
	exited   chan struct{}
}

func newSubscriber(buffer int, log *slog.Logger) *subscriber {
	return &subscriber{
		ch:     make(chan Event, buffer),
		log:    log,
		warnAt: queueWarn,
		wake:   make(chan struct{}, 1),
		stop:   make(chan struct{}),
		exited: make(chan struct{}),
	}
}

// push queues ev. It never blocks on the receiver.
func (s *subscriber) push(ev Event) { s.enqueue(ev, false) }

// end queues ev as the last event.
func (s *subscriber) end(ev Event) { s.enqueue(ev, true) }

func (s *subscriber) enqueue(ev Event, final bool) {
	s.mu.Lock()
	if s.final {
		s.mu.Unlock()
		return
	}
	s.queue = append(s.queue, ev)
	s.final = final
	n := len(s.queue)
	warn := n >= s.warnAt
	if warn {
		s.warnAt *= 2
	}
	s.mu.Unlock()
	if warn {
		s.log.Warn("qmp: event subscriber is lagging", "queued", n, "event", ev.Name)
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscriber) pump() {
	defer close(s.exited)
	defer close(s.ch)
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			final := s.final
			s.warnAt = queueWarn
			s.mu.Unlock()
			if final {
				return
			}
			select {
			case <-s.wake:
				continue
			case <-s.stop:
				return
			}
		}
		ev := s.queue[0]
		s.queue[0] = Event{}
		s.queue = s.queue[1:]
		if len(s.queue) == 0 {
			s.queue = nil // let a grown backing array go
		}
		s.mu.Unlock()
		select {
		case s.ch <- ev:
		case <-s.stop:
			return
		}
	}
}

// cancel stops the pump and waits until ch is closed.
func (s *subscriber) cancel() {
	s.stopOnce.Do(func() { close(s.stop) })
	<-s.exited
}
