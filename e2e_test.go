package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"trawl/engine/testbed"
	"trawl/ingest"
)

var built struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// buildTrawl builds the real binary once per test run.
func buildTrawl(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		if built.dir, built.err = os.MkdirTemp("", "trawl-e2e-"); built.err != nil {
			return
		}
		built.bin = filepath.Join(built.dir, "trawl")
		cmd := exec.Command("go", "build", "-o", built.bin, ".")
		cmd.Stderr = os.Stderr
		built.err = cmd.Run()
	})
	if built.err != nil {
		t.Fatalf("go build: %v", built.err)
	}
	return built.bin
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// greeter accepts connections and writes banner to each.
func greeter(t *testing.T, banner string) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveGreeting(t, ln, banner)
	return ln.Addr().(*net.TCPAddr).Port
}

// greeterOn listens on port of 127.0.0.1 … 127.0.0.n (a port free on all).
func greeterOn(t *testing.T, n int, banner string) int {
	t.Helper()
	for attempt := 0; attempt < 20; attempt++ {
		port := freePort(t)
		var lns []net.Listener
		for i := 1; i <= n; i++ {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%d", i, port))
			if err != nil {
				break
			}
			lns = append(lns, ln)
		}
		if len(lns) == n {
			for _, ln := range lns {
				serveGreeting(t, ln, banner)
			}
			return port
		}
		for _, ln := range lns {
			ln.Close()
		}
	}
	t.Fatal("no port free on every loopback address")
	return 0
}

func serveGreeting(t *testing.T, ln net.Listener, banner string) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				io.WriteString(c, banner)
				io.Copy(io.Discard, c)
			}()
		}
	}()
}

type e2eEnv struct {
	bin, dataDir, api, stream string
	appID, userID             string
}

func startTrawl(t *testing.T) *e2eEnv {
	t.Helper()
	env := &e2eEnv{bin: buildTrawl(t), dataDir: t.TempDir()}
	out, err := exec.Command(env.bin, "user", "add", "--data-dir", env.dataDir, "--name", "e2e").CombinedOutput()
	if err != nil {
		t.Fatalf("trawl user add: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`X-APP-ID: (\S+)\nX-USER-ID: (\S+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("user add printed no credentials:\n%s", out)
	}
	env.appID, env.userID = string(m[1]), string(m[2])

	apiPort, streamPort := freePort(t), freePort(t)
	env.api = fmt.Sprintf("http://127.0.0.1:%d", apiPort)
	env.stream = fmt.Sprintf("http://127.0.0.1:%d", streamPort)
	cmd := exec.Command(env.bin, "all", "--data-dir", env.dataDir,
		"--api.listen", fmt.Sprintf("127.0.0.1:%d", apiPort),
		"--stream.listen", fmt.Sprintf("127.0.0.1:%d", streamPort),
		"--scan.allow", "127.0.0.0/8", "--log.level", "debug")
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("trawl all did not exit cleanly on SIGINT: %v", err)
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Errorf("trawl all did not stop within 30s of SIGINT")
		}
		if t.Failed() {
			t.Logf("trawl all log:\n%s", logs.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		r1, err1 := http.Get(env.api + "/health")
		r2, err2 := http.Get(env.stream + "/health")
		if err1 == nil && err2 == nil && r1.StatusCode == 200 && r2.StatusCode == 200 {
			r1.Body.Close()
			r2.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("trawl all not healthy after 30s: %v %v\n%s", err1, err2, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return env
}

func doJSON(t *testing.T, method, url, token string, headers map[string]string, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("X-Token", token)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: status %d, body not JSON: %v\n%s", method, url, resp.StatusCode, err, b)
		}
	}
	return resp.StatusCode
}

// ndjson reads a stream URL line by line into a channel until the response ends.
func ndjson(t *testing.T, ctx context.Context, url, token string) <-chan []byte {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	req.Header.Set("X-Token", token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: status %d", url, resp.StatusCode)
	}
	lines := make(chan []byte, 1024)
	go func() {
		defer close(lines)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			lines <- append([]byte(nil), sc.Bytes()...)
		}
	}()
	return lines
}

// collectJob reads job events until the stream ends or the terminal event.
func collectJob(t *testing.T, lines <-chan []byte, timeout time.Duration) []ingest.Event {
	events, _ := collectJobTimed(t, lines, timeout)
	return events
}

// collectJobTimed also returns when the first event arrived.
func collectJobTimed(t *testing.T, lines <-chan []byte, timeout time.Duration) ([]ingest.Event, time.Time) {
	t.Helper()
	var events []ingest.Event
	var first time.Time
	deadline := time.After(timeout)
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				return events, first
			}
			var e ingest.Event
			if err := json.Unmarshal(line, &e); err != nil {
				t.Fatalf("stream line is not JSON: %v: %s", err, line)
			}
			if e.ID == "" { // heartbeat
				continue
			}
			if first.IsZero() {
				first = time.Now()
			}
			events = append(events, e)
			if e.Terminal() {
				return events, first
			}
		case <-deadline:
			t.Fatalf("job stream: no terminal event within %s; got %d events", timeout, len(events))
		}
	}
}

