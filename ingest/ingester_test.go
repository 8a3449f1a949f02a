package ingest_test

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"trawl/ingest"
	"trawl/ingest/membus"
)

const waitTimeout = 5 * time.Second

// memWriter is an in-memory EventWriter that can fail its first calls.
type memWriter struct {
	mu       sync.Mutex
	failures int // calls left to fail
	calls    int
	batches  [][]ingest.Event
	// beforeInsert, if set, runs on every call before it succeeds or fails.
	beforeInsert func()
}

var errWriterDown = errors.New("writer down")

func (w *memWriter) InsertEvents(_ context.Context, events []ingest.Event) error {
	if w.beforeInsert != nil {
		w.beforeInsert()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls++
	if w.failures > 0 {
		w.failures--
		return errWriterDown
	}
	w.batches = append(w.batches, slices.Clone(events))
	return nil
}

func (w *memWriter) batchSizes() []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	sizes := make([]int, len(w.batches))
	for i, b := range w.batches {
		sizes[i] = len(b)
	}
	return sizes
}

// ids returns the ids of every stored event, in insert order.
func (w *memWriter) ids() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var ids []string
	for _, b := range w.batches {
		for _, e := range b {
			ids = append(ids, e.ID)
		}
	}
	return ids
}

// spyBus records what subscribers fetch and ack.
type spyBus struct {
	ingest.Bus
	fetched, acked atomic.Int64
}

type spySub struct {
	ingest.Subscription
	bus *spyBus
}

func (b *spyBus) Subscribe(ctx context.Context, topic, group string) (ingest.Subscription, error) {
	s, err := b.Bus.Subscribe(ctx, topic, group)
	if err != nil {
		return nil, err
	}
	return &spySub{Subscription: s, bus: b}, nil
}

func (s *spySub) Fetch(ctx context.Context) (ingest.Delivery, error) {
	d, err := s.Subscription.Fetch(ctx)
	if err == nil {
		s.bus.fetched.Add(1)
	}
	return d, err
}

func (s *spySub) Ack(ctx context.Context, d ingest.Delivery) error {
	err := s.Subscription.Ack(ctx, d)
	if err == nil {
		s.bus.acked.Add(1)
	}
	return err
}

func newSpyBus(t *testing.T) *spyBus {
	t.Helper()
	b := membus.New(membus.Config{QueueSize: 1024}, zerolog.Nop())
	t.Cleanup(func() { _ = b.Close() })
	return &spyBus{Bus: b}
}

// running is an ingester started in the background.
type running struct {
	ing  *ingest.Ingester
	stop func() error // cancels Run and returns its error
}

func startIngester(t *testing.T, cfg ingest.IngesterConfig, bus ingest.Bus, w ingest.EventWriter) *running {
	t.Helper()
	ing := ingest.NewIngester(cfg, bus, w, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- ing.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-errc:
			case <-time.After(cfg.ShutdownTimeout + waitTimeout):
				runErr = errors.New("Run did not return after its context ended")
			}
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return &running{ing: ing, stop: stop}
}

