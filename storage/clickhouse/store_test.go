package clickhouse

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"trawl/ingest"
	"trawl/storage"
	"trawl/storage/clickhouse/chtest"
	"trawl/storage/storagetest"
)

func TestMain(m *testing.M) {
	os.Exit(chtest.Main(m))
}

// testConfig is a config for a fresh database on the shared server.
func testConfig(t *testing.T) Config {
	t.Helper()
	addr := chtest.Shared(t)
	cfg := DefaultConfig()
	cfg.Addr = []string{addr}
	cfg.Database = chtest.NewDatabase(t, addr)
	return cfg
}

func openStore(t *testing.T, cfg Config) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, cfg, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatalf("Open(%+v): %v", cfg, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestEvents(t *testing.T) {
	storagetest.RunEvents(t, func(t *testing.T) storagetest.EventStore {
		return openStore(t, testConfig(t))
	})
}

func TestMigrationsIdempotent(t *testing.T) {
	cfg := testConfig(t)
	s := openStore(t, cfg)
	e := testEvent("198.18.0.1", 22)
	if err := s.InsertEvents(t.Context(), []ingest.Event{e}); err != nil {
		t.Fatal(err)
	}
	again := openStore(t, cfg) // every step is recorded: nothing to apply
	v, err := again.schemaVersion(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if v != len(migrations) {
		t.Fatalf("schema version = %d, want %d", v, len(migrations))
	}
	// and applying every step again (as two racing processes may) keeps data
	if _, _, err := again.migrate(t.Context(), migrations); err != nil {
		t.Fatalf("migrate again: %v", err)
	}
	for _, m := range migrations {
		for _, stmt := range m.stmts(again.features) {
			if err := again.conn.Exec(t.Context(), stmt); err != nil {
				t.Fatalf("step %q run twice: %v", m.name, err)
			}
		}
	}
	got, err := again.Events(t.Context(), storage.EventQuery{ClientID: e.Origin.ClientID})
	if err != nil || len(got) != 1 || got[0].ID != e.ID {
		t.Fatalf("after reopening: Events = %v, %v; want event %s", got, err, e.ID)
	}
}

func TestSchemaTooNew(t *testing.T) {
	cfg := testConfig(t)
	s := openStore(t, cfg)
	if err := s.recordMigration(t.Context(), len(migrations)+1, "from the future"); err != nil {
		t.Fatal(err)
	}
	_, err := Open(t.Context(), cfg, zerolog.Nop())
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Open on a newer schema = %v, want ErrSchemaTooNew", err)
	}
}

// TestRedeliveryBeforeMerge: copies of one record, inserted in separate
// parts (never merged: no OPTIMIZE), read as one, the first.
func TestRedeliveryBeforeMerge(t *testing.T) {
	s := openStore(t, testConfig(t))
	ctx := t.Context()
	first := testEvent("198.18.0.7", 443)
	later := first
	later.ID = ingest.NewID("evt_") // the same fact, published again
	later.Result.Data = json.RawMessage(`{"second":true}`)
	// the later copy lands first: the smallest id still wins
	for _, batch := range [][]ingest.Event{{later}, {first}, {first}, {later, first}} {
		if err := s.InsertEvents(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	var rows uint64
	if err := s.conn.QueryRow(ctx, `SELECT count() FROM events`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows < 2 {
		t.Fatalf("events holds %d rows: the copies were merged away, the test proves nothing", rows)
	}
	q := storage.EventQuery{ClientID: first.Origin.ClientID}
	got, err := s.Events(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != first.ID || string(got[0].Result.Data) != string(first.Result.Data) {
		t.Fatalf("Events = %+v, want only %s", got, first.ID)
	}
	// a cursor between the copies: the later copy stays hidden
	got, err = s.Events(ctx, storage.EventQuery{ClientID: q.ClientID, After: first.ID})
	if err != nil || len(got) != 0 {
		t.Fatalf("Events after the first copy = %v, %v; want none", got, err)
	}
	for _, q := range []storage.EventQuery{q, {ClientID: q.ClientID, JobID: first.Origin.JobID, ResultsOnly: true}} {
		if n, err := s.CountEvents(ctx, q); err != nil || n != 1 {
			t.Fatalf("CountEvents(%+v) = %d, %v; want 1", q, n, err)
		}
	}

	// after a merge the answer is the same
	if err := s.conn.Exec(ctx, `OPTIMIZE TABLE events FINAL`); err != nil {
		t.Fatal(err)
	}
	got, err = s.Events(ctx, q)
	if err != nil || len(got) != 1 || got[0].ID != first.ID {
		t.Fatalf("Events after merge = %v, %v; want only %s", got, err, first.ID)
	}
}

func TestInsertFailsWhenServerGone(t *testing.T) {
	srv := chtest.StartServer(t) // a server of its own, to stop
	cfg := DefaultConfig()
	cfg.Addr = []string{srv.Addr}
	cfg.DialTimeout = time.Second
	s := openStore(t, cfg)
	e := testEvent("198.18.0.9", 80)

	srv.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := s.InsertEvents(ctx, []ingest.Event{e}); err == nil {
		t.Fatal("InsertEvents with the server gone = nil, want an error")
	}
	if _, err := s.Events(ctx, storage.EventQuery{ClientID: e.Origin.ClientID}); err == nil {
		t.Fatal("Events with the server gone = nil error")
	}
	if _, err := Open(ctx, cfg, zerolog.Nop()); err == nil {
		t.Fatal("Open with the server gone = nil error")
	}
}

func TestInsertRejectsBadEvents(t *testing.T) {
	s := openStore(t, testConfig(t))
	good := testEvent("198.18.0.10", 22)
	for name, mutate := range map[string]func(e *ingest.Event){
		"no id":        func(e *ingest.Event) { e.ID = "" },
		"bad json":     func(e *ingest.Event) { e.Result.Data = json.RawMessage(`{"a":`) },
		"port too big": func(e *ingest.Event) { e.Target.Port = 70000 },
	} {
		t.Run(name, func(t *testing.T) {
			bad := testEvent("198.18.0.11", 22)
			bad.Origin.ClientID = good.Origin.ClientID
			mutate(&bad)
			if err := s.InsertEvents(t.Context(), []ingest.Event{good, bad}); err == nil {
				t.Fatal("InsertEvents = nil, want an error")
			}
		})
	}
	n, err := s.CountEvents(t.Context(), storage.EventQuery{ClientID: good.Origin.ClientID})
	if err != nil || n != 0 {
		t.Fatalf("after rejected batches CountEvents = %d, %v; want 0 (nothing of a bad batch stored)", n, err)
	}
	if _, err := s.Events(t.Context(), storage.EventQuery{}); err == nil {
		t.Fatal("Events without a client id = nil error")
	}
	if _, err := s.CountEvents(t.Context(), storage.EventQuery{}); err == nil {
		t.Fatal("CountEvents without a client id = nil error")
	}
}

func TestConfig(t *testing.T) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	var cfg Config
	cfg.RegisterFlags(fs, "ch.")
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if err := fs.Parse([]string{"-ch.addr", "a:9000, b:9001", "-ch.database", "scans", "-ch.dial-timeout", "2s"}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Addr, ",") != "a:9000,b:9001" || cfg.Database != "scans" || cfg.DialTimeout != 2*time.Second {
		t.Fatalf("parsed config = %+v", cfg)
	}

	bad := Config{Addr: []string{"nohost", ":9000", "h:"}, Database: "drop table; x", DialTimeout: 0}
	err := bad.Validate()
	if err == nil {
		t.Fatal("Validate of a bad config = nil")
	}
	for _, want := range []string{`"nohost"`, `":9000"`, `"h:"`, "database", "username", "dial-timeout"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error %q does not mention %s", err, want)
		}
	}
	if err := (&Config{Database: "x", Username: "u", DialTimeout: time.Second}).Validate(); err == nil {
		t.Error("Validate without addresses = nil")
	}
	if _, err := Open(t.Context(), bad, zerolog.Nop()); err == nil {
		t.Error("Open of a bad config = nil error")
	}
}

func TestOpenUnreachable(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Addr = []string{"127.0.0.1:1"} // nothing listens on port 1
	cfg.DialTimeout = time.Second
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := Open(ctx, cfg, zerolog.Nop()); err == nil {
		t.Fatal("Open of an unreachable server = nil error")
	}
}

func TestSchemaByServerVersion(t *testing.T) {
	old, current := featuresOf(18), featuresOf(24)
	events := func(f features) string { return strings.Join(migrations[0].stmts(f), "\n") }
	if strings.Contains(events(old), "LowCardinality") {
		t.Error("schema for 18.16 uses LowCardinality, which needs an experimental setting there")
	}
	if !strings.Contains(events(current), "LowCardinality(String)") {
		t.Error("schema for a current server does not use LowCardinality")
	}
}

// testEvent is an open-port event of a new client and job.
func testEvent(ip string, port int) ingest.Event {
	job := ingest.NewID("job_")
	return ingest.Event{
		V:        ingest.SchemaVersion,
		ID:       ingest.NewID("evt_"),
		RecordID: ingest.RecordID(job, ip, fmt.Sprint(port), ingest.ModulePortscan),
		Origin: ingest.Origin{
			JobID: job, ClientID: ingest.NewID("usr_"),
			Type: ingest.TypePort, Module: ingest.ModulePortscan, TS: time.Now().UnixMilli(),
		},
		Target: ingest.Target{IP: ip, Port: port, Protocol: "tcp"},
		Result: ingest.Result{Data: json.RawMessage(`{"ttl":64}`)},
	}
}
