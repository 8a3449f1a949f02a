package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ErrSchemaTooNew means the database was migrated by a newer build than this
// one: running on it could misread or damage data the newer schema added.
var ErrSchemaTooNew = errors.New("database schema is newer than this build")

// migration is one schema step. migrations[i] brings the schema to version
// i+1. Append only: a released step is never edited, a fix is a new step.
type migration struct {
	name  string
	stmts []string
}

var migrations = []migration{
	{
		name: "users, jobs, events",
		stmts: []string{
			`CREATE TABLE users (
				id          TEXT    NOT NULL PRIMARY KEY,
				app_id      TEXT    NOT NULL UNIQUE,
				secret_hash TEXT    NOT NULL,
				name        TEXT    NOT NULL,
				created     INTEGER NOT NULL
			)`,
			`CREATE TABLE jobs (
				id          TEXT    NOT NULL PRIMARY KEY,
				client_id   TEXT    NOT NULL,
				type        TEXT    NOT NULL,
				description TEXT    NOT NULL,
				state       TEXT    NOT NULL,
				progress    REAL    NOT NULL,
				counts      TEXT    NOT NULL, -- JSON ingest.JobCounts
				error       TEXT    NOT NULL,
				request     TEXT,             -- JSON as the client sent it
				created     INTEGER NOT NULL, -- unix ms; 0 = unset
				started     INTEGER NOT NULL,
				finished    INTEGER NOT NULL,
				updated     INTEGER NOT NULL
			)`,
			`CREATE INDEX jobs_client_id ON jobs (client_id, id)`,
			// envelope is the event as JSON without result.data; data holds
			// result.data verbatim, so it reads back byte for byte (JSON
			// encoding would compact and re-escape it).
			`CREATE TABLE events (
				id        TEXT    NOT NULL UNIQUE,
				record_id TEXT    NOT NULL, -- RecordID, or ID when that is empty: the dedupe key
				job_id    TEXT    NOT NULL,
				client_id TEXT    NOT NULL,
				type      TEXT    NOT NULL,
				module    TEXT    NOT NULL,
				ts        INTEGER NOT NULL, -- unix ms
				ip        TEXT    NOT NULL, -- target
				port      INTEGER NOT NULL, -- target
				envelope  TEXT    NOT NULL,
				data      TEXT
			)`,
			`CREATE INDEX events_client_id ON events (client_id, id)`,
			`CREATE INDEX events_job_id ON events (job_id, id)`,
			// Dedupe is scoped to the job. Record ids are hashes, so an
			// index on them alone takes random inserts across all history:
			// every batch would rewrite pages all over it, and ingest slows
			// down as the table grows (2M stored events: 3x slower). Per
			// job, only the running jobs' part of the index is written.
			// Record ids are derived from the job id, so this is the same
			// uniqueness.
			`CREATE UNIQUE INDEX events_job_record_id ON events (job_id, record_id)`,
		},
	},
	{
		name: "blobs",
		stmts: []string{
			// content-addressed per job: the same screenshot in two jobs is
			// two rows, each readable by that job's owner only
			`CREATE TABLE blobs (
				sha256       TEXT    NOT NULL,
				job_id       TEXT    NOT NULL,
				content_type TEXT    NOT NULL,
				data         BLOB    NOT NULL,
				created      INTEGER NOT NULL,
				PRIMARY KEY (job_id, sha256)
			)`,
		},
	},
	{
		name: "open ports by job and host",
		stmts: []string{
			// Covers a job's open-port analytics: hosts pages walk it in ip
			// order and stop after a page; ports by port read it without
			// touching the table. Job first, like events_job_record_id:
			// only the running jobs' part of the index is written; and
			// open ports only, so module results cost nothing more.
			`CREATE INDEX events_job_host ON events (job_id, ip, port) WHERE type = 'port'`,
		},
	},
}

// migrate applies the steps of list the database lacks, each in its own
// transaction, and returns the resulting version and how many it applied.
// Each step re-reads the version inside its write transaction, so two
// processes opening one new file at once apply every step exactly once.
func migrate(ctx context.Context, db *sql.DB, list []migration) (version, applied int, err error) {
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (
		version INTEGER NOT NULL PRIMARY KEY,
		name    TEXT    NOT NULL,
		applied INTEGER NOT NULL -- unix ms
	)`); err != nil {
		return 0, 0, fmt.Errorf("cannot create schema_version: %w", err)
	}
	for {
		done, v, err := migrateStep(ctx, db, list)
		if err != nil {
			return v, applied, err
		}
		if done {
			return v, applied, nil
		}
		applied++
	}
}

// migrateStep applies the next step of list, if any. done reports that the
// schema was already current; version is the version after the step.
func migrateStep(ctx context.Context, db *sql.DB, list []migration) (done bool, version int, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, 0, fmt.Errorf("cannot begin migration: %w", err)
	}
	defer func() { _ = tx.Rollback() }()

	var current int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_version`).Scan(&current); err != nil {
		return false, 0, fmt.Errorf("cannot read schema version: %w", err)
	}
	switch {
	case current > len(list):
		return false, current, fmt.Errorf("cannot use schema version %d, this build knows up to %d: %w",
			current, len(list), ErrSchemaTooNew)
	case current == len(list):
		return true, current, tx.Commit()
	}
	next := current + 1
	m := list[current]
	for _, stmt := range m.stmts {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return false, current, fmt.Errorf("cannot apply migration %d (%s): %w", next, m.name, err)
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version, name, applied) VALUES (?, ?, ?)`,
		next, m.name, time.Now().UnixMilli()); err != nil {
		return false, current, fmt.Errorf("cannot record migration %d: %w", next, err)
	}
	if err := tx.Commit(); err != nil {
		return false, current, fmt.Errorf("cannot commit migration %d: %w", next, err)
	}
	return false, next, nil
}
