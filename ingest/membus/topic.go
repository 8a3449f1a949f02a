package membus

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"trawl/ingest"
)

// topic is one append-only log and the groups and ephemeral subscribers that
// read it. One mutex guards all of it: every operation is a few slice moves,
// and waiting happens outside the lock on wake channels that are created only
// when someone waits, so a busy bus allocates nothing per message.
type topic struct {
	bus  *Bus
	name string

	mu   sync.Mutex
	base int64                 // offset of the oldest retained message
	log  deque[ingest.Message] // retained messages, offsets [base, base+len)
	// groups persist after their last member leaves, like Kafka's committed
	// offsets: a re-subscribe resumes where the group stopped.
	groups     map[string]*group
	durable    []*group // groups in creation order, for iteration without map overhead
	ephemerals []*ephemeral
	room       chan struct{} // closed when the log shrinks; nil while no publisher waits
}

func (t *topic) end() int64 { return t.base + int64(t.log.len()) }

// publish appends msgs, carving their bytes out of arena (a copy of every key
// and value, in order). Called without t.mu held.
func (t *topic) publish(ctx context.Context, msgs []ingest.Message, arena []byte) error {
	q := t.bus.queueSize
	pos := 0
	carve := func(n int) []byte {
		if n == 0 {
			return nil
		}
		b := arena[pos : pos+n : pos+n]
		pos += n
		return b
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(msgs) > 0 {
		k := len(msgs)
		if len(t.durable) > 0 {
			room := q - t.log.len()
			if room <= 0 {
				if err := t.waitRoom(ctx); err != nil {
					return err
				}
				continue
			}
			k = min(k, room)
		}
		overflowed := false
		for i := range msgs[:k] {
			m := ingest.Message{Key: carve(len(msgs[i].Key)), Value: carve(len(msgs[i].Value))}
			if t.log.len() == q {
				// Only reachable without durable groups: nobody will ever
				// read the oldest message, so it makes room.
				t.log.popFront()
				t.base++
			}
			off := t.end()
			t.log.push(m)
			for _, e := range t.ephemerals {
				if !e.offer(m, off, q) {
					overflowed = true
				}
			}
		}
		if overflowed {
			t.ephemerals = slices.DeleteFunc(t.ephemerals, func(e *ephemeral) bool { return e.overflowed })
		}
		for _, g := range t.durable {
			g.wakeFetchers()
		}
		msgs = msgs[k:]
	}
	return nil
}

// waitRoom blocks, with t.mu released, until the log shrinks, ctx ends or the
// bus closes. t.mu is held again on return.
func (t *topic) waitRoom(ctx context.Context) error {
	if t.room == nil {
		t.room = make(chan struct{})
	}
	room := t.room
	t.mu.Unlock()
	defer t.mu.Lock()
	select {
	case <-room:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.bus.done:
		return fmt.Errorf("cannot publish to %s: %w", t.name, ingest.ErrClosed)
	}
}

// trim drops the messages every durable group has acked and wakes blocked
// publishers. Called with t.mu held after a group's low mark moved.
func (t *topic) trim() {
	low := t.durable[0].low
	for _, g := range t.durable[1:] {
		low = min(low, g.low)
	}
	if low <= t.base {
		return
	}
	for t.base < low {
		t.log.popFront()
		t.base++
	}
	if t.room != nil {
		close(t.room)
		t.room = nil
	}
}

// group is a durable consumer group's cursor over the topic.
type group struct {
	name string
	low  int64 // every offset below low is acked
	next int64 // the next offset never handed out
	// acked covers offsets [low, next): whether each is acked. Acks may come
	// out of order; low advances over the acked prefix.
	acked deque[bool]
	// redeliver holds offsets that closed members left unacked, ascending;
	// they are handed out before new messages.
	redeliver []int64
	wake      chan struct{} // closed when there may be something to fetch; nil while nobody waits
}

// take hands out the group's next offset: a redelivery first, else the next
// new message. t.mu held.
func (g *group) take(t *topic) (int64, bool) {
	if len(g.redeliver) > 0 {
		off := g.redeliver[0]
		g.redeliver = g.redeliver[1:]
		if len(g.redeliver) == 0 {
			g.redeliver = nil
		}
		return off, true
	}
	if g.next < t.end() {
		off := g.next
		g.next++
		g.acked.push(false)
		return off, true
	}
	return 0, false
}

// ack marks off acked and reports whether the group's low mark moved.
func (g *group) ack(off int64) bool {
	*g.acked.at(int(off - g.low)) = true
	moved := false
	for g.acked.len() > 0 && *g.acked.at(0) {
		g.acked.popFront()
		g.low++
		moved = true
	}
	return moved
}

func (g *group) waitChan() chan struct{} {
	if g.wake == nil {
		g.wake = make(chan struct{})
	}
	return g.wake
}

func (g *group) wakeFetchers() {
	if g.wake != nil {
		close(g.wake)
		g.wake = nil
	}
}

func (t *topic) subscribeMember(ctx context.Context, name string) *member {
	t.mu.Lock()
	defer t.mu.Unlock()
	g := t.groups[name]
	if g == nil {
		// Like Kafka's auto.offset.reset=earliest: a role that subscribes a
		// moment after startup misses nothing still retained.
		g = &group{name: name, low: t.base, next: t.base}
		t.groups[name] = g
		t.durable = append(t.durable, g)
	}
	m := &member{t: t, g: g, firstToken: 1, done: make(chan struct{})}
	// Registered under t.mu: if ctx is already done, Close runs in its own
	// goroutine and waits for the lock, after stopAfter is set.
	m.stopAfter = context.AfterFunc(ctx, func() { _ = m.Close() })
	return m
}

func (t *topic) subscribeEphemeral(ctx context.Context) *ephemeral {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := &ephemeral{t: t, done: make(chan struct{})}
	t.ephemerals = append(t.ephemerals, e)
	e.stopAfter = context.AfterFunc(ctx, func() { _ = e.Close() })
	return e
}
