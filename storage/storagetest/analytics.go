package storagetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"testing"
	"time"

	"trawl/ingest"
	"trawl/storage"
)

// AnalyticsStore is the analytics part of an events store.
type AnalyticsStore interface {
	InsertEvents(ctx context.Context, events []ingest.Event) error
	TopPorts(ctx context.Context, q storage.AnalyticsQuery) ([]storage.PortCount, error)
	TopProducts(ctx context.Context, q storage.AnalyticsQuery) ([]storage.ProductCount, error)
	Hosts(ctx context.Context, q storage.AnalyticsQuery) ([]storage.Host, error)
	IPHistory(ctx context.Context, clientID, ip string, limit int) ([]storage.Sighting, error)
}

// analyticsFixture is one client's two jobs, with redeliveries, module
// results with and without a product, a job_status event, and another
// client's findings on the same address.
type analyticsFixture struct {
	client, other string
	job1, job2    string
	history       []storage.Sighting // the client's sightings of 198.18.7.1, newest first
	otherHistory  []storage.Sighting // the other client's, newest first
}

// RunAnalytics runs the analytics cases on one store from open, seeded once:
// every store must give exactly these answers for the same events, before
// and after any background merge.
func RunAnalytics(t *testing.T, open func(t *testing.T) AnalyticsStore) {
	s := open(t)
	f := seedAnalytics(t, s)
	job1 := storage.AnalyticsQuery{ClientID: f.client, JobID: f.job1}
	job2 := storage.AnalyticsQuery{ClientID: f.client, JobID: f.job2}
	all := storage.AnalyticsQuery{ClientID: f.client}
	with := func(q storage.AnalyticsQuery, edit func(*storage.AnalyticsQuery)) storage.AnalyticsQuery {
		edit(&q)
		return q
	}

	t.Run("TopPorts", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			q    storage.AnalyticsQuery
			want []storage.PortCount
		}{
			// 198.18.7.1:22 came three times (twice as one event, once
			// more under a new id): one host
			{"job1", job1, []storage.PortCount{pc(22, 2), pc(80, 1), pc(443, 1)}},
			{"job2", job2, []storage.PortCount{pc(443, 1), pc(2222, 1)}},
			{"all jobs", all, []storage.PortCount{pc(22, 2), pc(443, 2), pc(80, 1), pc(2222, 1)}},
			{"limit", with(all, func(q *storage.AnalyticsQuery) { q.Limit = 2 }), []storage.PortCount{pc(22, 2), pc(443, 2)}},
			{"other client", storage.AnalyticsQuery{ClientID: f.other}, []storage.PortCount{pc(25, 1)}},
			{"other client's job", storage.AnalyticsQuery{ClientID: f.other, JobID: f.job1}, nil},
			{"new client", storage.AnalyticsQuery{ClientID: newClient()}, nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got, err := s.TopPorts(t.Context(), tc.q)
				assertRows(t, "TopPorts", tc.q, got, err, tc.want)
			})
		}
	})

	t.Run("TopProducts", func(t *testing.T) {
		openssh := storage.ProductCount{Product: "OpenSSH", Version: "9.6", Count: 2}
		dropbear := storage.ProductCount{Product: "Dropbear sshd", Version: "2022.83", Count: 1}
		nginx := storage.ProductCount{Product: "nginx", Version: "1.24.0", Count: 1}
		nginxNoVersion := storage.ProductCount{Product: "nginx", Count: 1}
		for _, tc := range []struct {
			name string
			q    storage.AnalyticsQuery
			want []storage.ProductCount
		}{
			// 198.18.7.2:22 reported by two modules is one endpoint; a
			// later copy of a record with other data does not count
			{"all jobs", all, []storage.ProductCount{openssh, dropbear, nginxNoVersion, nginx}},
			{"job1", job1, []storage.ProductCount{openssh, nginx}},
			{"job1 port 22", with(job1, func(q *storage.AnalyticsQuery) { q.Port = 22 }), []storage.ProductCount{openssh}},
			{"job2", job2, []storage.ProductCount{dropbear, nginxNoVersion}},
			{"port 443", with(all, func(q *storage.AnalyticsQuery) { q.Port = 443 }), []storage.ProductCount{nginxNoVersion}},
			{"port without products", with(all, func(q *storage.AnalyticsQuery) { q.Port = 9 }), nil},
			{"limit", with(all, func(q *storage.AnalyticsQuery) { q.Limit = 1 }), []storage.ProductCount{openssh}},
			{"other client", storage.AnalyticsQuery{ClientID: f.other}, []storage.ProductCount{{Product: "Postfix", Version: "3.8", Count: 1}}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got, err := s.TopProducts(t.Context(), tc.q)
				assertRows(t, "TopProducts", tc.q, got, err, tc.want)
			})
		}
	})

	t.Run("Hosts", func(t *testing.T) {
		h1 := storage.Host{IP: "198.18.7.1", Ports: []int{22, 80}, Count: 2}
		h10 := storage.Host{IP: "198.18.7.10", Ports: []int{443}, Count: 1}
		h2 := storage.Host{IP: "198.18.7.2", Ports: []int{22}, Count: 1}
		for _, tc := range []struct {
			name string
			q    storage.AnalyticsQuery
			want []storage.Host
		}{
			// in byte order of the text form; the job_status event has no ip
			{"job1", job1, []storage.Host{h1, h10, h2}},
			{"page 1", with(job1, func(q *storage.AnalyticsQuery) { q.Limit = 2 }), []storage.Host{h1, h10}},
			{"page 2", with(job1, func(q *storage.AnalyticsQuery) { q.Limit = 2; q.After = h10.IP }), []storage.Host{h2}},
			{"past the end", with(job1, func(q *storage.AnalyticsQuery) { q.After = h2.IP }), nil},
			{"job2", job2, []storage.Host{
				{IP: "198.18.7.1", Ports: []int{2222}, Count: 1},
				{IP: "198.18.7.3", Ports: []int{443}, Count: 1},
			}},
			{"all jobs", all, []storage.Host{
				{IP: "198.18.7.1", Ports: []int{22, 80, 2222}, Count: 3}, h10, h2,
				{IP: "198.18.7.3", Ports: []int{443}, Count: 1},
			}},
			{"other client's job", storage.AnalyticsQuery{ClientID: f.other, JobID: f.job1}, nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got, err := s.Hosts(t.Context(), tc.q)
				assertRows(t, "Hosts", tc.q, got, err, tc.want)
			})
		}
	})

	t.Run("IPHistory", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			client string
			ip     string
			limit  int
			want   []storage.Sighting
		}{
			{"all", f.client, "198.18.7.1", 0, f.history},
			{"limit", f.client, "198.18.7.1", 2, f.history[:2]},
			{"other client", f.other, "198.18.7.1", 0, f.otherHistory},
			{"unknown ip", f.client, "198.18.9.9", 0, nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got, err := s.IPHistory(t.Context(), tc.client, tc.ip, tc.limit)
				assertRows(t, "IPHistory", tc.ip, got, err, tc.want)
			})
		}
	})

	t.Run("MissingClient", func(t *testing.T) {
		ctx := t.Context()
		q := storage.AnalyticsQuery{JobID: f.job1}
		for name, call := range map[string]func() error{
			"TopPorts":    func() error { _, err := s.TopPorts(ctx, q); return err },
			"TopProducts": func() error { _, err := s.TopProducts(ctx, q); return err },
			"Hosts":       func() error { _, err := s.Hosts(ctx, q); return err },
			"IPHistory":   func() error { _, err := s.IPHistory(ctx, "", "198.18.7.1", 0); return err },
		} {
			if err := call(); !errors.Is(err, storage.ErrMissingClient) {
				t.Errorf("%s without a client = %v, want ErrMissingClient", name, err)
			}
		}
	})
}

