package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultBatch is the number of probes handed to the transport at once
// at unlimited rate and at rates up to DefaultBatch/batchWindow.
const DefaultBatch = 64

// At a set rate a batch holds about batchWindow's worth of probes, at most
// maxRateBatch: every batch costs a sleep, a hand-off and a syscall, and at
// 10 kpps batches of 64 were ~150 wakeups a second, a quarter of the
// process's CPU in Go's scheduler. The rate holds over any window longer
// than batchWindow.
const (
	batchWindow  = 10 * time.Millisecond
	maxRateBatch = 1024
)

// batchFor is the batch size for rate probes per second (0 = unlimited).
func batchFor(rate int) int {
	if rate == 0 {
		return DefaultBatch
	}
	return min(max(int(int64(rate)*int64(batchWindow)/int64(time.Second)), DefaultBatch), maxRateBatch)
}

// ErrScanConfig marks an unusable ScanConfig.
var ErrScanConfig = errors.New("invalid scan config")

// ScanConfig is one shard's scan of a space.
type ScanConfig struct {
	Space         *Space
	Seed          uint64 // permutation seed; every shard of a job uses the same
	Shard, Shards int
	Rate          int // probes per second for this shard; 0 = unlimited
	Batch         int // probes per Send; 0 = sized by rate (batchFor)
	Cooldown      time.Duration
	Transport     Transport
	StatsInterval time.Duration // 0 = only the final stats
	// Shared optionally adds a budget shared with other scans (a scanner's
	// total rate across its concurrent jobs).
	Shared *Limiter
	// Retries is how many more passes probe, after the first, the targets
	// that have not answered (open or closed): each pass walks the shard in
	// permutation order at Rate and starts no sooner than Cooldown after
	// the previous one started. When the space fits BitmapBytes an answered
	// bitmap limits a pass to the silent targets; otherwise a pass resends
	// everything (masscan's way) and dedupe absorbs the repeated replies.
	Retries int
	// BitmapBytes caps the memory of the per-index bitmaps (exact dedupe,
	// answered targets); 0 = DefaultBitmapBytes. A larger space dedupes
	// with a window of DedupeWindow open ports (0 = DefaultDedupeWindow).
	BitmapBytes  int64
	DedupeWindow int
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
	if c.Rate < 0 || c.Batch < 0 || c.Cooldown < 0 || c.StatsInterval < 0 || c.Retries < 0 ||
		c.BitmapBytes < 0 || c.DedupeWindow < 0 {
		errs = append(errs, errors.New("negative rate, batch, cooldown, stats interval, retries, bitmap bytes or dedupe window"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrScanConfig, errors.Join(errs...))
	}
	return nil
}

// Open is a distinct open port the scan found. Entries are the port entries
// it counts for (those holding it whose sample was not yet reached); the
// slice is reused after the onOpen call returns.
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
// Sent counts every probe, retries included (Retried of them in retry
// passes). Received counts the replies the transport validated, Rejected
// those it dropped as forged or stale (transports that validate cookies
// report it, see RejectCounter). Duplicates counts repeated open replies.
// Progress (0..1) and ETA assume every pass walks the whole shard, so a
// retry pass that finds little to resend ends sooner than they say.
type Stats struct {
	Targets, Sent, Received, Open, Duplicates, SendErrors uint64
	Retried, Rejected                                     uint64
	Pass                                                  int // current pass, 0 = first, then the retries
	PPS, AvgPPS                                           float64
	Progress                                              float64
	ETA                                                   time.Duration
	Elapsed                                               time.Duration
	Done                                                  bool
}

// RejectCounter is implemented by transports that validate replies (the
// raw transport's cookies): Rejected counts the replies dropped.
type RejectCounter interface {
	Rejected() uint64
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

	answered bitmap        // replied targets by space index; nil unless retrying within the cap
	rejects  RejectCounter // the transport's, or nil
	passes   int           // 1 + retries

	mu       sync.Mutex // guards reported, found, matchBuf, counted, nfull and onOpen calls
	reported *openSet
	found    []int
	matchBuf []int
	counted  []int
	nfull    int

	// yielded: indexes walked by the first pass; walked: by all passes
	yielded, walked, sent, retried, received, open, dups, sendErrors atomic.Uint64
	pass                                                             atomic.Int64
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
		cfg.Batch = batchFor(cfg.Rate)
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
		found:   make([]int, len(entries)),
		passes:  1 + cfg.Retries,
	}
	s.rejects, _ = cfg.Transport.(RejectCounter)
	s.reported, s.answered = newReplySets(cfg)
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

	limiter := NewLimiter(cfg.Rate)
	passBegan := time.Now()
	completed, early := s.sendAll(ctx, perm.Shard(cfg.Shard, cfg.Shards), cfg, limiter, 0)
	firstCompleted := completed
	for pass := 1; pass <= cfg.Retries && completed && !early; pass++ {
		// give the previous pass's probes a cooldown to answer: the same
		// target's two probes are at least a pass's duration apart
		if !sleepUntil(ctx, passBegan.Add(cfg.Cooldown)) {
			completed = false
			break
		}
		s.pass.Store(int64(pass))
		passBegan = time.Now()
		completed, early = s.sendAll(ctx, perm.Shard(cfg.Shard, cfg.Shards), cfg, limiter, pass)
	}

	cooldown := cfg.Cooldown
	if early || ctx.Err() != nil {
		cooldown = 0
	}
	closeErr := cfg.Transport.Close(cooldown)
	ticker.stop()

	final := s.snapshot(began, estimate, ticker.lastSent, ticker.lastTime)
	final.Done = true
	final.ETA = 0
	if firstCompleted {
		final.Targets = s.yielded.Load()
	}
	if completed || early {
		final.Progress = 1
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

// newReplySets sizes the scan's reply memory: exact bitmaps when they fit
// the cap, else a dedupe window and no answered set (retries resend all).
func newReplySets(cfg ScanConfig) (*openSet, bitmap) {
	limit := uint64(cfg.BitmapBytes)
	if limit == 0 {
		limit = DefaultBitmapBytes
	}
	window := cfg.DedupeWindow
	if window == 0 {
		window = DefaultDedupeWindow
	}
	size := cfg.Space.Size()
	need := bitmapBytes(size)
	if cfg.Retries > 0 {
		need *= 2
	}
	if need > limit {
		return newOpenSet(size, false, window), nil
	}
	var answered bitmap
	if cfg.Retries > 0 {
		answered = newBitmap(size)
	}
	return newOpenSet(size, true, 0), answered
}

// sleepUntil waits for t; false if ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// sendAll runs one pass of the send loop; a retry pass (pass > 0) skips
// the targets that answered. completed: the cursor was exhausted; early:
// every entry reached its sample.
func (s *scan) sendAll(ctx context.Context, cursor *Cursor, cfg ScanConfig, limiter *Limiter, pass int) (completed, early bool) {
	batch := make([]Probe, 0, cfg.Batch)
	var yielded, lastWalked uint64
	retry := pass > 0
	count := func() {
		if !retry {
			s.yielded.Store(yielded)
		}
		s.walked.Add(yielded - lastWalked)
		lastWalked = yielded
	}
	flush := func() bool {
		count()
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
			if retry {
				s.retried.Add(uint64(len(batch)))
			}
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
		if retry && s.answered != nil && s.answered.has(idx) {
			if yielded&4095 == 0 {
				count() // keep progress moving through answered stretches
				if ctx.Err() != nil {
					return false, false
				}
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
	if !r.Open && s.answered == nil {
		return // a closed port matters only to the retries' answered set
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.matchBuf = s.space.AppendMatch(s.matchBuf[:0], r.IP, r.Port)
	if len(s.matchBuf) == 0 {
		return // not a pair of this space: a stray reply
	}
	// the send loop probes a pair at its first entry's index
	idx, _ := s.space.indexIn(s.matchBuf[0], r.IP, r.Port)
	if s.answered != nil {
		s.answered.set(idx)
	}
	if !r.Open {
		return
	}
	if !s.reported.add(idx, uint64(r.IP)<<16|uint64(r.Port)) {
		s.dups.Add(1)
		return
	}
	counted := s.counted[:0]
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
	s.counted = counted
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
		Retried:    s.retried.Load(),
		Pass:       int(s.pass.Load()),
		Elapsed:    now.Sub(began),
	}
	if s.rejects != nil {
		st.Rejected = s.rejects.Rejected()
	}
	if secs := st.Elapsed.Seconds(); secs > 0 {
		st.AvgPPS = float64(st.Sent) / secs
	}
	if dt := now.Sub(lastTime).Seconds(); dt > 0 && st.Sent >= lastSent {
		st.PPS = float64(st.Sent-lastSent) / dt
	}
	total := float64(st.Targets) * float64(s.passes) // every pass walks the shard
	if walked := float64(s.walked.Load()); walked > 0 && total > 0 {
		st.Progress = min(walked/total, 1)
		if walked < total {
			// time per walked index so far, times what is left
			st.ETA = time.Duration(float64(st.Elapsed) * (total - walked) / walked)
		}
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
