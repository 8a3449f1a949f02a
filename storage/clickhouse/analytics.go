package clickhouse

import (
	"context"
	"fmt"
	"slices"

	"trawl/ingest"
	"trawl/storage"
)

// Analytics are correct before merges: a fact can sit in events more than
// once (an exact redelivery until a merge collapses it, or the same fact
// under a second bus position, for good), so every query either counts
// distinct values or keeps the first copy (smallest id) per
// (job_id, record_id), as Events does.
//
// Product and version are the top-level "product" and "version" strings of
// result.data, read with visitParamExtractString, which 18.16 has and
// current releases keep. It takes the first field of that name at any
// depth: for flat module output (the service module's) that is the
// top-level field the embedded store reads.

// ErrMissingClient is storage.ErrMissingClient, kept for callers of this
// package.
var ErrMissingClient = storage.ErrMissingClient

// scope is the condition on q's client, and job when set.
func scope(q storage.AnalyticsQuery) (string, []any, error) {
	if q.ClientID == "" {
		return "", nil, ErrMissingClient
	}
	if q.JobID == "" {
		return `client_id = ?`, []any{q.ClientID}, nil
	}
	return `client_id = ? AND job_id = ?`, []any{q.ClientID, q.JobID}, nil
}

// TopPorts counts the distinct hosts with each port open, most first (then
// by port). Copies of a record count once: distinct hosts.
func (s *Store) TopPorts(ctx context.Context, q storage.AnalyticsQuery) ([]storage.PortCount, error) {
	where, args, err := scope(q)
	if err != nil {
		return nil, fmt.Errorf("cannot count ports: %w", err)
	}
	rows, err := s.conn.Query(ctx, `SELECT port, uniqExact(ip) AS hosts FROM events
		WHERE `+where+` AND type = ?
		GROUP BY port ORDER BY hosts DESC, port LIMIT ?`,
		append(args, ingest.TypePort, storage.AnalyticsLimit(q.Limit))...)
	if err != nil {
		return nil, fmt.Errorf("cannot count ports: %w", err)
	}
	defer rows.Close()
	out := []storage.PortCount{}
	for rows.Next() {
		var (
			port  uint16
			hosts uint64
		)
		if err := rows.Scan(&port, &hosts); err != nil {
			return nil, fmt.Errorf("cannot count ports: %w", err)
		}
		out = append(out, storage.PortCount{Port: int(port), Count: int64(hosts)})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot count ports: %w", err)
	}
	return out, nil
}

// TopProducts counts the distinct endpoints (ip:port) per product and
// version that module results reported, most first (then by product,
// version); q.Port > 0 keeps one port. A record's first copy is the one
// read: a later copy with other data does not count.
func (s *Store) TopProducts(ctx context.Context, q storage.AnalyticsQuery) ([]storage.ProductCount, error) {
	where, args, err := scope(q)
	if err != nil {
		return nil, fmt.Errorf("cannot count products: %w", err)
	}
	where += ` AND module = ?`
	args = append(args, ingest.ModuleGrabber)
	if q.Port > 0 {
		where += ` AND port = ?`
		args = append(args, uint16(min(q.Port, 65535)))
	}
	rows, err := s.conn.Query(ctx, `SELECT product, version, uniqExact(ip, port) AS endpoints FROM (
			SELECT ip, port,
				visitParamExtractString(first, 'product') AS product,
				visitParamExtractString(first, 'version') AS version
			FROM (
				SELECT ip, port, argMin(data, id) AS first FROM events
				WHERE `+where+`
				GROUP BY job_id, record_id, ip, port))
		WHERE product != ''
		GROUP BY product, version ORDER BY endpoints DESC, product, version LIMIT ?`,
		append(args, storage.AnalyticsLimit(q.Limit))...)
	if err != nil {
		return nil, fmt.Errorf("cannot count products: %w", err)
	}
	defer rows.Close()
	out := []storage.ProductCount{}
	for rows.Next() {
		var (
			p         storage.ProductCount
			endpoints uint64
		)
		if err := rows.Scan(&p.Product, &p.Version, &endpoints); err != nil {
			return nil, fmt.Errorf("cannot count products: %w", err)
		}
		p.Count = int64(endpoints)
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot count products: %w", err)
	}
	return out, nil
}

// Hosts lists the addresses with open ports in ip order (byte order of the
// text form), after the q.After cursor, each with its ports ascending.
func (s *Store) Hosts(ctx context.Context, q storage.AnalyticsQuery) ([]storage.Host, error) {
	where, args, err := scope(q)
	if err != nil {
		return nil, fmt.Errorf("cannot list hosts: %w", err)
	}
	where += ` AND type = ?`
	args = append(args, ingest.TypePort)
	if q.After != "" {
		where += ` AND ip > ?`
		args = append(args, q.After)
	}
	rows, err := s.conn.Query(ctx, `SELECT ip, groupUniqArray(port) FROM events
		WHERE `+where+` GROUP BY ip ORDER BY ip LIMIT ?`,
		append(args, storage.AnalyticsLimit(q.Limit))...)
	if err != nil {
		return nil, fmt.Errorf("cannot list hosts: %w", err)
	}
	defer rows.Close()
	out := []storage.Host{}
	for rows.Next() {
		var (
			h     storage.Host
			ports []uint16
		)
		if err := rows.Scan(&h.IP, &ports); err != nil {
			return nil, fmt.Errorf("cannot list hosts: %w", err)
		}
		h.Ports = make([]int, len(ports))
		for i, p := range ports {
			h.Ports[i] = int(p)
		}
		slices.Sort(h.Ports)
		h.Count = len(h.Ports)
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot list hosts: %w", err)
	}
	return out, nil
}

// IPHistory returns what clientID's jobs found on ip (open ports and module
// results), newest first (then by port and event id), from the ip_history
// view (sorted by ip, port, ts). Each record appears once, as its first copy.
func (s *Store) IPHistory(ctx context.Context, clientID, ip string, limit int) ([]storage.Sighting, error) {
	if clientID == "" {
		return nil, fmt.Errorf("cannot read ip history: %w", ErrMissingClient)
	}
	rows, err := s.conn.Query(ctx, `SELECT ts, port, job_id, type, module,
			visitParamExtractString(data, 'product'), visitParamExtractString(data, 'version'), id
		FROM (
			SELECT id, job_id, port, ts, type, module, data FROM ip_history
			WHERE ip = ? AND client_id = ?
			ORDER BY job_id, record_id, id
			LIMIT 1 BY job_id, record_id)
		ORDER BY ts DESC, port, id LIMIT ?`, ip, clientID, storage.AnalyticsLimit(limit))
	if err != nil {
		return nil, fmt.Errorf("cannot read ip history: %w", err)
	}
	defer rows.Close()
	out := []storage.Sighting{}
	for rows.Next() {
		var (
			sg   storage.Sighting
			port uint16
		)
		if err := rows.Scan(&sg.TS, &port, &sg.JobID, &sg.Type, &sg.Module, &sg.Product, &sg.Version, &sg.ID); err != nil {
			return nil, fmt.Errorf("cannot read ip history: %w", err)
		}
		sg.Port = int(port)
		out = append(out, sg)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read ip history: %w", err)
	}
	return out, nil
}
