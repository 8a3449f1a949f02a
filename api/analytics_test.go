package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"trawl/ingest"
	"trawl/storage"
	"trawl/storage/embedded"
)

// analyticsAPI is an API server on an embedded store holding two users'
// findings: job (usr_test's) and otherJob (usr_other's).
type analyticsAPI struct {
	url           string
	token, other  string
	job, otherJob string
	store         *embedded.Store
}

// startAnalyticsAPI serves analytics from a (nil: the embedded store).
func startAnalyticsAPI(t *testing.T, a Analytics) *analyticsAPI {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	store, err := embedded.Open(ctx, t.TempDir()+"/trawl.db", zerolog.Nop())
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	tokens, err := NewTokens([]byte(strings.Repeat("k", 32)), time.Hour)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if a == nil {
		a = store
	}
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.RequestTimeout = 10 * time.Second
	srv := New(cfg, Deps{Store: store, Results: store, Analytics: a, Tokens: tokens}, zerolog.Nop())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("api Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("api Run did not stop within 10s")
		}
		store.Close()
	})
	addrCtx, addrCancel := context.WithTimeout(ctx, 5*time.Second)
	defer addrCancel()
	addr := srv.Addr(addrCtx)
	if addr == "" {
		t.Fatal("api did not start listening within 5s")
	}
	for _, id := range []string{"usr_test", "usr_other"} {
		if err := store.CreateUser(ctx, storage.User{ID: id, AppID: "app_" + id, SecretHash: HashSecret(id), Created: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	s := &analyticsAPI{url: "http://" + addr, token: tokens.Issue("usr_test"), other: tokens.Issue("usr_other"),
		job: ingest.NewID("job_"), otherJob: ingest.NewID("job_"), store: store}
	now := time.Now().UTC()
	for _, j := range []storage.Job{
		{ID: s.job, ClientID: "usr_test", Type: ingest.JobScan, State: ingest.StateSucceeded, Created: now, Updated: now},
		{ID: s.otherJob, ClientID: "usr_other", Type: ingest.JobScan, State: ingest.StateSucceeded, Created: now, Updated: now},
	} {
		if err := store.CreateJob(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	ts := now.Add(-time.Hour).UnixMilli()
	event := func(client, job, ip string, port int, module, data string) ingest.Event {
		ts += 1000
		e := ingest.Event{
			V: ingest.SchemaVersion, ID: ingest.NewID("evt_"),
			RecordID: ingest.RecordID(job, ip, strconv.Itoa(port), module),
			Origin:   ingest.Origin{JobID: job, ClientID: client, Type: ingest.TypePort, Module: ingest.ModulePortscan, TS: ts},
			Target:   ingest.Target{IP: ip, Port: port, Protocol: "tcp"},
		}
		if module != ingest.ModulePortscan {
			e.Origin.Type, e.Origin.Module = module, ingest.ModuleGrabber
			e.Result.Data = json.RawMessage(data)
		}
		return e
	}
	openssh := `{"name":"ssh","product":"OpenSSH","version":"9.6"}`
	a22 := event("usr_test", s.job, "198.18.7.1", 22, ingest.ModulePortscan, "")
	events := []ingest.Event{
		a22, a22, // a redelivery counts once
		event("usr_test", s.job, "198.18.7.2", 22, ingest.ModulePortscan, ""),
		event("usr_test", s.job, "198.18.7.1", 80, ingest.ModulePortscan, ""),
		event("usr_test", s.job, "198.18.7.1", 22, "service", openssh),
		event("usr_test", s.job, "198.18.7.2", 22, "service", openssh),
		event("usr_test", s.job, "198.18.7.1", 80, "service", `{"name":"http","product":"nginx","version":"1.24.0"}`),
		event("usr_other", s.otherJob, "198.18.7.1", 25, ingest.ModulePortscan, ""),
		event("usr_other", s.otherJob, "198.18.7.1", 25, "service", `{"product":"Postfix"}`),
	}
	if err := store.InsertEvents(ctx, events); err != nil {
		t.Fatal(err)
	}
	return s
}

// get fetches path with token and decodes a 200 answer into out; it
// returns the status and the raw body.
func (a *analyticsAPI) get(t *testing.T, path, token string, out any) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", a.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode == http.StatusOK && out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("GET %s: cannot decode %s: %v", path, body, err)
		}
	}
	return resp.StatusCode, body
}

type dataOf[T any] struct {
	Data       []T    `json:"data"`
	NextCursor string `json:"next_cursor"`
	IP         string `json:"ip"`
}

func TestAnalyticsEndpoints(t *testing.T) {
	a := startAnalyticsAPI(t, nil)
	tasks := "/v1/tasks/" + a.job + "/analytics/"

	t.Run("task ports", func(t *testing.T) {
		var got dataOf[storage.PortCount]
		code, body := a.get(t, tasks+"ports", a.token, &got)
		want := []storage.PortCount{{Port: 22, Count: 2}, {Port: 80, Count: 1}}
		if code != 200 || !equalJSON(got.Data, want) {
			t.Fatalf("status %d, body %s; want data %+v", code, body, want)
		}
	})
	t.Run("task products", func(t *testing.T) {
		openssh := storage.ProductCount{Product: "OpenSSH", Version: "9.6", Count: 2}
		nginx := storage.ProductCount{Product: "nginx", Version: "1.24.0", Count: 1}
		for path, want := range map[string][]storage.ProductCount{
			tasks + "products":           {openssh, nginx},
			tasks + "products?port=22":   {openssh},
			tasks + "products?limit=1":   {openssh},
			tasks + "products?port=8443": {},
		} {
			var got dataOf[storage.ProductCount]
			code, body := a.get(t, path, a.token, &got)
			if code != 200 || got.Data == nil || !equalJSON(got.Data, want) {
				t.Errorf("GET %s: status %d, body %s; want data %+v", path, code, body, want)
			}
		}
	})
	t.Run("task hosts paged", func(t *testing.T) {
		var pages [][]storage.Host
		cursor := ""
		for range 4 {
			var got dataOf[storage.Host]
			code, body := a.get(t, tasks+"hosts?limit=1&cursor="+cursor, a.token, &got)
			if code != 200 {
				t.Fatalf("status %d: %s", code, body)
			}
			pages = append(pages, got.Data)
			if got.NextCursor == "" {
				break
			}
			cursor = got.NextCursor
		}
		want := [][]storage.Host{
			{{IP: "198.18.7.1", Ports: []int{22, 80}, Count: 2}},
			{{IP: "198.18.7.2", Ports: []int{22}, Count: 1}},
			{}, // a full page says there may be more; the last page is empty
		}
		if !equalJSON(pages, want) {
			t.Fatalf("pages = %+v, want %+v", pages, want)
		}
	})
	t.Run("top ports are the caller's only", func(t *testing.T) {
		var got dataOf[storage.PortCount]
		a.get(t, "/v1/analytics/top-ports?limit=10", a.token, &got)
		if want := []storage.PortCount{{Port: 22, Count: 2}, {Port: 80, Count: 1}}; !equalJSON(got.Data, want) {
			t.Fatalf("usr_test top ports = %+v, want %+v", got.Data, want)
		}
		a.get(t, "/v1/analytics/top-ports", a.other, &got)
		if want := []storage.PortCount{{Port: 25, Count: 1}}; !equalJSON(got.Data, want) {
			t.Fatalf("usr_other top ports = %+v, want %+v", got.Data, want)
		}
	})
	t.Run("top products", func(t *testing.T) {
		var got dataOf[storage.ProductCount]
		code, body := a.get(t, "/v1/analytics/top-products?port=80&limit=5", a.token, &got)
		if want := []storage.ProductCount{{Product: "nginx", Version: "1.24.0", Count: 1}}; code != 200 || !equalJSON(got.Data, want) {
			t.Fatalf("status %d, body %s; want data %+v", code, body, want)
		}
	})
	t.Run("ip history", func(t *testing.T) {
		for _, ip := range []string{"198.18.7.1", "::ffff:198.18.7.1"} {
			var got dataOf[storage.Sighting]
			code, body := a.get(t, "/v1/analytics/ips/"+ip+"/history", a.token, &got)
			if code != 200 || got.IP != "198.18.7.1" || len(got.Data) != 4 {
				t.Fatalf("GET history of %s: status %d, body %s; want 4 sightings of 198.18.7.1", ip, code, body)
			}
			first := got.Data[0] // the newest: the nginx result
			if first.Port != 80 || first.Product != "nginx" || first.Version != "1.24.0" || first.JobID != a.job ||
				first.Type != "service" || first.Module != ingest.ModuleGrabber {
				t.Fatalf("newest sighting = %+v", first)
			}
			for i, sg := range got.Data {
				if sg.Port == 25 || sg.JobID != a.job {
					t.Fatalf("history shows another user's finding: %+v", sg)
				}
				if i > 0 && sg.TS > got.Data[i-1].TS {
					t.Fatalf("history not newest first: %+v", got.Data)
				}
			}
		}
		var got dataOf[storage.Sighting]
		a.get(t, "/v1/analytics/ips/198.18.7.1/history?limit=1", a.other, &got)
		if len(got.Data) != 1 || got.Data[0].Product != "Postfix" {
			t.Fatalf("usr_other's newest sighting = %+v, want the Postfix result", got.Data)
		}
	})
}

func TestAnalyticsErrors(t *testing.T) {
	a := startAnalyticsAPI(t, nil)
	tasks := "/v1/tasks/" + a.job + "/analytics/"
	for _, tc := range []struct {
		name, path, token string
		status            int
		code, field       string
	}{
		{"no credentials", "/v1/analytics/top-ports", "", 401, "unauthorized", ""},
		{"unknown job", "/v1/tasks/job_nope/analytics/ports", a.token, 404, "not_found", ""},
		{"another user's job", "/v1/tasks/" + a.otherJob + "/analytics/hosts", a.token, 404, "not_found", ""},
		{"another user's job products", "/v1/tasks/" + a.otherJob + "/analytics/products", a.token, 404, "not_found", ""},
		{"limit zero", tasks + "ports?limit=0", a.token, 422, "invalid_request", "limit"},
		{"limit too big", "/v1/analytics/top-ports?limit=1001", a.token, 422, "invalid_request", "limit"},
		{"limit not a number", tasks + "hosts?limit=ten", a.token, 422, "invalid_request", "limit"},
		{"history limit", "/v1/analytics/ips/198.18.7.1/history?limit=-1", a.token, 422, "invalid_request", "limit"},
		{"port zero", tasks + "products?port=0", a.token, 422, "invalid_request", "port"},
		{"port too big", "/v1/analytics/top-products?port=65536", a.token, 422, "invalid_request", "port"},
		{"port not a number", "/v1/analytics/top-products?port=ssh", a.token, 422, "invalid_request", "port"},
		{"bad ip", "/v1/analytics/ips/198.18.7.300/history", a.token, 422, "invalid_request", "ip"},
		{"hostname for ip", "/v1/analytics/ips/scanme.test/history", a.token, 422, "invalid_request", "ip"},
		{"ip with zone", "/v1/analytics/ips/fe80::1%25eth0/history", a.token, 422, "invalid_request", "ip"},
		{"unknown analytics", "/v1/analytics/bottom-ports", a.token, 404, "not_found", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := a.get(t, tc.path, tc.token, nil)
			assertAPIError(t, code, body, tc.status, tc.code, tc.field)
		})
	}
}

