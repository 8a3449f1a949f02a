package engine

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"trawl/ingest"
)

var (
	// ErrShardMismatch: a task was cut for a different number of shards.
	ErrShardMismatch = errors.New("task shard count does not match the scanner's")
	// ErrJobType: a task's job type is neither scan nor grab.
	ErrJobType = errors.New("unknown job type")
)

const (
	publishBatch = 256                   // messages per Publish at most
	publishEvery = 50 * time.Millisecond // and at least this often
	drainTimeout = 5 * time.Second       // RunJob publishes this long after ctx ends
	maxRetries   = 100                   // more passes than this is a typo
)

// ScannerConfig configures the scanner role.
type ScannerConfig struct {
	Shard, Shards int           // this scanner is shard Shard of Shards ("i/n")
	Rate          int           // probes per second, the scanner's total and a job's cap
	MaxJobs       int           // jobs running at once; further starts wait
	Cooldown      time.Duration // how long to wait for late replies after the last probe
	StatsInterval time.Duration // how often a job publishes scan_stats
	Retries       int           // extra passes over the targets that did not answer
}

// DefaultScannerConfig returns the defaults RegisterFlags sets.
func DefaultScannerConfig() ScannerConfig {
	return ScannerConfig{Shard: 0, Shards: 1, Rate: 10000, MaxJobs: 4, Cooldown: time.Second, StatsInterval: time.Second}
}

// RegisterFlags registers prefix+"shard" ("i/n"), prefix+"rate",
// prefix+"max-jobs", prefix+"cooldown", prefix+"stats-interval" and
// prefix+"retries".
func (c *ScannerConfig) RegisterFlags(fs *flag.FlagSet, prefix string) {
	*c = DefaultScannerConfig()
	fs.Var(shardFlag{c}, prefix+"shard", `this scanner's shard of the target permutation, "i/n" (0 ≤ i < n)`)
	fs.IntVar(&c.Rate, prefix+"rate", c.Rate, "probes per second, across all of this scanner's jobs")
	fs.IntVar(&c.MaxJobs, prefix+"max-jobs", c.MaxJobs, "jobs scanned at once; later ones wait")
	fs.DurationVar(&c.Cooldown, prefix+"cooldown", c.Cooldown, "wait for late replies after a job's last probe")
	fs.DurationVar(&c.StatsInterval, prefix+"stats-interval", c.StatsInterval, "how often a job reports its statistics")
	fs.IntVar(&c.Retries, prefix+"retries", c.Retries, "probe the targets that did not answer again, up to this many more passes")
}

// Validate checks the config.
func (c *ScannerConfig) Validate() error {
	var errs []error
	if c.Shards < 1 || c.Shard < 0 || c.Shard >= c.Shards {
		errs = append(errs, fmt.Errorf("scanner shard %d/%d: want 0 <= i < n", c.Shard, c.Shards))
	}
	if c.Rate < 1 {
		errs = append(errs, fmt.Errorf("scanner rate must be at least 1 probe per second, got %d", c.Rate))
	}
	if c.MaxJobs < 1 {
		errs = append(errs, fmt.Errorf("scanner max-jobs must be at least 1, got %d", c.MaxJobs))
	}
	if c.Cooldown < 0 {
		errs = append(errs, fmt.Errorf("scanner cooldown must not be negative, got %s", c.Cooldown))
	}
	if c.StatsInterval <= 0 {
		errs = append(errs, fmt.Errorf("scanner stats-interval must be positive, got %s", c.StatsInterval))
	}
	if c.Retries < 0 || c.Retries > maxRetries {
		errs = append(errs, fmt.Errorf("scanner retries must be 0..%d, got %d", maxRetries, c.Retries))
	}
	return errors.Join(errs...)
}

// shardFlag parses "i/n" into a ScannerConfig.
type shardFlag struct{ c *ScannerConfig }

func (f shardFlag) String() string {
	if f.c == nil {
		return "0/1"
	}
	return fmt.Sprintf("%d/%d", f.c.Shard, f.c.Shards)
}

