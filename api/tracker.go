package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"trawl/ingest"
	"trawl/storage"
)

// JobStore is what the tracker needs of the metadata store.
type JobStore interface {
	Job(ctx context.Context, id string) (storage.Job, error)
	UpdateJob(ctx context.Context, j storage.Job) error
}

// Tracker follows every job through its events and is the only writer of
// job_status: queued, running with progress, and the terminal state. A job
// succeeds when every scanner shard has reported done and every module probe
// the shards dispatched has a result; facts are counted by record id, so a
// redelivered event is counted once. Because the tracker reads the same
// ordered events topic it publishes to, the terminal status it publishes
// follows every result of the job.
type Tracker struct {
	bus      ingest.Bus
	store    JobStore
	log      zerolog.Logger
	group    string
	interval time.Duration

	orphans UnfinishedLister // when set, Run first fails the jobs an earlier run left unfinished

	jobs     map[string]*trackedJob
	finished *ingest.RecentSet // jobs already terminal: their late events are ignored
	out      *outbox
}

type trackedJob struct {
	job       storage.Job
	announced bool // queued status published
	shards    int
	stats     map[int]ingest.ScanStats
	ports     map[string]struct{}
	results   map[string]struct{}
	errors    uint64
	dirty     bool // progress changed since the last running status
	restored  bool // loaded from the store only: its counts are the stored ones
}

// NewTracker returns a job tracker consuming with the given consumer group.
func NewTracker(bus ingest.Bus, store JobStore, log zerolog.Logger) *Tracker {
	return &Tracker{bus: bus, store: store, log: log, group: "tracker", interval: time.Second,
		jobs: map[string]*trackedJob{}, finished: ingest.NewRecentSet(100000), out: newOutbox()}
}

// UnfinishedLister lists the jobs left queued or running.
type UnfinishedLister interface {
	UnfinishedJobs(ctx context.Context) ([]storage.Job, error)
}

// FailOrphans makes Run start by failing every job an earlier run left
// queued or running. 'trawl all' uses it: the in-process bus keeps no task
// or event across a restart, so such jobs could never finish. (On Kafka the
// scanners' unacked tasks are redelivered instead.)
func (t *Tracker) FailOrphans(l UnfinishedLister) { t.orphans = l }

func (t *Tracker) failOrphans(ctx context.Context) error {
	jobs, err := t.orphans.UnfinishedJobs(ctx)
	if err != nil {
		return err
	}
	for _, j := range jobs {
		st := &trackedJob{job: j, restored: true}
		if err := t.finish(ctx, st, ingest.StateFailed, "interrupted: trawl restarted while the job ran"); err != nil {
			return err
		}
	}
	if len(jobs) > 0 {
		t.log.Warn().Int("jobs", len(jobs)).Msg("failed the jobs an earlier run left unfinished")
	}
	return nil
}

type trackerInput struct {
	sub   ingest.Subscription
	d     ingest.Delivery
	topic string
}

