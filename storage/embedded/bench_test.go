package embedded

import (
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"

	"trawl/ingest"
	"trawl/storage"
)

func benchStore(b *testing.B) *Store {
	b.Helper()
	s, err := Open(b.Context(), filepath.Join(b.TempDir(), "bench.db"), zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

// BenchmarkInsertEvents inserts batches of 5000 grabber events, the
// ingester's batch size; events/s is the figure to watch.
func BenchmarkInsertEvents(b *testing.B) {
	const batchSize = 5000
	s := benchStore(b)
	client, job := ingest.NewID("usr_"), ingest.NewID("job_")
	batches := make([][]ingest.Event, 16)
	for i := range batches {
		batches[i] = make([]ingest.Event, batchSize)
	}
	n := 0
	fill := func(batch []ingest.Event) {
		for i := range batch {
			batch[i] = event(client, job, n)
			n++
		}
	}
	b.ReportAllocs()
	iters := 0
	for b.Loop() {
		batch := batches[iters%len(batches)]
		iters++
		b.StopTimer()
		fill(batch)
		b.StartTimer()
		if err := s.InsertEvents(b.Context(), batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(iters*batchSize)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkInsertEventsRedelivered inserts batches that are stored already:
// the cost of a redelivery after a consumer restart.
func BenchmarkInsertEventsRedelivered(b *testing.B) {
	const batchSize = 5000
	s := benchStore(b)
	client, job := ingest.NewID("usr_"), ingest.NewID("job_")
	batch := make([]ingest.Event, batchSize)
	for i := range batch {
		batch[i] = event(client, job, i)
	}
	if err := s.InsertEvents(b.Context(), batch); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	iters := 0
	for b.Loop() {
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
		batch[i] = event(client, job, i)
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
		q.After = page[len(page)-1].ID
		if len(page) < q.Limit || q.After == batch[total-1].ID {
			q.After = ""
		}
	}
	b.ReportMetric(float64(read)/b.Elapsed().Seconds(), "events/s")
}
