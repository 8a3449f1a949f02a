package ingest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// EventWriter is what the ingester needs from storage (embedded sqlite, later
// ClickHouse). InsertEvents must be idempotent by Event.RecordID, since
// delivery is at-least-once, and must not keep events after it returns: the
// ingester reuses the slice.
type EventWriter interface {
	InsertEvents(ctx context.Context, events []Event) error
}

// IngesterConfig tunes the batcher.
type IngesterConfig struct {
	// BatchSize is the most events one InsertEvents call receives.
	BatchSize int
	// FlushInterval bounds how long an event waits for its batch to fill.
	FlushInterval time.Duration
	// Group is the consumer group on TopicEvents; ingester replicas share it.
	Group string
	// ShutdownTimeout bounds the final flush once Run's context has ended;
	// what cannot be stored by then stays unacked for the next ingester.
	ShutdownTimeout time.Duration
}

const (
	defaultIngestBatchSize     = 5000
	defaultIngestFlushInterval = 200 * time.Millisecond
	defaultIngestGroup         = "ingest"

	// finishedJobsRemembered bounds the memory spent on dropping events that
	// arrive after their job's terminal status: late results come within
	// moments of it, so the most recent jobs are the ones that matter.
	finishedJobsRemembered = 100_000
	// Insert retries back off from retryMinBackoff, doubling up to retryMaxBackoff.
	retryMinBackoff              = 20 * time.Millisecond
	retryMaxBackoff              = 5 * time.Second
	defaultIngestShutdownTimeout = 5 * time.Second
)

// DefaultIngesterConfig returns the defaults RegisterFlags sets.
func DefaultIngesterConfig() IngesterConfig {
	return IngesterConfig{
		BatchSize:       defaultIngestBatchSize,
		FlushInterval:   defaultIngestFlushInterval,
		Group:           defaultIngestGroup,
		ShutdownTimeout: defaultIngestShutdownTimeout,
	}
}

// RegisterFlags registers the ingester flags under prefix and sets their defaults.
func (c *IngesterConfig) RegisterFlags(fs *flag.FlagSet, prefix string) {
	fs.IntVar(&c.BatchSize, prefix+"batch-size", defaultIngestBatchSize,
		"most events written to storage in one insert")
	fs.DurationVar(&c.FlushInterval, prefix+"flush-interval", defaultIngestFlushInterval,
		"longest an event waits for its batch to fill before it is written")
	fs.StringVar(&c.Group, prefix+"group", defaultIngestGroup,
		"consumer group on the events topic, shared by ingester replicas")
	fs.DurationVar(&c.ShutdownTimeout, prefix+"shutdown-timeout", defaultIngestShutdownTimeout,
		"longest the final flush may take at shutdown; what is not stored by then is redelivered later")
}

// Validate reports every invalid setting.
func (c *IngesterConfig) Validate() error {
	var errs []error
	if c.BatchSize <= 0 {
		errs = append(errs, fmt.Errorf("invalid batch-size %d: must be positive", c.BatchSize))
	}
	if c.FlushInterval <= 0 {
		errs = append(errs, fmt.Errorf("invalid flush-interval %v: must be positive", c.FlushInterval))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("invalid shutdown-timeout %v: must be positive", c.ShutdownTimeout))
	}
	if c.Group == "" {
		// group "" is an ephemeral subscriber: it would lose events.
		errs = append(errs, errors.New("invalid group: must not be empty"))
	}
	return errors.Join(errs...)
}

// IngesterStats counts what the ingester did with the events it consumed.
type IngesterStats struct {
	Stored  uint64 // written to storage (a redelivered event counts again)
	Dropped uint64 // arrived after their job's terminal status
	Invalid uint64 // undecodable, from a newer schema, or missing ids
}

// Ingester consumes TopicEvents and writes the events to storage in batches.
// A delivery is acked only after its event is stored, so a crash or an
// insert failure loses nothing; it never acks ahead of storage.
type Ingester struct {
	cfg IngesterConfig
	bus Bus
	w   EventWriter
	log zerolog.Logger
	// invalidLog is sampled: a producer spewing garbage must not flood the log.
	invalidLog zerolog.Logger

	stored, dropped, invalid atomic.Uint64
	// finished holds the ids of jobs whose terminal job_status was seen.
	// Only Run's goroutine touches it.
	finished *RecentSet
}

