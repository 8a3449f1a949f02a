package clickhouse

import (
	"context"
	"errors"
	"fmt"
)

// ErrSchemaTooNew means the database was migrated by a newer build than this
// one: running on it could misread or damage data the newer schema added.
var ErrSchemaTooNew = errors.New("database schema is newer than this build")

// migration is one schema step; migrations[i] brings the schema to version
// i+1. Append only: a released step is never edited, a fix is a new step.
//
// ClickHouse has no transactions, so two processes opening one new database
// at once may both apply a step: every statement must be safe to run twice
// (IF NOT EXISTS), and the version read is the max of the recorded ones.
type migration struct {
	name  string
	stmts func(f features) []string
}

// partitionByMonth keeps a month of events in one partition: old months are
// dropped or moved whole, and a replacing merge never crosses a month (the
// copies of one event carry the same ts).
const partitionByMonth = `toYYYYMM(toDateTime(intDiv(ts, 1000)))`

var migrations = []migration{
	{
		name: "events",
		stmts: func(f features) []string {
			return []string{
				// Sorted by (client_id, job_id, id): a user's and a job's
				// events are contiguous and in id order, so pages after a
				// cursor read a narrow range. Replacing on that key
				// collapses exact redeliveries (an event id is its bus
				// position). The same fact published twice has two ids and
				// one record_id: reads keep the smallest id per
				// (job_id, record_id), before and after merges alike.
				//
				// envelope is the event as JSON without result.data; data
				// holds result.data verbatim ('' = none: valid JSON is
				// never empty), so it reads back byte for byte.
				`CREATE TABLE IF NOT EXISTS events (
					client_id String,
					job_id    String,
					id        String,
					record_id String,
					type      ` + f.stringEnum() + `,
					module    ` + f.stringEnum() + `,
					ts        Int64,
					ip        String,
					port      UInt16,
					envelope  String,
					data      String
				) ENGINE = ReplacingMergeTree()
				PARTITION BY ` + partitionByMonth + `
				ORDER BY (client_id, job_id, id)`,
			}
		},
	},
	{
		name: "ip history",
		stmts: func(f features) []string {
			return []string{
				// "This ip's history": every result event of an address,
				// sorted by (ip, port, ts), filled by the server on each
				// insert into events.
				`CREATE MATERIALIZED VIEW IF NOT EXISTS ip_history
				ENGINE = ReplacingMergeTree()
				PARTITION BY ` + partitionByMonth + `
				ORDER BY (ip, port, ts, job_id, id)
				AS SELECT ip, port, ts, job_id, id, record_id, client_id, type, module, data
				FROM events
				WHERE type != 'job_status'`,
			}
		},
	},
}

// migrate applies the steps of list the database lacks and returns the
// resulting version and how many steps it applied.
func (s *Store) migrate(ctx context.Context, list []migration) (version, applied int, err error) {
	if err := s.conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version UInt32,
		name    String,
		applied DateTime
	) ENGINE = ReplacingMergeTree() ORDER BY version`); err != nil {
		return 0, 0, fmt.Errorf("cannot create schema_migrations: %w", err)
	}
	current, err := s.schemaVersion(ctx)
	if err != nil {
		return 0, 0, err
	}
	if current > len(list) {
		return current, 0, fmt.Errorf("cannot use schema version %d, this build knows up to %d: %w",
			current, len(list), ErrSchemaTooNew)
	}
	for v := current; v < len(list); v++ {
		m := list[v]
		for _, stmt := range m.stmts(s.features) {
			if err := s.conn.Exec(ctx, stmt); err != nil {
				return v, applied, fmt.Errorf("cannot apply migration %d (%s): %w", v+1, m.name, err)
			}
		}
		if err := s.recordMigration(ctx, v+1, m.name); err != nil {
			return v, applied, fmt.Errorf("cannot record migration %d: %w", v+1, err)
		}
		applied++
	}
	return len(list), applied, nil
}

// recordMigration notes that step version is applied. INSERT … SELECT: an
// INSERT … VALUES over the native protocol waits for data blocks that
// Exec never sends.
func (s *Store) recordMigration(ctx context.Context, version int, name string) error {
	return s.conn.Exec(ctx, `INSERT INTO schema_migrations (version, name, applied) SELECT toUInt32(?), ?, now()`,
		version, name)
}

// schemaVersion is the highest migration recorded; 0 for a new database.
func (s *Store) schemaVersion(ctx context.Context) (int, error) {
	var v uint32
	if err := s.conn.QueryRow(ctx, `SELECT max(version) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("cannot read schema version: %w", err)
	}
	return int(v), nil
}
