package fakenet

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"trawl/engine"
)

// Dry is a transport whose probes go nowhere: it counts them and never
// replies, for dry runs (`trawl scan --transport dry`) that measure the
// engine alone: its walk, pacing and memory.
type Dry struct {
	mu      sync.Mutex // guards started, closed
	started bool
	closed  bool

	sent, batches atomic.Uint64
}

// NewDry returns a dry transport; like every transport it serves one scan.
func NewDry() *Dry { return &Dry{} }

// Start implements engine.Transport; nothing will ever reply.
func (d *Dry) Start(context.Context, func(engine.Reply)) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.started || d.closed {
		return errors.New("cannot start dry transport: already used")
	}
	d.started = true
	return nil
}

// Send implements engine.Transport: it counts the batch.
func (d *Dry) Send(ctx context.Context, batch []engine.Probe) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	usable := d.started && !d.closed
	d.mu.Unlock()
	if !usable {
		return engine.ErrTransportClosed
	}
	d.sent.Add(uint64(len(batch)))
	d.batches.Add(1)
	return nil
}

// Close implements engine.Transport: no reply can be late, so it returns
// at once whatever the cooldown.
func (d *Dry) Close(time.Duration) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}

// Counters returns what was sent (Replies and Lost stay 0).
func (d *Dry) Counters() Counters {
	return Counters{Sent: d.sent.Load(), Batches: d.batches.Load()}
}

var _ engine.Transport = (*Dry)(nil)
