// Package storagetest is the conformance suite every store runs: RunEvents for
// the event part (embedded and ClickHouse), RunMeta for users and jobs.
//
// The cases make their own client, job and event ids, so a store that cannot
// be emptied between cases (a shared ClickHouse database) runs them too.
// Dedupe is asserted within one job: record ids are derived from the job id,
// so a store may scope its uniqueness to the job (embedded does).
package storagetest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"trawl/ingest"
	"trawl/storage"
)

// EventStore is the event part of a store.
type EventStore interface {
	InsertEvents(ctx context.Context, events []ingest.Event) error
	Events(ctx context.Context, q storage.EventQuery) ([]ingest.Event, error)
	CountEvents(ctx context.Context, q storage.EventQuery) (int64, error)
}

// RunEvents runs the event cases, each on a store from open. open should
// register the store's cleanup with t.Cleanup.
func RunEvents(t *testing.T, open func(t *testing.T) EventStore) {
	cases := []struct {
		name string
		run  func(t *testing.T, s EventStore)
	}{
		{"EmptyBatch", testEmptyBatch},
		{"IdempotentInBatch", testIdempotentInBatch},
		{"IdempotentAcrossBatches", testIdempotentAcrossBatches},
		{"DedupeByIDWithoutRecordID", testDedupeByID},
		{"RoundTrip", testRoundTrip},
		{"Paging", testPaging},
		{"DefaultLimit", testDefaultLimit},
		{"ClientIsolation", testClientIsolation},
		{"JobFilter", testJobFilter},
		{"ResultsOnly", testResultsOnly},
		{"ConcurrentInserts", testConcurrentInserts},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.run(t, open(t))
		})
	}
}

func testEmptyBatch(t *testing.T, s EventStore) {
	ctx := t.Context()
	if err := s.InsertEvents(ctx, nil); err != nil {
		t.Fatalf("InsertEvents(nil) = %v, want nil", err)
	}
	if err := s.InsertEvents(ctx, []ingest.Event{}); err != nil {
		t.Fatalf("InsertEvents(empty) = %v, want nil", err)
	}
	client := newClient()
	got := mustEvents(t, s, storage.EventQuery{ClientID: client})
	if len(got) != 0 {
		t.Fatalf("Events of a new client = %d events, want 0", len(got))
	}
	if n := mustCount(t, s, storage.EventQuery{ClientID: client}); n != 0 {
		t.Fatalf("CountEvents of a new client = %d, want 0", n)
	}
}

func testIdempotentInBatch(t *testing.T, s EventStore) {
	client, job := newClient(), newJob()
	first := portEvent(client, job, "198.18.0.1", 22)
	again := portEvent(client, job, "198.18.0.1", 22) // same fact, new cursor id
	again.RecordID = first.RecordID
	again.Result.Data = json.RawMessage(`{"second":true}`)
	other := portEvent(client, job, "198.18.0.1", 80)
	mustInsert(t, s, first, again, other)

	got := mustEvents(t, s, storage.EventQuery{ClientID: client})
	assertIDs(t, got, first.ID, other.ID)
	assertEvent(t, got[0], first)
	if n := mustCount(t, s, storage.EventQuery{ClientID: client}); n != 2 {
		t.Fatalf("CountEvents = %d, want 2", n)
	}
}

func testIdempotentAcrossBatches(t *testing.T, s EventStore) {
	client, job := newClient(), newJob()
	first := portEvent(client, job, "198.18.0.2", 443)
	mustInsert(t, s, first)
	// the exact redelivery, and the same fact under a new cursor id
	mustInsert(t, s, first)
	again := portEvent(client, job, "198.18.0.2", 443)
	again.RecordID = first.RecordID
	again.Result.Data = json.RawMessage(`{"second":true}`)
	mustInsert(t, s, again)

	got := mustEvents(t, s, storage.EventQuery{ClientID: client})
	assertIDs(t, got, first.ID)
	assertEvent(t, got[0], first)
}

func testDedupeByID(t *testing.T, s EventStore) {
	client, job := newClient(), newJob()
	e := portEvent(client, job, "198.18.0.3", 21)
	e.RecordID = ""
	mustInsert(t, s, e, e)
	mustInsert(t, s, e)
	got := mustEvents(t, s, storage.EventQuery{ClientID: client})
	assertIDs(t, got, e.ID)
	assertEvent(t, got[0], e)
}

