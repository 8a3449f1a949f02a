package probes

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"trawl/ingest"
)

// Event batching: a batch goes out when it holds publishBatch events or
// publishEvery after its first event, whichever comes first.
const (
	publishBatch = 64
	publishEvery = 20 * time.Millisecond
	// publishGrace is how long after the probe grace the last batch may
	// take to publish.
	publishGrace = 2 * time.Second
	// canceledJobsKept bounds the set of canceled job ids a worker keeps.
	canceledJobsKept = 4096
)

// WorkerConfig configures the worker role.
type WorkerConfig struct {
	Pool PoolConfig
	// Group is the consumer group on the ports topic.
	Group string
	// Prefetch is the number of open ports handled at once; 0 means
	// Pool.Concurrency.
	Prefetch int
	// Grace is how long in-flight probes may run on after Run's ctx ends;
	// ports whose probes it cuts short are left unacked for redelivery.
	Grace time.Duration
}

// DefaultWorkerConfig returns the defaults RegisterFlags sets.
func DefaultWorkerConfig() WorkerConfig {
	return WorkerConfig{Pool: DefaultPoolConfig(), Group: "workers", Grace: 5 * time.Second}
}

// RegisterFlags registers the worker's and its pool's flags under prefix.
func (c *WorkerConfig) RegisterFlags(fs *flag.FlagSet, prefix string) {
	d := DefaultWorkerConfig()
	c.Pool.RegisterFlags(fs, prefix)
	fs.StringVar(&c.Group, prefix+"group", d.Group, "consumer group on the ports topic")
	fs.IntVar(&c.Prefetch, prefix+"prefetch", d.Prefetch, "open ports handled at once (0 = concurrency)")
	fs.DurationVar(&c.Grace, prefix+"grace", d.Grace, "how long in-flight probes may finish after shutdown starts")
}

// Validate reports every invalid setting.
func (c WorkerConfig) Validate() error {
	errs := []error{c.Pool.Validate()}
	if c.Group == "" {
		errs = append(errs, errors.New("worker group must not be empty"))
	}
	if c.Prefetch < 0 {
		errs = append(errs, errors.New("worker prefetch must not be negative"))
	}
	if c.Grace < 0 {
		errs = append(errs, errors.New("worker grace must not be negative"))
	}
	return errors.Join(errs...)
}

// Worker is the probe worker role: it consumes open ports, runs their
// modules through the pool and publishes one event per (port, module).
type Worker struct {
	cfg      WorkerConfig
	bus      ingest.Bus
	reg      *Registry
	log      zerolog.Logger
	pool     *Pool
	canceled *jobSet
}

// NewWorker returns a worker; a zero Prefetch becomes Pool.Concurrency.
func NewWorker(cfg WorkerConfig, bus ingest.Bus, reg *Registry, log zerolog.Logger) *Worker {
	pool := NewPool(cfg.Pool)
	cfg.Pool = pool.cfg
	if cfg.Prefetch <= 0 {
		cfg.Prefetch = cfg.Pool.Concurrency
	}
	if cfg.Group == "" {
		cfg.Group = DefaultWorkerConfig().Group
	}
	return &Worker{cfg: cfg, bus: bus, reg: reg, log: log, pool: pool, canceled: newJobSet(canceledJobsKept)}
}

// Run consumes open ports until ctx ends, then stops fetching, lets the
// probes in flight finish within Grace, publishes their events, acks what
// is complete and returns nil. It returns an error when the bus fails.
func (w *Worker) Run(ctx context.Context) error {
	// The ports subscription outlives ctx until Run returns: the last acks
	// of the shutdown happen after ctx has ended. Closing it returns the
	// unacked ports to the group.
	subCtx, closeSubs := context.WithCancel(context.WithoutCancel(ctx))
	defer closeSubs()
	ports, err := w.bus.Subscribe(subCtx, ingest.TopicPorts, w.cfg.Group)
	if err != nil {
		return fmt.Errorf("cannot subscribe to %s: %w", ingest.TopicPorts, err)
	}
	defer ports.Close()
	// Subscribed before the first port is fetched, so a cancel published
	// from here on is seen.
	tasks, err := w.bus.Subscribe(ctx, ingest.TopicTasks, "")
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("cannot subscribe to %s: %w", ingest.TopicTasks, err)
	}

	// Probes run on workCtx and publishing on pubCtx: both outlive ctx by a
	// bounded grace so in-flight work can land instead of being redone.
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	pubCtx, stopPub := context.WithCancel(context.WithoutCancel(ctx))
	defer stopPub()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
			return
		}
		grace := time.NewTimer(w.cfg.Grace)
		defer grace.Stop()
		select {
		case <-grace.C:
			stopWork()
		case <-done:
			return
		}
		last := time.NewTimer(publishGrace)
		defer last.Stop()
		select {
		case <-last.C:
			stopPub()
		case <-done:
		}
	}()

	var tasksDone sync.WaitGroup
	tasksDone.Add(1)
	go func() {
		defer tasksDone.Done()
		w.watchCancels(ctx, tasks)
	}()

	pub := &publisher{bus: w.bus, sub: ports, log: w.log, in: make(chan outcome, publishBatch)}
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		pub.run(pubCtx)
	}()

	// When fetching fails for good the bus is gone: stop the probes, their
	// events could not be published anyway.
	fetchErr := w.fetchLoop(ctx, workCtx, ports, pub, stopWork)

	close(pub.in)
	<-pubDone
	tasksDone.Wait()
	if fetchErr != nil {
		return fetchErr
	}
	if pub.err != nil && ctx.Err() == nil {
		return pub.err
	}
	return nil
}