// login returns a client token for env's user.
func (env *e2eEnv) login(t *testing.T) (token, streamURL string) {
	t.Helper()
	var login struct {
		ClientToken string `json:"client_token"`
		StreamURL   string `json:"stream_url"`
	}
	if code := doJSON(t, "GET", env.api+"/v1/login", "", map[string]string{"X-APP-ID": env.appID, "X-USER-ID": env.userID}, "", &login); code != 200 {
		t.Fatalf("login: status %d", code)
	}
	return login.ClientToken, login.StreamURL
}

// submit posts a task and returns its job stream's events up to the terminal one.
func (env *e2eEnv) submit(t *testing.T, ctx context.Context, token, body string) (string, []ingest.Event) {
	t.Helper()
	var created struct {
		StreamURL string `json:"stream_url"`
		JobID     string `json:"job_id"`
	}
	if code := doJSON(t, "POST", env.api+"/v1/tasks", token, nil, body, &created); code != 200 {
		t.Fatalf("POST /v1/tasks: status %d", code)
	}
	return created.JobID, collectJob(t, ndjson(t, ctx, created.StreamURL, token), 60*time.Second)
}

func terminalStatus(t *testing.T, events []ingest.Event) ingest.JobStatus {
	t.Helper()
	last := events[len(events)-1]
	var s ingest.JobStatus
	if last.Origin.Type != "job_status" || json.Unmarshal(last.Result.Data, &s) != nil || !ingest.Terminal(s.Status) {
		t.Fatalf("last event is not a terminal job_status: %s %s", last.Origin.Type, last.Result.Data)
	}
	return s
}