// Run consumes tasks and events until ctx ends.
func (t *Tracker) Run(ctx context.Context) error {
	events, err := t.bus.Subscribe(ctx, ingest.TopicEvents, t.group)
	if err != nil {
		return fmt.Errorf("cannot subscribe to events: %w", err)
	}
	defer events.Close()
	tasks, err := t.bus.Subscribe(ctx, ingest.TopicTasks, t.group)
	if err != nil {
		return fmt.Errorf("cannot subscribe to tasks: %w", err)
	}
	defer tasks.Close()

	in := make(chan trackerInput, 256)
	g, gctx := errgroup.WithContext(ctx)
	fetch := func(sub ingest.Subscription, topic string) func() error {
		return func() error {
			for {
				d, err := sub.Fetch(gctx)
				if err != nil {
					// the bus may close the subscription (its Subscribe ctx
					// ended) a moment before gctx reports the cancel
					if ctx.Err() != nil || gctx.Err() != nil {
						return nil
					}
					return fmt.Errorf("cannot fetch %s: %w", topic, err)
				}
				select {
				case in <- trackerInput{sub: sub, d: d, topic: topic}:
				case <-gctx.Done():
					return nil
				}
			}
		}
	}
	g.Go(func() error { return t.out.drain(gctx, t.bus) })
	g.Go(fetch(events, ingest.TopicEvents))
	g.Go(fetch(tasks, ingest.TopicTasks))
	g.Go(func() error {
		if t.orphans != nil {
			if err := t.failOrphans(gctx); err != nil && gctx.Err() == nil {
				return fmt.Errorf("cannot fail unfinished jobs: %w", err)
			}
		}
		tick := time.NewTicker(t.interval)
		defer tick.Stop()
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-tick.C:
				t.flushProgress(gctx)
			case item := <-in:
				// Never move past a message unhandled: an unacked one would
				// pin the bus (membus retention, Kafka's commit point).
				// Store errors are transient; retry until they pass.
				for backoff := 50 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
					err := t.handle(gctx, item)
					if err == nil {
						break
					}
					t.log.Error().Err(err).Str("topic", item.topic).Dur("retry_in", backoff).Msg("cannot track message")
					select {
					case <-gctx.Done():
						return nil
					case <-time.After(backoff):
					}
				}
				if err := item.sub.Ack(gctx, item.d); err != nil && gctx.Err() == nil {
					t.log.Warn().Err(err).Msg("cannot ack")
				}
			}
		}
	})
	return g.Wait()
}

func (t *Tracker) handle(ctx context.Context, item trackerInput) error {
	if item.topic == ingest.TopicTasks {
		var task ingest.Task
		if err := ingest.Decode(item.d.Value, &task); err != nil {
			t.log.Warn().Err(err).Msg("skipping undecodable task")
			return nil
		}
		st, err := t.load(ctx, task.JobID)
		if st == nil || err != nil {
			return err
		}
		if task.Kind == ingest.TaskCancel {
			return t.finish(ctx, st, ingest.StateCanceled, "canceled by the user")
		}
		return t.announce(ctx, st)
	}
	var e ingest.Event
	if err := ingest.Decode(item.d.Value, &e); err != nil {
		t.log.Warn().Err(err).Msg("skipping undecodable event")
		return nil
	}
	if e.Origin.Type == ingest.TypeJobStatus {
		return nil
	}
	st, err := t.load(ctx, e.Origin.JobID)
	if st == nil || err != nil {
		return err
	}
	if err := t.announce(ctx, st); err != nil {
		return err
	}
	switch {
	case e.Origin.Type == ingest.TypeScanStats:
		var s ingest.ScanStats
		if err := json.Unmarshal(e.Result.Data, &s); err != nil {
			t.log.Warn().Err(err).Str("job_id", st.job.ID).Msg("skipping malformed scan_stats")
			return nil
		}
		if s.Error != "" {
			return t.finish(ctx, st, ingest.StateFailed, fmt.Sprintf("scanner shard %d/%d: %s", s.Shard, s.Shards, s.Error))
		}
		if s.Canceled {
			// the shard saw the cancel before this tracker did: the job
			// stopped short, it did not succeed
			st.stats[s.Shard] = s
			return t.finish(ctx, st, ingest.StateCanceled, "canceled by the user")
		}
		if s.Shards > 0 {
			st.shards = s.Shards
		}
		st.stats[s.Shard] = s
		st.dirty = true
		if st.job.State == ingest.StateQueued {
			st.job.State, st.job.Started = ingest.StateRunning, time.Now().UTC()
			if err := t.publishStatus(ctx, st, ""); err != nil {
				return err
			}
		}
	case e.Origin.Type == ingest.TypePort:
		st.ports[recordKey(&e)] = struct{}{}
		st.dirty = true
	case e.Origin.Module == ingest.ModuleGrabber:
		key := recordKey(&e)
		if _, seen := st.results[key]; !seen {
			st.results[key] = struct{}{}
			var r struct {
				Status string `json:"status"`
			}
			if json.Unmarshal(e.Result.Data, &r) == nil && r.Status != "success" {
				st.errors++
			}
			st.dirty = true
		}
	}
	if st.complete() {
		return t.finish(ctx, st, ingest.StateSucceeded, "")
	}
	return nil
}