// fetchLoop hands open ports to up to Prefetch handler goroutines, started
// as load needs them and kept (their stacks stay grown), until ctx ends; it
// returns once every handler has finished. A port fetched when ctx ends
// before a handler is free stays unacked and is redelivered.
func (w *Worker) fetchLoop(ctx, workCtx context.Context, ports ingest.Subscription, pub *publisher, abort func()) error {
	work := make(chan ingest.Delivery)
	var handlers sync.WaitGroup
	defer handlers.Wait()
	defer close(work)
	started := 0
	for {
		d, err := ports.Fetch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, ingest.ErrClosed) {
				abort()
				return fmt.Errorf("cannot fetch open ports: %w", err)
			}
			w.log.Warn().Err(err).Msg("cannot fetch open port")
			if !sleepCtx(ctx, 100*time.Millisecond) {
				return nil
			}
			continue
		}
		select {
		case work <- d: // an idle handler took it
			continue
		default:
		}
		if started < w.cfg.Prefetch {
			started++
			handlers.Add(1)
			go func() {
				defer handlers.Done()
				for d := range work {
					w.handle(workCtx, d, pub)
				}
			}()
		}
		select {
		case work <- d:
		case <-ctx.Done():
			return nil
		}
	}
}

// outcome is one (port, module) result on its way to the publisher, or a
// module whose result is not published (publish false).
type outcome struct {
	port    *portWork
	msg     ingest.Message
	publish bool
	// hold leaves the port unacked: its probe was cut short by shutdown and
	// must run again after redelivery.
	hold bool
}

// portWork tracks one delivery's outcomes; only the publisher goroutine
// touches it after the handler created it.
type portWork struct {
	d       ingest.Delivery
	pending int
	hold    bool
}

func (w *Worker) handle(workCtx context.Context, d ingest.Delivery, pub *publisher) {
	var op ingest.OpenPort
	if err := ingest.Decode(d.Value, &op); err != nil {
		// A record this worker cannot read never will be: drop it loudly.
		w.log.Error().Err(err).Int64("offset", d.Offset).Msg("cannot decode open port, dropping it")
		pub.in <- outcome{port: &portWork{d: d, pending: 1}}
		return
	}
	modules := uniqueNames(op.Modules)
	work := &portWork{d: d, pending: len(modules)}
	if len(modules) == 0 || w.canceled.has(op.JobID) {
		work.pending = 1
		pub.in <- outcome{port: work}
		return
	}
	if len(modules) == 1 {
		pub.in <- w.probeOne(workCtx, &op, modules[0], work)
		return
	}
	var probes sync.WaitGroup
	for _, name := range modules {
		probes.Add(1)
		go func() {
			defer probes.Done()
			pub.in <- w.probeOne(workCtx, &op, name, work)
		}()
	}
	probes.Wait()
}

func (w *Worker) probeOne(workCtx context.Context, op *ingest.OpenPort, name string, work *portWork) outcome {
	protocol := op.Protocol
	if protocol == "" {
		protocol = "tcp"
	}
	var res Result
	if m, ok := w.reg.Get(name); ok {
		res = w.pool.Probe(workCtx, m, Target{IP: op.IP, Port: op.Port, Protocol: protocol, JobID: op.JobID, Hostname: op.Hostname})
	} else {
		res = Result{Status: StatusError, Error: fmt.Sprintf("unknown module %q", name), Started: time.Now()}
	}
	if res.Status == StatusCanceled && workCtx.Err() != nil {
		return outcome{port: work, hold: true}
	}
	if w.canceled.has(op.JobID) {
		return outcome{port: work}
	}
	data, err := json.Marshal(res)
	if err != nil {
		// Only a module's unmarshalable field gets here; keep the event.
		data, _ = json.Marshal(Result{Status: StatusError, Error: "cannot encode result: " + err.Error(),
			Started: res.Started, Duration: res.Duration})
	}
	ev := ingest.Event{
		RecordID: ingest.RecordID(op.JobID, name, op.IP, strconv.Itoa(op.Port)),
		Origin: ingest.Origin{
			JobID:    op.JobID,
			ClientID: op.ClientID,
			Type:     name,
			Module:   ingest.ModuleGrabber,
			TS:       time.Now().UnixMilli(),
			IP:       op.SourceIP,
			Port:     op.SourcePort,
		},
		Target: ingest.Target{IP: op.IP, Port: op.Port, Protocol: protocol},
		Result: ingest.Result{Data: data},
	}
	msg, err := ingest.EventMessage(&ev)
	if err != nil {
		w.log.Error().Err(err).Str("job_id", op.JobID).Str("module", name).Msg("cannot encode event")
		return outcome{port: work, hold: true}
	}
	return outcome{port: work, msg: msg, publish: true}
}