func testConfig() ingest.IngesterConfig {
	cfg := ingest.DefaultIngesterConfig()
	cfg.ShutdownTimeout = time.Second
	return cfg
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func portEvent(job string, port int) *ingest.Event {
	return &ingest.Event{
		ID:       ingest.NewID("evt_"),
		RecordID: ingest.RecordID(job, "198.18.0.1", fmt.Sprint(port), ingest.ModulePortscan),
		Origin: ingest.Origin{JobID: job, ClientID: "usr_test", Type: ingest.TypePort, Module: ingest.ModulePortscan,
			TS: time.Now().UnixMilli(), IP: "198.18.0.1", Port: port},
		Target: ingest.Target{IP: "198.18.0.1", Port: port, Protocol: "tcp"},
		Result: ingest.Result{Data: json.RawMessage(`{"ttl":64,"window":65535}`)},
	}
}

func statusEvent(t *testing.T, job, state string) *ingest.Event {
	t.Helper()
	data, err := json.Marshal(ingest.JobStatus{Status: state, Progress: 1})
	if err != nil {
		t.Fatal(err)
	}
	return &ingest.Event{
		ID:       ingest.NewID("evt_"),
		RecordID: ingest.RecordID(job, ingest.TypeJobStatus, state),
		Origin: ingest.Origin{JobID: job, ClientID: "usr_test", Type: ingest.TypeJobStatus, Module: ingest.ModuleJob,
			TS: time.Now().UnixMilli()},
		Result: ingest.Result{Data: data},
	}
}

func encode(t *testing.T, e *ingest.Event) ingest.Message {
	t.Helper()
	m, err := ingest.EventMessage(e)
	if err != nil {
		t.Fatalf("EventMessage: %v", err)
	}
	return m
}

func publishEvents(t *testing.T, bus ingest.Bus, events ...*ingest.Event) []string {
	t.Helper()
	msgs := make([]ingest.Message, len(events))
	ids := make([]string, len(events))
	for i, e := range events {
		msgs[i] = encode(t, e)
		ids[i] = e.ID
	}
	publishRaw(t, bus, msgs...)
	return ids
}

func publishRaw(t *testing.T, bus ingest.Bus, msgs ...ingest.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := bus.Publish(ctx, ingest.TopicEvents, msgs...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

func portEvents(job string, n int) []*ingest.Event {
	events := make([]*ingest.Event, n)
	for i := range events {
		events[i] = portEvent(job, 1000+i)
	}
	return events
}

func TestIngesterConfig(t *testing.T) {
	def := ingest.DefaultIngesterConfig()
	if err := def.Validate(); err != nil {
		t.Fatalf("DefaultIngesterConfig().Validate(): %v", err)
	}
	var cfg ingest.IngesterConfig
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	cfg.RegisterFlags(fs, "ingest.")
	if cfg != def {
		t.Fatalf("RegisterFlags defaults = %+v, want %+v", cfg, def)
	}
	err := fs.Parse([]string{"-ingest.batch-size=10", "-ingest.flush-interval=1s", "-ingest.group=g2",
		"-ingest.shutdown-timeout=3s"})
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := ingest.IngesterConfig{BatchSize: 10, FlushInterval: time.Second, Group: "g2", ShutdownTimeout: 3 * time.Second}
	if cfg != want {
		t.Fatalf("parsed config = %+v, want %+v", cfg, want)
	}

	// Every problem is reported at once.
	err = (&ingest.IngesterConfig{}).Validate()
	for _, field := range []string{"batch-size", "flush-interval", "group", "shutdown-timeout"} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("Validate of a zero config = %v, want it to name %s", err, field)
		}
	}
}

func TestIngesterFlushesOnSize(t *testing.T) {
	bus := newSpyBus(t)
	w := &memWriter{}
	cfg := testConfig()
	cfg.BatchSize = 10
	cfg.FlushInterval = time.Hour
	r := startIngester(t, cfg, bus, w)

	want := publishEvents(t, bus, portEvents("job_size", 25)...)
	waitFor(t, "two full batches", func() bool { return len(w.batchSizes()) == 2 })
	waitFor(t, "20 acks", func() bool { return bus.acked.Load() == 20 })
	time.Sleep(50 * time.Millisecond)
	if sizes := w.batchSizes(); !slices.Equal(sizes, []int{10, 10}) {
		t.Fatalf("batches before shutdown = %v, want [10 10]", sizes)
	}
	if err := r.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if sizes := w.batchSizes(); !slices.Equal(sizes, []int{10, 10, 5}) {
		t.Fatalf("batches = %v, want [10 10 5]", sizes)
	}
	if ids := w.ids(); !slices.Equal(ids, want) {
		t.Fatalf("stored ids = %v, want %v", ids, want)
	}
	if got := r.ing.Stats(); got != (ingest.IngesterStats{Stored: 25}) {
		t.Fatalf("Stats = %+v, want Stored 25", got)
	}
	if n := bus.acked.Load(); n != 25 {
		t.Fatalf("acked %d, want 25", n)
	}
}

func TestIngesterFlushesOnInterval(t *testing.T) {
	bus := newSpyBus(t)
	w := &memWriter{}
	cfg := testConfig()
	cfg.BatchSize = 1000
	cfg.FlushInterval = 50 * time.Millisecond
	startIngester(t, cfg, bus, w)

	start := time.Now()
	want := publishEvents(t, bus, portEvents("job_interval", 3)...)
	waitFor(t, "a batch", func() bool { return len(w.batchSizes()) > 0 })
	if took := time.Since(start); took < cfg.FlushInterval/2 {
		t.Fatalf("partial batch flushed after %v, want about FlushInterval (%v)", took, cfg.FlushInterval)
	}
	// On a loaded machine the timer may fire before all three are fetched;
	// then the rest follow in the next interval.
	waitFor(t, "3 events stored", func() bool { return len(w.ids()) == 3 })
	if ids := w.ids(); !slices.Equal(ids, want) {
		t.Fatalf("stored ids = %v, want %v", ids, want)
	}
	waitFor(t, "3 acks", func() bool { return bus.acked.Load() == 3 })

	// The timer re-arms for the next batch.
	batches := len(w.batchSizes())
	more := publishEvents(t, bus, portEvents("job_interval2", 2)...)
	waitFor(t, "2 more events stored", func() bool { return len(w.ids()) == 5 })
	if n := len(w.batchSizes()); n <= batches {
		t.Fatalf("writer got %d batches, want more than %d", n, batches)
	}
	if ids := w.ids(); !slices.Equal(ids, append(want, more...)) {
		t.Fatalf("stored ids = %v", ids)
	}
}

func TestIngesterRetriesInsertWithoutAckingEarly(t *testing.T) {
	bus := newSpyBus(t)
	w := &memWriter{failures: 3}
	w.beforeInsert = func() {
		if n := bus.acked.Load(); n != 0 {
			t.Errorf("%d deliveries acked before their events were stored", n)
		}
	}
	cfg := testConfig()
	cfg.BatchSize = 1000
	cfg.FlushInterval = 10 * time.Millisecond
	r := startIngester(t, cfg, bus, w)

	want := publishEvents(t, bus, portEvents("job_retry", 20)...)
	waitFor(t, "all acks", func() bool { return bus.acked.Load() == 20 })
	if err := r.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	w.mu.Lock()
	calls, batches := w.calls, len(w.batches)
	w.mu.Unlock()
	// Usually one batch; a loaded machine may split the 20 events in two.
	if calls != 3+batches {
		t.Fatalf("writer called %d times for %d batches, want 3 failures + one success per batch", calls, batches)
	}
	if ids := w.ids(); !slices.Equal(ids, want) {
		t.Fatalf("stored ids = %v, want %v", ids, want)
	}
	if got := r.ing.Stats(); got.Stored != 20 {
		t.Fatalf("Stats = %+v, want Stored 20", got)
	}
}

func TestIngesterLeavesUnstoredEventsForTheNextIngester(t *testing.T) {
	bus := newSpyBus(t)
	down := &memWriter{failures: 1 << 30}
	cfg := testConfig()
	cfg.FlushInterval = 10 * time.Millisecond
	cfg.ShutdownTimeout = 100 * time.Millisecond
	first := startIngester(t, cfg, bus, down)
	want := publishEvents(t, bus, portEvents("job_down", 5)...)
	waitFor(t, "failed inserts", func() bool {
		down.mu.Lock()
		defer down.mu.Unlock()
		return down.calls >= 2
	})
	start := time.Now()
	if err := first.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if took := time.Since(start); took > cfg.ShutdownTimeout+time.Second {
		t.Fatalf("shutdown took %v with ShutdownTimeout %v", took, cfg.ShutdownTimeout)
	}
	if n := bus.acked.Load(); n != 0 {
		t.Fatalf("acked %d deliveries that were never stored", n)
	}
	if got := first.ing.Stats(); got.Stored != 0 {
		t.Fatalf("Stats = %+v, want nothing stored", got)
	}

	// The group redelivers them to the next ingester.
	up := &memWriter{}
	second := startIngester(t, cfg, bus, up)
	waitFor(t, "redelivered events stored", func() bool { return len(up.ids()) == len(want) })
	if ids := up.ids(); !slices.Equal(ids, want) {
		t.Fatalf("stored ids = %v, want %v", ids, want)
	}
	if err := second.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestIngesterDropsEventsAfterTerminalStatus(t *testing.T) {
	bus := newSpyBus(t)
	w := &memWriter{}
	cfg := testConfig()
	cfg.FlushInterval = 10 * time.Millisecond
	r := startIngester(t, cfg, bus, w)

	portA := portEvent("job_a", 22)
	running := statusEvent(t, "job_a", ingest.StateRunning)
	done := statusEvent(t, "job_a", ingest.StateSucceeded)
	late := portEvent("job_a", 80)
	lateStatus := statusEvent(t, "job_a", ingest.StateFailed)
	otherJob := portEvent("job_b", 443)
	publishEvents(t, bus, portA, running, done, late, lateStatus, otherJob)

	waitFor(t, "all acks", func() bool { return bus.acked.Load() == 6 })
	want := []string{portA.ID, running.ID, done.ID, otherJob.ID}
	if ids := w.ids(); !slices.Equal(ids, want) {
		t.Fatalf("stored ids = %v, want %v", ids, want)
	}
	if got := r.ing.Stats(); got != (ingest.IngesterStats{Stored: 4, Dropped: 2}) {
		t.Fatalf("Stats = %+v, want Stored 4 Dropped 2", got)
	}

	// Across batches too.
	publishEvents(t, bus, portEvent("job_a", 8080))
	waitFor(t, "ack", func() bool { return bus.acked.Load() == 7 })
	if got := r.ing.Stats(); got.Dropped != 3 {
		t.Fatalf("Stats = %+v, want Dropped 3", got)
	}
}

func TestIngesterSkipsInternalAndInvalidEvents(t *testing.T) {
	bus := newSpyBus(t)
	w := &memWriter{}
	cfg := testConfig()
	cfg.FlushInterval = 10 * time.Millisecond
	r := startIngester(t, cfg, bus, w)

	stats := &ingest.Event{ID: ingest.NewID("evt_"), Origin: ingest.Origin{JobID: "job_i", Type: ingest.TypeScanStats,
		Module: ingest.ModuleScanner}, Result: ingest.Result{Data: json.RawMessage(`{"shard":0}`)}}
	noID := portEvent("job_i", 1)
	noID.ID = ""
	valid := portEvent("job_i", 2)
	publishRaw(t, bus,
		encode(t, stats),
		ingest.Message{Key: []byte("job_i"), Value: []byte("not json")},
		ingest.Message{Key: []byte("job_i"), Value: []byte(`{"v":99,"id":"evt_future","origin":{"job_id":"job_i"}}`)},
		encode(t, noID),
		encode(t, valid),
	)
	waitFor(t, "all acks", func() bool { return bus.acked.Load() == 5 })
	if ids := w.ids(); !slices.Equal(ids, []string{valid.ID}) {
		t.Fatalf("stored ids = %v, want only %s", ids, valid.ID)
	}
	if got := r.ing.Stats(); got != (ingest.IngesterStats{Stored: 1, Invalid: 3}) {
		t.Fatalf("Stats = %+v, want Stored 1 Invalid 3", got)
	}

	// A batch of nothing but skipped deliveries is acked without an insert.
	publishRaw(t, bus, encode(t, stats))
	waitFor(t, "ack of a lone internal event", func() bool { return bus.acked.Load() == 6 })
	if n := len(w.batchSizes()); n != 1 {
		t.Fatalf("writer got %d batches, want 1 (no empty inserts)", n)
	}
}

func TestIngesterFlushesOnShutdown(t *testing.T) {
	bus := newSpyBus(t)
	w := &memWriter{}
	cfg := testConfig()
	cfg.BatchSize = 1000
	cfg.FlushInterval = time.Hour
	r := startIngester(t, cfg, bus, w)

	want := publishEvents(t, bus, portEvents("job_shutdown", 7)...)
	waitFor(t, "all fetched", func() bool { return bus.fetched.Load() == 7 })
	if n := len(w.batchSizes()); n != 0 {
		t.Fatalf("writer got %d batches before shutdown, want 0", n)
	}
	if err := r.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if ids := w.ids(); !slices.Equal(ids, want) {
		t.Fatalf("stored ids = %v, want %v", ids, want)
	}
	if n := bus.acked.Load(); n != 7 {
		t.Fatalf("acked %d, want 7", n)
	}
}

func TestIngesterBusFailures(t *testing.T) {
	t.Run("subscribe", func(t *testing.T) {
		bus := membus.New(membus.DefaultConfig(), zerolog.Nop())
		_ = bus.Close()
		err := ingest.NewIngester(testConfig(), bus, &memWriter{}, zerolog.Nop()).Run(context.Background())
		if !errors.Is(err, ingest.ErrClosed) {
			t.Fatalf("Run on a closed bus: %v, want ErrClosed", err)
		}
	})
	t.Run("fetch", func(t *testing.T) {
		bus := newSpyBus(t)
		ing := ingest.NewIngester(testConfig(), bus, &memWriter{}, zerolog.Nop())
		errc := make(chan error, 1)
		go func() { errc <- ing.Run(context.Background()) }()
		waitFor(t, "the ingester to subscribe", func() bool {
			// Published events reach the ingester only once it has subscribed.
			publishEvents(t, bus, portEvent("job_f", 1))
			return bus.fetched.Load() > 0
		})
		_ = bus.Close()
		select {
		case err := <-errc:
			if !errors.Is(err, ingest.ErrClosed) {
				t.Fatalf("Run after the bus closed: %v, want ErrClosed", err)
			}
		case <-time.After(waitTimeout):
			t.Fatal("Run did not return after the bus closed")
		}
	})
}

// nopWriter counts events and signals when it has seen want of them.
type nopWriter struct {
	n    atomic.Int64
	want int64
	done chan struct{}
}

func (w *nopWriter) InsertEvents(_ context.Context, events []ingest.Event) error {
	if w.n.Add(int64(len(events))) >= w.want && w.want > 0 {
		select {
		case <-w.done:
		default:
			close(w.done)
		}
	}
	return nil
}

// BenchmarkIngester measures events/s from Publish through membus and the
// ingester (decode, batch, ack) to a writer that does nothing.
func BenchmarkIngester(b *testing.B) {
	bus := membus.New(membus.DefaultConfig(), zerolog.Nop())
	defer bus.Close()
	w := &nopWriter{want: int64(b.N), done: make(chan struct{})}
	cfg := ingest.DefaultIngesterConfig()
	// A short interval keeps the last partial batch from dominating small b.N.
	cfg.FlushInterval = 5 * time.Millisecond
	ing := ingest.NewIngester(cfg, bus, w, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- ing.Run(ctx) }()

	batch := make([]ingest.Message, 256)
	for i := range batch {
		e := portEvent(fmt.Sprintf("job_%d", i%8), 1000+i)
		e.Result.Data = json.RawMessage(`{"ttl":64,"window":65535,"banner":"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5"}`)
		m, err := ingest.EventMessage(e)
		if err != nil {
			b.Fatal(err)
		}
		batch[i] = m
	}
	b.ReportAllocs()
	b.ResetTimer()
	for left := b.N; left > 0; left -= len(batch) {
		if err := bus.Publish(ctx, ingest.TopicEvents, batch[:min(left, len(batch))]...); err != nil {
			b.Fatal(err)
		}
	}
	<-w.done
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	cancel()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}
