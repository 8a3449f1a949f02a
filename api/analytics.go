package api

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"

	"github.com/valyala/fasthttp"

	"trawl/storage"
)

// Analytics answers the analytics endpoints from the events store that is
// configured: the embedded store on one machine, ClickHouse at scale. Every
// query is scoped to the caller's client id.
type Analytics interface {
	TopPorts(ctx context.Context, q storage.AnalyticsQuery) ([]storage.PortCount, error)
	TopProducts(ctx context.Context, q storage.AnalyticsQuery) ([]storage.ProductCount, error)
	Hosts(ctx context.Context, q storage.AnalyticsQuery) ([]storage.Host, error)
	IPHistory(ctx context.Context, clientID, ip string, limit int) ([]storage.Sighting, error)
}

// analytics is Deps.Analytics, or the error a node without one answers.
func (s *Server) analytics() (Analytics, error) {
	if s.deps.Analytics == nil {
		return nil, errUnavailable("analytics are not served by this node")
	}
	return s.deps.Analytics, nil
}

// analyticsQuery reads limit (and port when withPort) from the query string
// for clientID's events, or one job's when jobID is set.
func analyticsQuery(ctx *fasthttp.RequestCtx, clientID, jobID string, withPort bool) (storage.AnalyticsQuery, error) {
	q := storage.AnalyticsQuery{ClientID: clientID, JobID: jobID}
	limit, err := queryLimit(ctx, storage.DefaultAnalyticsLimit, storage.MaxAnalyticsLimit)
	if err != nil {
		return q, err
	}
	q.Limit = limit
	if withPort {
		if q.Port, err = queryPort(ctx); err != nil {
			return q, err
		}
	}
	return q, nil
}

// queryPort is the optional ?port= filter; 0 when absent.
func queryPort(ctx *fasthttp.RequestCtx) (int, error) {
	raw := string(ctx.QueryArgs().Peek("port"))
	if raw == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 1 || n > 65535 {
		return 0, errInvalid("bad port", []FieldError{{Field: "port", Message: "must be an integer from 1 to 65535"}})
	}
	return n, nil
}

// writeData sends {"data": rows}, an empty list rather than null.
func writeData[T any](ctx *fasthttp.RequestCtx, rows []T, extra ...any) {
	if rows == nil {
		rows = []T{}
	}
	body := map[string]any{"data": rows}
	for i := 0; i+1 < len(extra); i += 2 {
		body[extra[i].(string)] = extra[i+1]
	}
	writeJSON(ctx, http.StatusOK, body)
}

// scope answers the common part of the analytics routes: the store, and a
// query over one job of the caller (params[0], for the /v1/tasks/{id}/…
// routes) or over all the caller's jobs (the /v1/analytics/… routes).
func (s *Server) scope(rc context.Context, ctx *fasthttp.RequestCtx, clientID string, params []string, withPort bool) (Analytics, storage.AnalyticsQuery, error) {
	a, err := s.analytics()
	if err != nil {
		return nil, storage.AnalyticsQuery{}, err
	}
	jobID := ""
	if len(params) > 0 {
		j, err := s.ownJob(rc, clientID, params[0])
		if err != nil {
			return nil, storage.AnalyticsQuery{}, err
		}
		jobID = j.ID
	}
	q, err := analyticsQuery(ctx, clientID, jobID, withPort)
	return a, q, err
}

// ports: GET /v1/tasks/{id}/analytics/ports and /v1/analytics/top-ports,
// open ports by port with how many hosts had each open.
func (s *Server) ports(rc context.Context, ctx *fasthttp.RequestCtx, clientID string, params []string) error {
	a, q, err := s.scope(rc, ctx, clientID, params, false)
	if err != nil {
		return err
	}
	rows, err := a.TopPorts(rc, q)
	if err != nil {
		return fmt.Errorf("cannot answer top ports: %w", err)
	}
	writeData(ctx, rows)
	return nil
}

// products: GET /v1/tasks/{id}/analytics/products?port= and
// /v1/analytics/top-products?port=, the products and versions the modules
// reported, by endpoints.
func (s *Server) products(rc context.Context, ctx *fasthttp.RequestCtx, clientID string, params []string) error {
	a, q, err := s.scope(rc, ctx, clientID, params, true)
	if err != nil {
		return err
	}
	rows, err := a.TopProducts(rc, q)
	if err != nil {
		return fmt.Errorf("cannot answer top products: %w", err)
	}
	writeData(ctx, rows)
	return nil
}

// taskHosts: GET /v1/tasks/{id}/analytics/hosts?limit=&cursor=, the job's
// hosts with their open ports, paged by ip.
func (s *Server) taskHosts(rc context.Context, ctx *fasthttp.RequestCtx, clientID string, params []string) error {
	a, q, err := s.scope(rc, ctx, clientID, params, false)
	if err != nil {
		return err
	}
	q.After = string(ctx.QueryArgs().Peek("cursor"))
	rows, err := a.Hosts(rc, q)
	if err != nil {
		return fmt.Errorf("cannot answer task hosts: %w", err)
	}
	next := ""
	if len(rows) == q.Limit {
		next = rows[len(rows)-1].IP
	}
	writeData(ctx, rows, "next_cursor", next)
	return nil
}

// ipHistory: GET /v1/analytics/ips/{ip}/history?limit=, what the caller's
// jobs found on one address, newest first.
func (s *Server) ipHistory(rc context.Context, ctx *fasthttp.RequestCtx, clientID string, params []string) error {
	a, err := s.analytics()
	if err != nil {
		return err
	}
	addr, err := netip.ParseAddr(params[0])
	if err != nil || addr.Zone() != "" {
		return errInvalid("bad ip", []FieldError{{Field: "ip", Message: "must be an IPv4 or IPv6 address"}})
	}
	limit, err := queryLimit(ctx, storage.DefaultAnalyticsLimit, storage.MaxAnalyticsLimit)
	if err != nil {
		return err
	}
	// events carry addresses in netip's text form; an IPv4-mapped IPv6
	// address names the IPv4 host
	rows, err := a.IPHistory(rc, clientID, addr.Unmap().String(), limit)
	if err != nil {
		return fmt.Errorf("cannot answer ip history: %w", err)
	}
	writeData(ctx, rows, "ip", addr.Unmap().String())
	return nil
}