func (f shardFlag) Set(s string) error {
	i, n, ok := strings.Cut(s, "/")
	shard, err1 := strconv.Atoi(strings.TrimSpace(i))
	shards, err2 := strconv.Atoi(strings.TrimSpace(n))
	if !ok || err1 != nil || err2 != nil || shards < 1 || shard < 0 || shard >= shards {
		return fmt.Errorf(`shard %q: want "i/n" with 0 <= i < n`, s)
	}
	f.c.Shard, f.c.Shards = shard, shards
	return nil
}

// Publisher publishes messages; ingest.Bus satisfies it.
type Publisher interface {
	Publish(ctx context.Context, topic string, msgs ...ingest.Message) error
}

// Scanner is the scanner role: it takes tasks from the bus and scans this
// shard's share of each job.
type Scanner struct {
	cfg          ScannerConfig
	bus          ingest.Bus
	policy       Policy
	newTransport func() (Transport, error)
	log          zerolog.Logger
	shared       *Limiter // the scanner's total rate across its jobs

	mu   sync.Mutex
	jobs map[string]context.CancelFunc // running or waiting jobs
	wg   sync.WaitGroup
	sem  chan struct{}
}

// NewScanner returns the scanner role; newTransport makes one transport per job.
func NewScanner(cfg ScannerConfig, bus ingest.Bus, policy Policy, newTransport func() (Transport, error), log zerolog.Logger) *Scanner {
	return &Scanner{
		cfg: cfg, bus: bus, policy: policy, newTransport: newTransport, log: log,
		shared: NewLimiter(cfg.Rate),
		jobs:   make(map[string]context.CancelFunc),
		sem:    make(chan struct{}, max(cfg.MaxJobs, 1)),
	}
}

// Run consumes tasks until ctx ends. A start task is acked only once the
// job's final scan_stats is published, so the job of a scanner that dies is
// redelivered to another member of its shard's group.
func (s *Scanner) Run(ctx context.Context) error {
	if err := s.cfg.Validate(); err != nil {
		return fmt.Errorf("cannot run scanner: %w", err)
	}
	group := fmt.Sprintf("scanner-%d-of-%d", s.cfg.Shard, s.cfg.Shards)
	sub, err := s.bus.Subscribe(ctx, ingest.TopicTasks, group)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("cannot subscribe to tasks: %w", err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		s.wg.Wait() // jobs end unacked: redelivered
		_ = sub.Close()
	}()
	s.log.Info().Str("group", group).Int("rate", s.cfg.Rate).Msg("scanner started")
	for {
		d, err := sub.Fetch(runCtx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("cannot fetch task: %w", err)
		}
		s.handle(runCtx, sub, d)
	}
}

func (s *Scanner) handle(ctx context.Context, sub ingest.Subscription, d ingest.Delivery) {
	var task ingest.Task
	if err := ingest.Decode(d.Value, &task); err != nil {
		s.log.Error().Err(err).Int64("offset", d.Offset).Msg("dropping undecodable task")
		s.ack(ctx, sub, d)
		return
	}
	log := s.log.With().Str("job", task.JobID).Logger()
	switch task.Kind {
	case ingest.TaskCancel:
		s.mu.Lock()
		cancel, ok := s.jobs[task.JobID]
		s.mu.Unlock()
		if ok {
			cancel()
			log.Info().Msg("job canceled")
		}
		s.ack(ctx, sub, d)
	case ingest.TaskStart:
		if shards := max(task.Shards, 1); shards != s.cfg.Shards {
			log.Error().Int("task_shards", shards).Int("scanner_shards", s.cfg.Shards).Msg("task cut for another shard count")
			if _, published, _ := runJob(ctx, ctx, task, s.cfg, s.policy, nil, s.bus, nil, log); published {
				s.ack(ctx, sub, d)
			}
			return
		}
		s.mu.Lock()
		if _, running := s.jobs[task.JobID]; running {
			s.mu.Unlock()
			log.Warn().Msg("job already running here, dropping the duplicate start")
			s.ack(ctx, sub, d)
			return
		}
		jobCtx, cancel := context.WithCancel(ctx)
		s.jobs[task.JobID] = cancel
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serveJob(ctx, jobCtx, cancel, sub, d, task, log)
	default:
		log.Error().Str("kind", task.Kind).Msg("dropping task of unknown kind")
		s.ack(ctx, sub, d)
	}
}