// failingAnalytics fails every question, as a store that is down does.
type failingAnalytics struct{}

var errStoreDown = errors.New("store is down")

func (failingAnalytics) TopPorts(context.Context, storage.AnalyticsQuery) ([]storage.PortCount, error) {
	return nil, errStoreDown
}

func (failingAnalytics) TopProducts(context.Context, storage.AnalyticsQuery) ([]storage.ProductCount, error) {
	return nil, errStoreDown
}

func (failingAnalytics) Hosts(context.Context, storage.AnalyticsQuery) ([]storage.Host, error) {
	return nil, errStoreDown
}

func (failingAnalytics) IPHistory(context.Context, string, string, int) ([]storage.Sighting, error) {
	return nil, errStoreDown
}

// A store failure is a 500 whose body does not leak the cause.
func TestAnalyticsStoreFailure(t *testing.T) {
	a := startAnalyticsAPI(t, failingAnalytics{})
	tasks := "/v1/tasks/" + a.job + "/analytics/"
	for _, path := range []string{
		tasks + "ports", tasks + "products", tasks + "hosts",
		"/v1/analytics/top-ports", "/v1/analytics/top-products", "/v1/analytics/ips/198.18.7.1/history",
	} {
		code, body := a.get(t, path, a.token, nil)
		assertAPIError(t, code, body, 500, "internal", "")
		if strings.Contains(string(body), errStoreDown.Error()) {
			t.Errorf("GET %s leaks the store error: %s", path, body)
		}
	}
}

