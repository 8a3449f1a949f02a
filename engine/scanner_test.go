package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"trawl/engine"
	"trawl/engine/fakenet"
	"trawl/ingest"
)

// fakeBus is a minimal ingest.Bus: it records what is published (and the
// order of publishes and acks) and hands tasks to one subscriber.
type fakeBus struct {
	mu       sync.Mutex
	logs     map[string][]ingest.Message
	timeline []string // "pub:<topic>" per message and "ack:<job>:<kind>"
	calls    map[string]int
	groups   []string
	tasks    chan ingest.Delivery
	offset   int64
	fail     error
	changed  chan struct{} // signaled on every publish and ack
}

func newFakeBus() *fakeBus {
	return &fakeBus{
		logs: map[string][]ingest.Message{}, calls: map[string]int{},
		tasks: make(chan ingest.Delivery, 100), changed: make(chan struct{}, 1),
	}
}

func (b *fakeBus) Publish(ctx context.Context, topic string, msgs ...ingest.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail != nil {
		return b.fail
	}
	b.calls[topic]++
	for _, m := range msgs {
		if topic == ingest.TopicTasks {
			b.offset++
			b.tasks <- ingest.Delivery{Message: m, Offset: b.offset}
			continue
		}
		b.logs[topic] = append(b.logs[topic], m)
		b.timeline = append(b.timeline, "pub:"+topic)
	}
	b.signal()
	return nil
}

func (b *fakeBus) signal() {
	select {
	case b.changed <- struct{}{}:
	default:
	}
}

func (b *fakeBus) Subscribe(_ context.Context, topic, group string) (ingest.Subscription, error) {
	if topic != ingest.TopicTasks {
		return nil, errors.New("fake bus: only tasks can be subscribed")
	}
	b.mu.Lock()
	b.groups = append(b.groups, group)
	b.mu.Unlock()
	return &fakeSub{b}, nil
}

func (b *fakeBus) Close() error { return nil }

type fakeSub struct{ b *fakeBus }

func (s *fakeSub) Fetch(ctx context.Context) (ingest.Delivery, error) {
	select {
	case d := <-s.b.tasks:
		return d, nil
	case <-ctx.Done():
		return ingest.Delivery{}, ctx.Err()
	}
}

func (s *fakeSub) Ack(_ context.Context, d ingest.Delivery) error {
	var task ingest.Task
	_ = ingest.Decode(d.Value, &task)
	s.b.mu.Lock()
	s.b.timeline = append(s.b.timeline, "ack:"+task.JobID+":"+task.Kind)
	s.b.signal()
	s.b.mu.Unlock()
	return nil
}

func (s *fakeSub) Close() error { return nil }

func (b *fakeBus) events(t testing.TB) []ingest.Event {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []ingest.Event
	for _, m := range b.logs[ingest.TopicEvents] {
		var e ingest.Event
		if err := ingest.Decode(m.Value, &e); err != nil {
			t.Fatal(err)
		}
		if string(m.Key) != e.Origin.JobID {
			t.Errorf("event keyed %q, job %q", m.Key, e.Origin.JobID)
		}
		out = append(out, e)
	}
	return out
}

func (b *fakeBus) openPorts(t testing.TB) []ingest.OpenPort {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []ingest.OpenPort
	for _, m := range b.logs[ingest.TopicPorts] {
		var op ingest.OpenPort
		if err := ingest.Decode(m.Value, &op); err != nil {
			t.Fatal(err)
		}
		if string(m.Key) != op.IP {
			t.Errorf("open port keyed %q, ip %q", m.Key, op.IP)
		}
		out = append(out, op)
	}
	return out
}

func (b *fakeBus) indexOf(entry string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, e := range b.timeline {
		if e == entry {
			return i
		}
	}
	return -1
}

