package probes

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"trawl/ingest"
	"trawl/ingest/membus"
)

// echoModule answers at once with the port it saw.
type echoModule struct{ name string }

func (m echoModule) Name() string { return m.name }
func (m echoModule) Probe(_ context.Context, t Target) (Result, error) {
	return Result{Status: StatusSuccess, Data: map[string]any{"seen_port": t.Port, "seen_job": t.JobID, "seen_host": t.Hostname}, Raw: []byte("hi\r\n")}, nil
}

// stuckModule blocks until its ctx ends.
type stuckModule struct {
	name    string
	started chan struct{}
}

func (m stuckModule) Name() string { return m.name }
func (m stuckModule) Probe(ctx context.Context, _ Target) (Result, error) {
	m.started <- struct{}{}
	<-ctx.Done()
	return Result{}, ctx.Err()
}

func newTestBus(t *testing.T) *membus.Bus {
	t.Helper()
	b := membus.New(membus.DefaultConfig(), zerolog.Nop())
	t.Cleanup(func() { b.Close() })
	return b
}

func testWorkerConfig() WorkerConfig {
	cfg := DefaultWorkerConfig()
	cfg.Pool.Concurrency = 64
	cfg.Pool.Timeout = 5 * time.Second
	cfg.Grace = 100 * time.Millisecond
	return cfg
}

