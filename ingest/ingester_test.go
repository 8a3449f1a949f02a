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

// stored returns every stored event, in insert order.
func (w *memWriter) stored() []ingest.Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	var events []ingest.Event
	for _, b := range w.batches {
		events = append(events, b...)
	}
	return events
}

// recordIDs returns the record ids of every stored event, in insert order.
func (w *memWriter) recordIDs() []string {
	var ids []string
	for _, e := range w.stored() {
		ids = append(ids, e.RecordID)
	}
	return ids
}

// spyBus records what subscribers fetch and ack.
type spyBus struct {
	ingest.Bus
	fetched, acked atomic.Int64

	mu sync.Mutex
	// cursors holds the cursors of the deliveries fetched for each record id
	// (decodable events only), in fetch order.
	cursors map[string][]string
}

// cursorOf returns the cursor of the deliveries fetched for recordID; every
// delivery of the message (a redelivery too) must carry the same one.
func (b *spyBus) cursorOf(t *testing.T, recordID string) string {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	cs := b.cursors[recordID]
	if len(cs) == 0 {
		t.Fatalf("no delivery of record %s was fetched", recordID)
	}
	for _, c := range cs[1:] {
		if c != cs[0] {
			t.Fatalf("deliveries of record %s carry cursors %v, want one", recordID, cs)
		}
	}
	return cs[0]
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
		var e ingest.Event
		if ingest.Decode(d.Value, &e) == nil {
			s.bus.mu.Lock()
			s.bus.cursors[e.RecordID] = append(s.bus.cursors[e.RecordID], d.Cursor())
			s.bus.mu.Unlock()
		}
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
	return &spyBus{Bus: b, cursors: make(map[string][]string)}
}

// wantStored checks that w stored exactly the events with the record ids
// want, in that (publish) order, each with the cursor of its delivery as
// its id: ids strictly increasing, in topic order.
func wantStored(t *testing.T, w *memWriter, bus *spyBus, want []string) {
	t.Helper()
	stored := w.stored()
	if got := w.recordIDs(); !slices.Equal(got, want) {
		t.Fatalf("stored record ids = %v, want %v", got, want)
	}
	prev := ""
	for i, e := range stored {
		if cursor := bus.cursorOf(t, e.RecordID); e.ID != cursor {
			t.Fatalf("event %d (record %s) stored with id %q, want its delivery's cursor %q", i, e.RecordID, e.ID, cursor)
		}
		if !strings.HasPrefix(e.ID, "ev_") || len(e.ID) != len("ev_")+26 {
			t.Fatalf("event %d stored with id %q, want ev_ and 26 digits", i, e.ID)
		}
		if e.ID <= prev {
			t.Fatalf("event %d stored with id %q after %q, want ids increasing in publish order", i, e.ID, prev)
		}
		prev = e.ID
	}
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

// publishEvents publishes events in one batch and returns their record ids.
func publishEvents(t *testing.T, bus ingest.Bus, events ...*ingest.Event) []string {
	t.Helper()
	msgs := make([]ingest.Message, len(events))
	ids := make([]string, len(events))
	for i, e := range events {
		msgs[i] = encode(t, e)
		ids[i] = e.RecordID
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
	wantStored(t, w, bus, want)
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
	waitFor(t, "3 events stored", func() bool { return len(w.stored()) == 3 })
	wantStored(t, w, bus, want)
	waitFor(t, "3 acks", func() bool { return bus.acked.Load() == 3 })

	// The timer re-arms for the next batch.
	batches := len(w.batchSizes())
	more := publishEvents(t, bus, portEvents("job_interval2", 2)...)
	waitFor(t, "2 more events stored", func() bool { return len(w.stored()) == 5 })
	if n := len(w.batchSizes()); n <= batches {
		t.Fatalf("writer got %d batches, want more than %d", n, batches)
	}
	wantStored(t, w, bus, slices.Concat(want, more))
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
	wantStored(t, w, bus, want)
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
	waitFor(t, "redelivered events stored", func() bool { return len(up.stored()) == len(want) })
	// The redeliveries carry the cursors of the first deliveries (cursorOf
	// checks), so the second ingester stores the ids the first would have.
	wantStored(t, up, bus, want)
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
	wantStored(t, w, bus, []string{portA.RecordID, running.RecordID, done.RecordID, otherJob.RecordID})
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

	stats := &ingest.Event{Origin: ingest.Origin{JobID: "job_i", Type: ingest.TypeScanStats,
		Module: ingest.ModuleScanner}, Result: ingest.Result{Data: json.RawMessage(`{"shard":0}`)}}
	noJob := portEvent("", 1)
	badPort := portEvent("job_i", 70000) // a store would refuse the whole batch
	noID := portEvent("job_i", 2)        // the normal case: producers leave ids to the bus
	// A producer that still writes an id (an older build) is overruled by
	// the delivery's cursor.
	withID := portEvent("job_i", 3)
	withID.ID = ingest.NewID("evt_")
	withIDValue, err := ingest.Encode(nil, withID)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(withIDValue), withID.ID) {
		t.Fatalf("raw event %s does not carry the producer's id", withIDValue)
	}
	publishRaw(t, bus,
		encode(t, stats),
		ingest.Message{Key: []byte("job_i"), Value: []byte("not json")},
		ingest.Message{Key: []byte("job_i"), Value: []byte(`{"v":99,"origin":{"job_id":"job_i"}}`)},
		encode(t, noJob),
		encode(t, badPort),
		encode(t, noID),
		ingest.Message{Key: []byte("job_i"), Value: withIDValue},
	)
	waitFor(t, "all acks", func() bool { return bus.acked.Load() == 7 })
	wantStored(t, w, bus, []string{noID.RecordID, withID.RecordID})
	if got := r.ing.Stats(); got != (ingest.IngesterStats{Stored: 2, Invalid: 4}) {
		t.Fatalf("Stats = %+v, want Stored 2 Invalid 4 (garbage, newer schema, no job id, port out of range)", got)
	}

	// A batch of nothing but skipped deliveries is acked without an insert.
	publishRaw(t, bus, encode(t, stats))
	waitFor(t, "ack of a lone internal event", func() bool { return bus.acked.Load() == 8 })
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
	wantStored(t, w, bus, want)
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