// serveJob waits for a job slot, runs the job and acks its task once the
// final stats are out. ctx is the scanner's: publishing stops with it.
func (s *Scanner) serveJob(ctx, jobCtx context.Context, cancel context.CancelFunc, sub ingest.Subscription,
	d ingest.Delivery, task ingest.Task, log zerolog.Logger) {
	defer s.wg.Done()
	defer func() {
		cancel()
		s.mu.Lock()
		delete(s.jobs, task.JobID)
		s.mu.Unlock()
	}()
	select {
	case s.sem <- struct{}{}:
		defer func() { <-s.sem }()
	case <-jobCtx.Done(): // canceled while waiting: runJob reports it
	}
	stats, published, err := runJob(jobCtx, ctx, task, s.cfg, s.policy, s.newTransport, s.bus, s.shared, log)
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Error().Err(err).Msg("job failed")
	}
	if !published {
		log.Warn().Msg("job's final stats not published; leaving its task for redelivery")
		return
	}
	log.Info().Uint64("sent", stats.Counts.Sent).Uint64("open", stats.Counts.OpenPorts).
		Bool("canceled", stats.Canceled).Msg("job finished")
	s.ack(ctx, sub, d)
}

func (s *Scanner) ack(ctx context.Context, sub ingest.Subscription, d ingest.Delivery) {
	if err := sub.Ack(ctx, d); err != nil && ctx.Err() == nil {
		s.log.Error().Err(err).Int64("offset", d.Offset).Msg("cannot ack task")
	}
}

// RunJob runs this shard's part of one job (the scanner role and the
// `trawl scan` CLI share it) and publishes what it finds: a port event per
// distinct open port, an OpenPort for the probe workers when the port's
// entries name modules, scan_stats every StatsInterval, and a final
// scan_stats (Done) after everything else. A job that cannot run (bad
// options, shard mismatch) still gets its final scan_stats, with Error set.
// When ctx ends the scan stops; what was found and the final stats
// (Canceled) are still published for a few seconds.
func RunJob(ctx context.Context, task ingest.Task, cfg ScannerConfig, policy Policy, tr Transport,
	pub Publisher, log zerolog.Logger) (ingest.ScanStats, error) {
	pubCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	finished := make(chan struct{})
	defer close(finished)
	go func() {
		select {
		case <-finished:
		case <-ctx.Done():
			t := time.NewTimer(drainTimeout)
			defer t.Stop()
			select {
			case <-finished:
			case <-t.C:
				cancel()
			}
		}
	}()
	newTransport := func() (Transport, error) {
		if tr == nil {
			return nil, errors.New("no transport")
		}
		return tr, nil
	}
	stats, published, err := runJob(ctx, pubCtx, task, cfg, policy, newTransport, pub, nil, log)
	if err == nil && !published {
		err = errors.New("cannot publish the final scan_stats")
	}
	return stats, err
}

