package embedded

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"trawl/ingest"
	"trawl/storage"
)

// Events page limits.
const (
	defaultEventLimit = 1000
	maxEventLimit     = 10000
)

// eventColumns are bound per row, in this order, by appendEventArgs.
const eventColumns = `id, record_id, job_id, client_id, type, module, ts, ip, port, envelope, data`

const eventParams = 11

// chunkRows is how many events one INSERT statement carries. Statement
// overhead (database/sql, the driver, and the statement journal sqlite keeps
// for every page a multi-row statement touches) is paid once per chunk.
const chunkRows = 256

// insertEventsSQL is the INSERT of rows events. ON CONFLICT DO NOTHING without
// a target covers both the (job_id, record_id) and the id uniqueness: a
// redelivered fact is skipped and the first write wins, also within one
// statement. The JSON columns are bound as bytes (no copy into a Go string)
// and cast to TEXT, so sqlite's json functions read them as JSON, not JSONB.
func insertEventsSQL(rows int) string {
	const row = `(?, ?, ?, ?, ?, ?, ?, ?, ?, CAST(? AS TEXT), CAST(? AS TEXT))`
	var sb strings.Builder
	sb.Grow(80 + rows*(len(row)+1))
	sb.WriteString(`INSERT INTO events (` + eventColumns + `) VALUES `)
	for i := range rows {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(row)
	}
	sb.WriteString(` ON CONFLICT DO NOTHING`)
	return sb.String()
}

// InsertEvents stores events in one transaction. An event whose RecordID (or,
// when that is empty, ID) is stored already for its job is skipped. Every
// event is checked before anything is written, so a bad event fails the
// whole batch.
func (s *Store) InsertEvents(ctx context.Context, events []ingest.Event) error {
	if len(events) == 0 {
		return nil
	}
	for i := range events {
		if err := checkEvent(&events[i]); err != nil {
			return fmt.Errorf("cannot insert events: %w", err)
		}
	}

	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("cannot insert events: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	full := tx.StmtContext(ctx, s.insertChunk)

	var (
		arena bytes.Buffer // the chunk's envelopes, back to back
		enc   = json.NewEncoder(&arena)
		ends  = make([]int, 0, chunkRows)
		args  = make([]any, 0, chunkRows*eventParams)
	)
	enc.SetEscapeHTML(false)
	for start := 0; start < len(events); start += chunkRows {
		chunk := events[start:min(start+chunkRows, len(events))]
		arena.Reset()
		ends = ends[:0]
		for i := range chunk {
			if err := encodeEnvelope(enc, &chunk[i]); err != nil {
				return fmt.Errorf("cannot insert event %s: %w", chunk[i].ID, err)
			}
			ends = append(ends, arena.Len())
		}
		// the arena no longer grows: its slices stay valid for the Exec
		envelopes := arena.Bytes()
		args = args[:0]
		prev := 0
		for i := range chunk {
			args = appendEventArgs(args, &chunk[i], envelopes[prev:ends[i]])
			prev = ends[i]
		}
		if err := execChunk(ctx, tx, full, len(chunk), args); err != nil {
			return fmt.Errorf("cannot insert events: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("cannot insert events: %w", err)
	}
	s.wantCheckpoint()
	return nil
}

// execChunk runs the insert of rows events: the prepared full-chunk statement,
// or for a batch's last, shorter chunk one made for its size.
func execChunk(ctx context.Context, tx *sql.Tx, full *sql.Stmt, rows int, args []any) error {
	if rows == chunkRows {
		_, err := full.ExecContext(ctx, args...)
		return err
	}
	stmt, err := tx.PrepareContext(ctx, insertEventsSQL(rows))
	if err != nil {
		return err
	}
	defer stmt.Close()
	_, err = stmt.ExecContext(ctx, args...)
	return err
}

func appendEventArgs(args []any, e *ingest.Event, envelope []byte) []any {
	key := e.RecordID
	if key == "" {
		key = e.ID
	}
	return append(args, e.ID, key, e.Origin.JobID, e.Origin.ClientID, e.Origin.Type, e.Origin.Module,
		e.Origin.TS, e.Target.IP, e.Target.Port, envelope, nullBytes(e.Result.Data))
}

func checkEvent(e *ingest.Event) error {
	if e.ID == "" {
		return errors.New("event without id")
	}
	if len(e.Result.Data) > 0 && !json.Valid(e.Result.Data) {
		return fmt.Errorf("event %s: result.data is not valid JSON", e.ID)
	}
	return nil
}

// encodeEnvelope writes e without its result.data, which is stored verbatim
// in its own column.
func encodeEnvelope(enc *json.Encoder, e *ingest.Event) error {
	env := *e
	env.Result.Data = nil
	return enc.Encode(&env)
}

// nullBytes binds absent data as NULL so it reads back as nil, not empty.
func nullBytes(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// Events returns q.ClientID's events in id order after the q.After cursor.
func (s *Store) Events(ctx context.Context, q storage.EventQuery) ([]ingest.Event, error) {
	where, args, err := eventFilter(q)
	if err != nil {
		return nil, fmt.Errorf("cannot query events: %w", err)
	}
	if q.After != "" {
		where += ` AND id > ?`
		args = append(args, q.After)
	}
	args = append(args, clampLimit(q.Limit, defaultEventLimit, maxEventLimit))

	rows, err := s.read.QueryContext(ctx, `SELECT envelope, data FROM events WHERE `+where+` ORDER BY id LIMIT ?`, args...)
	if err != nil {
		return nil, fmt.Errorf("cannot query events: %w", err)
	}
	defer rows.Close()
	var (
		events         []ingest.Event
		envelope, data []byte
	)
	for rows.Next() {
		if err := rows.Scan(&envelope, &data); err != nil {
			return nil, fmt.Errorf("cannot query events: %w", err)
		}
		var e ingest.Event
		if err := json.Unmarshal(envelope, &e); err != nil {
			return nil, fmt.Errorf("cannot decode stored event: %w", err)
		}
		// Scan into []byte copies, so data is the event's own.
		e.Result.Data = data
		events = append(events, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot query events: %w", err)
	}
	return events, nil
}

// CountEvents counts the events q selects, ignoring After and Limit.
func (s *Store) CountEvents(ctx context.Context, q storage.EventQuery) (int64, error) {
	where, args, err := eventFilter(q)
	if err != nil {
		return 0, fmt.Errorf("cannot count events: %w", err)
	}
	var n int64
	if err := s.read.QueryRowContext(ctx, `SELECT count(*) FROM events WHERE `+where, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("cannot count events: %w", err)
	}
	return n, nil
}

// eventFilter builds the WHERE clause shared by Events and CountEvents.
func eventFilter(q storage.EventQuery) (string, []any, error) {
	if q.ClientID == "" {
		return "", nil, errors.New("client id is required")
	}
	var sb strings.Builder
	args := make([]any, 0, 5)
	if q.JobID != "" {
		// The unary + keeps sqlite off the client index: one job's events
		// are far fewer than one client's, so (job_id, id) is the index to
		// walk, and client_id is only checked on the rows it yields.
		sb.WriteString(`job_id = ? AND +client_id = ?`)
		args = append(args, q.JobID, q.ClientID)
	} else {
		sb.WriteString(`client_id = ?`)
		args = append(args, q.ClientID)
	}
	if q.ResultsOnly {
		sb.WriteString(` AND type != ?`)
		args = append(args, ingest.TypeJobStatus)
	}
	return sb.String(), args, nil
}
