package clickhouse

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"

	"trawl/ingest"
	"trawl/storage"
)

// Events page limits, as in storage/embedded.
const (
	defaultEventLimit = 1000
	maxEventLimit     = 10000
)

// insertEvents names its columns: clickhouse-go batches only such INSERTs.
// The order is the one appendColumns fills.
const insertEvents = `INSERT INTO events (client_id, job_id, id, record_id, type, module, ts, ip, port, envelope, data)`

// eventColumns holds one batch column by column: the driver appends a whole
// column at once, far cheaper than a call per row.
type eventColumns struct {
	clientID, jobID, id, recordID, typ, module []string
	ts                                         []int64
	ip                                         []string
	port                                       []uint16
	envelope, data                             [][]byte
}

func newEventColumns(n int) *eventColumns {
	return &eventColumns{
		clientID: make([]string, 0, n), jobID: make([]string, 0, n), id: make([]string, 0, n),
		recordID: make([]string, 0, n), typ: make([]string, 0, n), module: make([]string, 0, n),
		ts: make([]int64, 0, n), ip: make([]string, 0, n), port: make([]uint16, 0, n),
		envelope: make([][]byte, 0, n), data: make([][]byte, 0, n),
	}
}

func (c *eventColumns) add(e *ingest.Event, envelope []byte) {
	key := e.RecordID
	if key == "" {
		key = e.ID // as embedded: an event without a record id is its own fact
	}
	c.clientID = append(c.clientID, e.Origin.ClientID)
	c.jobID = append(c.jobID, e.Origin.JobID)
	c.id = append(c.id, e.ID)
	c.recordID = append(c.recordID, key)
	c.typ = append(c.typ, e.Origin.Type)
	c.module = append(c.module, e.Origin.Module)
	c.ts = append(c.ts, e.Origin.TS)
	c.ip = append(c.ip, e.Target.IP)
	c.port = append(c.port, uint16(e.Target.Port))
	c.envelope = append(c.envelope, envelope)
	c.data = append(c.data, e.Result.Data)
}

func (c *eventColumns) all() []any {
	return []any{c.clientID, c.jobID, c.id, c.recordID, c.typ, c.module, c.ts, c.ip, c.port, c.envelope, c.data}
}