// runJob runs a job: scanning stops with ctx, publishing with pubCtx.
// published reports whether the final scan_stats went out.
func runJob(ctx, pubCtx context.Context, task ingest.Task, cfg ScannerConfig, policy Policy,
	newTransport func() (Transport, error), pub Publisher, shared *Limiter, log zerolog.Logger,
) (stats ingest.ScanStats, published bool, err error) {
	jp := newJobPublisher(pubCtx, pub, task, cfg.Shard, cfg.Shards, log)
	fail := func(err error) (ingest.ScanStats, bool, error) {
		st := ingest.ScanStats{Shard: cfg.Shard, Shards: cfg.Shards, Done: true, Error: err.Error()}
		return st, jp.finish(st), err
	}
	if shards := max(task.Shards, 1); shards != cfg.Shards {
		return fail(fmt.Errorf("task for %d shards reached scanner shard %d/%d: %w", shards, cfg.Shard, cfg.Shards, ErrShardMismatch))
	}
	space, err := NewSpace(task.Options, policy)
	if err != nil {
		return fail(fmt.Errorf("cannot build the job's target space: %w", err))
	}
	if ctx.Err() != nil {
		st := ingest.ScanStats{Shard: cfg.Shard, Shards: cfg.Shards, Done: true, Canceled: true}
		return st, jp.finish(st), ctx.Err()
	}
	seed := task.Seed
	if seed == 0 { // every shard must agree: derive it from the job
		h := fnv.New64a()
		h.Write([]byte(task.JobID))
		seed = h.Sum64()
	}
	log.Info().Str("type", task.Type).Uint64("space", space.Size()).Uint64("excluded_ips", space.Excluded()).
		Int("shard", cfg.Shard).Int("shards", cfg.Shards).Msg("job started")
	switch task.Type {
	case "", ingest.JobScan:
		tr, err := newTransport()
		if err != nil {
			return fail(fmt.Errorf("cannot create transport: %w", err))
		}
		rate := cfg.Rate
		if task.Rate > 0 {
			share := (task.Rate + cfg.Shards - 1) / cfg.Shards
			if rate == 0 || share < rate {
				rate = share
			}
		}
		scanCfg := ScanConfig{
			Space: space, Seed: seed, Shard: cfg.Shard, Shards: cfg.Shards, Rate: rate,
			Cooldown: cfg.Cooldown, Transport: tr, StatsInterval: cfg.StatsInterval, Shared: shared,
			Retries: cfg.Retries,
		}
		final, err := Scan(ctx, scanCfg, func(o Open) { jp.open(space, o) }, func(st Stats) {
			if !st.Done {
				jp.stats(jp.scanStats(st))
			}
		})
		stats = jp.scanStats(final)
		switch {
		case err != nil && ctx.Err() != nil:
			stats.Canceled = true
		case err != nil:
			stats.Error = err.Error()
		}
		stats.Done = true
		return stats, jp.finish(stats), err
	case ingest.JobGrab:
		stats, err = grab(ctx, space, seed, cfg, jp)
		return stats, jp.finish(stats), err
	default:
		return fail(fmt.Errorf("job type %q: %w", task.Type, ErrJobType))
	}
}

// grab dispatches every ip:port of this shard's share as open: the user
// says they are, so there is nothing to sweep.
func grab(ctx context.Context, space *Space, seed uint64, cfg ScannerConfig, jp *jobPublisher) (ingest.ScanStats, error) {
	perm, err := NewPermutation(space.Size(), seed)
	if err != nil {
		st := ingest.ScanStats{Shard: cfg.Shard, Shards: cfg.Shards, Done: true, Error: err.Error()}
		return st, err
	}
	n := space.Size()
	estimate := n / uint64(cfg.Shards)
	if uint64(cfg.Shard) < n%uint64(cfg.Shards) {
		estimate++
	}
	entries := space.Entries()
	full := make([]atomic.Bool, len(entries))
	found := make([]int, len(entries))
	var match []int
	var st Stats
	began := time.Now()
	lastStats := began
	cursor := perm.Shard(cfg.Shard, cfg.Shards)
	var walked uint64
	for {
		idx, ok := cursor.Next()
		if !ok {
			break
		}
		walked++
		if walked%256 == 0 {
			if ctx.Err() != nil {
				break
			}
			if now := time.Now(); cfg.StatsInterval > 0 && now.Sub(lastStats) >= cfg.StatsInterval {
				lastStats = now
				st.Targets, st.Elapsed = max(estimate, walked), now.Sub(began)
				jp.stats(jp.scanStats(st))
			}
		}
		ip, port, entry := space.At(idx)
		if space.skip(ip, port, entry, full) {
			continue
		}
		st.Sent++
		var counted []int
		for _, e := range space.AppendMatch(match[:0], ip, port) {
			sample := entries[e].Sample
			if sample > 0 && found[e] >= sample {
				continue
			}
			counted = append(counted, e)
			if found[e]++; sample > 0 && found[e] == sample {
				full[e].Store(true)
			}
		}
		if len(counted) > 0 {
			st.Open++
			jp.dispatch(space, Open{IP: ip, Port: port, Entries: counted})
		}
	}
	st.Targets, st.Elapsed, st.Done = max(estimate, walked), time.Since(began), true
	if cursor.Remaining() == 0 {
		st.Targets = walked
	}
	out := jp.scanStats(st)
	if err := ctx.Err(); err != nil {
		out.Canceled = true
		return out, err
	}
	return out, nil
}

