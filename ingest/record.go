package ingest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
)

// SchemaVersion is the version of the wire records this build writes. Readers
// accept every version up to it and reject newer ones with ErrVersion, so a
// mixed fleet during an upgrade fails loudly instead of misreading.
const SchemaVersion = 1

// ErrVersion marks a record written by a newer schema than this build reads.
var ErrVersion = errors.New("unsupported record version")

// Event types and modules of BinaryEdge's envelope.
const (
	TypePort      = "port"       // module ModulePortscan: an open port
	TypeJobStatus = "job_status" // module ModuleJob: a job state change
	TypeScanStats = "scan_stats" // module ModuleScanner: internal, scanner statistics of one shard

	ModulePortscan = "portscan"
	ModuleGrabber  = "grabber" // with type = the probe module's name
	ModuleJob      = "job"
	ModuleScanner  = "scanner"
)

// Job states.
const (
	StateQueued    = "queued"
	StateRunning   = "running"
	StateSucceeded = "succeeded"
	StateFailed    = "failed"
	StateCanceled  = "canceled"
)

// Terminal reports whether a job state is final.
func Terminal(state string) bool {
	return state == StateSucceeded || state == StateFailed || state == StateCanceled
}

// Event is the stream envelope (BinaryEdge's) plus a cursor id and a record id.
// ID orders events for replay (`since`): consumers set it from the event's
// position on the bus (Delivery.Cursor), so producers leave it empty.
// RecordID is stable across redeliveries of the same fact, so storage keeps
// one row per fact.
type Event struct {
	V        int    `json:"v,omitempty"`
	ID       string `json:"id,omitempty"`
	RecordID string `json:"record_id,omitempty"`
	Origin   Origin `json:"origin"`
	Target   Target `json:"target"`
	Result   Result `json:"result"`
}

// Origin says who produced an event, for which job, and when.
type Origin struct {
	JobID    string `json:"job_id"`
	ClientID string `json:"client_id"`
	Type     string `json:"type"`
	Module   string `json:"module"`
	TS       int64  `json:"ts"` // unix milliseconds
	IP       string `json:"ip,omitempty"`
	Port     int    `json:"port,omitempty"`
}

// Target is the scanned endpoint.
type Target struct {
	IP       string `json:"ip,omitempty"`
	Port     int    `json:"port,omitempty"`
	Protocol string `json:"protocol,omitempty"`
}

// Result holds the module-specific payload.
type Result struct {
	Data json.RawMessage `json:"data"`
}

// Internal reports whether an event is bookkeeping between roles that
// subscribers never see (scanner statistics feed the job tracker).
func (e *Event) Internal() bool { return e.Origin.Type == TypeScanStats }

// Terminal reports whether e is a job's final job_status event.
func (e *Event) Terminal() bool {
	if e.Origin.Type != TypeJobStatus {
		return false
	}
	var s JobStatus
	return json.Unmarshal(e.Result.Data, &s) == nil && Terminal(s.Status)
}

// JobStatus is result.data of a job_status event.
type JobStatus struct {
	Status   string    `json:"status"`
	Progress float64   `json:"progress"` // 0..1
	Counts   JobCounts `json:"counts"`
	Error    string    `json:"error,omitempty"`
}

// JobCounts are a job's running totals.
type JobCounts struct {
	Targets   uint64 `json:"targets"`    // ip×port pairs in the job's space (this shard's share in scan_stats)
	Sent      uint64 `json:"sent"`       // probes sent
	OpenPorts uint64 `json:"open_ports"` // distinct open ports found
	Probes    uint64 `json:"probes"`     // module probes dispatched
	Results   uint64 `json:"results"`    // module results received
	Errors    uint64 `json:"errors"`     // module results whose status is not success
}