func recordKey(e *ingest.Event) string {
	if e.RecordID != "" {
		return e.RecordID
	}
	return e.ID
}

// load returns the job's tracking state, or nil for jobs that are unknown or
// already finished.
func (t *Tracker) load(ctx context.Context, jobID string) (*trackedJob, error) {
	if st, ok := t.jobs[jobID]; ok {
		return st, nil
	}
	if t.finished.Has(jobID) {
		return nil, nil
	}
	j, err := t.store.Job(ctx, jobID)
	if errors.Is(err, storage.ErrNotFound) {
		t.log.Warn().Str("job_id", jobID).Msg("event for an unknown job")
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot load job %s: %w", jobID, err)
	}
	if ingest.Terminal(j.State) {
		t.finished.Add(jobID)
		return nil, nil
	}
	st := &trackedJob{job: j, shards: 1, stats: map[int]ingest.ScanStats{},
		ports: map[string]struct{}{}, results: map[string]struct{}{}}
	t.jobs[jobID] = st
	return st, nil
}

func (t *Tracker) announce(ctx context.Context, st *trackedJob) error {
	if st.announced {
		return nil
	}
	if err := t.publishStatus(ctx, st, ""); err != nil {
		return err
	}
	st.announced = true
	return nil
}

// complete: every shard reported done and every dispatched probe has a result.
func (st *trackedJob) complete() bool {
	if len(st.stats) < st.shards {
		return false
	}
	var probes uint64
	for _, s := range st.stats {
		if !s.Done {
			return false
		}
		probes += s.Counts.Probes
	}
	return uint64(len(st.results)) >= probes
}

func (st *trackedJob) counts() ingest.JobCounts {
	var c ingest.JobCounts
	for _, s := range st.stats {
		c.Targets += s.Counts.Targets
		c.Sent += s.Counts.Sent
		c.Probes += s.Counts.Probes
	}
	c.OpenPorts = uint64(len(st.ports))
	c.Results = uint64(len(st.results))
	c.Errors = st.errors
	return c
}

// progress weighs the sweep at 80% and the module probes at 20%; the sweep
// is complete only when every shard has said so.
func (st *trackedJob) progress() float64 {
	c := st.counts()
	sweep := 0.0
	if c.Targets > 0 {
		sweep = float64(c.Sent) / float64(c.Targets)
	}
	allDone := len(st.stats) >= st.shards
	for _, s := range st.stats {
		allDone = allDone && s.Done
	}
	if allDone {
		sweep = 1
	}
	probes := 1.0
	if c.Probes > 0 {
		probes = float64(c.Results) / float64(c.Probes)
	}
	p := 0.8*min(sweep, 1) + 0.2*min(probes, 1)
	if !allDone {
		p = 0.8 * min(sweep, 1)
	}
	return min(p, 0.99)
}

func (t *Tracker) finish(ctx context.Context, st *trackedJob, state, reason string) error {
	st.job.State = state
	st.job.Finished = time.Now().UTC()
	if st.job.Started.IsZero() {
		st.job.Started = st.job.Finished
	}
	if state != ingest.StateSucceeded {
		st.job.Error = reason
	}
	if err := t.publishStatus(ctx, st, reason); err != nil {
		return err
	}
	delete(t.jobs, st.job.ID)
	t.finished.Add(st.job.ID) // bounded: a forgotten job costs one store lookup
	t.log.Info().Str("job_id", st.job.ID).Str("state", state).Uint64("open_ports", st.job.Counts.OpenPorts).
		Uint64("results", st.job.Counts.Results).Msg("job finished")
	return nil
}

func (t *Tracker) flushProgress(ctx context.Context) {
	for _, st := range t.jobs {
		if !st.dirty || st.job.State != ingest.StateRunning {
			continue
		}
		if err := t.publishStatus(ctx, st, ""); err != nil && ctx.Err() == nil {
			t.log.Warn().Err(err).Str("job_id", st.job.ID).Msg("cannot publish progress")
		}
	}
}