// jobPublisher batches a job's messages onto the bus from one goroutine, so
// the scan's receive path never waits on a Publish per message.
type jobPublisher struct {
	ctx           context.Context
	pub           Publisher
	jobID, client string
	shard, shards int
	log           zerolog.Logger
	ports         *ingest.PortEvents // its scratch buffer is used under mu

	// mu guards pending and arena and is held while a full batch is handed
	// over, so batches reach the bus in the order they were filled.
	mu      sync.Mutex
	pending []topicMessage
	arena   []byte // message values are carved from it: one allocation per arenaSize
	scratch []byte

	in     chan []topicMessage
	done   chan struct{}
	err    error // first publish error; read after done
	probes atomic.Uint64
}

// arenaSize is the chunk message values are carved from.
const arenaSize = 64 << 10

type topicMessage struct {
	topic string
	msg   ingest.Message
}

func newJobPublisher(ctx context.Context, pub Publisher, task ingest.Task, shard, shards int, log zerolog.Logger) *jobPublisher {
	j := &jobPublisher{
		ctx: ctx, pub: pub, jobID: task.JobID, client: task.ClientID, shard: shard, shards: shards, log: log,
		ports: ingest.NewPortEvents(task.JobID, task.ClientID),
		in:    make(chan []topicMessage, 4), done: make(chan struct{}),
	}
	go j.batch()
	return j
}

// send queues a message for the batcher; it is dropped once publishing has
// stopped (the final stats then fail too, so the job is not acked).
func (j *jobPublisher) send(topic string, m ingest.Message) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.queueLocked(topic, m)
}

func (j *jobPublisher) queueLocked(topic string, m ingest.Message) {
	j.pending = append(j.pending, topicMessage{topic, m})
	if len(j.pending) < publishBatch {
		return
	}
	select {
	case j.in <- j.pending:
	case <-j.ctx.Done():
	}
	j.pending = make([]topicMessage, 0, publishBatch)
}

// carveLocked copies b into the arena and returns the copy, capped so that
// appending to it cannot overwrite its neighbour.
func (j *jobPublisher) carveLocked(b []byte) []byte {
	if len(b) > arenaSize/8 {
		return append([]byte(nil), b...)
	}
	if cap(j.arena)-len(j.arena) < len(b) {
		j.arena = make([]byte, 0, arenaSize)
	}
	start := len(j.arena)
	j.arena = append(j.arena, b...)
	return j.arena[start:len(j.arena):len(j.arena)]
}

func (j *jobPublisher) batch() {
	defer close(j.done)
	var events, ports []ingest.Message
	ticker := time.NewTicker(publishEvery)
	defer ticker.Stop()
	publish := func(batch []topicMessage) {
		for _, m := range batch {
			if m.topic == ingest.TopicPorts {
				ports = append(ports, m.msg)
			} else {
				events = append(events, m.msg)
			}
		}
		if j.err == nil && len(events) > 0 {
			j.err = j.pub.Publish(j.ctx, ingest.TopicEvents, events...)
		}
		if j.err == nil && len(ports) > 0 {
			j.err = j.pub.Publish(j.ctx, ingest.TopicPorts, ports...)
		}
		clear(events)
		clear(ports)
		events, ports = events[:0], ports[:0]
	}
	// takePending empties a partial batch; a sender that holds mu is
	// handing over a full one, which the next receive takes instead.
	takePending := func() []topicMessage {
		if !j.mu.TryLock() {
			return nil
		}
		defer j.mu.Unlock()
		b := j.pending
		j.pending = nil
		return b
	}
	for {
		select {
		case b, ok := <-j.in:
			if !ok {
				j.mu.Lock()
				b = j.pending
				j.pending = nil
				j.mu.Unlock()
				publish(b)
				return
			}
			publish(b)
		case <-ticker.C:
			publish(takePending())
		}
	}
}

