package embedded

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"trawl/storage"
)

// Jobs page limits.
const (
	defaultJobLimit = 100
	maxJobLimit     = 1000
)

const jobColumns = `id, client_id, type, description, state, progress, counts, error, request,
	created, started, finished, updated`

// CreateJob stores j. A job with the same id is storage.ErrConflict.
func (s *Store) CreateJob(ctx context.Context, j storage.Job) error {
	if j.ID == "" || j.ClientID == "" {
		return fmt.Errorf("cannot create job %q: id and client id are required", j.ID)
	}
	counts, err := json.Marshal(j.Counts)
	if err != nil {
		return fmt.Errorf("cannot create job %s: %w", j.ID, err)
	}
	_, err = s.write.ExecContext(ctx, `INSERT INTO jobs (`+jobColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		j.ID, j.ClientID, j.Type, j.Description, j.State, j.Progress, string(counts), j.Error, nullText(j.Request),
		toMS(j.Created), toMS(j.Started), toMS(j.Finished), toMS(j.Updated))
	if isConstraint(err) {
		return fmt.Errorf("cannot create job %s: %w", j.ID, storage.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("cannot create job %s: %w", j.ID, err)
	}
	return nil
}

// Job returns the job with that id, or storage.ErrNotFound.
func (s *Store) Job(ctx context.Context, id string) (storage.Job, error) {
	row := s.read.QueryRowContext(ctx, `SELECT `+jobColumns+` FROM jobs WHERE id = ?`, id)
	j, err := scanJob(row)
	if err != nil {
		return storage.Job{}, fmt.Errorf("cannot get job %s: %w", id, err)
	}
	return j, nil
}

// Jobs returns q.ClientID's jobs newest first: job ids are time-sortable, so
// id order is creation order. q.Before is an exclusive cursor.
func (s *Store) Jobs(ctx context.Context, q storage.JobQuery) ([]storage.Job, error) {
	if q.ClientID == "" {
		return nil, errors.New("cannot list jobs: client id is required")
	}
	var sb strings.Builder
	args := make([]any, 0, 4)
	sb.WriteString(`SELECT ` + jobColumns + ` FROM jobs WHERE client_id = ?`)
	args = append(args, q.ClientID)
	if q.Before != "" {
		sb.WriteString(` AND id < ?`)
		args = append(args, q.Before)
	}
	if q.State != "" {
		sb.WriteString(` AND state = ?`)
		args = append(args, q.State)
	}
	sb.WriteString(` ORDER BY id DESC LIMIT ?`)
	args = append(args, clampLimit(q.Limit, defaultJobLimit, maxJobLimit))

	rows, err := s.read.QueryContext(ctx, sb.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("cannot list jobs: %w", err)
	}
	defer rows.Close()
	var jobs []storage.Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, fmt.Errorf("cannot list jobs: %w", err)
		}
		jobs = append(jobs, j)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot list jobs: %w", err)
	}
	return jobs, nil
}

// UpdateJob replaces every field of the job with j's id, or returns
// storage.ErrNotFound.
func (s *Store) UpdateJob(ctx context.Context, j storage.Job) error {
	counts, err := json.Marshal(j.Counts)
	if err != nil {
		return fmt.Errorf("cannot update job %s: %w", j.ID, err)
	}
	res, err := s.write.ExecContext(ctx, `UPDATE jobs SET client_id = ?, type = ?, description = ?, state = ?,
		progress = ?, counts = ?, error = ?, request = ?, created = ?, started = ?, finished = ?, updated = ?
		WHERE id = ?`,
		j.ClientID, j.Type, j.Description, j.State, j.Progress, string(counts), j.Error, nullText(j.Request),
		toMS(j.Created), toMS(j.Started), toMS(j.Finished), toMS(j.Updated), j.ID)
	if err != nil {
		return fmt.Errorf("cannot update job %s: %w", j.ID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("cannot update job %s: %w", j.ID, err)
	}
	if n == 0 {
		return fmt.Errorf("cannot update job %s: %w", j.ID, storage.ErrNotFound)
	}
	return nil
}

func scanJob(r rowScanner) (storage.Job, error) {
	var (
		j                                  storage.Job
		counts, request                    []byte
		created, started, finished, update int64
	)
	err := r.Scan(&j.ID, &j.ClientID, &j.Type, &j.Description, &j.State, &j.Progress, &counts, &j.Error, &request,
		&created, &started, &finished, &update)
	if errors.Is(err, sql.ErrNoRows) {
		return storage.Job{}, storage.ErrNotFound
	}
	if err != nil {
		return storage.Job{}, err
	}
	if err := json.Unmarshal(counts, &j.Counts); err != nil {
		return storage.Job{}, fmt.Errorf("cannot decode counts of job %s: %w", j.ID, err)
	}
	if request != nil {
		j.Request = json.RawMessage(request)
	}
	j.Created, j.Started, j.Finished, j.Updated = fromMS(created), fromMS(started), fromMS(finished), fromMS(update)
	return j, nil
}

// nullText stores raw JSON as text (so sqlite's json functions read it) and
// an absent value as NULL, so it reads back as nil.
func nullText(b []byte) any {
	if b == nil {
		return nil
	}
	return string(b)
}

// UnfinishedJobs returns every job, of any client, that is queued or running
// (at most 10000, oldest first): after a restart of 'trawl all' these have
// lost their in-process bus and cannot finish.
func (s *Store) UnfinishedJobs(ctx context.Context) ([]storage.Job, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+jobColumns+` FROM jobs WHERE state IN ('queued', 'running') ORDER BY id LIMIT 10000`)
	if err != nil {
		return nil, fmt.Errorf("cannot list unfinished jobs: %w", err)
	}
	defer rows.Close()
	var jobs []storage.Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, fmt.Errorf("cannot list unfinished jobs: %w", err)
		}
		jobs = append(jobs, j)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot list unfinished jobs: %w", err)
	}
	return jobs, nil
}
