package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"trawl/ingest"
	"trawl/storage/clickhouse/chtest"
)

// proc is one trawl role running as its own process.
type proc struct {
	name string
	cmd  *exec.Cmd
	logs *bytes.Buffer
	done chan error
}

type procSet struct {
	t     *testing.T
	bin   string
	mu    sync.Mutex
	procs []*proc
}

func (ps *procSet) start(name string, args ...string) *proc {
	ps.t.Helper()
	cmd := exec.Command(ps.bin, args...)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		ps.t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, logs: &logs, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	ps.mu.Lock()
	ps.procs = append(ps.procs, p)
	ps.mu.Unlock()
	return p
}

// stopAll interrupts every process still running and waits for it.
func (ps *procSet) stopAll() {
	for _, p := range ps.procs {
		p.cmd.Process.Signal(os.Interrupt)
	}
	for _, p := range ps.procs {
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			p.cmd.Process.Kill()
			ps.t.Errorf("%s did not stop within 20s of SIGINT", p.name)
		}
		if ps.t.Failed() {
			ps.t.Logf("---- %s log (tail):\n%s", p.name, tailLines(p.logs.String(), 25))
		}
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func waitHealthy(t *testing.T, urls ...string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for _, u := range urls {
		for {
			r, err := http.Get(u + "/health")
			if err == nil {
				r.Body.Close()
				if r.StatusCode == 200 {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not healthy within 60s: %v", u, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// TestScaledOutRoles runs trawl as separate processes joined by Kafka
// (kfake over TCP) and storing into ClickHouse: 2 scanner shards, 3
// workers, 2 ingesters, 1 api, 2 stream servers. One job sweeps local
// listeners; midway a worker and an ingester are killed with SIGKILL. Every
// expected result must be stored exactly once and every subscriber of either
// stream server must see every event.
func TestScaledOutRoles(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a broker, ClickHouse and nine processes")
	}
	chAddr := chtest.Start(t) // skips when clickhouse-server is missing
	chDB := chtest.NewDatabase(t, chAddr)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	brokers := strings.Join(cluster.ListenAddrs(), ",")

	const hosts, portsPerHost = 12, 4
	var ports []int
	for i := 0; i < portsPerHost; i++ {
		ports = append(ports, greeterOn(t, hosts, fmt.Sprintf("220 host ready %d\r\n", i)))
	}

	dir := t.TempDir()
	secret := filepath.Join(dir, "auth.secret")
	os.WriteFile(secret, []byte(strings.Repeat("s3cr3t", 8)+"\n"), 0o600)
	bin := buildTrawl(t)
	common := []string{"--bus", "kafka", "--kafka.brokers", brokers, "--kafka.partitions", "6",
		"--kafka.session-timeout", "2s", "--kafka.heartbeat-interval", "200ms", "--kafka.rebalance-timeout", "2s",
		"--store", "clickhouse", "--clickhouse.addr", chAddr, "--clickhouse.database", chDB,
		"--auth.secret-file", secret, "--scan.allow", "127.0.0.0/8", "--log.format", "json", "--log.level", "debug"}
	if out, err := exec.Command(bin, append([]string{"kafka", "init"}, common...)...).CombinedOutput(); err != nil {
		t.Fatalf("trawl kafka init: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "user", "add", "--data-dir", filepath.Join(dir, "api"), "--name", "mp").CombinedOutput()
	if err != nil {
		t.Fatalf("user add: %v\n%s", err, out)
	}
	cred := regexp.MustCompile(`X-APP-ID: (\S+)\nX-USER-ID: (\S+)`).FindSubmatch(out)

	ps := &procSet{t: t, bin: bin}
	defer ps.stopAll()
	apiURL := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	streamA := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	streamB := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	role := func(name, r string, extra ...string) *proc {
		args := append([]string{r, "--data-dir", filepath.Join(dir, name)}, common...)
		return ps.start(name, append(args, extra...)...)
	}
	role("api", "api", "--api.listen", strings.TrimPrefix(apiURL, "http://"), "--api.stream-url", streamA, "--api.shards", "2")
	role("stream-a", "stream", "--stream.listen", strings.TrimPrefix(streamA, "http://"))
	role("stream-b", "stream", "--stream.listen", strings.TrimPrefix(streamB, "http://"))
	for i := 0; i < 2; i++ {
		role(fmt.Sprintf("scanner-%d", i), "scanner", "--scanner.shard", fmt.Sprintf("%d/2", i))
	}
	var workers, ingesters []*proc
	for i := 0; i < 3; i++ {
		workers = append(workers, role(fmt.Sprintf("worker-%d", i), "worker", "--api.public-url", apiURL))
	}
	for i := 0; i < 2; i++ {
		ingesters = append(ingesters, role(fmt.Sprintf("ingest-%d", i), "ingest"))
	}
	waitHealthy(t, apiURL, streamA, streamB)

	env := &e2eEnv{api: apiURL, appID: string(cred[1]), userID: string(cred[2])}
	token, _ := env.login(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	userA := ndjson(t, ctx, streamA+"/v1/stream", token)
	userB := ndjson(t, ctx, streamB+"/v1/stream", token)

	var entries []string
	for _, p := range ports {
		entries = append(entries, fmt.Sprintf(`{"port":%d,"modules":["service"]}`, p))
	}
	// 500 closed ports per host stretch the sweep to ~6 s at 1000 probes/s,
	// with the open ones spread through it by the permutation
	entries = append(entries, `{"port":"30000-30499"}`)
	body := fmt.Sprintf(`{"type":"scan","rate":1000,"options":[{"targets":["127.0.0.1-127.0.0.%d"],"ports":[%s]}]}`, hosts, strings.Join(entries, ","))
	var created struct {
		JobID     string `json:"job_id"`
		StreamURL string `json:"stream_url"`
	}
	started := time.Now()
	if code := doJSON(t, "POST", apiURL+"/v1/tasks", token, nil, body, &created); code != 200 {
		t.Fatalf("POST /v1/tasks: %d", code)
	}
	jobA := ndjson(t, ctx, created.StreamURL, token)
	jobB := ndjson(t, ctx, strings.Replace(created.StreamURL, streamA, streamB, 1), token)

	// midway: SIGKILL one worker and one ingester
	time.Sleep(2500 * time.Millisecond)
	workers[0].cmd.Process.Kill()
	ingesters[0].cmd.Process.Kill()
	killed := time.Now()
	killedAt := killed.Sub(started)

	eventsA := collectJob(t, jobA, 120*time.Second)
	eventsB := collectJob(t, jobB, 30*time.Second)
	elapsed := time.Since(started)
	final := terminalStatus(t, eventsA)
	want := uint64(hosts * portsPerHost)
	if final.Status != "succeeded" || final.Counts.OpenPorts != want || final.Counts.Results != want || final.Counts.Errors != 0 {
		t.Fatalf("terminal %+v, want succeeded with %d open ports and %d results", final, want, want)
	}
	t.Logf("job of %d open ports + %d results finished in %s across processes (%.0f results/s); worker and ingester killed at %s",
		want, want, elapsed.Round(time.Millisecond), float64(2*want)/elapsed.Seconds(), killedAt.Round(time.Millisecond))
	if elapsed < killedAt+500*time.Millisecond {
		t.Fatalf("the job finished %s, too soon after the kills at %s to test recovery", elapsed, killedAt)
	}
	// consumer lag: how long results waited after the worker died
	stall, after := stallAfter(eventsA, killed)
	var lastPort, lastResult int64
	for _, e := range eventsA {
		if e.Origin.Type == ingest.TypePort {
			lastPort = max(lastPort, e.Origin.TS)
		} else if e.Origin.Module == ingest.ModuleGrabber {
			lastResult = max(lastResult, e.Origin.TS)
		}
	}
	t.Logf("after the SIGKILL: %d result events (redeliveries included), longest gap %s; last open port found at +%s, last result at +%s (the dead worker's uncommitted ports waited for the rebalance; kafka session timeout 2s)",
		after, stall.Round(time.Millisecond), time.UnixMilli(lastPort).Sub(started).Round(time.Millisecond), time.UnixMilli(lastResult).Sub(started).Round(time.Millisecond))

	// stored exactly once: the results endpoint reads ClickHouse
	var stored []ingest.Event
	deadline := time.Now().Add(30 * time.Second)
	for {
		var page struct {
			Data []ingest.Event `json:"data"`
		}
		doJSON(t, "GET", apiURL+"/v1/tasks/"+created.JobID+"/results?limit=10000", token, nil, "", &page)
		stored = page.Data
		if uint64(len(stored)) >= 2*want || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	records := map[string]bool{}
	for _, e := range stored {
		if records[e.RecordID] {
			t.Fatalf("record %s stored twice", e.RecordID)
		}
		records[e.RecordID] = true
	}
	if uint64(len(records)) != 2*want {
		t.Fatalf("stored %d distinct results, want %d", len(records), 2*want)
	}

	// every subscriber of either stream server saw every stored result
	for name, evs := range map[string][]ingest.Event{"job stream A": eventsA, "job stream B": eventsB} {
		seen := map[string]bool{}
		for _, e := range evs {
			seen[e.RecordID] = true
		}
		for r := range records {
			if !seen[r] {
				t.Fatalf("%s missed record %s", name, r)
			}
		}
	}
	checkScreenshotLink(t, ctx, apiURL, token)

	// throughput with the survivors (2 workers, 1 ingester)
	n, took := grabThroughput(t, ctx, apiURL, token, 100, 40)
	t.Logf("grab job: %d results end to end in %s (%.0f results/s) with 2 workers and 1 ingester", n, took.Round(time.Millisecond), float64(n)/took.Seconds())

	for name, lines := range map[string]<-chan []byte{"user stream A": userA, "user stream B": userB} {
		seen := map[string]bool{}
		timeout := time.After(20 * time.Second)
		for missing := len(records); missing > 0; {
			select {
			case line := <-lines:
				var e ingest.Event
				if json.Unmarshal(line, &e) == nil && records[e.RecordID] && !seen[e.RecordID] {
					seen[e.RecordID] = true
					missing--
				}
			case <-timeout:
				t.Fatalf("%s saw %d of %d results", name, len(seen), len(records))
			}
		}
	}
}

// grabThroughput runs a grab job of n results (refused ports, so every probe
// answers at once) through the scaled-out pipeline and returns its duration.
func grabThroughput(t *testing.T, ctx context.Context, apiURL, token string, hosts, ports int) (int, time.Duration) {
	t.Helper()
	body := fmt.Sprintf(`{"type":"grab","options":[{"targets":["127.0.1.1-127.0.1.%d"],"ports":[{"port":"31000-%d","modules":["service"]}]}]}`, hosts, 31000+ports-1)
	var created struct {
		JobID     string `json:"job_id"`
		StreamURL string `json:"stream_url"`
	}
	start := time.Now()
	if code := doJSON(t, "POST", apiURL+"/v1/tasks", token, nil, body, &created); code != 200 {
		t.Fatalf("POST grab task: %d", code)
	}
	events := collectJob(t, ndjson(t, ctx, created.StreamURL, token), 120*time.Second)
	took := time.Since(start)
	s := terminalStatus(t, events)
	if s.Status != "succeeded" || s.Counts.Results != uint64(hosts*ports) {
		t.Fatalf("grab job terminal %+v, want %d results", s, hosts*ports)
	}
	return int(s.Counts.Results), took
}

// stallAfter is the longest gap between consecutive module results (by
// origin.ts, when a worker published them) from killed on: how long the
// results of a killed worker's partitions waited for Kafka to hand them to
// the survivors. It also returns how many results came after the kill.
func stallAfter(events []ingest.Event, killed time.Time) (time.Duration, int) {
	var stamps []int64
	for _, e := range events {
		if e.Origin.Module == ingest.ModuleGrabber {
			stamps = append(stamps, e.Origin.TS)
		}
	}
	slices.Sort(stamps)
	var stall time.Duration
	after := 0
	for i := 1; i < len(stamps); i++ {
		if stamps[i] >= killed.UnixMilli() {
			after++
			stall = max(stall, time.Duration(stamps[i]-max(stamps[i-1], killed.UnixMilli()))*time.Millisecond)
		}
	}
	return stall, after
}