// A node wired without analytics says so with 503, not a crash.
func TestAnalyticsNotConfigured(t *testing.T) {
	a := startAnalyticsAPI(t, nil)
	srv := New(DefaultConfig(), Deps{Store: a.store, Results: a.store}, zerolog.Nop())
	if _, err := srv.analytics(); err == nil {
		t.Fatal("analytics() without Deps.Analytics: nil error")
	} else if e, ok := errors.AsType[*Error](err); !ok || e.Status != http.StatusServiceUnavailable {
		t.Fatalf("analytics() = %v, want a 503 error object", err)
	}
}

func assertAPIError(t *testing.T, status int, body []byte, wantStatus int, wantCode, wantField string) {
	t.Helper()
	if status != wantStatus {
		t.Fatalf("status %d, want %d: %s", status, wantStatus, body)
	}
	var e apiError
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Code != wantCode {
		t.Fatalf("body %s (%v), want error code %q", body, err, wantCode)
	}
	if wantField == "" {
		return
	}
	fields, _ := e.Error.Details["errors"].([]any)
	for _, f := range fields {
		if m, ok := f.(map[string]any); ok && m["field"] == wantField {
			return
		}
	}
	t.Fatalf("body %s: want an error on field %q", body, wantField)
}

// equalJSON compares two values as their JSON forms.
func equalJSON(got, want any) bool {
	g, err1 := json.Marshal(got)
	w, err2 := json.Marshal(want)
	return err1 == nil && err2 == nil && string(g) == string(w)
}
