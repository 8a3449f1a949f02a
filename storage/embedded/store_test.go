package embedded

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"trawl/ingest"
	"trawl/storage"
	"trawl/storage/storagetest"
)

func openStore(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(t.Context(), path, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func newStore(t *testing.T) *Store {
	t.Helper()
	return openStore(t, filepath.Join(t.TempDir(), "trawl.db"))
}

func TestEvents(t *testing.T) {
	storagetest.RunEvents(t, func(t *testing.T) storagetest.EventStore { return newStore(t) })
}

func TestMeta(t *testing.T) {
	storagetest.RunMeta(t, func(t *testing.T) storagetest.MetaStore { return newStore(t) })
}

func TestOpenCreatesDirectories(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a", "b", "trawl.db")
	openStore(t, path)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database file: %v", err)
	}
	var mode string
	s := openStore(t, path)
	if err := s.read.QueryRowContext(t.Context(), `PRAGMA journal_mode`).Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if mode != "wal" {
		t.Fatalf("journal_mode = %q, want wal", mode)
	}
}

func TestOpenRejectsBadPaths(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "plain")
	if err := os.WriteFile(file, bytes.Repeat([]byte("not sqlite "), 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{
		"",
		":memory:",
		"file:trawl.db?mode=memory",
		filepath.Join(dir, "what?.db"),
		filepath.Join(file, "trawl.db"), // parent is a file
		file,                            // not a database
	} {
		s, err := Open(t.Context(), path, zerolog.Nop())
		if err == nil {
			_ = s.Close()
			t.Errorf("Open(%q) = nil error, want one", path)
		}
	}
}

func TestReopenIsNoop(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trawl.db")
	ctx := t.Context()
	s, err := Open(ctx, path, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	u := storage.User{ID: ingest.NewID("usr_"), AppID: "app", SecretHash: "h", Name: "n", Created: time.UnixMilli(1)}
	if err := s.CreateUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, path)
	if _, err := s.User(ctx, u.ID); err != nil {
		t.Fatalf("User after reopen: %v", err)
	}
	var rows, version int
	if err := s.read.QueryRowContext(ctx, `SELECT count(*), max(version) FROM schema_version`).Scan(&rows, &version); err != nil {
		t.Fatal(err)
	}
	if rows != len(migrations) || version != len(migrations) {
		t.Fatalf("schema_version has %d rows up to %d, want %d", rows, version, len(migrations))
	}
}

func TestMigrate(t *testing.T) {
	ctx := t.Context()
	db, err := sql.Open("sqlite", dsn(filepath.Join(t.TempDir(), "m.db"), false))
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { _ = db.Close() })

	v1 := []migration{{name: "a", stmts: []string{`CREATE TABLE a (x INTEGER)`, `INSERT INTO a VALUES (1)`}}}
	v2 := append(v1[:1:1], migration{name: "b", stmts: []string{`ALTER TABLE a ADD COLUMN y TEXT`}})
	broken := append(v2[:2:2], migration{name: "c", stmts: []string{`CREATE TABLE c (x)`, `NOT SQL`}})

	steps := []struct {
		list             []migration
		version, applied int
		wantErr          bool
	}{
		{v1, 1, 1, false},
		{v1, 1, 0, false}, // again: a no-op
		{v2, 2, 1, false}, // only the new step
		{v2, 2, 0, false},
		{broken, 2, 0, true}, // the failed step leaves nothing behind
		{v1, 2, 0, true},     // a build that knows less refuses
	}
	for i, st := range steps {
		version, applied, err := migrate(ctx, db, st.list)
		if (err != nil) != st.wantErr || version != st.version || applied != st.applied {
			t.Fatalf("step %d: migrate = version %d, applied %d, err %v; want version %d, applied %d, error %v",
				i, version, applied, err, st.version, st.applied, st.wantErr)
		}
	}
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM a WHERE x = 1 AND y IS NULL`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("table a after migrations: count %d, err %v; want 1 row", n, err)
	}
	if _, err := db.ExecContext(ctx, `SELECT * FROM c`); err == nil {
		t.Fatal("table c of the failed migration exists")
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trawl.db")
	ctx := t.Context()
	s, err := Open(ctx, path, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.write.ExecContext(ctx, `INSERT INTO schema_version (version, name, applied) VALUES (?, 'future', 0)`,
		len(migrations)+1); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(ctx, path, zerolog.Nop())
	if !errors.Is(err, ErrSchemaTooNew) {
		if s != nil {
			_ = s.Close()
		}
		t.Fatalf("Open of a newer schema = %v, want ErrSchemaTooNew", err)
	}
	if !strings.Contains(err.Error(), fmt.Sprint(len(migrations)+1)) {
		t.Errorf("error %q does not name the database's version", err)
	}
}

func TestInsertEventsRejectsBadBatch(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()
	client, job := ingest.NewID("usr_"), ingest.NewID("job_")
	good := event(client, job, 1)
	noID := event(client, job, 2)
	noID.ID = ""
	badData := event(client, job, 3)
	badData.Result.Data = json.RawMessage(`{"open":`)

	for name, bad := range map[string]ingest.Event{"no id": noID, "invalid data": badData} {
		if err := s.InsertEvents(ctx, []ingest.Event{good, bad}); err == nil {
			t.Errorf("%s: InsertEvents = nil error, want one", name)
		}
	}
	if n, err := s.CountEvents(ctx, storage.EventQuery{ClientID: client}); err != nil || n != 0 {
		t.Fatalf("CountEvents after rejected batches = %d, %v; want 0: a batch is all or nothing", n, err)
	}
}

func TestInsertEventsCanceled(t *testing.T) {
	s := newStore(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	client := ingest.NewID("usr_")
	if err := s.InsertEvents(ctx, []ingest.Event{event(client, "job", 1)}); err == nil {
		t.Fatal("InsertEvents with a canceled context = nil error")
	}
	if _, err := s.Events(ctx, storage.EventQuery{ClientID: client}); err == nil {
		t.Fatal("Events with a canceled context = nil error")
	}
	if n, err := s.CountEvents(t.Context(), storage.EventQuery{ClientID: client}); err != nil || n != 0 {
		t.Fatalf("CountEvents = %d, %v; want 0", n, err)
	}
}

func TestEventLimitCapped(t *testing.T) {
	s := newStore(t)
	client := ingest.NewID("usr_")
	// sqlite makes the rows itself: 10k InsertEvents rows are slow under -race
	_, err := s.write.ExecContext(t.Context(), `WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
		INSERT INTO events (id, record_id, job_id, client_id, type, module, ts, ip, port, envelope)
		SELECT printf('evt_%026d', i), printf('rec_%d', i), 'job', ?, 'port', 'portscan', 0, '', 0,
			json_object('id', printf('evt_%026d', i)) FROM n`, maxEventLimit+5, client)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Events(t.Context(), storage.EventQuery{ClientID: client, Limit: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != maxEventLimit {
		t.Fatalf("Events(limit 1<<30) = %d events, want the cap %d", len(got), maxEventLimit)
	}
	if got[0].ID != fmt.Sprintf("evt_%026d", 1) || got[len(got)-1].ID != fmt.Sprintf("evt_%026d", maxEventLimit) {
		t.Fatalf("capped page runs %s..%s", got[0].ID, got[len(got)-1].ID)
	}
}

// Dedupe is per job (the index is (job_id, record_id)): one record id in two
// jobs is two facts.
func TestDedupeScopeIsTheJob(t *testing.T) {
	s := newStore(t)
	client := ingest.NewID("usr_")
	a, b := event(client, "job-a", 1), event(client, "job-b", 1)
	a.RecordID, b.RecordID = "rec_same", "rec_same"
	again := event(client, "job-a", 2)
	again.RecordID = "rec_same"
	if err := s.InsertEvents(t.Context(), []ingest.Event{a, b, again}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Events(t.Context(), storage.EventQuery{ClientID: client})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != a.ID || got[1].ID != b.ID {
		t.Fatalf("Events = %v, want %s and %s", eventIDs(got), a.ID, b.ID)
	}
}

// Batches of any size split into chunks: full ones, a short tail, and the
// dedupe works across chunk boundaries.
func TestInsertEventsChunks(t *testing.T) {
	s := newStore(t)
	client := ingest.NewID("usr_")
	for _, n := range []int{1, chunkRows - 1, chunkRows, chunkRows + 1, 2*chunkRows + 7} {
		job := ingest.NewID("job_")
		batch := make([]ingest.Event, n)
		for i := range batch {
			batch[i] = event(client, job, i)
		}
		// the last event repeats the first fact, in another chunk when n > chunkRows
		dup := event(client, job, 0)
		dup.RecordID = batch[0].RecordID
		batch = append(batch, dup)
		if err := s.InsertEvents(t.Context(), batch); err != nil {
			t.Fatalf("batch of %d: %v", len(batch), err)
		}
		got, err := s.CountEvents(t.Context(), storage.EventQuery{ClientID: client, JobID: job})
		if err != nil || got != int64(n) {
			t.Fatalf("batch of %d: CountEvents = %d, %v; want %d", len(batch), got, err, n)
		}
	}
}

// The checkpointer's PASSIVE checkpoints run on a query_only connection.
func TestCheckpoint(t *testing.T) {
	s := newStore(t)
	batch := make([]ingest.Event, 300)
	client := ingest.NewID("usr_")
	for i := range batch {
		batch[i] = event(client, "job", i)
	}
	// stop the background loop so the checkpoint below finds the frames
	s.stopCheckpoints()
	s.checkpoints.Wait()
	if err := s.InsertEvents(t.Context(), batch); err != nil {
		t.Fatal(err)
	}
	copied, err := s.checkpoint(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if copied == 0 {
		t.Fatal("checkpoint copied no frames")
	}
}

func eventIDs(events []ingest.Event) []string {
	ids := make([]string, len(events))
	for i := range events {
		ids[i] = events[i].ID
	}
	return ids
}

func TestJobLimits(t *testing.T) {
	for _, c := range []struct{ in, def, max, want int }{
		{0, 100, 1000, 100}, {-3, 100, 1000, 100}, {7, 100, 1000, 7}, {1000, 100, 1000, 1000}, {5000, 100, 1000, 1000},
	} {
		if got := clampLimit(c.in, c.def, c.max); got != c.want {
			t.Errorf("clampLimit(%d, %d, %d) = %d, want %d", c.in, c.def, c.max, got, c.want)
		}
	}
}

// The JSON columns are TEXT, so analytics queries can use sqlite's json functions.
func TestEventJSONColumns(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()
	e := event(ingest.NewID("usr_"), ingest.NewID("job_"), 5)
	if err := s.InsertEvents(ctx, []ingest.Event{e}); err != nil {
		t.Fatal(err)
	}
	var kind, typ string
	var port int
	err := s.read.QueryRowContext(ctx, `SELECT json_extract(data, '$.service'), json_extract(envelope, '$.target.port'),
		typeof(envelope) FROM events WHERE id = ?`, e.ID).Scan(&kind, &port, &typ)
	if err != nil {
		t.Fatal(err)
	}
	if kind != "ssh" || port != e.Target.Port || typ != "text" {
		t.Fatalf("json columns: service %q, port %d, type %s; want ssh, %d, text", kind, port, typ, e.Target.Port)
	}
}

func TestQueryPlansUseIndexes(t *testing.T) {
	s := newStore(t)
	for _, c := range []struct {
		q     storage.EventQuery
		index string
	}{
		{storage.EventQuery{ClientID: "c"}, "events_client_id"},
		{storage.EventQuery{ClientID: "c", After: "x", ResultsOnly: true}, "events_client_id"},
		{storage.EventQuery{ClientID: "c", JobID: "j", After: "x"}, "events_job_id"},
	} {
		where, args, err := eventFilter(c.q)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := s.read.QueryContext(t.Context(), `EXPLAIN QUERY PLAN SELECT envelope FROM events WHERE `+where+
			` ORDER BY id LIMIT 10`, args...)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		_ = rows.Close()
		joined := strings.Join(plan, "; ")
		if !strings.Contains(joined, c.index) || strings.Contains(joined, "TEMP B-TREE") {
			t.Errorf("plan for %+v = %q, want a walk of %s without a sort", c.q, joined, c.index)
		}
	}
}

// Writers and readers of every kind at once: the single writer connection
// queues them, so none sees SQLITE_BUSY.
func TestConcurrentMixedUse(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()
	client := ingest.NewID("usr_")
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 4 {
		wg.Go(func() {
			for i := range 20 {
				batch := []ingest.Event{event(client, "job", w*1000+i), event(client, "job", w*1000+i+500)}
				if err := s.InsertEvents(ctx, batch); err != nil {
					errs <- err
					return
				}
			}
		})
		wg.Go(func() {
			for i := range 10 {
				u := storage.User{ID: ingest.NewID("usr_"), AppID: ingest.NewID("app_"), Created: time.Now()}
				if err := s.CreateUser(ctx, u); err != nil {
					errs <- err
					return
				}
				j := storage.Job{ID: ingest.NewID("job_"), ClientID: u.ID, State: ingest.StateQueued}
				if err := s.CreateJob(ctx, j); err != nil {
					errs <- err
					return
				}
				j.State, j.Progress = ingest.StateRunning, float64(i)/10
				if err := s.UpdateJob(ctx, j); err != nil {
					errs <- err
					return
				}
				if _, err := s.Jobs(ctx, storage.JobQuery{ClientID: u.ID}); err != nil {
					errs <- err
					return
				}
				if _, err := s.Events(ctx, storage.EventQuery{ClientID: client, JobID: "job"}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	users, err := s.Users(ctx)
	if err != nil || len(users) != 40 {
		t.Fatalf("Users = %d, %v; want 40", len(users), err)
	}
	if n, err := s.CountEvents(ctx, storage.EventQuery{ClientID: client}); err != nil || n != 160 {
		t.Fatalf("CountEvents = %d, %v; want 160", n, err)
	}
}

// Two stores on one file, as two processes would hold it: each sees the
// other's writes, and writing through both at once works.
func TestTwoHandlesSameFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trawl.db")
	a, b := openStore(t, path), openStore(t, path)
	ctx := t.Context()
	client := ingest.NewID("usr_")

	var wg sync.WaitGroup
	var errA, errB error
	wg.Go(func() {
		for i := range 50 {
			if errA = a.InsertEvents(ctx, []ingest.Event{event(client, "job", i)}); errA != nil {
				return
			}
		}
	})
	wg.Go(func() {
		for i := range 50 {
			u := storage.User{ID: ingest.NewID("usr_"), AppID: fmt.Sprintf("app-%d", i)}
			if errB = b.CreateUser(ctx, u); errB != nil {
				return
			}
		}
	})
	wg.Wait()
	if errA != nil || errB != nil {
		t.Fatalf("concurrent writes through two handles: %v, %v", errA, errB)
	}
	if n, err := b.CountEvents(ctx, storage.EventQuery{ClientID: client}); err != nil || n != 50 {
		t.Fatalf("other handle counts %d events, %v; want 50", n, err)
	}
	users, err := a.Users(ctx)
	if err != nil || len(users) != 50 {
		t.Fatalf("other handle lists %d users, %v; want 50", len(users), err)
	}
	if err := a.CreateUser(ctx, storage.User{ID: ingest.NewID("usr_"), AppID: "app-7"}); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("CreateUser of an app id the other handle wrote = %v, want ErrConflict", err)
	}
}

const helperEnv = "TRAWL_EMBEDDED_HELPER_DB"

// TestSecondProcess runs `trawl user add`'s part in a child process (this
// test binary) while this process keeps writing events to the same file.
func TestSecondProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trawl.db")
	s := openStore(t, path)
	ctx, cancel := context.WithCancel(t.Context())
	client := ingest.NewID("usr_")

	var wg sync.WaitGroup
	var insertErr error
	inserted := 0
	wg.Go(func() {
		for ctx.Err() == nil {
			batch := make([]ingest.Event, 50)
			for i := range batch {
				batch[i] = event(client, "job", inserted+i)
			}
			if err := s.InsertEvents(ctx, batch); err != nil {
				if ctx.Err() == nil {
					insertErr = err
				}
				return
			}
			inserted += len(batch)
			time.Sleep(2 * time.Millisecond)
		}
	})

	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+path)
	out, err := cmd.CombinedOutput()
	cancel()
	wg.Wait()
	if err != nil {
		t.Fatalf("second process: %v\n%s", err, out)
	}
	if insertErr != nil {
		t.Fatalf("inserts while the second process wrote: %v", insertErr)
	}
	u, err := s.UserByAppID(t.Context(), "app-from-child")
	if err != nil {
		t.Fatalf("user the second process created: %v", err)
	}
	if u.Name != "child" {
		t.Fatalf("user = %+v", u)
	}
	if n, err := s.CountEvents(t.Context(), storage.EventQuery{ClientID: client}); err != nil || n != int64(inserted) {
		t.Fatalf("CountEvents = %d, %v; want %d", n, err, inserted)
	}
}

// TestHelperProcess is the child of TestSecondProcess; on its own it does nothing.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv(helperEnv)
	if path == "" {
		t.Skip("helper of TestSecondProcess")
	}
	s := openStore(t, path)
	u := storage.User{ID: ingest.NewID("usr_"), AppID: "app-from-child", Name: "child", Created: time.Now()}
	for i := range 20 {
		u.ID = ingest.NewID("usr_")
		u.AppID = fmt.Sprintf("app-from-child-%d", i)
		if err := s.CreateUser(t.Context(), u); err != nil {
			t.Fatal(err)
		}
	}
	u.ID, u.AppID = ingest.NewID("usr_"), "app-from-child"
	if err := s.CreateUser(t.Context(), u); err != nil {
		t.Fatal(err)
	}
}

func event(client, job string, i int) ingest.Event {
	ip := fmt.Sprintf("198.18.%d.%d", i/250%256, i%250+1)
	return ingest.Event{
		V:        ingest.SchemaVersion,
		ID:       ingest.NewID("evt_"),
		RecordID: ingest.RecordID(job, strconv.Itoa(i), "ssh"),
		Origin: ingest.Origin{
			JobID: job, ClientID: client, Type: "ssh", Module: ingest.ModuleGrabber,
			TS: time.Now().UnixMilli(), IP: "198.18.255.254", Port: 40000 + i%20000,
		},
		Target: ingest.Target{IP: ip, Port: 22, Protocol: "tcp"},
		Result: ingest.Result{Data: json.RawMessage(`{"service":"ssh","banner":"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5",` +
			`"kex":["curve25519-sha256","sntrup761x25519-sha512@openssh.com"],"host_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG"}`)},
	}
}