// NewIngester returns an ingester. cfg should be valid; unset fields take
// their defaults.
func NewIngester(cfg IngesterConfig, bus Bus, w EventWriter, log zerolog.Logger) *Ingester {
	def := DefaultIngesterConfig()
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = def.BatchSize
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = def.FlushInterval
	}
	if cfg.Group == "" {
		cfg.Group = def.Group
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = def.ShutdownTimeout
	}
	return &Ingester{
		cfg:        cfg,
		bus:        bus,
		w:          w,
		log:        log,
		invalidLog: log.Sample(&zerolog.BurstSampler{Burst: 10, Period: time.Second}),
		finished:   NewRecentSet(finishedJobsRemembered),
	}
}

// Stats returns the running counts; safe to call while Run runs.
func (i *Ingester) Stats() IngesterStats {
	return IngesterStats{Stored: i.stored.Load(), Dropped: i.dropped.Load(), Invalid: i.invalid.Load()}
}

// batch is the events waiting to be stored and every delivery waiting to be
// acked, in delivery order (skipped ones included, so acks never overtake an
// earlier unstored event).
type batch struct {
	events []Event
	acks   []Delivery
}

func (b *batch) empty() bool { return len(b.acks) == 0 }

// full reports whether the batch should be flushed now: it holds size events,
// or so many skipped deliveries that their acks should not wait longer.
func (b *batch) full(size int) bool { return len(b.events) >= size || len(b.acks) >= 2*size }

func (b *batch) reset() {
	clear(b.events)
	clear(b.acks)
	b.events, b.acks = b.events[:0], b.acks[:0]
}

// Run consumes until ctx ends, then flushes what it holds and returns nil. It
// returns an error if it cannot subscribe or the bus fails.
func (i *Ingester) Run(ctx context.Context) error {
	// The subscription outlives ctx so that the final flush can still ack.
	sub, err := i.bus.Subscribe(context.WithoutCancel(ctx), TopicEvents, i.cfg.Group)
	if err != nil {
		return fmt.Errorf("cannot subscribe to %s: %w", TopicEvents, err)
	}
	defer sub.Close()

	// A goroutine fetches and decodes, so decoding the next events overlaps
	// the insert of the last batch; the loop below batches, flushes on a
	// timer and keeps the per-job state in delivery order.
	fetchCtx, stopFetch := context.WithCancel(ctx)
	defer stopFetch()
	decoded := make(chan decodedEvent, min(i.cfg.BatchSize, 1024))
	fetchErr := make(chan error, 1)
	go func() {
		defer close(decoded)
		for {
			d, err := sub.Fetch(fetchCtx)
			if err != nil {
				fetchErr <- err
				return
			}
			select {
			case decoded <- decode(d):
			case <-fetchCtx.Done():
				// d stays unacked and goes back to the group on Close.
				fetchErr <- fetchCtx.Err()
				return
			}
		}
	}()

	var b batch
	timer := time.NewTimer(i.cfg.FlushInterval)
	timer.Stop()
	defer timer.Stop()
	armed := false
	flush := func() {
		timer.Stop()
		armed = false
		if err := i.flush(ctx, sub, &b); err != nil {
			// Only ctx ending stops the retries; the final flush below
			// tries again with a fresh deadline.
			i.log.Warn().Err(err).Msg("flush interrupted by shutdown")
		}
	}
	for {
		select {
		case de, ok := <-decoded:
			if !ok {
				err := <-fetchErr
				if ctx.Err() != nil {
					return i.shutdown(ctx, sub, &b, decoded, nil)
				}
				return i.shutdown(ctx, sub, &b, decoded, fmt.Errorf("cannot fetch from %s: %w", TopicEvents, err))
			}
			i.add(&b, &de)
			if b.full(i.cfg.BatchSize) {
				flush()
			} else if !armed && !b.empty() {
				timer.Reset(i.cfg.FlushInterval)
				armed = true
			}
		case <-timer.C:
			armed = false
			flush()
		case <-ctx.Done():
			stopFetch()
			return i.shutdown(ctx, sub, &b, decoded, nil)
		}
	}
}

// shutdown stores what the ingester holds, including the events already
// decoded (the fetcher has been stopped and closes the channel), under a
// fresh, short deadline, and returns cause. Whatever cannot be stored stays
// unacked and goes back to the group.
func (i *Ingester) shutdown(ctx context.Context, sub Subscription, b *batch, decoded <-chan decodedEvent, cause error) error {
	flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), i.cfg.ShutdownTimeout)
	defer cancel()
	err := func() error {
		for de := range decoded {
			i.add(b, &de)
			if b.full(i.cfg.BatchSize) {
				if err := i.flush(flushCtx, sub, b); err != nil {
					return err
				}
			}
		}
		return i.flush(flushCtx, sub, b)
	}()
	if err != nil {
		i.log.Error().Err(err).Int("events", len(b.events)).Msg("final flush failed; events stay unacked")
	}
	i.log.Info().Uint64("stored", i.stored.Load()).Uint64("dropped", i.dropped.Load()).
		Uint64("invalid", i.invalid.Load()).Msg("ingester stopped")
	return cause
}

