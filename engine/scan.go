package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultBatch is the number of probes handed to the transport at once.
const DefaultBatch = 64

// ErrScanConfig marks an unusable ScanConfig.
var ErrScanConfig = errors.New("invalid scan config")

// ScanConfig is one shard's scan of a space.
type ScanConfig struct {
	Space         *Space
	Seed          uint64 // permutation seed; every shard of a job uses the same
	Shard, Shards int
	Rate          int // probes per second for this shard; 0 = unlimited
	Batch         int // probes per Send; 0 = DefaultBatch
	Cooldown      time.Duration
	Transport     Transport
	StatsInterval time.Duration // 0 = only the final stats
	// Shared optionally adds a budget shared with other scans (a scanner's
	// total rate across its concurrent jobs).
	Shared *Limiter
}

func (c *ScanConfig) validate() error {
	var errs []error
	if c.Space == nil {
		errs = append(errs, errors.New("no space"))
	}
	if c.Transport == nil {
		errs = append(errs, errors.New("no transport"))
	}
	if c.Shards < 1 || c.Shard < 0 || c.Shard >= c.Shards {
		errs = append(errs, fmt.Errorf("shard %d/%d out of range", c.Shard, c.Shards))
	}
	if c.Rate < 0 || c.Batch < 0 || c.Cooldown < 0 || c.StatsInterval < 0 {
		errs = append(errs, errors.New("negative rate, batch, cooldown or stats interval"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrScanConfig, errors.Join(errs...))
	}
	return nil
}

// Open is a distinct open port the scan found. Entries are the port entries
// it counts for (those holding it whose sample was not yet reached).
type Open struct {
	IP      uint32
	Port    uint16
	Entries []int
	TTL     uint8
	Window  uint16
	SrcIP   uint32
	SrcPort uint16
}

// Stats are a scan's running totals. Targets is this shard's share of the
// space: an estimate while running (shards split the space evenly but for
// the few permutation elements skipped), exact once the scan completes.
type Stats struct {
	Targets, Sent, Received, Open, Duplicates, SendErrors uint64
	PPS, AvgPPS                                           float64
	ETA                                                   time.Duration
	Elapsed                                               time.Duration
	Done                                                  bool
}

// scan is the state of one Scan shared between the send loop, the reply
// handler and the stats ticker.
type scan struct {
	space   *Space
	onOpen  func(Open)
	bounded bool          // every entry has a sample: the scan can end early
	full    []atomic.Bool // entry reached its sample
	allFull chan struct{} // closed when every entry is full (bounded only)
	stopNow atomic.Bool   // allFull, readable on the hot path

	mu       sync.Mutex // guards seen, found, matchBuf, fullCount and onOpen calls
	seen     map[uint64]struct{}
	found    []int
	matchBuf []int
	nfull    int

	yielded, sent, received, open, dups, sendErrors atomic.Uint64
}

// Scan walks shard cfg.Shard of cfg.Space in permuted order, sends the
// probes through cfg.Transport at cfg.Rate and reports each distinct open
// port once through onOpen (never concurrently with itself). Entries that
// reached their sample are no longer probed; when every entry has a sample
// and all are reached, the scan ends early. onStats gets the totals every
// StatsInterval and once more at the end with Done set. When ctx ends Scan
// stops and returns ctx's error with the final stats.
func Scan(ctx context.Context, cfg ScanConfig, onOpen func(Open), onStats func(Stats)) (Stats, error) {
	if err := cfg.validate(); err != nil {
		return Stats{}, err
	}
	if cfg.Batch == 0 {
		cfg.Batch = DefaultBatch
	}
	perm, err := NewPermutation(cfg.Space.Size(), cfg.Seed)
	if err != nil {
		return Stats{}, fmt.Errorf("cannot scan: %w", err)
	}
	entries := cfg.Space.Entries()
	s := &scan{
		space:   cfg.Space,
		onOpen:  onOpen,
		bounded: len(entries) > 0,
		full:    make([]atomic.Bool, len(entries)),
		allFull: make(chan struct{}),
		seen:    make(map[uint64]struct{}),
		found:   make([]int, len(entries)),
	}
	for _, e := range entries {
		if e.Sample == 0 {
			s.bounded = false
		}
	}
	n := cfg.Space.Size()
	estimate := n / uint64(cfg.Shards)
	if uint64(cfg.Shard) < n%uint64(cfg.Shards) {
		estimate++
	}

	scanCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := cfg.Transport.Start(scanCtx, s.handle); err != nil {
		return Stats{}, fmt.Errorf("cannot start transport: %w", err)
	}
	began := time.Now()
	ticker := newStatsTicker(s, began, estimate, cfg.StatsInterval, onStats)

	cursor := perm.Shard(cfg.Shard, cfg.Shards)
	limiter := NewLimiter(cfg.Rate)
	completed, early := s.sendAll(ctx, cursor, cfg, limiter)

	cooldown := cfg.Cooldown
	if early || ctx.Err() != nil {
		cooldown = 0
	}
	closeErr := cfg.Transport.Close(cooldown)
	ticker.stop()

	final := s.snapshot(began, estimate, ticker.lastSent, ticker.lastTime)
	final.Done = true
	final.ETA = 0
	if completed {
		final.Targets = s.yielded.Load()
	}
	if onStats != nil {
		onStats(final)
	}
	if err := ctx.Err(); err != nil {
		return final, err
	}
	if closeErr != nil {
		return final, fmt.Errorf("cannot close transport: %w", closeErr)
	}
	return final, nil
}

// sendAll runs the send loop. completed: the cursor was exhausted; early:
// every entry reached its sample.
func (s *scan) sendAll(ctx context.Context, cursor *Cursor, cfg ScanConfig, limiter *Limiter) (completed, early bool) {
	batch := make([]Probe, 0, cfg.Batch)
	var yielded uint64
	flush := func() bool {
		s.yielded.Store(yielded)
		if len(batch) == 0 {
			return true
		}
		if limiter.Wait(ctx, len(batch)) != nil || cfg.Shared.Wait(ctx, len(batch)) != nil {
			return false
		}
		if err := cfg.Transport.Send(ctx, batch); err != nil {
			if ctx.Err() != nil {
				return false
			}
			s.sendErrors.Add(uint64(len(batch)))
		} else {
			s.sent.Add(uint64(len(batch)))
		}
		batch = batch[:0]
		return true
	}
	for {
		idx, ok := cursor.Next()
		if !ok {
			return flush(), false
		}
		yielded++
		ip, port, entry := s.space.At(idx)
		if s.space.skip(ip, port, entry, s.full) {
			if s.stopNow.Load() {
				return false, true
			}
			continue
		}
		batch = append(batch, Probe{IP: ip, Port: port})
		if len(batch) < cap(batch) {
			continue
		}
		if !flush() {
			return false, false
		}
		select {
		case <-s.allFull:
			return false, true
		default:
		}
	}
}

// handle is the transport's reply callback.
func (s *scan) handle(r Reply) {
	s.received.Add(1)
	if !r.Open {
		return
	}
	key := uint64(r.IP)<<16 | uint64(r.Port)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.seen[key]; dup {
		s.dups.Add(1)
		return
	}
	s.matchBuf = s.space.AppendMatch(s.matchBuf[:0], r.IP, r.Port)
	if len(s.matchBuf) == 0 {
		return // not a pair of this space: a stray reply
	}
	s.seen[key] = struct{}{}
	var counted []int
	for _, e := range s.matchBuf {
		sample := s.space.entries[e].Sample
		if sample > 0 && s.found[e] >= sample {
			continue
		}
		counted = append(counted, e)
		s.found[e]++
		if sample > 0 && s.found[e] == sample {
			s.full[e].Store(true)
			s.nfull++
		}
	}
	if len(counted) == 0 {
		return
	}
	s.open.Add(1)
	if s.bounded && s.nfull == len(s.found) && !s.stopNow.Load() {
		s.stopNow.Store(true)
		close(s.allFull)
	}
	if s.onOpen != nil {
		s.onOpen(Open{
			IP: r.IP, Port: r.Port, Entries: counted,
			TTL: r.TTL, Window: r.Window, SrcIP: r.SrcIP, SrcPort: r.SrcPort,
		})
	}
}

func (s *scan) snapshot(began time.Time, estimate, lastSent uint64, lastTime time.Time) Stats {
	now := time.Now()
	st := Stats{
		Targets:    max(estimate, s.yielded.Load()),
		Sent:       s.sent.Load(),
		Received:   s.received.Load(),
		Open:       s.open.Load(),
		Duplicates: s.dups.Load(),
		SendErrors: s.sendErrors.Load(),
		Elapsed:    now.Sub(began),
	}
	if secs := st.Elapsed.Seconds(); secs > 0 {
		st.AvgPPS = float64(st.Sent) / secs
	}
	if dt := now.Sub(lastTime).Seconds(); dt > 0 && st.Sent >= lastSent {
		st.PPS = float64(st.Sent-lastSent) / dt
	}
	if walked := s.yielded.Load(); walked > 0 && walked < st.Targets {
		// time per walked index so far, times what is left
		st.ETA = time.Duration(float64(st.Elapsed) * float64(st.Targets-walked) / float64(walked))
	}
	return st
}

// statsTicker calls onStats every interval from its own goroutine.
type statsTicker struct {
	done     chan struct{}
	wg       sync.WaitGroup
	lastSent uint64
	lastTime time.Time
}

func newStatsTicker(s *scan, began time.Time, estimate uint64, every time.Duration, onStats func(Stats)) *statsTicker {
	t := &statsTicker{done: make(chan struct{}), lastTime: began}
	if every <= 0 || onStats == nil {
		return t
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-t.done:
				return
			case <-tick.C:
				st := s.snapshot(began, estimate, t.lastSent, t.lastTime)
				t.lastSent, t.lastTime = st.Sent, began.Add(st.Elapsed)
				onStats(st)
			}
		}
	}()
	return t
}

// stop ends the ticker; after it returns onStats is no longer called by it.
func (t *statsTicker) stop() {
	close(t.done)
	t.wg.Wait()
}
