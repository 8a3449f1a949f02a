package clickhouse

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"trawl/ingest"
	"trawl/storage"
	"trawl/storage/clickhouse/chtest"
)

func benchStore(b *testing.B) *Store {
	b.Helper()
	addr := chtest.Shared(b)
	cfg := DefaultConfig()
	cfg.Addr = []string{addr}
	cfg.Database = chtest.NewDatabase(b, addr)
	s, err := Open(b.Context(), cfg, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

// benchEvent is a grabber event like the ingester stores most.
func benchEvent(client, job string, i int) ingest.Event {
	ip := fmt.Sprintf("198.18.%d.%d", i/250%250, i%250+1)
	return ingest.Event{
		V:        ingest.SchemaVersion,
		ID:       ingest.NewID("ev_"),
		RecordID: ingest.RecordID(job, ip, "22", "ssh"),
		Origin: ingest.Origin{JobID: job, ClientID: client, Type: "ssh", Module: ingest.ModuleGrabber,
			TS: time.Now().UnixMilli(), IP: "198.18.255.1", Port: 40000 + i%20000},
		Target: ingest.Target{IP: ip, Port: 22, Protocol: "tcp"},
		Result: ingest.Result{Data: json.RawMessage(
			`{"banner":"SSH-2.0-OpenSSH_9.6p1 Debian-4","kex":["curve25519-sha256","ecdh-sha2-nistp256"],"status":"success"}`)},
	}
}

// BenchmarkInsertEvents inserts batches of 5000 grabber events, the
// ingester's batch size; events/s is the figure to watch.
func BenchmarkInsertEvents(b *testing.B) {
	const batchSize = 5000
	s := benchStore(b)
	client, job := ingest.NewID("usr_"), ingest.NewID("job_")
	batch := make([]ingest.Event, batchSize)
	n := 0
	b.ReportAllocs()
	iters := 0
	for b.Loop() {
		b.StopTimer()
		for i := range batch {
			batch[i] = benchEvent(client, job, n)
			n++
		}
		b.StartTimer()
		if err := s.InsertEvents(b.Context(), batch); err != nil {
			b.Fatal(err)
		}
		iters++
	}
	b.ReportMetric(float64(iters*batchSize)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkEvents reads one job's events in pages of 1000, as a replay does.
func BenchmarkEvents(b *testing.B) {
	const total = 20000
	s := benchStore(b)
	client, job := ingest.NewID("usr_"), ingest.NewID("job_")
	batch := make([]ingest.Event, total)
	for i := range batch {
		batch[i] = benchEvent(client, job, i)
	}
	if err := s.InsertEvents(b.Context(), batch); err != nil {
		b.Fatal(err)
	}
	q := storage.EventQuery{ClientID: client, JobID: job, Limit: 1000}
	b.ReportAllocs()
	read := 0
	for b.Loop() {
		page, err := s.Events(b.Context(), q)
		if err != nil {
			b.Fatal(err)
		}
		read += len(page)
		q.After = ""
		if len(page) == q.Limit {
			q.After = page[len(page)-1].ID
		}
	}
	b.ReportMetric(float64(read)/b.Elapsed().Seconds(), "events/s")
}