// waitFor polls cond until it holds or the test times out.
func (b *fakeBus) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !cond() {
		select {
		case <-b.changed:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func scanStatsOf(t testing.TB, e ingest.Event) ingest.ScanStats {
	t.Helper()
	var st ingest.ScanStats
	if err := json.Unmarshal(e.Result.Data, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// finalStats returns job's final scan_stats and its position among the
// job's events, or -1.
func finalStats(t testing.TB, events []ingest.Event, job string) (ingest.ScanStats, int) {
	t.Helper()
	for i, e := range events {
		if e.Origin.JobID == job && e.Origin.Type == ingest.TypeScanStats {
			if st := scanStatsOf(t, e); st.Done {
				return st, i
			}
		}
	}
	return ingest.ScanStats{}, -1
}

func scannerConfig() engine.ScannerConfig {
	cfg := engine.DefaultScannerConfig()
	cfg.Rate = 0 // unlimited, for RunJob; Scanner tests set one
	cfg.Cooldown = 0
	cfg.StatsInterval = 20 * time.Millisecond
	return cfg
}

func TestRunJobScan(t *testing.T) {
	task := ingest.Task{
		Kind: ingest.TaskStart, JobID: "job_scan", ClientID: "usr_1", Type: ingest.JobScan, Shards: 1, Seed: 5,
		Options: []ingest.TaskOptions{{
			Targets: []string{"198.18.0.0/23"},
			Ports: []ingest.PortSpec{
				{Ports: "80", Modules: []string{"service", "http"}},
				{Ports: "22"},
			},
		}},
	}
	space := newSpace(t, task.Options...)
	net := fakenet.New(fakenet.Config{SrcIP: mustIP(t, "198.18.255.254"), SrcPort: 41000, TTL: 60, Window: 1024})
	open := openRandom(t, net, space, 300, 4)
	var open80 int
	for p := range open {
		if p.port == 80 {
			open80++
		}
	}
	bus := newFakeBus()
	stats, err := engine.RunJob(context.Background(), task, scannerConfig(), testPolicy(t), net, bus, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if !stats.Done || stats.Counts.Targets != 1024 || stats.Counts.Sent != 1024 || stats.Counts.OpenPorts != 300 ||
		stats.Counts.Probes != uint64(2*open80) || stats.Error != "" || stats.Canceled {
		t.Errorf("returned stats %+v", stats)
	}

	events := bus.events(t)
	final, at := finalStats(t, events, "job_scan")
	if at != len(events)-1 {
		t.Fatalf("final scan_stats at %d of %d events, want last", at, len(events))
	}
	if final != stats {
		t.Errorf("published final %+v, returned %+v", final, stats)
	}
	if rid := events[at].RecordID; rid != ingest.RecordID("job_scan", "scan_stats", "0", "done") {
		t.Errorf("final stats record id %q", rid)
	}
	ports := map[string]bool{}
	for _, e := range events[:at] {
		if e.Origin.Type == ingest.TypeScanStats {
			if st := scanStatsOf(t, e); st.Done || e.Origin.Module != ingest.ModuleScanner {
				t.Errorf("periodic stats %+v", e)
			}
			continue
		}
		if e.Origin.Type != ingest.TypePort || e.Origin.Module != ingest.ModulePortscan || e.Origin.ClientID != "usr_1" ||
			e.Origin.IP != "198.18.255.254" || e.Origin.Port != 41000 || e.Origin.TS == 0 ||
			e.Target.Protocol != "tcp" || string(e.Result.Data) != `{"response":"synack"}` || e.ID != "" {
			t.Fatalf("port event %+v", e)
		}
		key := e.Target.IP + ":" + strconv.Itoa(e.Target.Port)
		if ports[key] {
			t.Errorf("%s reported twice", key)
		}
		ports[key] = true
		if e.RecordID != ingest.RecordID("job_scan", "port", e.Target.IP, strconv.Itoa(e.Target.Port)) {
			t.Errorf("port event record id %q", e.RecordID)
		}
		if !open[pair{mustIP(t, e.Target.IP), uint16(e.Target.Port)}] {
			t.Errorf("%s reported but not open", key)
		}
	}
	if len(ports) != 300 {
		t.Errorf("%d port events, want 300", len(ports))
	}
	ops := bus.openPorts(t)
	if len(ops) != open80 {
		t.Errorf("%d open ports dispatched, want %d (only port 80 has modules)", len(ops), open80)
	}
	for _, op := range ops {
		if op.Port != 80 || strings.Join(op.Modules, ",") != "service,http" || op.JobID != "job_scan" || op.ClientID != "usr_1" ||
			op.Protocol != "tcp" || op.TTL != 60 || op.Window != 1024 || op.SourceIP != "198.18.255.254" || op.Found == 0 {
			t.Errorf("open port %+v", op)
		}
	}
	bus.mu.Lock()
	calls := bus.calls[ingest.TopicEvents] + bus.calls[ingest.TopicPorts]
	bus.mu.Unlock()
	if calls > 50 {
		t.Errorf("%d Publish calls for %d messages: not batched", calls, len(events)+len(ops))
	}
}

func TestRunJobGrabShards(t *testing.T) {
	task := ingest.Task{
		Kind: ingest.TaskStart, JobID: "job_grab", ClientID: "usr_1", Type: ingest.JobGrab, Shards: 2,
		Options: []ingest.TaskOptions{{
			Targets:   []string{"198.18.0.1", "198.18.0.2-198.18.0.4"},
			Ports:     []ingest.PortSpec{{Ports: "443", Modules: []string{"ssl"}}, {Ports: "8000-8001", Modules: []string{"service"}}},
			Hostnames: map[string]string{"198.18.0.1": "www.example.test"},
		}},
	}
	bus := newFakeBus()
	var total uint64
	for shard := range 2 {
		cfg := scannerConfig()
		cfg.Shard, cfg.Shards = shard, 2
		stats, err := engine.RunJob(context.Background(), task, cfg, testPolicy(t), nil, bus, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		if !stats.Done || stats.Shard != shard || stats.Counts.Probes != stats.Counts.OpenPorts {
			t.Errorf("shard %d stats %+v", shard, stats)
		}
		total += stats.Counts.Targets
	}
	if total != 12 {
		t.Errorf("shards counted %d targets, want 12", total)
	}
	seen := map[string]int{}
	for _, op := range bus.openPorts(t) {
		seen[op.IP+":"+strconv.Itoa(op.Port)]++
		want := "service"
		if op.Port == 443 {
			want = "ssl"
		}
		if len(op.Modules) != 1 || op.Modules[0] != want {
			t.Errorf("%s:%d dispatched with %v", op.IP, op.Port, op.Modules)
		}
		if wantName := map[bool]string{true: "www.example.test"}[op.IP == "198.18.0.1"]; op.Hostname != wantName {
			t.Errorf("%s:%d dispatched with hostname %q, want %q", op.IP, op.Port, op.Hostname, wantName)
		}
	}
	if len(seen) != 12 {
		t.Errorf("%d ip:ports dispatched, want 12", len(seen))
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("%s dispatched %d times", k, n)
		}
	}
	for _, e := range bus.events(t) {
		if e.Origin.Type == ingest.TypePort {
			t.Fatal("a grab job published a port event")
		}
	}
}

func TestRunJobFailures(t *testing.T) {
	good := []ingest.TaskOptions{{Targets: []string{"198.18.0.1"}, Ports: []ingest.PortSpec{{Ports: "80"}}}}
	for _, tc := range []struct {
		name    string
		task    ingest.Task
		want    error
		message string
	}{
		{"excluded targets", ingest.Task{JobID: "j1", Options: []ingest.TaskOptions{{Targets: []string{"10.0.0.0/8"}, Ports: []ingest.PortSpec{{Ports: "80"}}}}},
			engine.ErrOutsidePolicy, "10.0.0.0/8"},
		{"bad port", ingest.Task{JobID: "j2", Options: []ingest.TaskOptions{{Targets: []string{"198.18.0.1"}, Ports: []ingest.PortSpec{{Ports: "http"}}}}},
			engine.ErrPort, "options[0].ports[0]"},
		{"hostname", ingest.Task{JobID: "j3", Options: []ingest.TaskOptions{{Targets: []string{"example.com"}, Ports: []ingest.PortSpec{{Ports: "80"}}}}},
			engine.ErrHostname, "example.com"},
		{"shard mismatch", ingest.Task{JobID: "j4", Shards: 3, Options: good}, engine.ErrShardMismatch, "3 shards"},
		{"job type", ingest.Task{JobID: "j5", Type: "nope", Options: good}, engine.ErrJobType, "nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bus := newFakeBus()
			net := fakenet.New(fakenet.Config{})
			stats, err := engine.RunJob(context.Background(), tc.task, scannerConfig(), testPolicy(t), net, bus, zerolog.Nop())
			if !errors.Is(err, tc.want) {
				t.Fatalf("RunJob error = %v, want %v", err, tc.want)
			}
			events := bus.events(t)
			final, at := finalStats(t, events, tc.task.JobID)
			if at != len(events)-1 || len(events) != 1 {
				t.Fatalf("want exactly the final scan_stats, got %d events", len(events))
			}
			if !final.Done || !strings.Contains(final.Error, tc.message) || final != stats {
				t.Errorf("final stats %+v (returned %+v), want Done with an error naming %q", final, stats, tc.message)
			}
		})
	}
}

func TestRunJobCancel(t *testing.T) {
	task := ingest.Task{JobID: "job_c", ClientID: "usr_1", Options: []ingest.TaskOptions{{
		Targets: []string{"198.18.0.0/16"}, Ports: []ingest.PortSpec{{Ports: "80"}},
	}}}
	bus := newFakeBus()
	net := fakenet.New(fakenet.Config{})
	space := newSpace(t, task.Options...)
	openRandom(t, net, space, 5000, 2)
	cfg := scannerConfig()
	cfg.Rate = 5000
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(150*time.Millisecond, cancel)
	stats, err := engine.RunJob(ctx, task, cfg, testPolicy(t), net, bus, zerolog.Nop())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("RunJob error = %v, want context.Canceled", err)
	}
	events := bus.events(t)
	final, at := finalStats(t, events, "job_c")
	if at != len(events)-1 || !final.Canceled || !final.Done || final.Counts.Sent == 0 || final.Counts.Sent >= 65536 {
		t.Fatalf("final stats %+v at %d of %d", final, at, len(events))
	}
	var portEvents uint64
	for _, e := range events {
		if e.Origin.Type == ingest.TypePort {
			portEvents++
		}
	}
	if portEvents != final.Counts.OpenPorts || portEvents == 0 {
		t.Errorf("%d port events published, final stats count %d", portEvents, final.Counts.OpenPorts)
	}
	_ = stats
}

func TestRunJobPublishFailure(t *testing.T) {
	bus := newFakeBus()
	bus.fail = errors.New("bus down")
	task := ingest.Task{JobID: "job_f", Options: []ingest.TaskOptions{{Targets: []string{"198.18.0.1"}, Ports: []ingest.PortSpec{{Ports: "80"}}}}}
	_, err := engine.RunJob(context.Background(), task, scannerConfig(), testPolicy(t), fakenet.New(fakenet.Config{}), bus, zerolog.Nop())
	if err == nil {
		t.Fatal("RunJob reported success though nothing could be published")
	}
}

// startScanner runs a Scanner on bus until the test ends.
func startScanner(t *testing.T, bus *fakeBus, cfg engine.ScannerConfig, newNet func() *fakenet.Net) (stop func() error) {
	t.Helper()
	s := engine.NewScanner(cfg, bus, testPolicy(t), func() (engine.Transport, error) { return newNet(), nil }, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				err = errors.New("scanner did not stop")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func publishTask(t *testing.T, bus *fakeBus, task ingest.Task) {
	t.Helper()
	b, err := ingest.Encode(nil, &task)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(context.Background(), ingest.TopicTasks, ingest.Message{Key: []byte(task.JobID), Value: b}); err != nil {
		t.Fatal(err)
	}
}

func TestScannerRunsJobsAndAcksAfterFinalStats(t *testing.T) {
	bus := newFakeBus()
	cfg := scannerConfig()
	cfg.Rate = 100000
	cfg.MaxJobs = 1
	stop := startScanner(t, bus, cfg, func() *fakenet.Net {
		n := fakenet.New(fakenet.Config{})
		n.AddOpen(mustIP(t, "198.18.0.7"), 80)
		return n
	})
	opts := []ingest.TaskOptions{{Targets: []string{"198.18.0.0/22"}, Ports: []ingest.PortSpec{{Ports: "80", Modules: []string{"service"}}}}}
	publishTask(t, bus, ingest.Task{Kind: ingest.TaskStart, JobID: "job_a", ClientID: "u", Shards: 1, Options: opts})
	publishTask(t, bus, ingest.Task{Kind: ingest.TaskStart, JobID: "job_b", ClientID: "u", Shards: 1, Options: opts})
	bus.waitFor(t, "both jobs acked", func() bool {
		return bus.indexOf("ack:job_a:start") >= 0 && bus.indexOf("ack:job_b:start") >= 0
	})
	events := bus.events(t)
	for _, job := range []string{"job_a", "job_b"} {
		final, at := finalStats(t, events, job)
		if at < 0 || final.Counts.OpenPorts != 1 || final.Counts.Probes != 1 || final.Counts.Sent != 1024 {
			t.Errorf("%s final stats %+v", job, final)
		}
	}
	// MaxJobs 1: the jobs do not overlap; whichever started second published
	// nothing before the first one's final stats
	first, second := "job_a", "job_b"
	if events[0].Origin.JobID == "job_b" {
		first, second = second, first
	}
	_, firstDone := finalStats(t, events, first)
	for i, e := range events[:firstDone] {
		if e.Origin.JobID == second {
			t.Errorf("%s published at %d before %s finished at %d", second, i, first, firstDone)
			break
		}
	}
	// the ack comes after every publish of the job
	bus.mu.Lock()
	timeline := append([]string(nil), bus.timeline...)
	groups := append([]string(nil), bus.groups...)
	bus.mu.Unlock()
	ackA := bus.indexOf("ack:job_a:start")
	pubsBefore := 0
	for _, e := range timeline[:ackA] {
		if strings.HasPrefix(e, "pub:") {
			pubsBefore++
		}
	}
	jobAPubs := 0
	for _, e := range events {
		if e.Origin.JobID == "job_a" {
			jobAPubs++
		}
	}
	if pubsBefore < jobAPubs+1 { // its events and its OpenPort
		t.Errorf("job_a acked after %d publishes, it made %d", pubsBefore, jobAPubs+1)
	}
	if len(groups) != 1 || groups[0] != "scanner-0-of-1" {
		t.Errorf("subscribed as %v", groups)
	}
	if err := stop(); err != nil {
		t.Errorf("Run returned %v on shutdown", err)
	}
}

func TestScannerCancel(t *testing.T) {
	bus := newFakeBus()
	cfg := scannerConfig()
	cfg.Rate = 2000
	startScanner(t, bus, cfg, func() *fakenet.Net { return fakenet.New(fakenet.Config{}) })
	publishTask(t, bus, ingest.Task{Kind: ingest.TaskStart, JobID: "job_long", Shards: 1, Options: []ingest.TaskOptions{{
		Targets: []string{"198.18.0.0/16"}, Ports: []ingest.PortSpec{{Ports: "1-100"}},
	}}})
	bus.waitFor(t, "the job's first stats", func() bool {
		for _, e := range bus.events(t) {
			if e.Origin.JobID == "job_long" {
				return true
			}
		}
		return false
	})
	publishTask(t, bus, ingest.Task{Kind: ingest.TaskCancel, JobID: "job_long"})
	bus.waitFor(t, "the start acked", func() bool { return bus.indexOf("ack:job_long:start") >= 0 })
	final, at := finalStats(t, bus.events(t), "job_long")
	if at < 0 || !final.Canceled || final.Error != "" {
		t.Errorf("final stats after cancel %+v", final)
	}
	if bus.indexOf("ack:job_long:cancel") < 0 {
		t.Error("cancel task not acked")
	}
}

func TestScannerCancelWhileQueued(t *testing.T) {
	bus := newFakeBus()
	cfg := scannerConfig()
	cfg.Rate = 1000
	cfg.MaxJobs = 1
	startScanner(t, bus, cfg, func() *fakenet.Net { return fakenet.New(fakenet.Config{}) })
	long := []ingest.TaskOptions{{Targets: []string{"198.18.0.0/16"}, Ports: []ingest.PortSpec{{Ports: "80"}}}}
	publishTask(t, bus, ingest.Task{Kind: ingest.TaskStart, JobID: "job_run", Shards: 1, Options: long})
	bus.waitFor(t, "the first job running", func() bool { return len(bus.events(t)) > 0 })
	publishTask(t, bus, ingest.Task{Kind: ingest.TaskStart, JobID: "job_wait", Shards: 1, Options: long})
	publishTask(t, bus, ingest.Task{Kind: ingest.TaskCancel, JobID: "job_wait"})
	bus.waitFor(t, "the queued job acked", func() bool { return bus.indexOf("ack:job_wait:start") >= 0 })
	final, at := finalStats(t, bus.events(t), "job_wait")
	if at < 0 || !final.Canceled || final.Counts.Sent != 0 {
		t.Errorf("queued job's final stats %+v", final)
	}
	if _, at := finalStats(t, bus.events(t), "job_run"); at >= 0 {
		t.Error("the running job finished though only the queued one was canceled")
	}
}

func TestScannerShardMismatchAndBadTasks(t *testing.T) {
	bus := newFakeBus()
	cfg := scannerConfig()
	cfg.Rate = 1000
	cfg.Shard, cfg.Shards = 1, 2
	startScanner(t, bus, cfg, func() *fakenet.Net { return fakenet.New(fakenet.Config{}) })
	publishTask(t, bus, ingest.Task{Kind: ingest.TaskStart, JobID: "job_m", Shards: 3, Options: []ingest.TaskOptions{{
		Targets: []string{"198.18.0.1"}, Ports: []ingest.PortSpec{{Ports: "80"}},
	}}})
	if err := bus.Publish(context.Background(), ingest.TopicTasks, ingest.Message{Value: []byte("{not json")}); err != nil {
		t.Fatal(err)
	}
	publishTask(t, bus, ingest.Task{Kind: "pause", JobID: "job_k"})
	publishTask(t, bus, ingest.Task{Kind: ingest.TaskCancel, JobID: "job_unknown"})
	bus.waitFor(t, "tasks acked", func() bool {
		return bus.indexOf("ack:job_m:start") >= 0 && bus.indexOf("ack:job_k:pause") >= 0 &&
			bus.indexOf("ack:job_unknown:cancel") >= 0 && bus.indexOf("ack::") >= 0
	})
	final, at := finalStats(t, bus.events(t), "job_m")
	if at < 0 || !strings.Contains(final.Error, "3 shards") || final.Shard != 1 || final.Shards != 2 {
		t.Errorf("final stats for a mismatched task: %+v", final)
	}
	if bus.indexOf("ack:job_m:start") < at {
		t.Error("mismatched task acked before its final stats")
	}
}

func TestScannerShutdownLeavesJobUnacked(t *testing.T) {
	bus := newFakeBus()
	cfg := scannerConfig()
	cfg.Rate = 1000
	stop := startScanner(t, bus, cfg, func() *fakenet.Net { return fakenet.New(fakenet.Config{}) })
	publishTask(t, bus, ingest.Task{Kind: ingest.TaskStart, JobID: "job_s", Shards: 1, Options: []ingest.TaskOptions{{
		Targets: []string{"198.18.0.0/16"}, Ports: []ingest.PortSpec{{Ports: "80"}},
	}}})
	bus.waitFor(t, "the job running", func() bool { return len(bus.events(t)) > 0 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if bus.indexOf("ack:job_s:start") >= 0 {
		t.Error("a job interrupted by shutdown was acked")
	}
	if _, at := finalStats(t, bus.events(t), "job_s"); at >= 0 {
		t.Error("a job interrupted by shutdown published final stats")
	}
}

func TestScannerConfig(t *testing.T) {
	var cfg engine.ScannerConfig
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	cfg.RegisterFlags(fs, "scanner.")
	if cfg != engine.DefaultScannerConfig() || cfg.Validate() != nil {
		t.Fatalf("defaults %+v", cfg)
	}
	if err := fs.Parse([]string{"-scanner.shard", "2/4", "-scanner.rate=500", "-scanner.max-jobs=2", "-scanner.cooldown=3s"}); err != nil {
		t.Fatal(err)
	}
	if cfg.Shard != 2 || cfg.Shards != 4 || cfg.Rate != 500 || cfg.MaxJobs != 2 || cfg.Cooldown != 3*time.Second {
		t.Errorf("parsed %+v", cfg)
	}
	for _, bad := range []string{"4/4", "-1/2", "1", "a/b", "0/0"} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(&strings.Builder{})
		var c engine.ScannerConfig
		c.RegisterFlags(fs, "")
		if err := fs.Parse([]string{"-shard", bad}); err == nil {
			t.Errorf("-shard %s accepted", bad)
		}
	}
	bad := engine.ScannerConfig{Shard: 3, Shards: 2, Rate: 0, MaxJobs: 0, Cooldown: -1, StatsInterval: 0}
	err := bad.Validate()
	for _, want := range []string{"shard", "rate", "max-jobs", "cooldown", "stats-interval"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error %v does not mention %s", err, want)
		}
	}
}