func testRoundTrip(t *testing.T, s EventStore) {
	client, job := newClient(), newJob()
	datas := []string{
		// not compact, HTML-ish characters, escapes and non-ASCII: a JSON
		// re-encoding would change every one of these bytes
		"{ \"banner\" : \"SSH-2.0-OpenSSH_9.6 <a&b>\",\n\t\"n\": 1.50e3 , \"u\":\"\\u00e9 é 日本\" }",
		`[1,2,{"nested":{"deep":[null,true,false]}}]`,
		`"just a string"`,
		`{}`,
	}
	var want []ingest.Event
	for i, d := range datas {
		e := portEvent(client, job, "198.18.1."+strconv.Itoa(i), 8000+i)
		e.V = ingest.SchemaVersion
		e.Origin.Type, e.Origin.Module = "ssh", ingest.ModuleGrabber
		e.Origin.IP, e.Origin.Port = "198.18.255.1", 40000+i
		e.Result.Data = json.RawMessage(d)
		want = append(want, e)
	}
	noData := portEvent(client, job, "198.18.1.9", 9)
	noData.Result.Data = nil
	want = append(want, noData)
	mustInsert(t, s, want...)

	got := mustEvents(t, s, storage.EventQuery{ClientID: client})
	if len(got) != len(want) {
		t.Fatalf("Events = %d events, want %d", len(got), len(want))
	}
	for i := range want {
		assertEvent(t, got[i], want[i])
	}
	if got[len(got)-1].Result.Data != nil {
		t.Errorf("event without data read back data %q, want nil", got[len(got)-1].Result.Data)
	}
}

func testPaging(t *testing.T, s EventStore) {
	client, job := newClient(), newJob()
	const total = 250
	want := make([]ingest.Event, total)
	for i := range want {
		want[i] = portEvent(client, job, fmt.Sprintf("198.18.%d.%d", i/250, i%250+1), 1+i)
	}
	// insert in shuffled order over several batches: reads are in id
	// order, not insertion order
	shuffled := append([]ingest.Event(nil), want...)
	rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	for start := 0; start < total; start += 60 {
		mustInsert(t, s, shuffled[start:min(start+60, total)]...)
	}

	var got []ingest.Event
	after := ""
	for pages := 0; ; pages++ {
		if pages > total {
			t.Fatal("paging does not end")
		}
		page := mustEvents(t, s, storage.EventQuery{ClientID: client, After: after, Limit: 7})
		if len(page) > 7 {
			t.Fatalf("page of %d events, limit 7", len(page))
		}
		if len(page) == 0 {
			break
		}
		got = append(got, page...)
		after = page[len(page)-1].ID
	}
	ids := make([]string, total)
	for i := range want {
		ids[i] = want[i].ID
	}
	assertIDs(t, got, ids...)

	// the cursor is exclusive and need not be a stored id
	tail := mustEvents(t, s, storage.EventQuery{ClientID: client, After: want[total-2].ID})
	assertIDs(t, tail, want[total-1].ID)
	between := mustEvents(t, s, storage.EventQuery{ClientID: client, After: want[9].ID + "0", Limit: 1})
	assertIDs(t, between, want[10].ID)
	if n := mustCount(t, s, storage.EventQuery{ClientID: client, After: want[100].ID, Limit: 3}); n != total {
		t.Fatalf("CountEvents with After and Limit = %d, want %d (both ignored)", n, total)
	}
}

func testDefaultLimit(t *testing.T, s EventStore) {
	client, job := newClient(), newJob()
	const total = 1005
	events := make([]ingest.Event, total)
	for i := range events {
		events[i] = portEvent(client, job, fmt.Sprintf("198.19.%d.%d", i/250, i%250+1), 80)
	}
	mustInsert(t, s, events...)
	got := mustEvents(t, s, storage.EventQuery{ClientID: client})
	if len(got) != 1000 {
		t.Fatalf("Events without a limit = %d events, want the default 1000", len(got))
	}
	if got[999].ID != events[999].ID {
		t.Fatalf("last of the default page = %s, want %s", got[999].ID, events[999].ID)
	}
	if n := mustCount(t, s, storage.EventQuery{ClientID: client}); n != total {
		t.Fatalf("CountEvents = %d, want %d", n, total)
	}
}

func testClientIsolation(t *testing.T, s EventStore) {
	ctx := t.Context()
	alice, bob := newClient(), newClient()
	aliceJob, bobJob := newJob(), newJob()
	a1 := portEvent(alice, aliceJob, "198.18.2.1", 22)
	b1 := portEvent(bob, bobJob, "198.18.2.2", 22)
	a2 := portEvent(alice, aliceJob, "198.18.2.3", 22)
	mustInsert(t, s, a1, b1, a2)

	assertIDs(t, mustEvents(t, s, storage.EventQuery{ClientID: alice}), a1.ID, a2.ID)
	assertIDs(t, mustEvents(t, s, storage.EventQuery{ClientID: bob}), b1.ID)
	// naming another client's job does not reveal it
	assertIDs(t, mustEvents(t, s, storage.EventQuery{ClientID: alice, JobID: bobJob}))
	if n := mustCount(t, s, storage.EventQuery{ClientID: alice, JobID: bobJob}); n != 0 {
		t.Fatalf("CountEvents of another client's job = %d, want 0", n)
	}
	if n := mustCount(t, s, storage.EventQuery{ClientID: alice}); n != 2 {
		t.Fatalf("CountEvents = %d, want 2", n)
	}

	if got, err := s.Events(ctx, storage.EventQuery{}); err == nil {
		t.Fatalf("Events without client id = %d events, nil error; want an error", len(got))
	}
	if _, err := s.Events(ctx, storage.EventQuery{JobID: aliceJob}); err == nil {
		t.Fatal("Events with a job id but no client id: nil error, want an error")
	}
	if n, err := s.CountEvents(ctx, storage.EventQuery{}); err == nil {
		t.Fatalf("CountEvents without client id = %d, nil error; want an error", n)
	}
}