func mustRegistry(t *testing.T, mods ...Module) *Registry {
	t.Helper()
	r, err := NewRegistry(mods...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// startWorker runs a worker until the returned stop is called (or the test
// ends); stop returns Run's error.
func startWorker(t *testing.T, cfg WorkerConfig, bus ingest.Bus, reg *Registry) (*Worker, func() error) {
	t.Helper()
	w := NewWorker(cfg, bus, reg, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	var once sync.Once
	var err error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-errc:
			case <-time.After(10 * time.Second):
				err = errors.New("worker did not stop within 10s")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return w, stop
}

// collector reads the events topic as its own group.
type collector struct {
	events chan ingest.Event
}

func collect(t *testing.T, bus ingest.Bus) *collector {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sub, err := bus.Subscribe(ctx, ingest.TopicEvents, "collector-"+ingest.NewID(""))
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{events: make(chan ingest.Event, 10000)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			d, err := sub.Fetch(ctx)
			if err != nil {
				return
			}
			var ev ingest.Event
			if err := ingest.Decode(d.Value, &ev); err != nil {
				t.Errorf("cannot decode event: %v", err)
				return
			}
			_ = sub.Ack(ctx, d)
			c.events <- ev
		}
	}()
	t.Cleanup(func() { cancel(); sub.Close(); <-done })
	return c
}

func (c *collector) take(t *testing.T, n int) []ingest.Event {
	t.Helper()
	var out []ingest.Event
	timeout := time.After(10 * time.Second)
	for len(out) < n {
		select {
		case ev := <-c.events:
			out = append(out, ev)
		case <-timeout:
			t.Fatalf("got %d events, want %d", len(out), n)
		}
	}
	return out
}

func (c *collector) expectNone(t *testing.T, quiet time.Duration) {
	t.Helper()
	select {
	case ev := <-c.events:
		t.Fatalf("unexpected event: %+v data %s", ev.Origin, ev.Result.Data)
	case <-time.After(quiet):
	}
}

func publishPort(t *testing.T, bus ingest.Bus, op ingest.OpenPort) {
	t.Helper()
	b, err := ingest.Encode(nil, &op)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(context.Background(), ingest.TopicPorts, ingest.Message{Key: []byte(op.IP), Value: b}); err != nil {
		t.Fatal(err)
	}
}

func openPort(job string, port int, modules ...string) ingest.OpenPort {
	return ingest.OpenPort{
		JobID: job, ClientID: "usr_1", IP: "198.18.0.7", Port: port, Protocol: "tcp",
		Modules: modules, SourceIP: "198.18.0.1", SourcePort: 40000 + port,
	}
}

// expectGroupDrained checks every port was acked: a new member of the
// workers' group gets nothing.
func expectGroupDrained(t *testing.T, bus ingest.Bus, group string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	sub, err := bus.Subscribe(context.Background(), ingest.TopicPorts, group)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if d, err := sub.Fetch(ctx); err == nil {
		t.Fatalf("port at offset %d was never acked: %s", d.Offset, d.Value)
	}
}

func dataOf(t *testing.T, ev ingest.Event) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(ev.Result.Data, &m); err != nil {
		t.Fatalf("result.data %s: %v", ev.Result.Data, err)
	}
	return m
}

func TestWorkerOneEventPerPortModule(t *testing.T) {
	checkNoLeak(t)
	bus := newTestBus(t)
	events := collect(t, bus)
	cfg := testWorkerConfig()
	_, stop := startWorker(t, cfg, bus, mustRegistry(t, echoModule{"alpha"}, echoModule{"beta"}))

	const ports = 100
	before := time.Now().UnixMilli()
	for i := range ports {
		op := openPort("job_1", 1000+i, "alpha", "beta", "alpha")
		if i%2 == 0 {
			op.Hostname = "www.example.test"
		}
		publishPort(t, bus, op)
	}
	publishPort(t, bus, openPort("job_1", 22, "alpha", "nosuch"))
	// an unreadable record is dropped (acked) without an event
	if err := bus.Publish(context.Background(), ingest.TopicPorts, ingest.Message{Value: []byte("{not json")}); err != nil {
		t.Fatal(err)
	}

	got := events.take(t, 2*ports+2)
	events.expectNone(t, 150*time.Millisecond)

	seen := make(map[string]bool)
	for _, ev := range got {
		key := ev.Origin.Type + "/" + strconv.Itoa(ev.Target.Port)
		if seen[key] {
			t.Fatalf("second event for %s", key)
		}
		seen[key] = true
		if want := ingest.RecordID("job_1", ev.Origin.Type, "198.18.0.7", strconv.Itoa(ev.Target.Port)); ev.RecordID != want {
			t.Fatalf("%s: record id %s, want %s", key, ev.RecordID, want)
		}
		if ev.ID != "" { // ids are positions on the bus, set by consumers
			t.Fatalf("%s: producer set id %q", key, ev.ID)
		}
		o := ev.Origin
		if o.JobID != "job_1" || o.ClientID != "usr_1" || o.Module != ingest.ModuleGrabber ||
			o.IP != "198.18.0.1" || o.Port != 40000+ev.Target.Port || o.TS < before || o.TS > time.Now().UnixMilli() {
			t.Fatalf("%s: origin %+v", key, o)
		}
		if ev.Target != (ingest.Target{IP: "198.18.0.7", Port: ev.Target.Port, Protocol: "tcp"}) {
			t.Fatalf("%s: target %+v", key, ev.Target)
		}
		data := dataOf(t, ev)
		switch ev.Origin.Type {
		case "alpha", "beta":
			wantHost := map[bool]string{true: "www.example.test"}[ev.Target.Port >= 1000 && ev.Target.Port%2 == 0]
			if data["status"] != "success" || data["seen_port"] != float64(ev.Target.Port) ||
				data["seen_job"] != "job_1" || data["seen_host"] != wantHost || data["raw"] != `hi\r\n` || data["timing"] == nil {
				t.Fatalf("%s: data %v", key, data)
			}
		case "nosuch":
			if data["status"] != "error" || data["error"] != `unknown module "nosuch"` {
				t.Fatalf("%s: data %v", key, data)
			}
		default:
			t.Fatalf("event of unexpected type %q", ev.Origin.Type)
		}
	}
	if !seen["nosuch/22"] || !seen["alpha/22"] || seen["beta/22"] {
		t.Fatalf("port 22 events: %v", seen)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	expectGroupDrained(t, bus, cfg.Group)
}

func TestWorkerCancelSkips(t *testing.T) {
	checkNoLeak(t)
	bus := newTestBus(t)
	events := collect(t, bus)
	cfg := testWorkerConfig()
	w, stop := startWorker(t, cfg, bus, mustRegistry(t, echoModule{"alpha"}))

	// The worker learns cancels only from its subscription onwards: repeat
	// until it has taken note.
	cancelTask, err := ingest.Encode(nil, &ingest.Task{Kind: ingest.TaskCancel, JobID: "job_dead"})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !w.canceled.has("job_dead") {
		if time.Now().After(deadline) {
			t.Fatal("worker never saw the cancel task")
		}
		if err := bus.Publish(context.Background(), ingest.TopicTasks, ingest.Message{Key: []byte("job_dead"), Value: cancelTask}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}

	for i := range 20 {
		publishPort(t, bus, openPort("job_dead", 2000+i, "alpha"))
		publishPort(t, bus, openPort("job_live", 3000+i, "alpha"))
	}
	for _, ev := range events.take(t, 20) {
		if ev.Origin.JobID != "job_live" {
			t.Fatalf("event for %s", ev.Origin.JobID)
		}
	}
	events.expectNone(t, 150*time.Millisecond)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	expectGroupDrained(t, bus, cfg.Group)
}

func TestWorkerPrefetchBoundsPortsInFlight(t *testing.T) {
	checkNoLeak(t)
	bus := newTestBus(t)
	cfg := testWorkerConfig()
	cfg.Prefetch = 3
	started := make(chan struct{}, 10)
	_, stop := startWorker(t, cfg, bus, mustRegistry(t, stuckModule{"slow", started}))
	for i := range 6 {
		publishPort(t, bus, openPort("job_1", 100+i, "slow"))
	}
	// fetching went on while the first probes ran, up to Prefetch ports
	for i := range 3 {
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d probes started, want 3 at once", i)
		}
	}
	select {
	case <-started:
		t.Fatal("a fourth port was handled while 3 were in flight")
	case <-time.After(150 * time.Millisecond):
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestJobSetBounded(t *testing.T) {
	s := newJobSet(3)
	for i := range 5 {
		s.add(fmt.Sprintf("job_%d", i))
	}
	s.add("job_4") // already there: no eviction
	for i, want := range []bool{false, false, true, true, true} {
		if got := s.has(fmt.Sprintf("job_%d", i)); got != want {
			t.Fatalf("has(job_%d) = %v, want %v", i, got, want)
		}
	}
}

// hookBus wraps a bus to gate or fail event publishing and to log the
// order of event publishes and port acks.
type hookBus struct {
	ingest.Bus
	beforePublish func(ctx context.Context) error

	mu      sync.Mutex
	journal []string
}

func (b *hookBus) note(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.journal = append(b.journal, s)
}

func (b *hookBus) Journal() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.journal...)
}

func (b *hookBus) Publish(ctx context.Context, topic string, msgs ...ingest.Message) error {
	if topic == ingest.TopicEvents && b.beforePublish != nil {
		if err := b.beforePublish(ctx); err != nil {
			return err
		}
	}
	err := b.Bus.Publish(ctx, topic, msgs...)
	if topic == ingest.TopicEvents && err == nil {
		b.note(fmt.Sprintf("published %d", len(msgs)))
	}
	return err
}

func (b *hookBus) Subscribe(ctx context.Context, topic, group string) (ingest.Subscription, error) {
	s, err := b.Bus.Subscribe(ctx, topic, group)
	if err != nil || topic != ingest.TopicPorts {
		return s, err
	}
	return &hookSub{Subscription: s, bus: b}, nil
}

type hookSub struct {
	ingest.Subscription
	bus *hookBus
}

func (s *hookSub) Ack(ctx context.Context, d ingest.Delivery) error {
	s.bus.note("ack")
	return s.Subscription.Ack(ctx, d)
}

func TestWorkerAcksAfterPublish(t *testing.T) {
	checkNoLeak(t)
	gate := make(chan struct{})
	entered := make(chan struct{}, 10)
	bus := &hookBus{Bus: newTestBus(t), beforePublish: func(ctx context.Context) error {
		entered <- struct{}{}
		select {
		case <-gate:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	events := collect(t, bus)
	cfg := testWorkerConfig()
	_, stop := startWorker(t, cfg, bus, mustRegistry(t, echoModule{"alpha"}, echoModule{"beta"}))
	publishPort(t, bus, openPort("job_1", 80, "alpha", "beta"))

	<-entered
	time.Sleep(50 * time.Millisecond)
	if j := bus.Journal(); len(j) != 0 {
		t.Fatalf("before the publish returned: %v", j)
	}
	close(gate)
	events.take(t, 2)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	j := bus.Journal()
	if len(j) < 2 || j[len(j)-1] != "ack" || strings.Count(strings.Join(j, ","), "ack") != 1 {
		t.Fatalf("journal %v: want publishes of 2 events, then one ack", j)
	}
	total := 0
	for _, e := range j[:len(j)-1] {
		var n int
		if _, err := fmt.Sscanf(e, "published %d", &n); err != nil {
			t.Fatalf("journal %v", j)
		}
		total += n
	}
	if total != 2 {
		t.Fatalf("published %d events before the ack, want 2 (journal %v)", total, j)
	}
}

func TestWorkerRedeliversUnfinishedPort(t *testing.T) {
	checkNoLeak(t)
	bus := newTestBus(t)
	events := collect(t, bus)
	cfg := testWorkerConfig()

	// Run 1: "slow" never finishes; shutdown cuts it short, so the port
	// stays unacked although "fast" got its event out.
	started := make(chan struct{}, 1)
	_, stop := startWorker(t, cfg, bus, mustRegistry(t, echoModule{"fast"}, stuckModule{"slow", started}))
	publishPort(t, bus, openPort("job_1", 443, "fast", "slow"))
	first := events.take(t, 1)[0]
	<-started
	if first.Origin.Type != "fast" {
		t.Fatalf("run 1 event from %q", first.Origin.Type)
	}
	stopped := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("run 1: %v", err)
	}
	if el := time.Since(stopped); el > 2*time.Second {
		t.Fatalf("run 1 took %v to stop with grace %v", el, cfg.Grace)
	}
	events.expectNone(t, 100*time.Millisecond) // no "canceled" event for slow

	// Run 2: the port comes back; both modules answer.
	_, stop = startWorker(t, cfg, bus, mustRegistry(t, echoModule{"fast"}, echoModule{"slow"}))
	byType := make(map[string]ingest.Event)
	for _, ev := range events.take(t, 2) {
		byType[ev.Origin.Type] = ev
	}
	again, ok := byType["fast"]
	if !ok || byType["slow"].RecordID == "" {
		t.Fatalf("run 2 events: %v", byType)
	}
	if again.RecordID != first.RecordID {
		t.Fatalf("redelivered fast event: record %s; run 1 record %s", again.RecordID, first.RecordID)
	}
	if err := stop(); err != nil {
		t.Fatalf("run 2: %v", err)
	}
	expectGroupDrained(t, bus, cfg.Group)
}

func TestWorkerPublishFailureLeavesPortUnacked(t *testing.T) {
	checkNoLeak(t)
	inner := newTestBus(t)
	failing := &hookBus{Bus: inner, beforePublish: func(context.Context) error { return errors.New("broker unavailable") }}
	cfg := testWorkerConfig()
	cfg.Grace = 10 * time.Millisecond
	_, stop := startWorker(t, cfg, failing, mustRegistry(t, echoModule{"alpha"}))
	publishPort(t, inner, openPort("job_1", 25, "alpha"))
	time.Sleep(100 * time.Millisecond) // let it try and retry
	if err := stop(); err != nil {
		t.Fatalf("Run after ctx end: %v", err)
	}
	if j := failing.Journal(); len(j) != 0 {
		t.Fatalf("journal %v: nothing may be published or acked", j)
	}

	events := collect(t, inner)
	_, stop = startWorker(t, cfg, inner, mustRegistry(t, echoModule{"alpha"}))
	ev := events.take(t, 1)[0]
	if ev.RecordID != ingest.RecordID("job_1", "alpha", "198.18.0.7", "25") {
		t.Fatalf("record id %s", ev.RecordID)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestWorkerBusClosedIsAnError(t *testing.T) {
	checkNoLeak(t)
	bus := newTestBus(t)
	started := make(chan struct{}, 1)
	w := NewWorker(testWorkerConfig(), bus, mustRegistry(t, stuckModule{"slow", started}), zerolog.Nop())
	errc := make(chan error, 1)
	go func() { errc <- w.Run(context.Background()) }()
	publishPort(t, bus, openPort("job_1", 80, "slow"))
	<-started
	bus.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ingest.ErrClosed) {
			t.Fatalf("Run on a closed bus: %v, want ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return promptly after the bus closed (probe in flight not stopped?)")
	}
}

func TestWorkerConfig(t *testing.T) {
	var c WorkerConfig
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.RegisterFlags(fs, "worker.")
	if c != DefaultWorkerConfig() {
		t.Fatalf("defaults after RegisterFlags: %+v", c)
	}
	if err := fs.Parse([]string{"-worker.group=g2", "-worker.prefetch=7", "-worker.concurrency=9", "-worker.grace=1s"}); err != nil {
		t.Fatal(err)
	}
	if c.Group != "g2" || c.Prefetch != 7 || c.Pool.Concurrency != 9 || c.Grace != time.Second {
		t.Fatalf("parsed %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := WorkerConfig{Prefetch: -1, Grace: -1}
	err := bad.Validate()
	for _, want := range []string{"group", "prefetch", "grace", "concurrency"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("bad config: %v, want a %s error", err, want)
		}
	}
	w := NewWorker(WorkerConfig{Pool: PoolConfig{Concurrency: 12}}, nil, nil, zerolog.Nop())
	if w.cfg.Prefetch != 12 || w.cfg.Group != "workers" {
		t.Fatalf("NewWorker defaults: %+v", w.cfg)
	}
}

// BenchmarkWorker measures the worker's own cost per open port (decode, one
// instant module through the pool, event encode, batched publish, ack) over
// membus.
func BenchmarkWorker(b *testing.B) {
	bus := membus.New(membus.Config{QueueSize: 1 << 16}, zerolog.Nop())
	defer bus.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := bus.Subscribe(ctx, ingest.TopicEvents, "bench")
	if err != nil {
		b.Fatal(err)
	}
	reg, err := NewRegistry(echoModule{"alpha"})
	if err != nil {
		b.Fatal(err)
	}
	w := NewWorker(testWorkerConfig(), bus, reg, zerolog.Nop())
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()

	op := openPort("job_bench", 80, "alpha")
	val, err := ingest.Encode(nil, &op)
	if err != nil {
		b.Fatal(err)
	}
	msg := ingest.Message{Key: []byte(op.IP), Value: val}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	go func() {
		for range b.N {
			if err := bus.Publish(ctx, ingest.TopicPorts, msg); err != nil {
				return
			}
		}
	}()
	for range b.N {
		d, err := events.Fetch(ctx)
		if err != nil {
			b.Fatal(err)
		}
		_ = events.Ack(ctx, d)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ports/s")
	b.StopTimer()
	cancel()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}
