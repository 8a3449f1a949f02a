package api

import (
	"context"
	"encoding/json"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"trawl/engine"
	"trawl/ingest"
	"trawl/ingest/membus"
	"trawl/storage"
	"trawl/storage/embedded"
)

type testAPI struct {
	url    string
	token  string
	bus    *membus.Bus
	store  *embedded.Store
	tokens *Tokens
	tasks  ingest.Subscription
}

// fakeResolver knows one hostname, so tests never wait on DNS.
type fakeResolver struct{}

func (fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if host == "scanme.test" {
		return []netip.Addr{netip.MustParseAddr("198.18.7.7")}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func startAPI(t *testing.T, mutate func(*Config)) *testAPI {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	store, err := embedded.Open(ctx, t.TempDir()+"/trawl.db", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	bus := membus.New(membus.DefaultConfig(), zerolog.Nop())
	tokens, err := NewTokens([]byte(strings.Repeat("k", 32)), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pc := engine.PolicyConfig{Allow: []string{"198.18.0.0/15"}}
	policy, err := pc.Build()
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.MaxBodyBytes = 4096
	cfg.StreamURL = "http://127.0.0.1:8081"
	if mutate != nil {
		mutate(&cfg)
	}
	srv := New(cfg, Deps{Bus: bus, Store: store, Results: store, Blobs: store, Policy: policy, Resolver: fakeResolver{}, Tokens: tokens, Modules: []string{"service", "ssh"}}, zerolog.Nop())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	tasks, err := bus.Subscribe(ctx, ingest.TopicTasks, "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("api Run: %v", err)
		}
		bus.Close()
		store.Close()
	})
	u := storage.User{ID: "usr_test", AppID: "app_test", SecretHash: HashSecret("secret"), Name: "t", Created: time.Now()}
	other := storage.User{ID: "usr_other", AppID: "app_other", SecretHash: HashSecret("other"), Name: "o", Created: time.Now()}
	for _, u := range []storage.User{u, other} {
		if err := store.CreateUser(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	return &testAPI{url: "http://" + srv.Addr(ctx), token: tokens.Issue(u.ID), bus: bus, store: store, tokens: tokens, tasks: tasks}
}

type apiError struct {
	Error struct {
		Code    string         `json:"code"`
		Message string         `json:"message"`
		Details map[string]any `json:"details"`
	} `json:"error"`
}

func (a *testAPI) do(t *testing.T, method, path, token, body string, headers ...string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, a.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("X-Token", token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func TestLogin(t *testing.T) {
	a := startAPI(t, nil)
	cases := []struct {
		name        string
		app, user   string
		wantStatus  int
		wantErrCode string
	}{
		{"ok", "app_test", "secret", 200, ""},
		{"wrong secret", "app_test", "nope", 401, "unauthorized"},
		{"unknown app", "app_nope", "secret", 401, "unauthorized"},
		{"missing headers", "", "", 401, "unauthorized"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, method := range []string{"GET", "POST"} {
				var h []string
				if tc.app != "" {
					h = []string{"X-APP-ID", tc.app, "X-USER-ID", tc.user}
				}
				code, body := a.do(t, method, "/v1/login", "", "", h...)
				if code != tc.wantStatus {
					t.Fatalf("%s: status %d, want %d: %s", method, code, tc.wantStatus, body)
				}
				if tc.wantErrCode != "" {
					var e apiError
					if json.Unmarshal(body, &e) != nil || e.Error.Code != tc.wantErrCode || e.Error.Message == "" {
						t.Fatalf("error body %s", body)
					}
					if strings.Contains(string(body), "client_token") {
						t.Fatal("a failed login returned a token")
					}
					continue
				}
				var ok struct{ ClientToken, StreamURL string }
				json.Unmarshal(body, &struct {
					ClientToken *string `json:"client_token"`
					StreamURL   *string `json:"stream_url"`
				}{&ok.ClientToken, &ok.StreamURL})
				id, err := a.tokens.Verify(ok.ClientToken)
				if err != nil || id != "usr_test" || ok.StreamURL != "http://127.0.0.1:8081/v1/stream" {
					t.Fatalf("login body %s: verify %q %v", body, id, err)
				}
			}
		})
	}
}

func TestCreateTaskPublishesTask(t *testing.T) {
	a := startAPI(t, nil)
	body := `{"type":"scan","description":"d","options":[
		{"targets":["198.18.0.0/30","198.18.1.1"],"ports":[{"port":22,"sample":10,"modules":["service"]},{"port":"8000-8002","module":"ssh"}]},
		{"targets":["198.18.2.0-198.18.2.3","scanme.test"],"ports":[{"port":5900}]}]}`
	code, resp := a.do(t, "POST", "/v1/tasks", a.token, body)
	if code != 200 {
		t.Fatalf("status %d: %s", code, resp)
	}
	var created struct {
		StreamURL string `json:"stream_url"`
		JobID     string `json:"job_id"`
	}
	json.Unmarshal(resp, &created)
	if created.StreamURL != "http://127.0.0.1:8081/v1/stream/jobs/"+created.JobID {
		t.Fatalf("response %s", resp)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d, err := a.tasks.Fetch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var task ingest.Task
	if err := ingest.Decode(d.Value, &task); err != nil {
		t.Fatal(err)
	}
	if task.Kind != ingest.TaskStart || task.JobID != created.JobID || task.ClientID != "usr_test" || task.Shards != 1 || task.Rate != 10000 || len(task.Options) != 2 {
		t.Fatalf("task %+v", task)
	}
	if got := strings.Join(task.Options[1].Targets, ","); got != "198.18.2.0-198.18.2.3,198.18.7.7" {
		t.Fatalf("targets after resolving: %s", got)
	}
	// the name travels with its address, for SNI and certificate checks
	if !maps.Equal(task.Options[1].Hostnames, map[string]string{"198.18.7.7": "scanme.test"}) || task.Options[0].Hostnames != nil {
		t.Fatalf("hostnames %v and %v", task.Options[0].Hostnames, task.Options[1].Hostnames)
	}
	p := task.Options[0].Ports
	if len(p) != 2 || p[0].Ports != "22" || p[0].Sample != 10 || p[0].Modules[0] != "service" || p[1].Ports != "8000-8002" || p[1].Modules[0] != "ssh" {
		t.Fatalf("ports %+v", p)
	}
	job, err := a.store.Job(ctx, created.JobID)
	if err != nil || job.State != ingest.StateQueued || job.ClientID != "usr_test" || job.Description != "d" {
		t.Fatalf("stored job %+v %v", job, err)
	}
	code, resp = a.do(t, "GET", "/v1/tasks/"+created.JobID, a.token, "")
	if code != 200 || !strings.Contains(string(resp), `"state":"queued"`) || !strings.Contains(string(resp), `"request"`) {
		t.Fatalf("GET task: %d %s", code, resp)
	}
}

func TestBadInput(t *testing.T) {
	a := startAPI(t, nil)
	other := a.tokens.Issue("usr_other")
	ok := func(port string) string {
		return `{"type":"scan","options":[{"targets":["198.18.0.1"],"ports":[{"port":` + port + `}]}]}`
	}
	cases := []struct {
		name, method, path, token, body string
		status                          int
		code, mention                   string
	}{
		{"malformed json", "POST", "/v1/tasks", a.token, `{"type":`, 400, "invalid_json", "JSON"},
		{"empty body", "POST", "/v1/tasks", a.token, ``, 400, "invalid_json", "JSON"},
		{"not an object", "POST", "/v1/tasks", a.token, `[1]`, 422, "invalid_request", ""},
		{"unknown field", "POST", "/v1/tasks", a.token, `{"type":"scan","option":[]}`, 422, "invalid_request", "option"},
		{"unknown module", "POST", "/v1/tasks", a.token, `{"options":[{"targets":["198.18.0.1"],"ports":[{"port":22,"modules":["nope"]}]}]}`, 422, "invalid_request", "nope"},
		{"bad cidr", "POST", "/v1/tasks", a.token, `{"options":[{"targets":["198.18.0.0/33"],"ports":[{"port":22}]}]}`, 422, "invalid_request", "options[0].targets[0]"},
		{"port out of range", "POST", "/v1/tasks", a.token, ok("70000"), 422, "invalid_request", "options[0].ports[0]"},
		{"port zero", "POST", "/v1/tasks", a.token, ok("0"), 422, "invalid_request", "options[0].ports[0]"},
		{"bad port range", "POST", "/v1/tasks", a.token, ok(`"90-80"`), 422, "invalid_request", "options[0].ports[0]"},
		{"port missing", "POST", "/v1/tasks", a.token, `{"options":[{"targets":["198.18.0.1"],"ports":[{"sample":1}]}]}`, 422, "invalid_request", "port is required"},
		{"negative sample", "POST", "/v1/tasks", a.token, `{"options":[{"targets":["198.18.0.1"],"ports":[{"port":1,"sample":-1}]}]}`, 422, "invalid_request", "sample"},
		{"empty targets", "POST", "/v1/tasks", a.token, `{"options":[{"targets":[],"ports":[{"port":22}]}]}`, 422, "invalid_request", "options[0].targets"},
		{"no options", "POST", "/v1/tasks", a.token, `{"type":"scan"}`, 422, "invalid_request", "options"},
		{"bad type", "POST", "/v1/tasks", a.token, `{"type":"nuke","options":[{"targets":["198.18.0.1"],"ports":[{"port":22}]}]}`, 422, "invalid_request", "type"},
		{"grab without modules", "POST", "/v1/tasks", a.token, `{"type":"grab","options":[{"targets":["198.18.0.1"],"ports":[{"port":22}]}]}`, 422, "invalid_request", "module"},
		{"wrong type", "POST", "/v1/tasks", a.token, `{"options":[{"targets":"198.18.0.1","ports":[{"port":22}]}]}`, 422, "invalid_request", "targets"},
		{"rate too high", "POST", "/v1/tasks", a.token, `{"rate":100000000,"options":[{"targets":["198.18.0.1"],"ports":[{"port":22}]}]}`, 422, "invalid_request", "rate"},
		{"outside policy", "POST", "/v1/tasks", a.token, `{"options":[{"targets":["10.0.0.0/8"],"ports":[{"port":22}]}]}`, 422, "target_not_allowed", "10.0.0.0/8"},
		{"loopback outside policy", "POST", "/v1/tasks", a.token, `{"options":[{"targets":["127.0.0.1"],"ports":[{"port":22}]}]}`, 422, "target_not_allowed", ""},
		{"ipv6", "POST", "/v1/tasks", a.token, `{"options":[{"targets":["2001:db8::/64"],"ports":[{"port":22}]}]}`, 422, "invalid_request", "ipv6"},
		{"unresolvable host", "POST", "/v1/tasks", a.token, `{"options":[{"targets":["no-such-host.invalid"],"ports":[{"port":22}]}]}`, 422, "invalid_request", "no-such-host.invalid"},
		{"too large", "POST", "/v1/tasks", a.token, `{"description":"` + strings.Repeat("x", 5000) + `"}`, 413, "payload_too_large", "4096"},
		{"no token", "POST", "/v1/tasks", "", ok("22"), 401, "unauthorized", "X-Token"},
		{"bad token", "POST", "/v1/tasks", "tk_forged.sig", ok("22"), 401, "unauthorized", "token"},
		{"token of a deleted account", "GET", "/v1/tasks", a.tokens.Issue("usr_deleted"), "", 401, "unauthorized", "no longer exists"},
		{"unknown job", "GET", "/v1/tasks/job_nope", a.token, "", 404, "not_found", "job_nope"},
		{"unknown job results", "GET", "/v1/tasks/job_nope/results", a.token, "", 404, "not_found", ""},
		{"unknown job cancel", "POST", "/v1/tasks/job_nope/cancel", a.token, "", 404, "not_found", ""},
		{"bad limit", "GET", "/v1/tasks?limit=0", a.token, "", 422, "invalid_request", "limit"},
		{"bad state", "GET", "/v1/tasks?state=sleeping", a.token, "", 422, "invalid_request", "state"},
		{"wrong method", "DELETE", "/v1/tasks", a.token, "", 405, "method_not_allowed", "DELETE"},
		{"unknown route", "GET", "/v2/nothing", a.token, "", 404, "not_found", ""},
		{"other user sees nothing", "GET", "/v1/tasks", other, "", 200, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body := a.do(t, tc.method, tc.path, tc.token, tc.body)
			if status != tc.status {
				t.Fatalf("status %d, want %d: %s", status, tc.status, body)
			}
			if tc.code == "" {
				return
			}
			var e apiError
			if err := json.Unmarshal(body, &e); err != nil || e.Error.Code != tc.code {
				t.Fatalf("error object: %s (want code %s)", body, tc.code)
			}
			if !strings.Contains(string(body), tc.mention) {
				t.Fatalf("error does not mention %q: %s", tc.mention, body)
			}
		})
	}
	// nothing was queued by any of the bad requests
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if d, err := a.tasks.Fetch(ctx); err == nil {
		t.Fatalf("a rejected request published a task: %s", d.Value)
	}
}

func TestOwnershipAndCancel(t *testing.T) {
	a := startAPI(t, nil)
	code, resp := a.do(t, "POST", "/v1/tasks", a.token, `{"options":[{"targets":["198.18.0.1"],"ports":[{"port":22}]}]}`)
	if code != 200 {
		t.Fatalf("%d %s", code, resp)
	}
	var created struct {
		JobID string `json:"job_id"`
	}
	json.Unmarshal(resp, &created)
	other := a.tokens.Issue("usr_other")
	for _, p := range []string{"/v1/tasks/" + created.JobID, "/v1/tasks/" + created.JobID + "/results"} {
		if code, _ := a.do(t, "GET", p, other, ""); code != 404 {
			t.Fatalf("another user's GET %s: %d, want 404", p, code)
		}
	}
	if code, _ := a.do(t, "POST", "/v1/tasks/"+created.JobID+"/cancel", other, ""); code != 404 {
		t.Fatalf("another user's cancel: %d", code)
	}
	code, resp = a.do(t, "POST", "/v1/tasks/"+created.JobID+"/cancel", a.token, "")
	if code != 202 {
		t.Fatalf("cancel: %d %s", code, resp)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var kinds []string
	for len(kinds) < 2 {
		d, err := a.tasks.Fetch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var task ingest.Task
		ingest.Decode(d.Value, &task)
		kinds = append(kinds, task.Kind)
	}
	if kinds[0] != ingest.TaskStart || kinds[1] != ingest.TaskCancel {
		t.Fatalf("tasks on the bus: %v", kinds)
	}
	code, resp = a.do(t, "GET", "/v1/tasks?limit=1", a.token, "")
	if code != 200 || !strings.Contains(string(resp), created.JobID) {
		t.Fatalf("list: %d %s", code, resp)
	}
}

func TestTokens(t *testing.T) {
	tk, _ := NewTokens([]byte(strings.Repeat("s", 32)), time.Minute)
	tok := tk.Issue("usr_1")
	if id, err := tk.Verify(tok); err != nil || id != "usr_1" {
		t.Fatalf("verify: %q %v", id, err)
	}
	other, _ := NewTokens([]byte(strings.Repeat("o", 32)), time.Minute)
	if _, err := other.Verify(tok); err == nil {
		t.Fatal("a token verified under another secret")
	}
	for _, bad := range []string{"", "tk_", "tk_x.y", tok + "x", strings.Replace(tok, "tk_", "xx_", 1)} {
		if _, err := tk.Verify(bad); err == nil {
			t.Fatalf("verified %q", bad)
		}
	}
	tk.now = func() time.Time { return time.Now().Add(2 * time.Minute) }
	if _, err := tk.Verify(tok); err == nil {
		t.Fatal("an expired token verified")
	}
	if _, err := NewTokens([]byte("short"), time.Minute); err == nil {
		t.Fatal("short secret accepted")
	}
}