func uniqueNames(names []string) []string {
	out := names[:0:0]
	for i, n := range names {
		dup := false
		for _, prev := range names[:i] {
			if prev == n {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, n)
		}
	}
	return out
}

// watchCancels records the job ids of cancel tasks until ctx ends. A
// subscription that fails (an ephemeral one is cut off when it falls
// behind) is replaced: the cancels missed meanwhile are lost, the probes of
// those jobs then run to completion.
func (w *Worker) watchCancels(ctx context.Context, tasks ingest.Subscription) {
	for {
		err := w.readCancels(ctx, tasks)
		tasks.Close()
		if ctx.Err() != nil || errors.Is(err, ingest.ErrClosed) {
			return
		}
		w.log.Warn().Err(err).Msg("cannot fetch tasks, resubscribing")
		for {
			if !sleepCtx(ctx, 100*time.Millisecond) {
				return
			}
			tasks, err = w.bus.Subscribe(ctx, ingest.TopicTasks, "")
			if err == nil {
				break
			}
			if ctx.Err() != nil || errors.Is(err, ingest.ErrClosed) {
				return
			}
			w.log.Warn().Err(err).Msg("cannot subscribe to tasks")
		}
	}
}

// readCancels reads tasks until fetching fails and returns that error.
func (w *Worker) readCancels(ctx context.Context, tasks ingest.Subscription) error {
	for {
		d, err := tasks.Fetch(ctx)
		if err != nil {
			return err
		}
		var task ingest.Task
		if err := ingest.Decode(d.Value, &task); err != nil {
			w.log.Warn().Err(err).Msg("cannot decode task")
		} else if task.Kind == ingest.TaskCancel && task.JobID != "" {
			w.canceled.add(task.JobID)
			w.log.Info().Str("job_id", task.JobID).Msg("job canceled, skipping its probes")
		}
		_ = tasks.Ack(ctx, d) // a no-op for an ephemeral subscriber
	}
}

// publisher batches events onto the events topic and acks each port once
// all its events are out. Acks happen only on its goroutine.
type publisher struct {
	bus ingest.Bus
	sub ingest.Subscription
	log zerolog.Logger
	in  chan outcome
	// err is the last publish failure, read after run returns.
	err error
}

func (p *publisher) run(ctx context.Context) {
	var batch []outcome
	msgs := 0
	timer := time.NewTimer(publishEvery)
	timer.Stop()
	flush := func() {
		timer.Stop()
		p.flush(ctx, batch)
		batch, msgs = batch[:0], 0
	}
	for {
		select {
		case o, ok := <-p.in:
			if !ok {
				flush()
				return
			}
			if len(batch) == 0 {
				timer.Reset(publishEvery)
			}
			batch = append(batch, o)
			if o.publish {
				msgs++
			}
			if msgs >= publishBatch {
				flush()
			}
		case <-timer.C:
			flush()
		}
	}
}

func (p *publisher) flush(ctx context.Context, batch []outcome) {
	if len(batch) == 0 {
		return
	}
	// A fresh slice per batch: the bus may keep what it is handed.
	var msgs []ingest.Message
	for _, o := range batch {
		if o.publish {
			msgs = append(msgs, o.msg)
		}
	}
	published := len(msgs) == 0 || p.publish(ctx, msgs)
	for _, o := range batch {
		w := o.port
		w.pending--
		if o.hold || !published {
			w.hold = true
		}
		if w.pending == 0 && !w.hold {
			if err := p.sub.Ack(ctx, w.d); err != nil {
				p.log.Warn().Err(err).Int64("offset", w.d.Offset).Msg("cannot ack open port")
			}
		}
	}
}

// publish retries until the bus takes msgs, ctx ends or the bus is closed.
func (p *publisher) publish(ctx context.Context, msgs []ingest.Message) bool {
	backoff := 50 * time.Millisecond
	for {
		err := p.bus.Publish(ctx, ingest.TopicEvents, msgs...)
		if err == nil {
			return true
		}
		p.err = fmt.Errorf("cannot publish events: %w", err)
		if ctx.Err() != nil || errors.Is(err, ingest.ErrClosed) {
			p.log.Error().Err(err).Int("events", len(msgs)).Msg("cannot publish events, leaving their ports unacked")
			return false
		}
		p.log.Warn().Err(err).Dur("retry_in", backoff).Msg("cannot publish events")
		if !sleepCtx(ctx, backoff) {
			return false
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// jobSet is a bounded set of job ids, safe for concurrent use.
type jobSet struct {
	mu  sync.RWMutex
	ids *ingest.RecentSet
}

func newJobSet(limit int) *jobSet { return &jobSet{ids: ingest.NewRecentSet(limit)} }

func (s *jobSet) add(id string) {
	s.mu.Lock()
	s.ids.Add(id)
	s.mu.Unlock()
}

func (s *jobSet) has(id string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.ids.Has(id)
}
