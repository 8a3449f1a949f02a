// Package fakenet is an in-memory engine.Transport for tests and benchmarks:
// a set of open ip:ports that reply to probes, with optional loss,
// duplication, delay and refused (closed-port) replies, and counters.
package fakenet

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"trawl/engine"
)

// Config shapes the fake network.
type Config struct {
	// Loss is the probability that a reply is lost.
	Loss float64
	// Duplicate is the probability that a reply arrives twice.
	Duplicate float64
	// Delay holds every reply back this long; 0 replies from inside Send.
	Delay time.Duration
	// ReplyClosed makes closed ports answer (Open false), as an RST would.
	ReplyClosed bool
	// RecordProbes counts probes per ip:port (see Probes); costs a map write
	// per probe, so benchmarks leave it off.
	RecordProbes bool
	// Seed seeds loss and duplication.
	Seed uint64
	// SrcIP and SrcPort are reported as the scanner's side of each probe.
	SrcIP   uint32
	SrcPort uint16
	// TTL and Window are reported on open replies.
	TTL    uint8
	Window uint16
}

// Counters are what the network saw.
type Counters struct {
	Sent    uint64 // probes received by the network
	Replies uint64 // replies delivered to the scanner
	Lost    uint64 // replies dropped by Loss or by Close
	Batches uint64 // Send calls
}

// Net is the fake network. Add open ports before Start.
type Net struct {
	cfg  Config
	open map[uint64]struct{}

	mu       sync.Mutex // guards rng, probes, closed, sendErr, inflight.Add
	rng      *rand.Rand
	probes   map[uint64]int
	closed   bool
	started  bool
	sendErr  error
	inflight sync.WaitGroup

	onReply      func(engine.Reply)
	queue        chan delayed
	stopDelivery context.CancelFunc
	drained      chan struct{}
	ctxDone      <-chan struct{}

	sent, replies, lost, batches atomic.Uint64
}

type delayed struct {
	at time.Time
	r  engine.Reply
}

// New returns an empty network (every port filtered).
func New(cfg Config) *Net {
	return &Net{
		cfg:    cfg,
		open:   make(map[uint64]struct{}),
		rng:    rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		probes: make(map[uint64]int),
	}
}

func key(ip uint32, port uint16) uint64 { return uint64(ip)<<16 | uint64(port) }

// AddOpen opens ip:port. Call it before Start.
func (n *Net) AddOpen(ip uint32, port uint16) { n.open[key(ip, port)] = struct{}{} }

// FailSends makes every later Send return err (nil restores).
func (n *Net) FailSends(err error) {
	n.mu.Lock()
	n.sendErr = err
	n.mu.Unlock()
}

// Start implements engine.Transport.
func (n *Net) Start(ctx context.Context, onReply func(engine.Reply)) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.started {
		return errors.New("cannot start fakenet: already started")
	}
	n.started = true
	n.onReply = onReply
	n.ctxDone = ctx.Done()
	if n.cfg.Delay > 0 {
		n.queue = make(chan delayed, 4096)
		n.drained = make(chan struct{})
		dctx, cancel := context.WithCancel(ctx)
		n.stopDelivery = cancel
		go n.deliver(dctx)
	}
	return nil
}

// Send implements engine.Transport.
func (n *Net) Send(ctx context.Context, batch []engine.Probe) error {
	n.mu.Lock()
	if n.closed || !n.started {
		n.mu.Unlock()
		return engine.ErrTransportClosed
	}
	if n.sendErr != nil {
		err := n.sendErr
		n.mu.Unlock()
		return err
	}
	n.inflight.Add(1)
	defer n.inflight.Done()
	// decide loss and duplication under the lock, deliver outside it
	var out [2 * engine.DefaultBatch]engine.Reply
	replies := out[:0]
	for _, p := range batch {
		k := key(p.IP, p.Port)
		if n.cfg.RecordProbes {
			n.probes[k]++
		}
		r := engine.Reply{IP: p.IP, Port: p.Port, SrcIP: n.cfg.SrcIP, SrcPort: n.cfg.SrcPort}
		if _, ok := n.open[k]; ok {
			r.Open, r.TTL, r.Window = true, n.cfg.TTL, n.cfg.Window
		} else if !n.cfg.ReplyClosed {
			continue
		}
		if n.cfg.Loss > 0 && n.rng.Float64() < n.cfg.Loss {
			n.lost.Add(1)
			continue
		}
		replies = append(replies, r)
		if n.cfg.Duplicate > 0 && n.rng.Float64() < n.cfg.Duplicate {
			replies = append(replies, r)
		}
	}
	n.mu.Unlock()
	n.sent.Add(uint64(len(batch)))
	n.batches.Add(1)

	if n.cfg.Delay == 0 {
		for _, r := range replies {
			n.replies.Add(1)
			n.onReply(r)
		}
		return nil
	}
	at := time.Now().Add(n.cfg.Delay)
	for _, r := range replies {
		select {
		case n.queue <- delayed{at: at, r: r}:
		case <-ctx.Done():
			return ctx.Err()
		case <-n.ctxDone:
			return engine.ErrTransportClosed
		}
	}
	return nil
}

// deliver hands delayed replies over when they are due, until the queue is
// closed and drained or ctx ends (Close cancels it after the cooldown).
func (n *Net) deliver(ctx context.Context) {
	defer close(n.drained)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for d := range n.queue {
		if wait := time.Until(d.at); wait > 0 && ctx.Err() == nil {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			n.lost.Add(1)
			continue // drain the queue without delivering
		}
		n.replies.Add(1)
		n.onReply(d.r)
	}
}

// Close implements engine.Transport: sends stop at once; delayed replies
// due within cooldown are delivered, later ones are lost.
func (n *Net) Close(cooldown time.Duration) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	n.inflight.Wait() // Sends in progress finish queueing (or delivering)
	if n.queue == nil {
		return nil
	}
	close(n.queue)
	timer := time.NewTimer(cooldown)
	defer timer.Stop()
	select {
	case <-n.drained:
	case <-timer.C:
		n.stopDelivery()
		<-n.drained
	}
	return nil
}

// Counters returns the network's totals so far.
func (n *Net) Counters() Counters {
	return Counters{Sent: n.sent.Load(), Replies: n.replies.Load(), Lost: n.lost.Load(), Batches: n.batches.Load()}
}

// Probes returns how often ip:port was probed (with RecordProbes).
func (n *Net) Probes(ip uint32, port uint16) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.probes[key(ip, port)]
}

// Probed returns every probed ip:port key (ip<<16|port) with its count
// (with RecordProbes).
func (n *Net) Probed() map[uint64]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(map[uint64]int, len(n.probes))
	for k, v := range n.probes {
		out[k] = v
	}
	return out
}
