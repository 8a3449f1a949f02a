package ingest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"trawl/ingest"
	"trawl/ingest/membus"
	"trawl/storage"
	"trawl/storage/clickhouse"
	"trawl/storage/clickhouse/chtest"
)

// BenchmarkIngestClickHouse measures rows/s from the bus into ClickHouse
// through the ingester (membus → Ingester → clickhouse.Store on a private
// server): an op is one event, counted once ClickHouse returns it.
func BenchmarkIngestClickHouse(b *testing.B) {
	addr := chtest.Start(b)
	cfg := clickhouse.DefaultConfig()
	cfg.Addr = []string{addr}
	cfg.Database = chtest.NewDatabase(b, addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store, err := clickhouse.Open(ctx, cfg, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	bus := membus.New(membus.DefaultConfig(), zerolog.Nop())
	defer bus.Close()
	icfg := ingest.DefaultIngesterConfig()
	ing := ingest.NewIngester(icfg, bus, store, zerolog.Nop())
	done := make(chan error, 1)
	go func() { done <- ing.Run(ctx) }()

	jobID := ingest.NewID("job_")
	data := json.RawMessage(`{"status":"success","banner":"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3","name":"ssh","product":"OpenSSH","version":"9.2p1"}`)
	msgs := make([]ingest.Message, 0, 1000)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; {
		msgs = msgs[:0]
		for ; i < b.N && len(msgs) < cap(msgs); i++ {
			e := ingest.Event{RecordID: ingest.RecordID(jobID, "service", fmt.Sprint(i)),
				Origin: ingest.Origin{JobID: jobID, ClientID: "usr_bench", Type: "service", Module: ingest.ModuleGrabber, TS: time.Now().UnixMilli()},
				Target: ingest.Target{IP: fmt.Sprintf("198.18.%d.%d", i>>8&255, i&255), Port: 22, Protocol: "tcp"}, Result: ingest.Result{Data: data}}
			m, err := ingest.EventMessage(&e)
			if err != nil {
				b.Fatal(err)
			}
			msgs = append(msgs, m)
		}
		if err := bus.Publish(ctx, ingest.TopicEvents, msgs...); err != nil {
			b.Fatal(err)
		}
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		n, err := store.CountEvents(ctx, storage.EventQuery{ClientID: "usr_bench", JobID: jobID})
		if err != nil {
			b.Fatal(err)
		}
		if n >= int64(b.N) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("stored %d of %d", n, b.N)
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "rows/s")
	cancel()
	<-done
}
