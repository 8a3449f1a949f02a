package embedded

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"trawl/ingest"
	"trawl/storage"
	"trawl/storage/storagetest"
)

func TestAnalytics(t *testing.T) {
	storagetest.RunAnalytics(t, func(t *testing.T) storagetest.AnalyticsStore { return newStore(t) })
}

func TestParsePorts(t *testing.T) {
	got, err := parsePorts("443,22,80")
	if err != nil || fmt.Sprint(got) != "[22 80 443]" {
		t.Fatalf("parsePorts = %v, %v; want [22 80 443]", got, err)
	}
	for _, bad := range []string{"", "22,", "x"} {
		if _, err := parsePorts(bad); err == nil {
			t.Errorf("parsePorts(%q) = nil error, want one", bad)
		}
	}
}

// A cancelled context fails the query instead of answering from nothing.
func TestAnalyticsCancelled(t *testing.T) {
	s := newStore(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	q := storage.AnalyticsQuery{ClientID: "usr_x"}
	if _, err := s.TopPorts(ctx, q); err == nil {
		t.Error("TopPorts with a cancelled context: nil error")
	}
	if _, err := s.TopProducts(ctx, q); err == nil {
		t.Error("TopProducts with a cancelled context: nil error")
	}
	if _, err := s.Hosts(ctx, q); err == nil {
		t.Error("Hosts with a cancelled context: nil error")
	}
	if _, err := s.IPHistory(ctx, "usr_x", "198.18.0.1", 0); err == nil {
		t.Error("IPHistory with a cancelled context: nil error")
	}
}

// analyticsBench is one client with a 100k-event job: 20k hosts × 4 open
// ports plus a service result on each host's port 22.
func analyticsBench(b *testing.B) (*Store, string, string) {
	b.Helper()
	s := benchStore(b)
	client, job := ingest.NewID("usr_"), ingest.NewID("job_")
	const hosts = 20000
	batch := make([]ingest.Event, 0, 5000)
	flush := func() {
		if err := s.InsertEvents(b.Context(), batch); err != nil {
			b.Fatal(err)
		}
		batch = batch[:0]
	}
	for h := range hosts {
		ip := fmt.Sprintf("198.18.%d.%d", h/250, h%250+1)
		for _, port := range []int{22, 80, 443, 8080} {
			batch = append(batch, ingest.Event{
				V: ingest.SchemaVersion, ID: ingest.NewID("evt_"),
				RecordID: ingest.RecordID(job, ip, fmt.Sprint(port), ingest.ModulePortscan),
				Origin:   ingest.Origin{JobID: job, ClientID: client, Type: ingest.TypePort, Module: ingest.ModulePortscan, TS: int64(h)},
				Target:   ingest.Target{IP: ip, Port: port, Protocol: "tcp"},
			})
		}
		batch = append(batch, ingest.Event{
			V: ingest.SchemaVersion, ID: ingest.NewID("evt_"),
			RecordID: ingest.RecordID(job, ip, "22", "service"),
			Origin:   ingest.Origin{JobID: job, ClientID: client, Type: "service", Module: ingest.ModuleGrabber, TS: int64(h)},
			Target:   ingest.Target{IP: ip, Port: 22, Protocol: "tcp"},
			Result:   ingest.Result{Data: json.RawMessage(fmt.Sprintf(`{"name":"ssh","product":"OpenSSH","version":"9.%d"}`, h%7))},
		})
		if len(batch) >= 4995 {
			flush()
		}
	}
	flush()
	return s, client, job
}

// BenchmarkAnalytics times each question over one 100k-event job.
func BenchmarkAnalytics(b *testing.B) {
	s, client, job := analyticsBench(b)
	q := storage.AnalyticsQuery{ClientID: client, JobID: job}
	for name, call := range map[string]func() error{
		"TopPorts":    func() error { _, err := s.TopPorts(b.Context(), q); return err },
		"TopProducts": func() error { _, err := s.TopProducts(b.Context(), q); return err },
		"Hosts":       func() error { _, err := s.Hosts(b.Context(), q); return err },
		"IPHistory":   func() error { _, err := s.IPHistory(b.Context(), client, "198.18.40.7", 0); return err },
	} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := call(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