// finish publishes the final stats once every queued message is out, and
// reports whether it all went out. Nothing may be sent after it starts.
func (j *jobPublisher) finish(final ingest.ScanStats) bool {
	close(j.in)
	<-j.done
	if j.err != nil {
		j.log.Error().Err(j.err).Msg("cannot publish job results")
		return false
	}
	m, err := j.statsMessage(final)
	if err == nil {
		err = j.pub.Publish(j.ctx, ingest.TopicEvents, m)
	}
	if err != nil {
		j.log.Error().Err(err).Msg("cannot publish final scan_stats")
		return false
	}
	return true
}

// open publishes a port event and dispatches the port to the workers.
func (j *jobPublisher) open(space *Space, o Open) {
	var src netip.Addr
	if o.SrcIP != 0 {
		src = Addr(o.SrcIP)
	}
	j.mu.Lock()
	j.scratch = j.ports.Append(j.scratch[:0], Addr(o.IP), o.Port, src, o.SrcPort, time.Now().UnixMilli())
	j.queueLocked(ingest.TopicEvents, ingest.Message{Key: j.ports.Key(), Value: j.carveLocked(j.scratch)})
	j.mu.Unlock()
	j.dispatch(space, o)
}

// dispatch hands an open port to the probe workers when its entries name modules.
func (j *jobPublisher) dispatch(space *Space, o Open) {
	var modules []string
	for _, e := range o.Entries {
		for _, m := range space.entries[e].Modules {
			if !contains(modules, m) {
				modules = append(modules, m)
			}
		}
	}
	if len(modules) == 0 {
		return
	}
	ip := FormatIP(o.IP)
	op := ingest.OpenPort{
		JobID: j.jobID, ClientID: j.client, IP: ip, Port: int(o.Port), Protocol: "tcp",
		TTL: int(o.TTL), Window: int(o.Window), Modules: modules, Found: time.Now().UnixMilli(),
		SourcePort: int(o.SrcPort), Hostname: space.Hostname(o.IP, o.Entries),
	}
	if o.SrcIP != 0 {
		op.SourceIP = FormatIP(o.SrcIP)
	}
	b, err := ingest.Encode(nil, &op)
	if err != nil {
		j.log.Error().Err(err).Msg("cannot encode open port")
		return
	}
	j.probes.Add(uint64(len(modules)))
	j.send(ingest.TopicPorts, ingest.Message{Key: []byte(ip), Value: b})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// stats queues a periodic scan_stats.
func (j *jobPublisher) stats(st ingest.ScanStats) {
	m, err := j.statsMessage(st)
	if err != nil {
		j.log.Error().Err(err).Msg("cannot encode scan_stats")
		return
	}
	j.send(ingest.TopicEvents, m)
}

func (j *jobPublisher) scanStats(st Stats) ingest.ScanStats {
	return ingest.ScanStats{
		Shard: j.shard, Shards: j.shards,
		Counts: ingest.JobCounts{
			Targets: st.Targets, Sent: st.Sent, OpenPorts: st.Open, Probes: j.probes.Load(),
		},
		Received: st.Received, Duplicates: st.Duplicates, SendErrors: st.SendErrors,
		PPS: st.PPS, AvgPPS: st.AvgPPS, ETASeconds: st.ETA.Seconds(), Done: st.Done,
	}
}

func (j *jobPublisher) statsMessage(st ingest.ScanStats) (ingest.Message, error) {
	data, err := json.Marshal(st)
	if err != nil {
		return ingest.Message{}, fmt.Errorf("cannot encode scan_stats: %w", err)
	}
	ev := ingest.Event{
		Origin: ingest.Origin{
			JobID: j.jobID, ClientID: j.client, Type: ingest.TypeScanStats, Module: ingest.ModuleScanner,
			TS: time.Now().UnixMilli(),
		},
		Result: ingest.Result{Data: data},
	}
	shard := strconv.Itoa(j.shard)
	if st.Done {
		ev.RecordID = ingest.RecordID(j.jobID, ingest.TypeScanStats, shard, "done")
	} else {
		ev.RecordID = ingest.NewID("rec_")
	}
	return ingest.EventMessage(&ev)
}