// seedAnalytics stores the fixture's events: in three batches, each fact's
// first copy before its later ones, as the bus delivers them.
func seedAnalytics(t *testing.T, s AnalyticsStore) analyticsFixture {
	t.Helper()
	f := analyticsFixture{client: newClient(), other: newClient(), job1: newJob(), job2: newJob()}
	ts := time.Now().Add(-time.Hour).UnixMilli()
	next := func(e ingest.Event) ingest.Event {
		ts += 1000
		e.Origin.TS = ts
		return e
	}
	port := func(client, job, ip string, p int) ingest.Event {
		return next(portEvent(client, job, ip, p))
	}
	grab := func(client, job, ip string, p int, module, data string) ingest.Event {
		e := port(client, job, ip, p)
		e.RecordID = ingest.RecordID(job, ip, strconv.Itoa(p), module)
		e.Origin.Type, e.Origin.Module = module, ingest.ModuleGrabber
		e.Result.Data = json.RawMessage(data)
		return e
	}
	// copyOf is the same fact under a later bus position, found again later
	copyOf := func(e ingest.Event, data string) ingest.Event {
		c := next(e)
		c.ID = ingest.NewID("evt_")
		c.Result.Data = json.RawMessage(data)
		return c
	}
	service := func(product, version string) string {
		return fmt.Sprintf(`{"name":"ssh","banner":"x","product":%q,"version":%q,"port":22}`, product, version)
	}
	const ip = "198.18.7.1"
	c, o := f.client, f.other

	a22 := port(c, f.job1, ip, 22)
	a80 := port(c, f.job1, ip, 80)
	b2222 := port(c, f.job2, ip, 2222)
	g22 := grab(c, f.job1, ip, 22, "service", service("OpenSSH", "9.6"))
	g80 := grab(c, f.job1, ip, 80, "service", `{"name":"http","product":"nginx","version":"1.24.0"}`)
	g2222 := grab(c, f.job2, ip, 2222, "service", service("Dropbear sshd", "2022.83"))
	o25 := port(o, newJob(), ip, 25)
	og25 := grab(o, o25.Origin.JobID, ip, 25, "service", `{"product":"Postfix","version":"3.8"}`)
	first := []ingest.Event{
		a22, a22, a80,
		port(c, f.job1, "198.18.7.2", 22),
		port(c, f.job1, "198.18.7.10", 443),
		statusEvent(c, f.job1, ingest.StateRunning),
		b2222,
		port(c, f.job2, "198.18.7.3", 443),
		g22, g80, g2222,
		grab(c, f.job1, "198.18.7.2", 22, "service", service("OpenSSH", "9.6")),
		grab(c, f.job1, "198.18.7.2", 22, "ssh", `{"banner":"SSH-2.0-OpenSSH_9.6","product":"OpenSSH","version":"9.6"}`),
		grab(c, f.job2, "198.18.7.3", 443, "service", `{"status":"error"}`),       // no product
		grab(c, f.job2, "198.18.7.10", 443, "service", `{"product":"nginx"}`),     // no version
		grab(c, f.job2, "198.18.7.2", 22, "vnc", `{"product":5,"version":"RFB"}`), // not a string
		o25, og25,
	}
	mustInsertAnalytics(t, s, first)
	// exact redeliveries, and the same facts under new ids with other data
	mustInsertAnalytics(t, s, []ingest.Event{a22, g22, copyOf(a22, `{"ttl":1}`)})
	mustInsertAnalytics(t, s, []ingest.Event{copyOf(g22, service("Dropbear sshd", "0.1")), copyOf(g80, `{}`)})

	for _, e := range []ingest.Event{g2222, g80, g22, b2222, a80, a22} { // newest first
		f.history = append(f.history, sighting(e))
	}
	f.otherHistory = []storage.Sighting{sighting(og25), sighting(o25)}
	return f
}

func pc(port int, hosts int64) storage.PortCount { return storage.PortCount{Port: port, Count: hosts} }

func sighting(e ingest.Event) storage.Sighting {
	sg := storage.Sighting{TS: e.Origin.TS, Port: e.Target.Port, JobID: e.Origin.JobID,
		Type: e.Origin.Type, Module: e.Origin.Module, ID: e.ID}
	var fields struct{ Product, Version any }
	_ = json.Unmarshal(e.Result.Data, &fields)
	sg.Product, _ = fields.Product.(string)
	sg.Version, _ = fields.Version.(string)
	return sg
}

func mustInsertAnalytics(t *testing.T, s AnalyticsStore, events []ingest.Event) {
	t.Helper()
	if err := s.InsertEvents(t.Context(), events); err != nil {
		t.Fatalf("InsertEvents(%d events): %v", len(events), err)
	}
}

// assertRows checks an answer row for row; nil want means no rows.
func assertRows[T any](t *testing.T, call string, q any, got []T, err error, want []T) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s(%+v): %v", call, q, err)
	}
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s(%+v)\n got %+v\nwant %+v", call, q, got, want)
	}
}