// InsertEvents stores events in one INSERT. An event whose RecordID (or,
// when that is empty, ID) is stored already for its job stays stored as it
// was: the copy is written but never read. Every event is checked before
// anything is sent, so a bad event fails the whole batch; an error means
// the batch may or may not be stored, and inserting it again is safe.
func (s *Store) InsertEvents(ctx context.Context, events []ingest.Event) error {
	if len(events) == 0 {
		return nil
	}
	for i := range events {
		if err := checkEvent(&events[i]); err != nil {
			return fmt.Errorf("cannot insert events: %w", err)
		}
	}

	// The envelopes, back to back in one arena; slices are taken once it
	// no longer grows.
	var arena bytes.Buffer
	arena.Grow(len(events) * 256)
	enc := json.NewEncoder(&arena)
	enc.SetEscapeHTML(false)
	ends := make([]int, len(events))
	for i := range events {
		if err := encodeEnvelope(enc, &events[i]); err != nil {
			return fmt.Errorf("cannot insert event %s: %w", events[i].ID, err)
		}
		ends[i] = arena.Len()
	}
	envelopes := arena.Bytes()
	cols := newEventColumns(len(events))
	prev := 0
	for i := range events {
		cols.add(&events[i], envelopes[prev:ends[i]])
		prev = ends[i]
	}

	batch, err := s.conn.PrepareBatch(ctx, insertEvents)
	if err != nil {
		return fmt.Errorf("cannot insert events: %w", err)
	}
	for i, col := range cols.all() {
		if err := batch.Column(i).Append(col); err != nil {
			_ = batch.Abort()
			return fmt.Errorf("cannot insert events: column %d: %w", i, err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("cannot insert events: %w", err)
	}
	return nil
}

func checkEvent(e *ingest.Event) error {
	switch {
	case e.ID == "":
		return errors.New("event without id")
	case e.Target.Port < 0 || e.Target.Port > math.MaxUint16:
		return fmt.Errorf("event %s: target port %d out of range", e.ID, e.Target.Port)
	case len(e.Result.Data) > 0 && !json.Valid(e.Result.Data):
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

// Events returns q.ClientID's events in id order after the q.After cursor,
// the first stored copy of each record.
//
// A record's winner is its smallest id; the winners are found over all the
// client's (or job's) rows, since a copy before the cursor hides the later
// ones after it. Exact copies (one id twice, before a merge) are cut by
// LIMIT 1 BY id. No FINAL: it merges at read time and is slow on 18.16.
func (s *Store) Events(ctx context.Context, q storage.EventQuery) ([]ingest.Event, error) {
	where, args, err := eventFilter(q)
	if err != nil {
		return nil, fmt.Errorf("cannot query events: %w", err)
	}
	query := `SELECT envelope, data FROM events
		WHERE ` + where + ` AND id > ?` + typeFilter(q) + `
		AND (job_id, record_id, id) IN (
			SELECT job_id, record_id, min(id) FROM events
			WHERE ` + where + `
			GROUP BY job_id, record_id
			HAVING min(id) > ?)
		ORDER BY id
		LIMIT 1 BY id
		LIMIT ?`
	all := make([]any, 0, 2*len(args)+3)
	all = append(all, args...)
	all = append(all, q.After)
	all = append(all, args...)
	all = append(all, q.After, clampLimit(q.Limit))

	rows, err := s.conn.Query(ctx, query, all...)
	if err != nil {
		return nil, fmt.Errorf("cannot query events: %w", err)
	}
	defer rows.Close()
	var events []ingest.Event
	for rows.Next() {
		var envelope, data []byte
		if err := rows.Scan(&envelope, &data); err != nil {
			return nil, fmt.Errorf("cannot query events: %w", err)
		}
		var e ingest.Event
		if err := json.Unmarshal(envelope, &e); err != nil {
			return nil, fmt.Errorf("cannot decode stored event: %w", err)
		}
		// the envelope's "data": null decodes to "null": replace it
		e.Result.Data = nil
		if len(data) > 0 {
			e.Result.Data = data // the driver made a copy for this row
		}
		events = append(events, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot query events: %w", err)
	}
	return events, nil
}

// CountEvents counts the records q selects, ignoring After and Limit. A
// record counts once, with the type of its first copy.
func (s *Store) CountEvents(ctx context.Context, q storage.EventQuery) (int64, error) {
	where, args, err := eventFilter(q)
	if err != nil {
		return 0, fmt.Errorf("cannot count events: %w", err)
	}
	var query string
	if q.ResultsOnly {
		query = `SELECT count() FROM (
			SELECT argMin(type, id) AS first_type FROM events
			WHERE ` + where + `
			GROUP BY job_id, record_id)
		WHERE first_type != ?`
		args = append(args, ingest.TypeJobStatus)
	} else {
		query = `SELECT uniqExact(job_id, record_id) FROM events WHERE ` + where
	}
	var n uint64
	if err := s.conn.QueryRow(ctx, query, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("cannot count events: %w", err)
	}
	return int64(n), nil
}

// eventFilter builds the condition shared by Events and CountEvents. It is
// on the sorting key's prefix, so the primary index narrows every read to
// the client's (or the job's) rows.
func eventFilter(q storage.EventQuery) (string, []any, error) {
	if q.ClientID == "" {
		return "", nil, errors.New("client id is required")
	}
	var sb strings.Builder
	args := make([]any, 0, 2)
	sb.WriteString(`client_id = ?`)
	args = append(args, q.ClientID)
	if q.JobID != "" {
		sb.WriteString(` AND job_id = ?`)
		args = append(args, q.JobID)
	}
	return sb.String(), args, nil
}

// typeFilter leaves job_status events out of a ResultsOnly read. It applies
// to the winning copy's row, so it stays outside the winners' subquery.
func typeFilter(q storage.EventQuery) string {
	if !q.ResultsOnly {
		return ""
	}
	return ` AND type != '` + ingest.TypeJobStatus + `'`
}

// clampLimit applies the default to non-positive limits and caps the rest.
func clampLimit(limit int) int {
	if limit <= 0 {
		return defaultEventLimit
	}
	return min(limit, maxEventLimit)
}