func testJobFilter(t *testing.T, s EventStore) {
	client := newClient()
	job1, job2 := newJob(), newJob()
	var want1, want2 []string
	var batch []ingest.Event
	for i := range 10 {
		job := job1
		if i%3 == 0 {
			job = job2
		}
		e := portEvent(client, job, "198.18.3."+strconv.Itoa(i+1), 22)
		batch = append(batch, e)
		if job == job1 {
			want1 = append(want1, e.ID)
		} else {
			want2 = append(want2, e.ID)
		}
	}
	mustInsert(t, s, batch...)
	assertIDs(t, mustEvents(t, s, storage.EventQuery{ClientID: client, JobID: job1}), want1...)
	assertIDs(t, mustEvents(t, s, storage.EventQuery{ClientID: client, JobID: job2}), want2...)
	assertIDs(t, mustEvents(t, s, storage.EventQuery{ClientID: client, JobID: job1, After: want1[2], Limit: 2}),
		want1[3:5]...)
	if n := mustCount(t, s, storage.EventQuery{ClientID: client, JobID: job1}); n != int64(len(want1)) {
		t.Fatalf("CountEvents of job1 = %d, want %d", n, len(want1))
	}
	assertIDs(t, mustEvents(t, s, storage.EventQuery{ClientID: client, JobID: newJob()}))
}

func testResultsOnly(t *testing.T, s EventStore) {
	client, job := newClient(), newJob()
	running := statusEvent(client, job, ingest.StateRunning)
	port := portEvent(client, job, "198.18.4.1", 22)
	grab := portEvent(client, job, "198.18.4.1", 22)
	grab.RecordID = ingest.RecordID(job, "198.18.4.1", "22", "ssh")
	grab.Origin.Type, grab.Origin.Module = "ssh", ingest.ModuleGrabber
	done := statusEvent(client, job, ingest.StateSucceeded)
	mustInsert(t, s, running, port, grab, done)

	all := storage.EventQuery{ClientID: client, JobID: job}
	results := storage.EventQuery{ClientID: client, JobID: job, ResultsOnly: true}
	assertIDs(t, mustEvents(t, s, all), running.ID, port.ID, grab.ID, done.ID)
	assertIDs(t, mustEvents(t, s, results), port.ID, grab.ID)
	byClient := storage.EventQuery{ClientID: client, ResultsOnly: true}
	assertIDs(t, mustEvents(t, s, byClient), port.ID, grab.ID)
	if n := mustCount(t, s, results); n != 2 {
		t.Fatalf("CountEvents ResultsOnly = %d, want 2", n)
	}
	if n := mustCount(t, s, all); n != 4 {
		t.Fatalf("CountEvents = %d, want 4", n)
	}
}