// publishStatus saves the job's state and publishes it as a job_status event.
func (t *Tracker) publishStatus(ctx context.Context, st *trackedJob, reason string) error {
	if !st.restored {
		st.job.Counts = st.counts()
		st.job.Progress = st.progress()
	}
	if st.job.State == ingest.StateSucceeded {
		st.job.Progress = 1
	}
	st.job.Updated = time.Now().UTC()
	st.dirty = false
	if err := t.store.UpdateJob(ctx, st.job); err != nil {
		return fmt.Errorf("cannot save job %s: %w", st.job.ID, err)
	}
	data, err := json.Marshal(ingest.JobStatus{Status: st.job.State, Progress: st.job.Progress, Counts: st.job.Counts, Error: reason})
	if err != nil {
		return err
	}
	e := ingest.Event{
		RecordID: ingest.NewID("rec_"),
		Origin: ingest.Origin{JobID: st.job.ID, ClientID: st.job.ClientID, Type: ingest.TypeJobStatus,
			Module: ingest.ModuleJob, TS: time.Now().UnixMilli()},
		Result: ingest.Result{Data: data},
	}
	if ingest.Terminal(st.job.State) {
		e.RecordID = ingest.RecordID(st.job.ID, ingest.TypeJobStatus, "terminal")
	}
	msg, err := ingest.EventMessage(&e)
	if err != nil {
		return err
	}
	t.out.add(st.job.ID, st.job.State, msg)
	return nil
}

// outbox decouples publishing job_status from consuming events: the tracker
// reads and writes the same topic, so a publish blocked by backpressure must
// never stop it from consuming (that would deadlock the topic). Pending
// progress updates of a running job are coalesced; state changes never are.
type outbox struct {
	mu      sync.Mutex
	wake    chan struct{}
	pending []outboxItem
}

type outboxItem struct {
	jobID, state string
	msg          ingest.Message
}

func newOutbox() *outbox { return &outbox{wake: make(chan struct{}, 1)} }

func (o *outbox) add(jobID, state string, msg ingest.Message) {
	o.mu.Lock()
	replaced := false
	if state == ingest.StateRunning {
		if i := o.lastOf(jobID); i >= 0 && o.pending[i].state == ingest.StateRunning {
			o.pending[i].msg, replaced = msg, true
		}
	}
	if !replaced {
		o.pending = append(o.pending, outboxItem{jobID: jobID, state: state, msg: msg})
	}
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// lastOf returns the index of jobID's newest pending item; mu held.
func (o *outbox) lastOf(jobID string) int {
	for i := len(o.pending) - 1; i >= 0; i-- {
		if o.pending[i].jobID == jobID {
			return i
		}
	}
	return -1
}

// drain publishes pending items in order until ctx ends, then makes one
// last attempt, bounded, so a terminal status queued just before a shutdown
// still goes out (the bus closes only after every service stopped).
func (o *outbox) drain(ctx context.Context, bus ingest.Bus) error {
	defer func() {
		o.mu.Lock()
		batch := o.pending
		o.pending = nil
		o.mu.Unlock()
		if len(batch) == 0 {
			return
		}
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		msgs := make([]ingest.Message, len(batch))
		for i, it := range batch {
			msgs[i] = it.msg
		}
		_ = bus.Publish(fctx, ingest.TopicEvents, msgs...)
	}()
	for {
		o.mu.Lock()
		batch := o.pending
		o.pending = nil
		o.mu.Unlock()
		if len(batch) > 0 {
			msgs := make([]ingest.Message, len(batch))
			for i, it := range batch {
				msgs[i] = it.msg
			}
			for {
				err := bus.Publish(ctx, ingest.TopicEvents, msgs...)
				if err == nil {
					break
				}
				requeue := func() { // for the last attempt in the deferred flush
					o.mu.Lock()
					o.pending = append(batch, o.pending...)
					o.mu.Unlock()
				}
				if ctx.Err() != nil {
					requeue()
					return nil
				}
				select {
				case <-time.After(200 * time.Millisecond):
				case <-ctx.Done():
					requeue()
					return nil
				}
			}
			continue
		}
		select {
		case <-o.wake:
		case <-ctx.Done():
			return nil
		}
	}
}