func TestEndToEndGrabSampleCancel(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	a := greeter(t, "SSH-2.0-OpenSSH_9.2p1\r\n")
	b := greeter(t, "220 ftp ready\r\n")
	env := startTrawl(t)
	token, _ := env.login(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// grab: modules on the given ip:ports, no sweep, so no port events.
	_, events := env.submit(t, ctx, token, fmt.Sprintf(`{"type":"grab","options":[{"targets":["127.0.0.1"],"ports":[{"port":%d,"modules":["service"]},{"port":%d,"module":"service"}]}]}`, a, b))
	if s := terminalStatus(t, events); s.Status != "succeeded" || s.Counts.Results != 2 {
		t.Fatalf("grab terminal %+v", s)
	}
	for _, e := range events {
		if e.Origin.Type == "port" {
			t.Fatalf("a grab job swept ports: %+v", e.Target)
		}
	}

	// sample: 127.0.0.1-127.0.0.9 all answer on the greeter's port; sample 3 stops after three.
	many := greeterOn(t, 9, "hello\r\n")
	_, events = env.submit(t, ctx, token, fmt.Sprintf(`{"type":"scan","options":[{"targets":["127.0.0.1-127.0.0.9"],"ports":[{"port":%d,"sample":3}]}]}`, many))
	var open int
	for _, e := range events {
		if e.Origin.Type == "port" {
			open++
		}
	}
	if s := terminalStatus(t, events); s.Status != "succeeded" || open != 3 || s.Counts.OpenPorts != 3 {
		t.Fatalf("sample 3: %d port events, terminal %+v", open, s)
	}

	// cancel: a slow sweep of 65k probes at 50 probes/s, canceled while running.
	var created struct {
		StreamURL string `json:"stream_url"`
		JobID     string `json:"job_id"`
	}
	doJSON(t, "POST", env.api+"/v1/tasks", token, nil, `{"rate":50,"options":[{"targets":["127.0.0.0/24"],"ports":[{"port":"1-256"}]}]}`, &created)
	lines := ndjson(t, ctx, created.StreamURL, token)
	time.Sleep(300 * time.Millisecond)
	var resp map[string]any
	if code := doJSON(t, "POST", env.api+"/v1/tasks/"+created.JobID+"/cancel", token, nil, "", &resp); code != 202 {
		t.Fatalf("cancel: %d %v", code, resp)
	}
	events = collectJob(t, lines, 30*time.Second)
	if s := terminalStatus(t, events); s.Status != "canceled" {
		t.Fatalf("canceled job ended %+v", s)
	}
	var job struct{ State string }
	doJSON(t, "GET", env.api+"/v1/tasks/"+created.JobID, token, nil, "", &job)
	if job.State != "canceled" {
		t.Fatalf("GET after cancel: state %s", job.State)
	}
}

func TestEndToEndScanJob(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	sshPort := greeter(t, "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
	smtpPort := greeter(t, "220 mail.example ESMTP Postfix\r\n")
	closedPort := freePort(t)
	env := startTrawl(t)

	// 1. login: unknown pair → 401 with the error object; the real pair → token + stream URL.
	var apiErr struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if code := doJSON(t, "GET", env.api+"/v1/login", "", map[string]string{"X-APP-ID": env.appID, "X-USER-ID": "wrong"}, "", &apiErr); code != 401 || apiErr.Error.Code != "unauthorized" {
		t.Fatalf("login with a wrong user id: status %d, error %+v", code, apiErr)
	}
	var login struct {
		ClientToken string `json:"client_token"`
		StreamURL   string `json:"stream_url"`
	}
	if code := doJSON(t, "GET", env.api+"/v1/login", "", map[string]string{"X-APP-ID": env.appID, "X-USER-ID": env.userID}, "", &login); code != 200 {
		t.Fatalf("login: status %d", code)
	}
	if login.ClientToken == "" || login.StreamURL != env.stream+"/v1/stream" {
		t.Fatalf("login response %+v, want a token and stream_url %s/v1/stream", login, env.stream)
	}

	// 2. the user stream, open before the task.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	userLines := ndjson(t, ctx, login.StreamURL, login.ClientToken)

	// 3. the task: one options block, two port entries (the FAQ's "module" and "modules").
	body := fmt.Sprintf(`{"type":"scan","description":"e2e","options":[{"targets":["127.0.0.1/32"],"ports":[
		{"port":%d,"modules":["service"]},{"port":%d,"module":"service"},{"port":%d,"modules":["service"]}]}]}`,
		sshPort, smtpPort, closedPort)
	var created struct {
		StreamURL string `json:"stream_url"`
		JobID     string `json:"job_id"`
	}
	submitted := time.Now()
	if code := doJSON(t, "POST", env.api+"/v1/tasks", login.ClientToken, nil, body, &created); code != 200 {
		t.Fatalf("POST /v1/tasks: status %d", code)
	}
	if !strings.HasPrefix(created.JobID, "job_") || created.StreamURL != env.stream+"/v1/stream/jobs/"+created.JobID {
		t.Fatalf("task response %+v", created)
	}
	jobEvents, first := collectJobTimed(t, ndjson(t, ctx, created.StreamURL, login.ClientToken), 60*time.Second)
	t.Logf("first event %s after submission; job finished %s after submission with %d events",
		first.Sub(submitted), time.Since(submitted), len(jobEvents))
	for _, e := range jobEvents {
		if e.Origin.Type == "port" {
			t.Logf("first open port published %s after submission (origin.ts)", time.UnixMilli(e.Origin.TS).Sub(submitted).Round(time.Millisecond))
			break
		}
	}

	// 4. what the job stream carried.
	last := jobEvents[len(jobEvents)-1]
	var status ingest.JobStatus
	json.Unmarshal(last.Result.Data, &status)
	if last.Origin.Type != "job_status" || status.Status != "succeeded" {
		t.Fatalf("last event is %s %s, want job_status succeeded", last.Origin.Type, last.Result.Data)
	}
	if status.Counts.OpenPorts != 2 || status.Counts.Results != 2 || status.Counts.Sent != 3 {
		t.Fatalf("terminal counts %+v, want 3 sent, 2 open, 2 results", status.Counts)
	}
	ports := map[int]bool{}
	banners := map[int]string{}
	states := []string{}
	for _, e := range jobEvents {
		if e.Origin.JobID != created.JobID {
			t.Fatalf("job stream carried another job's event: %+v", e.Origin)
		}
		switch {
		case e.Origin.Type == "port":
			if e.Origin.Module != "portscan" || string(e.Result.Data) != `{"response":"synack"}` || e.Target.Protocol != "tcp" {
				t.Fatalf("port event %+v %s", e.Origin, e.Result.Data)
			}
			ports[e.Target.Port] = true
		case e.Origin.Type == "service":
			if e.Origin.Module != "grabber" {
				t.Fatalf("module event origin %+v", e.Origin)
			}
			var d struct{ Banner, Status, Name string }
			json.Unmarshal(e.Result.Data, &d)
			if d.Status != "success" {
				t.Fatalf("service result %s", e.Result.Data)
			}
			banners[e.Target.Port] = d.Banner
		case e.Origin.Type == "job_status":
			var s ingest.JobStatus
			json.Unmarshal(e.Result.Data, &s)
			states = append(states, s.Status)
		}
	}
	if !ports[sshPort] || !ports[smtpPort] || ports[closedPort] || len(ports) != 2 {
		t.Fatalf("open ports %v, want exactly %d and %d", ports, sshPort, smtpPort)
	}
	if !strings.Contains(banners[sshPort], "SSH-2.0-OpenSSH_9.2p1") || !strings.Contains(banners[smtpPort], "220 mail.example") {
		t.Fatalf("banners %v", banners)
	}
	if len(states) < 2 || states[0] != "queued" {
		t.Fatalf("job_status sequence %v, want queued first and succeeded last", states)
	}

	// 5. the task and its results from storage: the same rows the stream carried.
	var job struct {
		State  string           `json:"state"`
		Counts ingest.JobCounts `json:"counts"`
	}
	if code := doJSON(t, "GET", env.api+"/v1/tasks/"+created.JobID, login.ClientToken, nil, "", &job); code != 200 || job.State != "succeeded" || job.Counts.OpenPorts != 2 {
		t.Fatalf("GET task: %d %+v", code, job)
	}
	streamed := map[string]bool{}
	for _, e := range jobEvents {
		if e.Origin.Type != "job_status" {
			streamed[e.RecordID] = true
		}
	}
	var stored []ingest.Event
	deadline := time.Now().Add(10 * time.Second)
	for {
		var page struct {
			Data []ingest.Event `json:"data"`
		}
		doJSON(t, "GET", env.api+"/v1/tasks/"+created.JobID+"/results", login.ClientToken, nil, "", &page)
		stored = page.Data
		if len(stored) >= len(streamed) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(stored) != len(streamed) {
		t.Fatalf("results endpoint has %d rows, stream had %d", len(stored), len(streamed))
	}
	for _, e := range stored {
		if !streamed[e.RecordID] {
			t.Fatalf("stored row %s was never streamed", e.RecordID)
		}
	}
	// paging: limit=1 walks the same rows
	var walked int
	cursor := ""
	for i := 0; i < 10; i++ {
		var page struct {
			Data       []ingest.Event `json:"data"`
			NextCursor string         `json:"next_cursor"`
		}
		doJSON(t, "GET", env.api+"/v1/tasks/"+created.JobID+"/results?limit=1&cursor="+cursor, login.ClientToken, nil, "", &page)
		walked += len(page.Data)
		if page.NextCursor == "" {
			break
		}
		cursor = page.NextCursor
	}
	if walked != len(stored) {
		t.Fatalf("paging with limit=1 walked %d rows, want %d", walked, len(stored))
	}

	// 6. reconnect with since: everything after the cursor, nothing lost, nothing repeated.
	k := len(jobEvents) / 2
	replayed := collectJob(t, ndjson(t, ctx, created.StreamURL+"?since="+jobEvents[k].ID, login.ClientToken), 20*time.Second)
	var want, got []string
	for _, e := range jobEvents[k+1:] {
		want = append(want, e.ID)
	}
	for _, e := range replayed {
		got = append(got, e.ID)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("replay since %s:\n got %v\nwant %v", jobEvents[k].ID, got, want)
	}
	// Last-Event-ID works the same way
	req, _ := http.NewRequestWithContext(ctx, "GET", created.StreamURL, nil)
	req.Header.Set("X-Token", login.ClientToken)
	req.Header.Set("Last-Event-ID", jobEvents[k].ID)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if n := strings.Count(strings.TrimSpace(string(b)), "\n") + 1; !strings.Contains(string(b), want[len(want)-1]) || strings.Contains(string(b), jobEvents[k].ID) {
		t.Fatalf("Last-Event-ID replay (%d lines) does not match since=", n)
	}

	// 7. the user stream saw the job's events too.
	userSeen := map[string]bool{}
	timeout := time.After(10 * time.Second)
	for len(userSeen) < len(jobEvents) {
		select {
		case line := <-userLines:
			var e ingest.Event
			if json.Unmarshal(line, &e) == nil && e.ID != "" {
				userSeen[e.ID] = true
			}
		case <-timeout:
			t.Fatalf("user stream saw %d of the job's %d events", len(userSeen), len(jobEvents))
		}
	}
	for _, e := range jobEvents {
		if !userSeen[e.ID] {
			t.Fatalf("user stream missed %s %s", e.ID, e.Origin.Type)
		}
	}

	// 8. listing, cancel of a finished job, and an unknown job.
	var list struct {
		Data []struct{ ID string } `json:"data"`
	}
	if code := doJSON(t, "GET", env.api+"/v1/tasks", login.ClientToken, nil, "", &list); code != 200 || len(list.Data) != 1 || list.Data[0].ID != created.JobID {
		t.Fatalf("GET /v1/tasks: %d %+v", code, list)
	}
	if code := doJSON(t, "POST", env.api+"/v1/tasks/"+created.JobID+"/cancel", login.ClientToken, nil, "", &apiErr); code != 409 || apiErr.Error.Code != "conflict" {
		t.Fatalf("cancel of a finished job: %d %+v", code, apiErr)
	}
	if code := doJSON(t, "GET", env.api+"/v1/tasks/job_nope", login.ClientToken, nil, "", &apiErr); code != 404 || apiErr.Error.Code != "not_found" {
		t.Fatalf("unknown job: %d %+v", code, apiErr)
	}
}

func TestEndToEndScanCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	port := greeter(t, "SSH-2.0-OpenSSH_9.2p1\r\n")
	closed := freePort(t)
	bin := buildTrawl(t)
	cmd := exec.Command(bin, "scan", "--allow", "127.0.0.0/8", "-p", strconv.Itoa(port)+","+strconv.Itoa(closed), "--modules", "service", "--rate", "100", "--progress", "on", "127.0.0.1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("trawl scan: %v\n%s", err, stderr.String())
	}
	var types []string
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var e ingest.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("stdout line is not an event: %q", line)
		}
		if e.Target.Port != port || !strings.HasPrefix(e.ID, "ev_") {
			t.Fatalf("reported port %d (id %q), only %d is open", e.Target.Port, e.ID, port)
		}
		types = append(types, e.Origin.Type)
	}
	if strings.Join(types, ",") != "port,service" {
		t.Fatalf("event types %v, want port then service", types)
	}
	if !strings.Contains(stderr.String(), "pps") || !strings.Contains(stderr.String(), "ETA") ||
		!strings.Contains(stderr.String(), "2 probes sent, 1 open ports, 1 module results") {
		t.Fatalf("progress and summary on stderr: %q", stderr.String())
	}
	// bad input: exit code 1 and a message
	out, err := exec.Command(bin, "scan", "-p", "99999", "127.0.0.1").CombinedOutput()
	if code := exitCode(err); code != 1 || !strings.Contains(string(out), "port") {
		t.Fatalf("bad port: exit %d, output %s", code, out)
	}
	out, err = exec.Command(bin, "scan", "-p", "22", "127.0.0.1").CombinedOutput()
	if code := exitCode(err); code != 1 || !strings.Contains(strings.ToLower(string(out)), "policy") {
		t.Fatalf("loopback without --allow: exit %d, output %s", code, out)
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// TestEndToEndRawScanCLI runs `trawl scan --transport raw` inside the
// testbed's scanner namespace and compares its output with the ground truth.
func TestEndToEndRawScanCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	if err := testbed.Available(false); err != nil {
		t.Skipf("skipping: %v", err)
	}
	tb := testbed.New(t, testbed.Config{Block: "198.18.0.0/26", OpenPorts: []uint16{22, 80}})
	bin := buildTrawl(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := tb.Command(ctx, tb.ScannerNS, bin, "scan", "--transport", "raw", "--allow", "198.18.0.0/15",
		"-p", "22,80,443", "--rate", "5000", "198.18.0.0/26")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("trawl scan --transport raw: %v\n%s", err, stderr.String())
	}
	found := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var e ingest.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil || e.Origin.Type != "port" {
			t.Fatalf("unexpected output line %q", line)
		}
		key := fmt.Sprintf("%s:%d", e.Target.IP, e.Target.Port)
		if found[key] {
			t.Fatalf("%s reported twice", key)
		}
		found[key] = true
	}
	truth := tb.Open()
	for ap := range truth {
		if !found[ap.String()] {
			t.Errorf("missed %s", ap)
		}
	}
	if len(found) != len(truth) {
		t.Fatalf("found %d open ports, ground truth has %d", len(found), len(truth))
	}
}