// ScanStats is result.data of a scan_stats event: one shard's statistics.
type ScanStats struct {
	Shard      int       `json:"shard"`
	Shards     int       `json:"shards"`
	Counts     JobCounts `json:"counts"`
	Received   uint64    `json:"received"`
	Duplicates uint64    `json:"duplicates"`
	SendErrors uint64    `json:"send_errors"`
	PPS        float64   `json:"pps"`
	AvgPPS     float64   `json:"avg_pps"`
	ETASeconds float64   `json:"eta_seconds"`
	Done       bool      `json:"done"`
	Canceled   bool      `json:"canceled,omitempty"`
	Error      string    `json:"error,omitempty"`
}

// Task kinds on TopicTasks.
const (
	TaskStart  = "start"
	TaskCancel = "cancel"
)

// Job types.
const (
	JobScan = "scan" // sweep targets × ports, then probe what is open
	JobGrab = "grab" // probe the given ip:ports directly, no sweep
)

// Task starts or cancels a job on every scanner shard.
type Task struct {
	V           int           `json:"v"`
	Kind        string        `json:"kind"`
	JobID       string        `json:"job_id"`
	ClientID    string        `json:"client_id"`
	Type        string        `json:"type,omitempty"`
	Description string        `json:"description,omitempty"`
	Shards      int           `json:"shards,omitempty"` // number of scanner shards sharing the job
	Rate        int           `json:"rate,omitempty"`   // probes per second for the whole job; 0 = scanner default
	Seed        uint64        `json:"seed,omitempty"`   // permutation seed shared by all shards
	Options     []TaskOptions `json:"options,omitempty"`
}

// TaskOptions is one BinaryEdge options block: targets × ports. Targets hold
// only IP literals, ranges and CIDRs: hostnames are resolved once, by the API.
type TaskOptions struct {
	Targets []string   `json:"targets"`
	Ports   []PortSpec `json:"ports"`
	// Hostnames maps an address a hostname target resolved to back to that
	// name: probes send it (TLS SNI) and check certificates against it.
	Hostnames map[string]string `json:"hostnames,omitempty"`
}

// PortSpec is one port entry: a port or range, its modules and its sample.
type PortSpec struct {
	Ports   string   `json:"ports"` // "22" or "8000-8100"
	Sample  int      `json:"sample,omitempty"`
	Modules []string `json:"modules,omitempty"`
}

// OpenPort is an open port handed to probe workers.
type OpenPort struct {
	V        int      `json:"v"`
	JobID    string   `json:"job_id"`
	ClientID string   `json:"client_id"`
	IP       string   `json:"ip"`
	Port     int      `json:"port"`
	Protocol string   `json:"protocol"`
	TTL      int      `json:"ttl,omitempty"`
	Window   int      `json:"window,omitempty"`
	Modules  []string `json:"modules"`
	Found    int64    `json:"found"` // unix milliseconds
	// SourceIP/SourcePort are the scanner's side of the probe, for origin.
	SourceIP   string `json:"source_ip,omitempty"`
	SourcePort int    `json:"source_port,omitempty"`
	// Hostname is the name the task gave for IP, if it gave one.
	Hostname string `json:"hostname,omitempty"`
}

// Blob is a probe artifact (a VNC screenshot) on its way to the store that
// serves it; SHA256 (hex) names it within its job.
type Blob struct {
	V           int    `json:"v"`
	JobID       string `json:"job_id"`
	SHA256      string `json:"sha256"`
	ContentType string `json:"content_type"`
	Data        []byte `json:"data"`
	Created     int64  `json:"created"` // unix milliseconds
}

// Encode appends the record's wire form to dst. Tasks and events are JSON
// with a "v" field (low volume; events go to clients as JSON anyway); open
// ports use a compact binary form (openport.go). The choice per topic was
// made by measurement.
func Encode(dst []byte, rec any) ([]byte, error) {
	switch r := rec.(type) {
	case *Event:
		r.V = SchemaVersion
		out, err := appendEvent(dst, r)
		if err != nil {
			return dst, fmt.Errorf("cannot encode event: %w", err)
		}
		return out, nil
	case *Task:
		r.V = SchemaVersion
	case *OpenPort:
		r.V = SchemaVersion
		return encodeOpenPort(dst, r), nil
	case *Blob:
		r.V = SchemaVersion
	default:
		return dst, fmt.Errorf("cannot encode %T: not a wire record", rec)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return dst, fmt.Errorf("cannot encode %T: %w", rec, err)
	}
	return append(dst, b...), nil
}

