package clickhouse

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"trawl/ingest"
)

// ErrMissingClient: analytics read one user's events only.
var ErrMissingClient = errors.New("client id is required")

// PortCount is how many distinct hosts had a port open.
type PortCount struct {
	Port  int    `json:"port"`
	Hosts uint64 `json:"hosts"`
}

// ProductCount is how many distinct host:ports ran a product version.
type ProductCount struct {
	Product   string `json:"product"`
	Version   string `json:"version"`
	Endpoints uint64 `json:"endpoints"`
}

// Sighting is one result about an address, from its history.
type Sighting struct {
	ID     string          `json:"id"`
	JobID  string          `json:"job_id"`
	Port   int             `json:"port"`
	TS     int64           `json:"ts"` // unix milliseconds
	Type   string          `json:"type"`
	Module string          `json:"module"`
	Data   json.RawMessage `json:"data,omitempty"`
}

// TopPorts counts the distinct hosts with each port open, most first, over
// one job (jobID set) or all of the client's. Copies of a record count once
// (distinct hosts), merged or not.
func (s *Store) TopPorts(ctx context.Context, clientID, jobID string, limit int) ([]PortCount, error) {
	where, args, err := scope(clientID, jobID)
	if err != nil {
		return nil, fmt.Errorf("cannot count ports: %w", err)
	}
	rows, err := s.conn.Query(ctx, `SELECT port, uniqExact(ip) AS hosts FROM events
		WHERE `+where+` AND type = ?
		GROUP BY port ORDER BY hosts DESC, port LIMIT ?`,
		append(args, ingest.TypePort, clampLimit(limit))...)
	if err != nil {
		return nil, fmt.Errorf("cannot count ports: %w", err)
	}
	defer rows.Close()
	var out []PortCount
	for rows.Next() {
		var (
			port  uint16
			hosts uint64
		)
		if err := rows.Scan(&port, &hosts); err != nil {
			return nil, fmt.Errorf("cannot count ports: %w", err)
		}
		out = append(out, PortCount{Port: int(port), Hosts: hosts})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot count ports: %w", err)
	}
	return out, nil
}

// TopProducts counts the distinct endpoints (ip:port) per product and
// version that module results reported ("product" and "version" fields of
// result.data), most first, over one job or all of the client's; port > 0
// keeps one port only.
func (s *Store) TopProducts(ctx context.Context, clientID, jobID string, port, limit int) ([]ProductCount, error) {
	where, args, err := scope(clientID, jobID)
	if err != nil {
		return nil, fmt.Errorf("cannot count products: %w", err)
	}
	if port > 0 {
		where += ` AND port = ?`
		args = append(args, uint16(min(port, 65535)))
	}
	// visitParamExtractString reads a field of flat JSON, on 18.16 and
	// on current releases alike.
	rows, err := s.conn.Query(ctx, `SELECT product, version, uniqExact(ip, port) AS endpoints FROM (
			SELECT ip, port,
				visitParamExtractString(data, 'product') AS product,
				visitParamExtractString(data, 'version') AS version
			FROM events
			WHERE `+where+` AND module = ?)
		WHERE product != ''
		GROUP BY product, version ORDER BY endpoints DESC, product, version LIMIT ?`,
		append(args, ingest.ModuleGrabber, clampLimit(limit))...)
	if err != nil {
		return nil, fmt.Errorf("cannot count products: %w", err)
	}
	defer rows.Close()
	var out []ProductCount
	for rows.Next() {
		var p ProductCount
		if err := rows.Scan(&p.Product, &p.Version, &p.Endpoints); err != nil {
			return nil, fmt.Errorf("cannot count products: %w", err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot count products: %w", err)
	}
	return out, nil
}

// IPHistory returns what the client's jobs found on ip, newest first, from
// the ip_history view (sorted by ip, port, ts). Each record appears once,
// as its first copy.
func (s *Store) IPHistory(ctx context.Context, clientID, ip string, limit int) ([]Sighting, error) {
	if clientID == "" {
		return nil, fmt.Errorf("cannot read ip history: %w", ErrMissingClient)
	}
	rows, err := s.conn.Query(ctx, `SELECT id, job_id, port, ts, type, module, data FROM (
			SELECT id, job_id, port, ts, type, module, data FROM ip_history
			WHERE ip = ? AND client_id = ?
			ORDER BY job_id, record_id, id
			LIMIT 1 BY job_id, record_id)
		ORDER BY ts DESC, port, id LIMIT ?`, ip, clientID, clampLimit(limit))
	if err != nil {
		return nil, fmt.Errorf("cannot read ip history: %w", err)
	}
	defer rows.Close()
	var out []Sighting
	for rows.Next() {
		var (
			sg   Sighting
			port uint16
			data []byte
		)
		if err := rows.Scan(&sg.ID, &sg.JobID, &port, &sg.TS, &sg.Type, &sg.Module, &data); err != nil {
			return nil, fmt.Errorf("cannot read ip history: %w", err)
		}
		sg.Port = int(port)
		if len(data) > 0 {
			sg.Data = data
		}
		out = append(out, sg)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read ip history: %w", err)
	}
	return out, nil
}

// scope is the condition on one client, and one job when jobID is set.
func scope(clientID, jobID string) (string, []any, error) {
	if clientID == "" {
		return "", nil, ErrMissingClient
	}
	if jobID == "" {
		return `client_id = ?`, []any{clientID}, nil
	}
	return `client_id = ? AND job_id = ?`, []any{clientID, jobID}, nil
}