func testConcurrentInserts(t *testing.T, s EventStore) {
	ctx := t.Context()
	client, job := newClient(), newJob()
	const writers, batches, perBatch = 6, 8, 40
	// every writer also redelivers a shared set, as consumers of one group
	// do after a rebalance
	shared := make([]ingest.Event, 20)
	for i := range shared {
		shared[i] = portEvent(client, job, "198.18.5."+strconv.Itoa(i+1), 443)
	}
	want := map[string]bool{}
	for _, e := range shared {
		want[e.ID] = true
	}
	work := make([][][]ingest.Event, writers)
	for w := range work {
		for b := range batches {
			batch := make([]ingest.Event, 0, perBatch+1)
			for i := range perBatch {
				e := portEvent(client, job, fmt.Sprintf("198.19.%d.%d", w, b*perBatch+i+1), 80)
				want[e.ID] = true
				batch = append(batch, e)
			}
			batch = append(batch, shared[(w+b)%len(shared)])
			work[w] = append(work[w], batch)
		}
	}

	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for _, batch := range work[w] {
				if err := s.InsertEvents(ctx, batch); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	// a reader runs alongside, as the API and the stream do
	wg.Go(func() {
		for range 20 {
			if _, err := s.Events(ctx, storage.EventQuery{ClientID: client, Limit: 50}); err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent call failed: %v", err)
	}

	// shared events not picked by any batch were never inserted
	picked := map[string]bool{}
	for w := range writers {
		for b := range batches {
			picked[shared[(w+b)%len(shared)].ID] = true
		}
	}
	for _, e := range shared {
		if !picked[e.ID] {
			delete(want, e.ID)
		}
	}

	seen := map[string]bool{}
	after := ""
	for {
		page := mustEvents(t, s, storage.EventQuery{ClientID: client, After: after, Limit: 500})
		if len(page) == 0 {
			break
		}
		for _, e := range page {
			if seen[e.ID] {
				t.Fatalf("event %s returned twice", e.ID)
			}
			seen[e.ID] = true
		}
		after = page[len(page)-1].ID
	}
	if len(seen) != len(want) {
		t.Fatalf("stored %d events, want %d", len(seen), len(want))
	}
	for id := range want {
		if !seen[id] {
			t.Fatalf("event %s lost", id)
		}
	}
	if n := mustCount(t, s, storage.EventQuery{ClientID: client}); n != int64(len(want)) {
		t.Fatalf("CountEvents = %d, want %d", n, len(want))
	}
}

func newClient() string { return ingest.NewID("usr_") }
func newJob() string    { return ingest.NewID("job_") }

// portEvent is an open-port event with fresh ids; ids made later sort later.
func portEvent(client, job, ip string, port int) ingest.Event {
	return ingest.Event{
		V:        ingest.SchemaVersion,
		ID:       ingest.NewID("evt_"),
		RecordID: ingest.RecordID(job, ip, strconv.Itoa(port), ingest.ModulePortscan),
		Origin: ingest.Origin{
			JobID:    job,
			ClientID: client,
			Type:     ingest.TypePort,
			Module:   ingest.ModulePortscan,
			TS:       time.Now().UnixMilli(),
		},
		Target: ingest.Target{IP: ip, Port: port, Protocol: "tcp"},
		Result: ingest.Result{Data: json.RawMessage(`{"ttl":64,"window":29200}`)},
	}
}

func statusEvent(client, job, state string) ingest.Event {
	data, _ := json.Marshal(ingest.JobStatus{Status: state, Progress: 0.5})
	return ingest.Event{
		V:        ingest.SchemaVersion,
		ID:       ingest.NewID("evt_"),
		RecordID: ingest.RecordID(job, ingest.TypeJobStatus, state),
		Origin: ingest.Origin{
			JobID:    job,
			ClientID: client,
			Type:     ingest.TypeJobStatus,
			Module:   ingest.ModuleJob,
			TS:       time.Now().UnixMilli(),
		},
		Result: ingest.Result{Data: data},
	}
}

func mustInsert(t *testing.T, s EventStore, events ...ingest.Event) {
	t.Helper()
	if err := s.InsertEvents(t.Context(), events); err != nil {
		t.Fatalf("InsertEvents(%d events): %v", len(events), err)
	}
}

func mustEvents(t *testing.T, s EventStore, q storage.EventQuery) []ingest.Event {
	t.Helper()
	events, err := s.Events(t.Context(), q)
	if err != nil {
		t.Fatalf("Events(%+v): %v", q, err)
	}
	return events
}

func mustCount(t *testing.T, s EventStore, q storage.EventQuery) int64 {
	t.Helper()
	n, err := s.CountEvents(t.Context(), q)
	if err != nil {
		t.Fatalf("CountEvents(%+v): %v", q, err)
	}
	return n
}

// assertIDs checks that got holds exactly the events with ids want, in order.
func assertIDs(t *testing.T, got []ingest.Event, want ...string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d events %v, want %d %v", len(got), eventIDs(got), len(want), want)
	}
	for i := range want {
		if got[i].ID != want[i] {
			t.Fatalf("event %d is %s, want %s (got %v, want %v)", i, got[i].ID, want[i], eventIDs(got), want)
		}
	}
}

func eventIDs(events []ingest.Event) []string {
	ids := make([]string, len(events))
	for i := range events {
		ids[i] = events[i].ID
	}
	return ids
}

// assertEvent checks that got is want field for field, result.data byte for byte.
func assertEvent(t *testing.T, got, want ingest.Event) {
	t.Helper()
	if !bytes.Equal(got.Result.Data, want.Result.Data) {
		t.Errorf("event %s result.data = %q, want %q", want.ID, got.Result.Data, want.Result.Data)
	}
	if got.ID != want.ID || got.RecordID != want.RecordID || got.V != want.V ||
		got.Origin != want.Origin || got.Target != want.Target {
		got.Result.Data, want.Result.Data = nil, nil
		t.Errorf("event = %+v, want %+v", got, want)
	}
}
