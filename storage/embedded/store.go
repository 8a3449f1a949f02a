// Package embedded is the default store: one sqlite file (modernc.org/sqlite,
// pure Go) holding users, jobs and events. `trawl all` and the API node use
// it; a second process (`trawl user add`) may open the same file at once.
package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// busyTimeout is how long a statement waits for another connection's (or
// process's) lock before it fails with SQLITE_BUSY.
const busyTimeout = 10 * time.Second

// Store is an embedded sqlite store. It is safe for concurrent use.
//
// sqlite allows one writer at a time, so writes go through a pool of exactly
// one connection: our own goroutines queue in database/sql instead of
// spinning on SQLITE_BUSY, and only another process ever waits on the file
// lock (bounded by busy_timeout). Reads use their own pool; in WAL mode they
// never block the writer nor wait for it.
type Store struct {
	log         zerolog.Logger
	write       *sql.DB
	read        *sql.DB
	insertChunk *sql.Stmt // insertEventsSQL(chunkRows)

	// Checkpoints (copying the WAL back into the database file) run in the
	// background, after each event batch, instead of inside the commit
	// that crosses wal_autocheckpoint: ingest gets about a fifth faster.
	commits         chan struct{} // cap 1: an event batch committed
	stopCheckpoints context.CancelFunc
	checkpoints     sync.WaitGroup
}

// Open opens (creating if needed) the database file at path and brings its
// schema up to date.
func Open(ctx context.Context, path string, log zerolog.Logger) (*Store, error) {
	if err := checkPath(path); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("cannot create store directory: %w", err)
	}
	write, err := sql.Open("sqlite", dsn(path, false))
	if err != nil {
		return nil, fmt.Errorf("cannot open store %s: %w", path, err)
	}
	write.SetMaxOpenConns(1)
	write.SetMaxIdleConns(1)
	write.SetConnMaxIdleTime(0)
	write.SetConnMaxLifetime(0)

	s := &Store{log: log, write: write}
	version, applied, err := migrate(ctx, write, migrations)
	if err != nil {
		_ = write.Close()
		return nil, fmt.Errorf("cannot open store %s: %w", path, err)
	}

	readers := max(4, runtime.GOMAXPROCS(0))
	s.read, err = sql.Open("sqlite", dsn(path, true))
	if err != nil {
		_ = write.Close()
		return nil, fmt.Errorf("cannot open store %s: %w", path, err)
	}
	s.read.SetMaxOpenConns(readers)
	s.read.SetMaxIdleConns(readers)

	s.insertChunk, err = write.PrepareContext(ctx, insertEventsSQL(chunkRows))
	if err != nil {
		_ = s.read.Close()
		_ = write.Close()
		return nil, fmt.Errorf("cannot prepare event insert: %w", err)
	}
	s.commits = make(chan struct{}, 1)
	// ctx bounds opening, not the store's life: Close stops the loop.
	var loopCtx context.Context
	loopCtx, s.stopCheckpoints = context.WithCancel(context.WithoutCancel(ctx))
	s.checkpoints.Go(func() { s.checkpointLoop(loopCtx) })
	log.Info().Str("path", path).Int("schema_version", version).Int("migrations_applied", applied).Msg("store open")
	return s, nil
}

// checkPath refuses names the driver would treat as something other than a
// plain file: the reader and writer pools must share one on-disk database.
func checkPath(path string) error {
	switch {
	case path == "":
		return errors.New("cannot open store: empty path")
	case strings.HasPrefix(path, ":memory:"), strings.HasPrefix(path, "file:"):
		return fmt.Errorf("cannot open store %q: need a file path, not a sqlite URI", path)
	case strings.ContainsRune(path, '?'):
		return fmt.Errorf("cannot open store %q: path must not contain '?'", path)
	}
	return nil
}

// dsn builds the driver's data source name. Pragmas are per connection, so
// they go in the DSN and every pooled connection gets them.
func dsn(path string, readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "foreign_keys(1)")
	// WAL + NORMAL cannot corrupt the file and survives a process crash; only
	// an OS crash or power loss may drop the last commits, and on one machine
	// the in-process bus loses its unacked messages then too. It saves an
	// fsync per commit.
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "temp_store(MEMORY)")
	if readOnly {
		q.Add("_pragma", "query_only(1)")
		q.Add("_pragma", "cache_size(-8192)") // 8 MB
	} else {
		// The writer keeps the indexes' hot pages: 64 MB.
		q.Add("_pragma", "cache_size(-65536)")
		q.Add("_pragma", "journal_mode(WAL)")
		// Commits checkpoint only when the background checkpointer falls
		// this far behind (40 MB); the WAL file is cut back to 64 MB after.
		q.Add("_pragma", "wal_autocheckpoint(10000)")
		q.Add("_pragma", "journal_size_limit(67108864)")
		// Take the write lock at BEGIN: a deferred transaction that reads
		// and then writes can fail with SQLITE_BUSY without waiting when
		// another process writes in between.
		q.Set("_txlock", "immediate")
	}
	return path + "?" + q.Encode()
}

// checkpointLoop checkpoints after event batches until ctx ends. A PASSIVE
// checkpoint takes no lock that writers or readers wait for; it copies what
// no reader still needs, and the writer then starts the WAL over.
func (s *Store) checkpointLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.commits:
		}
		if _, err := s.checkpoint(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn().Err(err).Msg("wal checkpoint failed")
		}
	}
}

// checkpoint runs a PASSIVE checkpoint and returns how many WAL frames it
// copied into the database file.
func (s *Store) checkpoint(ctx context.Context) (copied int, err error) {
	var busy, frames int
	err = s.read.QueryRowContext(ctx, `PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &frames, &copied)
	if err != nil {
		return 0, fmt.Errorf("cannot checkpoint: %w", err)
	}
	return copied, nil
}

// wantCheckpoint wakes the checkpointer without waiting for it.
func (s *Store) wantCheckpoint() {
	select {
	case s.commits <- struct{}{}:
	default:
	}
}

// Close closes the store. Calls in flight finish first.
func (s *Store) Close() error {
	s.stopCheckpoints()
	s.checkpoints.Wait()
	return errors.Join(s.insertChunk.Close(), s.read.Close(), s.write.Close())
}

// isConstraint reports whether err is a uniqueness violation.
func isConstraint(err error) bool {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	code := se.Code()
	return code == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || code == sqlite3.SQLITE_CONSTRAINT_UNIQUE
}

// Times are stored as unix milliseconds; the zero time is 0.
func toMS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMS(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

// clampLimit applies a default to non-positive limits and caps the rest.
func clampLimit(limit, def, maxLimit int) int {
	if limit <= 0 {
		return def
	}
	return min(limit, maxLimit)
}
