package membus

import (
	"context"
	"fmt"
	"slices"

	"trawl/ingest"
)

// member is one subscription of a durable group.
type member struct {
	t *topic
	g *group

	// outstanding holds this member's deliveries in hand-out order; the
	// front has token firstToken, the next one firstToken+1, and so on. Acked
	// entries stay until every earlier one is acked too, so a token maps to
	// its entry by subtraction.
	outstanding deque[outstanding]
	firstToken  uint64

	closed    bool
	done      chan struct{} // closed by Close; wakes a blocked Fetch
	stopAfter func() bool   // unregisters the Subscribe-context watcher
}

type outstanding struct {
	offset int64
	acked  bool
}

var _ ingest.Subscription = (*member)(nil)

// Fetch hands out the group's next message: redeliveries first, then new
// messages, in offset order. It blocks until one is there, ctx ends, the
// subscription closes or the bus closes.
func (m *member) Fetch(ctx context.Context) (ingest.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return ingest.Delivery{}, err
	}
	t := m.t
	t.mu.Lock()
	for {
		if m.closed {
			t.mu.Unlock()
			return ingest.Delivery{}, fmt.Errorf("cannot fetch from %s: %w", t.name, ErrSubscriptionClosed)
		}
		if t.bus.closed() {
			t.mu.Unlock()
			return ingest.Delivery{}, fmt.Errorf("cannot fetch from %s: %w", t.name, ingest.ErrClosed)
		}
		if off, ok := m.g.take(t); ok {
			token := m.firstToken + uint64(m.outstanding.len())
			m.outstanding.push(outstanding{offset: off})
			msg := *t.log.at(int(off - t.base))
			t.mu.Unlock()
			return ingest.Delivery{Message: msg, Offset: off, Epoch: t.bus.epoch, Token: token}, nil
		}
		wake := m.g.waitChan()
		t.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return ingest.Delivery{}, ctx.Err()
		case <-m.done:
		case <-t.bus.done:
		}
		t.mu.Lock()
	}
}

// Ack marks d handled; the group never delivers it again. It does not block,
// so ctx is not consulted.
func (m *member) Ack(_ context.Context, d ingest.Delivery) error {
	t := m.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if m.closed {
		return fmt.Errorf("cannot ack offset %d of %s: %w", d.Offset, t.name, ErrSubscriptionClosed)
	}
	if t.bus.closed() {
		return fmt.Errorf("cannot ack offset %d of %s: %w", d.Offset, t.name, ingest.ErrClosed)
	}
	i := d.Token - m.firstToken // wraps to a huge value when Token < firstToken
	if d.Token < m.firstToken || i >= uint64(m.outstanding.len()) {
		return fmt.Errorf("cannot ack offset %d of %s: %w", d.Offset, t.name, ErrUnknownDelivery)
	}
	o := m.outstanding.at(int(i))
	if o.acked || o.offset != d.Offset {
		return fmt.Errorf("cannot ack offset %d of %s: %w", d.Offset, t.name, ErrUnknownDelivery)
	}
	o.acked = true
	for m.outstanding.len() > 0 && m.outstanding.at(0).acked {
		m.outstanding.popFront()
		m.firstToken++
	}
	if m.g.ack(d.Offset) {
		t.trim()
	}
	return nil
}

// Close leaves the group; its unacked deliveries go back to the group, to be
// handed out first to the next Fetch of any member.
func (m *member) Close() error {
	t := m.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	close(m.done)
	m.stopAfter()
	returned := 0
	for i := 0; i < m.outstanding.len(); i++ {
		if o := m.outstanding.at(i); !o.acked {
			m.g.redeliver = append(m.g.redeliver, o.offset)
			returned++
		}
	}
	m.outstanding.reset()
	if returned > 0 {
		slices.Sort(m.g.redeliver)
		m.g.wakeFetchers()
		t.bus.log.Debug().Str("topic", t.name).Str("group", m.g.name).Int("returned", returned).
			Msg("unacked deliveries returned to group")
	}
	return nil
}

// ephemeral is a group-"" subscriber: its own bounded buffer of messages
// published after it subscribed.
type ephemeral struct {
	t *topic

	buf        deque[ingest.Delivery]
	overflowed bool
	closed     bool
	done       chan struct{}
	wake       chan struct{} // closed when buf gains a message; nil while nobody waits
	stopAfter  func() bool
}

var _ ingest.Subscription = (*ephemeral)(nil)

// offer buffers a newly published message; it reports false, and cuts the
// subscriber off, when the buffer is full. t.mu held.
func (e *ephemeral) offer(m ingest.Message, off int64, queueSize int) bool {
	if e.overflowed {
		return false
	}
	if e.buf.len() >= queueSize {
		e.overflowed = true
		e.buf.reset()
		e.wakeFetcher()
		e.t.bus.log.Warn().Str("topic", e.t.name).Int("queue_size", queueSize).
			Msg("ephemeral subscriber overflowed; cut off")
		return false
	}
	e.buf.push(ingest.Delivery{Message: m, Offset: off, Epoch: e.t.bus.epoch})
	e.wakeFetcher()
	return true
}

func (e *ephemeral) wakeFetcher() {
	if e.wake != nil {
		close(e.wake)
		e.wake = nil
	}
}

// Fetch returns the next buffered message, or an error wrapping ErrOverflow
// once the subscriber has been cut off.
func (e *ephemeral) Fetch(ctx context.Context) (ingest.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return ingest.Delivery{}, err
	}
	t := e.t
	t.mu.Lock()
	for {
		if e.closed {
			t.mu.Unlock()
			return ingest.Delivery{}, fmt.Errorf("cannot fetch from %s: %w", t.name, ErrSubscriptionClosed)
		}
		if e.overflowed {
			t.mu.Unlock()
			return ingest.Delivery{}, fmt.Errorf("cannot fetch from %s: %w", t.name, ErrOverflow)
		}
		if t.bus.closed() {
			t.mu.Unlock()
			return ingest.Delivery{}, fmt.Errorf("cannot fetch from %s: %w", t.name, ingest.ErrClosed)
		}
		if e.buf.len() > 0 {
			d := e.buf.popFront()
			t.mu.Unlock()
			return d, nil
		}
		if e.wake == nil {
			e.wake = make(chan struct{})
		}
		wake := e.wake
		t.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return ingest.Delivery{}, ctx.Err()
		case <-e.done:
		case <-t.bus.done:
		}
		t.mu.Lock()
	}
}

// Ack is a no-op: an ephemeral subscriber's messages are never redelivered.
func (e *ephemeral) Ack(context.Context, ingest.Delivery) error { return nil }

// Close stops delivery to the subscriber and frees its buffer.
func (e *ephemeral) Close() error {
	t := e.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	close(e.done)
	e.stopAfter()
	e.buf.reset()
	t.ephemerals = slices.DeleteFunc(t.ephemerals, func(x *ephemeral) bool { return x == e })
	return nil
}
