package stream

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"trawl/ingest"
)

// item is one visible event as the hub fans it out. It is immutable once
// built, so every subscriber queue shares the same pointer.
type item struct {
	id       string
	jobID    string
	clientID string
	line     []byte // the event's JSON on one line, without the newline
	terminal bool   // the job's final job_status
	seq      uint64 // position in the ring, set before the item is shared
}

// ring keeps the last len(slots) events in bus order. The publisher adds
// under the hub lock; readers scan without it, so a reconnect storm cannot
// stall the fan-out: slots are atomic, and an item's seq tells a reader
// whether its slot was overwritten meanwhile.
type ring struct {
	slots []atomic.Pointer[item]
	next  uint64 // events added so far; the next one gets this seq
}

func newRing(size int) ring { return ring{slots: make([]atomic.Pointer[item], size)} }

// add stores it, evicting the oldest event. Hub lock held.
func (r *ring) add(it *item) {
	it.seq = r.next
	r.slots[r.next%uint64(len(r.slots))].Store(it)
	r.next++
}

// matching returns, sorted by id, the events before seq upto that are still
// kept, belong to clientID (and jobID when set), and come after since. It
// runs without the hub lock.
func (r *ring) matching(clientID, jobID, since string, upto uint64) []*item {
	n := uint64(len(r.slots))
	start := uint64(0)
	if upto > n {
		start = upto - n
	}
	var out []*item
	for seq := start; seq < upto; seq++ {
		it := r.slots[seq%n].Load()
		if it == nil || it.seq != seq { // evicted while we scanned
			continue
		}
		if it.clientID != clientID || (jobID != "" && it.jobID != jobID) || it.id <= since {
			continue
		}
		out = append(out, it)
	}
	slices.SortStableFunc(out, func(a, b *item) int { return strings.Compare(a.id, b.id) })
	return out
}

// endReason says why a subscription ended.
type endReason int

const (
	endNone         endReason = iota
	endJobFinished            // the job's terminal event was written
	endSlow                   // the subscriber's queue overflowed
	endReset                  // the server's own bus subscription failed
	endShutdown               // the server is stopping
	endReplayFailed           // storage could not be read
	endClientGone             // the client went away or a write failed
)

func (r endReason) String() string {
	switch r {
	case endJobFinished:
		return "job finished"
	case endSlow:
		return "slow consumer"
	case endReset:
		return "stream reset"
	case endShutdown:
		return "shutdown"
	case endReplayFailed:
		return "replay failed"
	case endClientGone:
		return "client gone"
	}
	return "none"
}

// subscriber is one connected client as the hub sees it.
type subscriber struct {
	clientID string
	jobID    string // "" for the user stream
	queue    chan *item
	kicked   chan struct{} // closed when the hub drops the subscriber
	reason   endReason     // set before kicked is closed

	// Set at registration for the connection to use.
	replay     []*item // ring events after since, when the client replays
	liveCursor string  // newest event id seen on the bus at registration
	removed    bool    // guarded by the hub lock
}

// counters are the hub's and the connections' statistics.
type counters struct {
	events       atomic.Uint64
	delivered    atomic.Uint64
	replayed     atomic.Uint64
	droppedSlow  atomic.Uint64
	postTerminal atomic.Uint64
	busResets    atomic.Uint64
	decodeErrors atomic.Uint64
}

// terminalJobsKept bounds the memory of finished jobs whose late events are dropped.
const terminalJobsKept = 1 << 16

// hub routes bus events to subscribers. One goroutine publishes; connections
// subscribe and unsubscribe concurrently.
type hub struct {
	queueSize int
	stats     *counters

	mu       sync.Mutex
	subs     map[string][]*subscriber // by client id
	count    int
	ring     ring
	finished *ingest.RecentSet // job ids whose terminal event went out
	lastID   string
	closed   endReason     // set by close: later subscribers are turned away
	slow     []*subscriber // scratch for publish
}

func newHub(queueSize, ringSize int, stats *counters) *hub {
	return &hub{
		queueSize: queueSize,
		stats:     stats,
		subs:      make(map[string][]*subscriber),
		ring:      newRing(ringSize),
		finished:  ingest.NewRecentSet(terminalJobsKept),
	}
}

// subscribe registers a subscriber before anything is replayed, so events
// published while the replay runs wait in its queue. With replay set it also
// takes the ring's events after since.
func (h *hub) subscribe(clientID, jobID, since string, replay bool) *subscriber {
	sub := &subscriber{
		clientID: clientID,
		jobID:    jobID,
		queue:    make(chan *item, h.queueSize),
		kicked:   make(chan struct{}),
	}
	h.mu.Lock()
	if h.closed != endNone {
		h.mu.Unlock()
		sub.removed, sub.reason = true, h.closed
		close(sub.kicked)
		return sub
	}
	h.subs[clientID] = append(h.subs[clientID], sub)
	h.count++
	sub.liveCursor = h.lastID
	upto := h.ring.next // events from here on reach the queue
	h.mu.Unlock()
	if replay {
		sub.replay = h.ring.matching(clientID, jobID, since, upto)
	}
	return sub
}

// unsubscribe removes sub; harmless when the hub removed it already.
func (h *hub) unsubscribe(sub *subscriber) {
	h.mu.Lock()
	h.removeLocked(sub)
	h.mu.Unlock()
}

func (h *hub) removeLocked(sub *subscriber) bool {
	if sub.removed {
		return false
	}
	sub.removed = true
	list := h.subs[sub.clientID]
	if i := slices.Index(list, sub); i >= 0 {
		last := len(list) - 1
		list[i] = list[last]
		list[last] = nil
		list = list[:last]
	}
	if len(list) == 0 {
		delete(h.subs, sub.clientID)
	} else {
		h.subs[sub.clientID] = list
	}
	h.count--
	return true
}

func (h *hub) kickLocked(sub *subscriber, reason endReason) {
	if h.removeLocked(sub) {
		sub.reason = reason
		close(sub.kicked)
	}
}

// kickAll disconnects every subscriber with reason.
func (h *hub) kickAll(reason endReason) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, list := range h.subs {
		for _, sub := range slices.Clone(list) {
			h.kickLocked(sub, reason)
		}
	}
}

// close disconnects every subscriber with reason and turns later ones away.
func (h *hub) close(reason endReason) {
	h.mu.Lock()
	h.closed = reason
	h.mu.Unlock()
	h.kickAll(reason)
}

// publish fans one event out. It never blocks: a subscriber whose queue is
// full is disconnected instead.
func (h *hub) publish(it *item) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastID = it.id
	if h.finished.Has(it.jobID) {
		h.stats.postTerminal.Add(1)
		return
	}
	if it.terminal {
		h.finished.Add(it.jobID)
	}
	h.stats.events.Add(1)
	h.ring.add(it)
	slow := h.slow[:0]
	for _, sub := range h.subs[it.clientID] {
		if sub.jobID != "" && sub.jobID != it.jobID {
			continue
		}
		select {
		case sub.queue <- it:
		default:
			slow = append(slow, sub)
		}
	}
	for i, sub := range slow {
		h.kickLocked(sub, endSlow)
		h.stats.droppedSlow.Add(1)
		slow[i] = nil
	}
	h.slow = slow[:0]
}

func (h *hub) subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.count
}
