// Package storage holds the records trawl keeps (users, jobs, events) and the
// errors its stores share. Implementations live in sub-packages: embedded
// (modernc sqlite, the default) and, at scale, clickhouse for events.
// storagetest is the conformance suite every implementation runs.
package storage

import (
	"encoding/json"
	"errors"
	"time"

	"trawl/ingest"
)

var (
	// ErrNotFound: no record with that key.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a record with that unique key exists already.
	ErrConflict = errors.New("already exists")
)

// User is an account an operator created. AppID is public; the user id
// secret (X-USER-ID) is kept only as a hash.
type User struct {
	ID         string    `json:"id"` // "usr_…", also the events' client_id
	AppID      string    `json:"app_id"`
	SecretHash string    `json:"-"` // hex sha256 of the X-USER-ID secret
	Name       string    `json:"name"`
	Created    time.Time `json:"created"`
}

// Job is a task's metadata and state.
type Job struct {
	ID          string           `json:"id"`
	ClientID    string           `json:"client_id"`
	Type        string           `json:"type"`
	Description string           `json:"description"`
	State       string           `json:"state"`
	Progress    float64          `json:"progress"`
	Counts      ingest.JobCounts `json:"counts"`
	Error       string           `json:"error,omitempty"`
	Request     json.RawMessage  `json:"request"`
	Created     time.Time        `json:"created"`
	Started     time.Time        `json:"started,omitzero"`
	Finished    time.Time        `json:"finished,omitzero"`
	Updated     time.Time        `json:"updated"`
}

// EventQuery selects events in id order.
type EventQuery struct {
	ClientID string // required: a user only ever reads their own events
	JobID    string // optional: one job
	After    string // exclusive cursor (an event id); "" = from the start
	Limit    int    // at most this many; <= 0 means the store's default (1000)
	// ResultsOnly keeps port and module events, leaving out job_status.
	ResultsOnly bool
}

// JobQuery pages a user's jobs, newest first.
type JobQuery struct {
	ClientID string
	Before   string // exclusive cursor (a job id); "" = newest
	Limit    int
	State    string // optional filter
}

// Blob is a binary artifact a probe produced (a VNC screenshot), addressed
// by the sha256 of its content and owned by the job that produced it.
type Blob struct {
	SHA256      string    `json:"sha256"` // hex
	JobID       string    `json:"job_id"`
	ContentType string    `json:"content_type"`
	Data        []byte    `json:"-"`
	Created     time.Time `json:"created"`
}
