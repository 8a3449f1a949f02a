package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"trawl/ingest"
	"trawl/ingest/membus"
	"trawl/storage"
	"trawl/storage/embedded"
	"trawl/stream"
)

// BenchmarkPipeline measures events/s through the one-machine pipeline:
// membus → ingester → embedded store, and membus → stream server → one
// NDJSON subscriber over HTTP. An op is one event, counted when it is both
// stored and delivered to the subscriber.
func BenchmarkPipeline(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store, err := embedded.Open(ctx, b.TempDir()+"/trawl.db", zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	bus := membus.New(membus.DefaultConfig(), zerolog.Nop())
	defer bus.Close()
	ing := ingest.NewIngester(ingest.DefaultIngesterConfig(), bus, store, zerolog.Nop())
	scfg := stream.DefaultConfig()
	scfg.Listen = "127.0.0.1:0"
	srv := stream.New(scfg, bus, store, func(string) (string, error) { return "usr_bench", nil }, zerolog.Nop())
	done := make(chan struct{}, 2)
	go func() { ing.Run(ctx); done <- struct{}{} }()
	go func() { srv.Run(ctx); done <- struct{}{} }()
	<-srv.Ready()

	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+srv.Addr()+"/v1/stream", nil)
	req.Header.Set("X-Token", "any")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	received := make(chan int, 1024)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var e struct{ ID string }
			if json.Unmarshal(sc.Bytes(), &e) == nil && e.ID != "" {
				received <- 1
			}
		}
		close(received)
	}()
	time.Sleep(50 * time.Millisecond) // the subscription is registered

	jobID := ingest.NewID("job_")
	data := json.RawMessage(`{"status":"success","banner":"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3","name":"ssh","product":"OpenSSH","version":"9.2p1"}`)
	msgs := make([]ingest.Message, 0, 256)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; {
		msgs = msgs[:0]
		for ; i < b.N && len(msgs) < cap(msgs); i++ {
			e := ingest.Event{ID: ingest.NewID("ev_"), RecordID: ingest.RecordID(jobID, "service", fmt.Sprint(i)),
				Origin: ingest.Origin{JobID: jobID, ClientID: "usr_bench", Type: "service", Module: ingest.ModuleGrabber, TS: time.Now().UnixMilli()},
				Target: ingest.Target{IP: "198.18.0.1", Port: 22, Protocol: "tcp"}, Result: ingest.Result{Data: data}}
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
	for got := 0; got < b.N; got++ {
		select {
		case <-received:
		case <-time.After(30 * time.Second):
			b.Fatalf("subscriber got %d of %d events", got, b.N)
		}
	}
	for {
		n, err := store.CountEvents(ctx, storage.EventQuery{ClientID: "usr_bench", JobID: jobID})
		if err != nil {
			b.Fatal(err)
		}
		if n >= int64(b.N) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	cancel()
	<-done
	<-done
}
