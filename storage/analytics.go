package storage

import "errors"

// ErrMissingClient: analytics read one user's events only, so every query
// names its client.
var ErrMissingClient = errors.New("client id is required")

// Analytics page limits, the same in every store.
const (
	DefaultAnalyticsLimit = 100
	MaxAnalyticsLimit     = 1000
)

// AnalyticsQuery scopes an analytics question to one client's events, and to
// one job when JobID is set.
type AnalyticsQuery struct {
	ClientID string // required
	JobID    string // optional: one job
	Port     int    // TopProducts: > 0 keeps this port only
	After    string // Hosts: exclusive cursor (an ip); "" = from the start
	Limit    int    // <= 0: DefaultAnalyticsLimit; capped at MaxAnalyticsLimit
}

// AnalyticsLimit is the number of rows a store returns for limit.
func AnalyticsLimit(limit int) int {
	if limit <= 0 {
		return DefaultAnalyticsLimit
	}
	return min(limit, MaxAnalyticsLimit)
}

// PortCount is how many distinct hosts had a port open.
type PortCount struct {
	Port  int   `json:"port"`
	Count int64 `json:"count"`
}

// ProductCount is how many distinct endpoints (ip:port) ran a product
// version, as module results reported it: the top-level "product" and
// "version" string fields of result.data.
type ProductCount struct {
	Product string `json:"product"`
	Version string `json:"version"`
	Count   int64  `json:"count"`
}

// Host is one address with its open ports, ascending.
type Host struct {
	IP    string `json:"ip"`
	Ports []int  `json:"ports"`
	Count int    `json:"count"` // len(Ports)
}

// Sighting is one result about an address, from its history.
type Sighting struct {
	TS      int64  `json:"ts"` // unix milliseconds
	Port    int    `json:"port"`
	JobID   string `json:"job_id"`
	Type    string `json:"type"`
	Module  string `json:"module"`
	Product string `json:"product,omitempty"`
	Version string `json:"version,omitempty"`
	ID      string `json:"id"` // the event id
}
