package api

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"trawl/ingest"
	"trawl/ingest/membus"
	"trawl/storage"
	"trawl/storage/embedded"
)

type trackerEnv struct {
	bus    *membus.Bus
	store  *embedded.Store
	status ingest.Subscription
}

func startTracker(t *testing.T) *trackerEnv {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	store, err := embedded.Open(ctx, t.TempDir()+"/t.db", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	bus := membus.New(membus.DefaultConfig(), zerolog.Nop())
	status, err := bus.Subscribe(ctx, ingest.TopicEvents, "observer")
	if err != nil {
		t.Fatal(err)
	}
	tr := NewTracker(bus, store, zerolog.Nop())
	tr.interval = 20 * time.Millisecond
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("tracker Run: %v", err)
		}
		bus.Close()
		store.Close()
	})
	return &trackerEnv{bus: bus, store: store, status: status}
}

func (e *trackerEnv) job(t *testing.T) string {
	t.Helper()
	id := ingest.NewID("job_")
	if err := e.store.CreateJob(context.Background(), storage.Job{ID: id, ClientID: "usr_1", Type: "scan", State: ingest.StateQueued, Created: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return id
}

func (e *trackerEnv) publish(t *testing.T, jobID, typ, module, record string, data any) {
	t.Helper()
	b, _ := json.Marshal(data)
	ev := ingest.Event{ID: ingest.NewID("ev_"), RecordID: record,
		Origin: ingest.Origin{JobID: jobID, ClientID: "usr_1", Type: typ, Module: module, TS: time.Now().UnixMilli()},
		Result: ingest.Result{Data: b}}
	msg, _ := ingest.EventMessage(&ev)
	if err := e.bus.Publish(context.Background(), ingest.TopicEvents, msg); err != nil {
		t.Fatal(err)
	}
}

func (e *trackerEnv) stats(t *testing.T, jobID string, s ingest.ScanStats) {
	e.publish(t, jobID, ingest.TypeScanStats, ingest.ModuleScanner, ingest.NewID("rec_"), s)
}

// statuses reads job_status events of jobID until a terminal one.
func (e *trackerEnv) statuses(t *testing.T, jobID string) []ingest.JobStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out []ingest.JobStatus
	for {
		d, err := e.status.Fetch(ctx)
		if err != nil {
			t.Fatalf("no terminal status; saw %+v: %v", out, err)
		}
		e.status.Ack(ctx, d)
		var ev ingest.Event
		ingest.Decode(d.Value, &ev)
		if ev.Origin.Type != ingest.TypeJobStatus || ev.Origin.JobID != jobID {
			continue
		}
		var s ingest.JobStatus
		json.Unmarshal(ev.Result.Data, &s)
		out = append(out, s)
		if ingest.Terminal(s.Status) {
			return out
		}
	}
}

func TestTrackerSucceedsOnceEveryShardAndProbeIsIn(t *testing.T) {
	e := startTracker(t)
	id := e.job(t)
	e.stats(t, id, ingest.ScanStats{Shard: 0, Shards: 2, Counts: ingest.JobCounts{Targets: 10, Sent: 5}})
	e.publish(t, id, ingest.TypePort, ingest.ModulePortscan, "rec_p1", map[string]string{"response": "synack"})
	e.publish(t, id, ingest.TypePort, ingest.ModulePortscan, "rec_p1", map[string]string{"response": "synack"}) // redelivered
	e.publish(t, id, "service", ingest.ModuleGrabber, "rec_r1", map[string]string{"status": "success"})
	e.publish(t, id, "service", ingest.ModuleGrabber, "rec_r1", map[string]string{"status": "success"}) // redelivered
	e.stats(t, id, ingest.ScanStats{Shard: 0, Shards: 2, Done: true, Counts: ingest.JobCounts{Targets: 10, Sent: 10, Probes: 2}})
	e.stats(t, id, ingest.ScanStats{Shard: 1, Shards: 2, Done: true, Counts: ingest.JobCounts{Targets: 10, Sent: 10, Probes: 0}})
	// shard 0 dispatched two probes and only one result is in: not done yet
	time.Sleep(100 * time.Millisecond)
	if j, _ := e.store.Job(context.Background(), id); ingest.Terminal(j.State) {
		t.Fatalf("job finished with a probe outstanding: %+v", j)
	}
	e.publish(t, id, "service", ingest.ModuleGrabber, "rec_r2", map[string]string{"status": "timeout"})
	got := e.statuses(t, id)
	if got[0].Status != ingest.StateQueued || got[1].Status != ingest.StateRunning {
		t.Fatalf("statuses %+v, want queued, running, …", got)
	}
	last := got[len(got)-1]
	want := ingest.JobCounts{Targets: 20, Sent: 20, OpenPorts: 1, Probes: 2, Results: 2, Errors: 1}
	if last.Status != ingest.StateSucceeded || last.Counts != want || last.Progress != 1 {
		t.Fatalf("terminal %+v, want succeeded with %+v", last, want)
	}
	j, err := e.store.Job(context.Background(), id)
	if err != nil || j.State != ingest.StateSucceeded || j.Counts != want || j.Finished.IsZero() || j.Started.IsZero() {
		t.Fatalf("stored job %+v %v", j, err)
	}
	// late events of a finished job change nothing
	e.publish(t, id, "service", ingest.ModuleGrabber, "rec_r3", map[string]string{"status": "success"})
	time.Sleep(100 * time.Millisecond)
	if j2, _ := e.store.Job(context.Background(), id); j2.Counts != want {
		t.Fatalf("late event changed a finished job: %+v", j2.Counts)
	}
}

func TestTrackerCancelAndFailure(t *testing.T) {
	e := startTracker(t)
	canceled := e.job(t)
	e.stats(t, canceled, ingest.ScanStats{Shard: 0, Shards: 1, Counts: ingest.JobCounts{Targets: 10, Sent: 1}})
	msg, _ := ingest.Encode(nil, &ingest.Task{Kind: ingest.TaskCancel, JobID: canceled, ClientID: "usr_1"})
	e.bus.Publish(context.Background(), ingest.TopicTasks, ingest.Message{Key: []byte(canceled), Value: msg})
	if got := e.statuses(t, canceled); got[len(got)-1].Status != ingest.StateCanceled {
		t.Fatalf("cancel: %+v", got)
	}
	// a shard that saw the cancel first reports a canceled, done sweep
	stoppedShort := e.job(t)
	e.stats(t, stoppedShort, ingest.ScanStats{Shard: 0, Shards: 1, Done: true, Canceled: true, Counts: ingest.JobCounts{Targets: 10, Sent: 3}})
	if got := e.statuses(t, stoppedShort); got[len(got)-1].Status != ingest.StateCanceled {
		t.Fatalf("a shard's canceled sweep ended the job %+v, want canceled", got[len(got)-1])
	}
	failed := e.job(t)
	e.stats(t, failed, ingest.ScanStats{Shard: 0, Shards: 1, Done: true, Error: "no route to targets"})
	got := e.statuses(t, failed)
	if last := got[len(got)-1]; last.Status != ingest.StateFailed || last.Error == "" {
		t.Fatalf("failure: %+v", got)
	}
	if j, _ := e.store.Job(context.Background(), failed); j.State != ingest.StateFailed || j.Error == "" {
		t.Fatalf("stored failed job %+v", j)
	}
}

func TestTrackerFailsOrphansOfAnEarlierRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	store, err := embedded.Open(ctx, t.TempDir()+"/t.db", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	counts := ingest.JobCounts{Targets: 10, Sent: 4, OpenPorts: 1}
	orphan := storage.Job{ID: ingest.NewID("job_"), ClientID: "usr_1", Type: "scan", State: ingest.StateRunning, Counts: counts, Created: time.Now()}
	done := storage.Job{ID: ingest.NewID("job_"), ClientID: "usr_1", Type: "scan", State: ingest.StateSucceeded, Created: time.Now()}
	for _, j := range []storage.Job{orphan, done} {
		if err := store.CreateJob(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	bus := membus.New(membus.DefaultConfig(), zerolog.Nop())
	defer bus.Close()
	status, _ := bus.Subscribe(ctx, ingest.TopicEvents, "observer")
	tr := NewTracker(bus, store, zerolog.Nop())
	tr.FailOrphans(store)
	finished := make(chan error, 1)
	go func() { finished <- tr.Run(ctx) }()
	e := &trackerEnv{bus: bus, store: store, status: status}
	got := e.statuses(t, orphan.ID)
	if last := got[len(got)-1]; last.Status != ingest.StateFailed || !strings.Contains(last.Error, "restarted") || last.Counts != counts {
		t.Fatalf("orphan's terminal status %+v, want failed with its stored counts", last)
	}
	if j, _ := store.Job(ctx, orphan.ID); j.State != ingest.StateFailed || j.Finished.IsZero() || j.Counts != counts {
		t.Fatalf("stored orphan %+v", j)
	}
	if j, _ := store.Job(ctx, done.ID); j.State != ingest.StateSucceeded {
		t.Fatalf("a finished job was touched: %+v", j)
	}
	cancel()
	if err := <-finished; err != nil {
		t.Fatal(err)
	}
}
