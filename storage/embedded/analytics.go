package embedded

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"trawl/ingest"
	"trawl/storage"
)

// Analytics read the events table, which holds every fact once (the
// (job_id, record_id) uniqueness drops redeliveries at insert), so the
// queries need no dedupe of their own.

// textField reads a top-level string field of result.data; anything else
// (absent, a number, an object) reads as ”. ClickHouse's
// visitParamExtractString answers the same for flat JSON.
func textField(name string) string {
	return `CASE json_type(data, '$.` + name + `') WHEN 'text' THEN json_extract(data, '$.` + name + `') ELSE '' END`
}

// isOpenPort is the condition of the events_job_host partial index. It is a
// literal, not a bound parameter: sqlite uses a partial index only for a
// query whose WHERE names the index's condition as written.
const isOpenPort = `type = '` + ingest.TypePort + `'`

// openPorts is the table to read q's open ports from: for one job, through
// events_job_host, which holds all the query needs (without statistics the
// planner would pick the job's record index and read every row).
func openPorts(q storage.AnalyticsQuery) string {
	if q.JobID == "" {
		return `events`
	}
	return `events INDEXED BY events_job_host`
}

// analyticsScope is the condition on q's client, and job when set; like
// eventFilter, a job's query walks the job index, not the client's.
func analyticsScope(q storage.AnalyticsQuery) (string, []any, error) {
	if q.ClientID == "" {
		return "", nil, storage.ErrMissingClient
	}
	if q.JobID == "" {
		return `client_id = ?`, []any{q.ClientID}, nil
	}
	return `job_id = ? AND +client_id = ?`, []any{q.JobID, q.ClientID}, nil
}

// TopPorts counts the distinct hosts with each port open, most first (then
// by port).
func (s *Store) TopPorts(ctx context.Context, q storage.AnalyticsQuery) ([]storage.PortCount, error) {
	where, args, err := analyticsScope(q)
	if err != nil {
		return nil, fmt.Errorf("cannot count ports: %w", err)
	}
	rows, err := s.read.QueryContext(ctx, `SELECT port, count(DISTINCT ip) AS hosts FROM `+openPorts(q)+`
		WHERE `+where+` AND `+isOpenPort+`
		GROUP BY port ORDER BY hosts DESC, port LIMIT ?`,
		append(args, storage.AnalyticsLimit(q.Limit))...)
	if err != nil {
		return nil, fmt.Errorf("cannot count ports: %w", err)
	}
	defer rows.Close()
	out := []storage.PortCount{}
	for rows.Next() {
		var p storage.PortCount
		if err := rows.Scan(&p.Port, &p.Count); err != nil {
			return nil, fmt.Errorf("cannot count ports: %w", err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot count ports: %w", err)
	}
	return out, nil
}

// TopProducts counts the distinct endpoints (ip:port) per product and version
// that module results reported, most first (then by product, version); q.Port
// > 0 keeps one port.
func (s *Store) TopProducts(ctx context.Context, q storage.AnalyticsQuery) ([]storage.ProductCount, error) {
	where, args, err := analyticsScope(q)
	if err != nil {
		return nil, fmt.Errorf("cannot count products: %w", err)
	}
	where += ` AND module = ? AND data IS NOT NULL`
	args = append(args, ingest.ModuleGrabber)
	if q.Port > 0 {
		where += ` AND port = ?`
		args = append(args, q.Port)
	}
	rows, err := s.read.QueryContext(ctx, `SELECT product, version, count(*) AS endpoints FROM (
			SELECT DISTINCT ip, port, `+textField("product")+` AS product, `+textField("version")+` AS version
			FROM events WHERE `+where+`)
		WHERE product != ''
		GROUP BY product, version ORDER BY endpoints DESC, product, version LIMIT ?`,
		append(args, storage.AnalyticsLimit(q.Limit))...)
	if err != nil {
		return nil, fmt.Errorf("cannot count products: %w", err)
	}
	defer rows.Close()
	out := []storage.ProductCount{}
	for rows.Next() {
		var p storage.ProductCount
		if err := rows.Scan(&p.Product, &p.Version, &p.Count); err != nil {
			return nil, fmt.Errorf("cannot count products: %w", err)
		}
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
	where, args, err := analyticsScope(q)
	if err != nil {
		return nil, fmt.Errorf("cannot list hosts: %w", err)
	}
	where += ` AND ` + isOpenPort
	if q.After != "" {
		where += ` AND ip > ?`
		args = append(args, q.After)
	}
	rows, err := s.read.QueryContext(ctx, `SELECT ip, group_concat(DISTINCT port) FROM `+openPorts(q)+`
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
			ports string
		)
		if err := rows.Scan(&h.IP, &ports); err != nil {
			return nil, fmt.Errorf("cannot list hosts: %w", err)
		}
		if h.Ports, err = parsePorts(ports); err != nil {
			return nil, fmt.Errorf("cannot list hosts: %w", err)
		}
		h.Count = len(h.Ports)
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot list hosts: %w", err)
	}
	return out, nil
}

// parsePorts reads group_concat's comma-separated ports, which come in no
// particular order, and sorts them.
func parsePorts(list string) ([]int, error) {
	ports := make([]int, 0, strings.Count(list, ",")+1)
	for field := range strings.SplitSeq(list, ",") {
		p, err := strconv.Atoi(field)
		if err != nil {
			return nil, fmt.Errorf("bad port list %q: %w", list, err)
		}
		ports = append(ports, p)
	}
	slices.Sort(ports)
	return ports, nil
}

// IPHistory returns what clientID's jobs found on ip (open ports and module
// results), newest first (then by port and event id).
//
// It walks the client's events: an index on ip would take a random insert
// per event, across all history, on the ingest path.
func (s *Store) IPHistory(ctx context.Context, clientID, ip string, limit int) ([]storage.Sighting, error) {
	if clientID == "" {
		return nil, fmt.Errorf("cannot read ip history: %w", storage.ErrMissingClient)
	}
	rows, err := s.read.QueryContext(ctx, `SELECT ts, port, job_id, type, module,
			`+textField("product")+`, `+textField("version")+`, id
		FROM events WHERE client_id = ? AND ip = ? AND type != ?
		ORDER BY ts DESC, port, id LIMIT ?`,
		clientID, ip, ingest.TypeJobStatus, storage.AnalyticsLimit(limit))
	if err != nil {
		return nil, fmt.Errorf("cannot read ip history: %w", err)
	}
	defer rows.Close()
	out := []storage.Sighting{}
	for rows.Next() {
		var sg storage.Sighting
		if err := rows.Scan(&sg.TS, &sg.Port, &sg.JobID, &sg.Type, &sg.Module, &sg.Product, &sg.Version, &sg.ID); err != nil {
			return nil, fmt.Errorf("cannot read ip history: %w", err)
		}
		out = append(out, sg)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read ip history: %w", err)
	}
	return out, nil
}