// decodedEvent is a delivery and what it holds.
type decodedEvent struct {
	d        Delivery
	e        Event
	err      error // from Decode
	terminal bool  // e is its job's terminal job_status
}

func decode(d Delivery) decodedEvent {
	de := decodedEvent{d: d}
	if de.err = Decode(d.Value, &de.e); de.err == nil {
		de.e.ID = d.Cursor()
		de.terminal = de.e.Terminal()
	}
	return de
}

// add puts one decoded delivery into the batch: its event if it is to be
// stored, and always the delivery to ack. Skipped ones are counted.
func (i *Ingester) add(b *batch, de *decodedEvent) {
	b.acks = append(b.acks, de.d)
	e, off := &de.e, de.d.Offset
	switch {
	case errors.Is(de.err, ErrVersion):
		i.invalid.Add(1)
		i.invalidLog.Warn().Err(de.err).Int64("offset", off).Msg("skipping event from a newer schema")
	case de.err != nil:
		i.invalid.Add(1)
		i.invalidLog.Warn().Err(de.err).Int64("offset", off).Msg("skipping undecodable event")
	case e.Internal():
		// Bookkeeping between roles (scanner statistics); not stored.
	case e.Origin.JobID == "" || e.Origin.ClientID == "" || e.Target.Port < 0 || e.Target.Port > 65535:
		// a store would refuse the whole batch for it, and the retry loop
		// would then stop ingest for good: skip it here instead
		i.invalid.Add(1)
		i.invalidLog.Warn().Int64("offset", off).Str("id", e.ID).Str("job_id", e.Origin.JobID).
			Int("port", e.Target.Port).Msg("skipping event without a job or client id, or with a port out of range")
	case i.finished.Has(e.Origin.JobID):
		// Keeps "the terminal job_status is last" true in storage when a
		// worker's result straggles in after the job finished.
		i.dropped.Add(1)
		i.log.Debug().Str("job_id", e.Origin.JobID).Str("id", e.ID).Str("type", e.Origin.Type).
			Msg("dropping event after its job's terminal status")
	default:
		if de.terminal {
			i.finished.Add(e.Origin.JobID)
		}
		b.events = append(b.events, *e)
	}
}

// flush stores the batch's events and then acks every delivery in it,
// retrying the insert until it succeeds or ctx ends. On error the batch is
// kept, unacked.
func (i *Ingester) flush(ctx context.Context, sub Subscription, b *batch) error {
	if b.empty() {
		return nil
	}
	if len(b.events) > 0 {
		start := time.Now()
		if err := i.insert(ctx, b.events); err != nil {
			return err
		}
		i.stored.Add(uint64(len(b.events)))
		i.log.Debug().Int("events", len(b.events)).Dur("took", time.Since(start)).Msg("batch stored")
	}
	// Acks must happen even when ctx has just ended: the events are stored.
	ackCtx := context.WithoutCancel(ctx)
	var ackErr error
	failed := 0
	for _, d := range b.acks {
		if err := sub.Ack(ackCtx, d); err != nil {
			ackErr = err
			failed++
		}
	}
	if failed > 0 {
		// Stored but unacked: storage deduplicates the redelivery by record id.
		i.log.Warn().Err(ackErr).Int("failed", failed).Msg("cannot ack stored events")
	}
	b.reset()
	return nil
}

// insert calls the writer until it succeeds, backing off between attempts,
// or ctx ends.
func (i *Ingester) insert(ctx context.Context, events []Event) error {
	backoff := retryMinBackoff
	var wait *time.Timer
	for attempt := 1; ; attempt++ {
		err := i.w.InsertEvents(ctx, events)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("cannot insert %d events: %w", len(events), err)
		}
		i.log.Warn().Err(err).Int("events", len(events)).Int("attempt", attempt).Dur("retry_in", backoff).
			Msg("cannot insert events; retrying")
		if wait == nil {
			wait = time.NewTimer(backoff)
			defer wait.Stop()
		} else {
			wait.Reset(backoff)
		}
		select {
		case <-wait.C:
		case <-ctx.Done():
			return fmt.Errorf("cannot insert %d events: %w", len(events), err)
		}
		backoff = min(2*backoff, retryMaxBackoff)
	}
}