// Decode parses a wire record into rec (a *Event, *Task, *OpenPort or *Blob).
func Decode(b []byte, rec any) error {
	if op, ok := rec.(*OpenPort); ok && len(b) > 0 && (b[0] == openPortBinaryV1 || b[0] == openPortBinaryV2) {
		return decodeOpenPort(b, op)
	}
	if len(b) > 0 && b[0] != '{' && b[0] != ' ' && b[0] != '\n' {
		if b[0] >= 0xB0 && b[0] <= 0xBF {
			return fmt.Errorf("cannot decode %T: binary form 0x%X: %w", rec, b[0], ErrVersion)
		}
	}
	if err := json.Unmarshal(b, rec); err != nil {
		return fmt.Errorf("cannot decode %T: %w", rec, err)
	}
	var v int
	switch r := rec.(type) {
	case *Event:
		v = r.V
	case *Task:
		v = r.V
	case *OpenPort:
		v = r.V
	case *Blob:
		v = r.V
	}
	if v > SchemaVersion {
		return fmt.Errorf("cannot decode %T version %d: %w", rec, v, ErrVersion)
	}
	return nil
}

// EventMessage encodes e as a bus message keyed by its job. The id is left
// out: each consumer derives it from the message's position (WithCursor).
func EventMessage(e *Event) (Message, error) {
	c := *e
	c.ID = ""
	b, err := Encode(nil, &c)
	return Message{Key: []byte(e.Origin.JobID), Value: b}, err
}

// WithCursor appends to dst the event JSON value (as published, without an
// id) with "id": cursor as its first field.
func WithCursor[C string | []byte](dst, value []byte, cursor C) []byte {
	if len(value) < 2 || value[0] != '{' {
		return append(dst, value...)
	}
	dst = append(dst, `{"id":"`...)
	dst = append(dst, cursor...)
	dst = append(dst, '"')
	rest := bytes.TrimLeft(value[1:], " \t\r\n")
	if len(rest) > 0 && rest[0] != '}' {
		dst = append(dst, ',')
	}
	return append(dst, rest...)
}

// RecordID derives a stable record id from the fact's identity (job, ip, port,
// module, …): a redelivered or re-probed fact gets the same id, so storage
// and the job tracker count it once.
func RecordID(parts ...string) string {
	var buf [128]byte
	in := buf[:0]
	for _, p := range parts {
		in = append(in, p...)
		in = append(in, 0)
	}
	// the id may overwrite in: appendRecordID hashes in first
	return string(appendRecordID(buf[:0], in))
}

// appendRecordID appends the record id of hash input in (its parts, each
// followed by a zero byte) to dst: "rec_" and the first 16 bytes of its
// SHA-256 in hex; dst may share in's memory. RecordID and PortEvents both
// build ids with it.
func appendRecordID(dst, in []byte) []byte {
	sum := sha256.Sum256(in)
	dst = append(dst, "rec_"...)
	return hex.AppendEncode(dst, sum[:16])
}

// PeekOrigin returns origin.type and origin.module of an event as Encode
// wrote it, without decoding the rest: consumers that route millions of
// events (the CLI's printer) need only those two. Encode writes "origin"
// before "target" and "result", and no earlier field is named type or
// module, so the first occurrences are the origin's. ok is false when either
// is missing; decode fully then.
func PeekOrigin(b []byte) (typ, module []byte, ok bool) {
	typ, ok1 := peekString(b, `"type":"`)
	module, ok2 := peekString(b, `"module":"`)
	return typ, module, ok1 && ok2
}

func peekString(b []byte, key string) ([]byte, bool) {
	i := bytes.Index(b, []byte(key))
	if i < 0 {
		return nil, false
	}
	rest := b[i+len(key):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 || bytes.IndexByte(rest[:j], '\\') >= 0 {
		return nil, false
	}
	return rest[:j:j], true
}
