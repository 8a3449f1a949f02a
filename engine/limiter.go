package engine

import (
	"context"
	"sync"
	"time"
)

// maxLag is how far the limiter lets a caller fall behind its schedule and
// still catch up. Oversleeping by tens or hundreds of microseconds per batch
// is normal and made good by the next batches, so the rate stays exact; of a
// longer stall (a busy machine, a blocked transport) only maxLag is made
// good and the rest is forgiven, so no stall turns into more than maxLag's
// worth of probes sent back to back.
const maxLag = 50 * time.Millisecond

// Limiter paces probes to a rate. Wait grants a batch and sleeps until the
// batch's slot on an absolute schedule (epoch + granted/pps), so sleep
// overshoot does not accumulate into a lower rate. It is safe for concurrent
// use: callers share the rate.
type Limiter struct {
	pps     uint64
	timers  sync.Pool
	mu      sync.Mutex
	epoch   time.Time // schedule origin
	granted uint64    // probes granted since epoch
}

// NewLimiter returns a limiter for pps probes per second; 0 means unlimited.
func NewLimiter(pps int) *Limiter {
	return &Limiter{pps: uint64(max(pps, 0))}
}

// Rate is the limiter's probes per second (0 = unlimited).
func (l *Limiter) Rate() int { return int(l.pps) }

// Wait grants n probes, sleeping until they may be sent. It returns ctx's
// error if ctx ends first (the grant is then not returned).
func (l *Limiter) Wait(ctx context.Context, n int) error {
	if l == nil || l.pps == 0 || n <= 0 {
		return ctx.Err()
	}
	now := time.Now()
	l.mu.Lock()
	if l.epoch.IsZero() {
		l.epoch = now
	}
	// Rebase whole seconds so granted*1e9 never overflows.
	if secs := l.granted / l.pps; secs > 0 {
		l.epoch = l.epoch.Add(time.Duration(secs) * time.Second)
		l.granted -= secs * l.pps
	}
	due := l.epoch.Add(time.Duration(l.granted * uint64(time.Second) / l.pps))
	if lag := now.Sub(due); lag > maxLag {
		l.epoch = l.epoch.Add(lag - maxLag) // forgive all but maxLag
		due = now.Add(-maxLag)
	}
	l.granted += uint64(n)
	l.mu.Unlock()

	d := due.Sub(now)
	if d <= 0 {
		return ctx.Err()
	}
	t, _ := l.timers.Get().(*time.Timer)
	if t == nil {
		t = time.NewTimer(d)
	} else {
		t.Reset(d)
	}
	defer l.timers.Put(t)
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		t.Stop()
		return ctx.Err()
	}
}
