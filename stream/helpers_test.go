package stream

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"trawl/ingest"
	"trawl/ingest/membus"
	"trawl/storage"
)

const (
	alice      = "usr_alice"
	bob        = "usr_bob"
	aliceToken = "tok-alice"
	bobToken   = "tok-bob"
	waitLong   = 5 * time.Second
)

var errBadToken = errors.New("bad token")

func testAuth(token string) (string, error) {
	switch token {
	case aliceToken:
		return alice, nil
	case bobToken:
		return bob, nil
	}
	return "", errBadToken
}

// fakeSource is an in-memory EventSource that honors the query like a store.
type fakeSource struct {
	mu       sync.Mutex
	events   []ingest.Event // sorted by id
	err      error
	maxLimit int  // caps each page, to exercise paging
	leaky    bool // ignores ClientID, as a buggy store would
	calls    int
	onQuery  func(call int) // runs before the query is answered
	blockJob string         // queries of this job hang until ctx ends
}

// add stores evs as the ingester does, under the ids consumers derived
// (publish or storedEarlier sets them). An event without one breaks every
// later query, so a test that forgets cannot pass by accident.
func (f *fakeSource) add(evs ...ingest.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range evs {
		if e.ID == "" {
			f.err = errors.New("fakeSource: an event was stored without an id")
		}
	}
	f.events = append(f.events, evs...)
	slices.SortFunc(f.events, func(a, b ingest.Event) int { return strings.Compare(a.ID, b.ID) })
}

func (f *fakeSource) Events(ctx context.Context, q storage.EventQuery) ([]ingest.Event, error) {
	f.mu.Lock()
	f.calls++
	call, hook := f.calls, f.onQuery
	f.mu.Unlock()
	if hook != nil {
		hook(call)
	}
	f.mu.Lock()
	block := f.blockJob != "" && q.JobID == f.blockJob
	f.mu.Unlock()
	if block {
		<-ctx.Done()
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	limit := q.Limit
	if limit <= 0 {
		limit = 1000
	}
	if f.maxLimit > 0 {
		limit = min(limit, f.maxLimit)
	}
	var out []ingest.Event
	for _, e := range f.events {
		if (!f.leaky && e.Origin.ClientID != q.ClientID) || (q.JobID != "" && e.Origin.JobID != q.JobID) || e.ID <= q.After {
			continue
		}
		out = append(out, e)
		if len(out) == limit {
			break
		}
	}
	return out, nil
}

// newEvent makes an event as a producer does: without an id, which the
// consumers derive from its position on the bus (see harness.publish).
func newEvent(client, job, typ, module, data string) ingest.Event {
	return ingest.Event{
		RecordID: ingest.RecordID(client, job, typ, data),
		Origin:   ingest.Origin{JobID: job, ClientID: client, Type: typ, Module: module, TS: time.Now().UnixMilli()},
		Target:   ingest.Target{IP: "198.18.0.1", Port: 22, Protocol: "tcp"},
		Result:   ingest.Result{Data: json.RawMessage(data)},
	}
}

func portEvent(client, job string) ingest.Event {
	return newEvent(client, job, ingest.TypePort, ingest.ModulePortscan, `{"state":"open"}`)
}

func statusEvent(client, job, state string) ingest.Event {
	b, _ := json.Marshal(ingest.JobStatus{Status: state, Progress: 1})
	return newEvent(client, job, ingest.TypeJobStatus, ingest.ModuleJob, string(b))
}

// events makes n port events of one job.
func events(n int, client, job string) []ingest.Event {
	out := make([]ingest.Event, n)
	for i := range out {
		out[i] = portEvent(client, job)
	}
	return out
}

// earlierRun is the epoch of a previous run of the bus: the ids it gave
// sort before every id of the test's bus (whose epoch is the time it started).
var (
	earlierRun    = time.Now().Add(-time.Hour).UnixMilli()
	earlierOffset atomic.Int64
)

// storedEarlier gives evs the ids an ingester stored them under in an
// earlier run of the bus, in order: they sort before anything published in
// the test, as events of a job that began before a restart do.
func storedEarlier(evs ...*ingest.Event) {
	for _, e := range evs {
		e.ID = ingest.Delivery{Epoch: earlierRun, Offset: earlierOffset.Add(1)}.Cursor()
	}
}

// ptrs points at each event of evs, for publish and storedEarlier.
func ptrs(evs []ingest.Event) []*ingest.Event {
	out := make([]*ingest.Event, len(evs))
	for i := range evs {
		out[i] = &evs[i]
	}
	return out
}

func ids(evs []ingest.Event) []string {
	out := make([]string, len(evs))
	for i := range evs {
		out[i] = evs[i].ID
	}
	return out
}

type harness struct {
	srv    *Server
	bus    *membus.Bus
	src    *fakeSource
	base   string
	cancel context.CancelFunc
	runErr chan error
}

type harnessOpts struct {
	cfg      func(*Config)
	busQueue int
	noStore  bool // no EventSource: replay from the ring only
}

func startServer(t testing.TB, o harnessOpts) *harness {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Heartbeat = time.Second
	cfg.WriteTimeout = waitLong
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("invalid test config: %v", err)
	}
	busQueue := o.busQueue
	if busQueue == 0 {
		busQueue = 1 << 16
	}
	h := &harness{
		bus:    membus.New(membus.Config{QueueSize: busQueue}, zerolog.Nop()),
		src:    &fakeSource{},
		runErr: make(chan error, 1),
	}
	var src EventSource = h.src
	if o.noStore {
		src = nil
	}
	h.srv = New(cfg, h.bus, src, testAuth, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.runErr <- h.srv.Run(ctx) }()
	select {
	case <-h.srv.Ready():
	case err := <-h.runErr:
		t.Fatalf("Run: %v", err)
	case <-time.After(waitLong):
		t.Fatal("server not ready")
	}
	h.base = h.srv.PublicURL()
	t.Cleanup(func() {
		h.stop(t)
		_ = h.bus.Close()
	})
	return h
}

// stop ends Run and checks it returns nil promptly; harmless twice.
func (h *harness) stop(t testing.TB) {
	t.Helper()
	h.cancel()
	select {
	case err, ok := <-h.runErr:
		if ok && err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
		if ok {
			close(h.runErr)
		}
	case <-time.After(2 * waitLong):
		t.Error("Run did not return after cancel")
	}
}

// publish publishes evs as producers do (ingest.EventMessage, no id) and
// sets each one's ID to the id every consumer derives from where the bus put
// it, read back as a consumer like the ingester does: a tap subscribed for
// the call. It returns the published values. One publisher at a time.
func (h *harness) publish(t testing.TB, evs ...*ingest.Event) [][]byte {
	t.Helper()
	vals, err := h.tryPublish(evs...)
	if err != nil {
		t.Fatal(err)
	}
	return vals
}

// tryPublish is publish for goroutines that must not FailNow.
func (h *harness) tryPublish(evs ...*ingest.Event) ([][]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	msgs, vals, err := messages(evs)
	if err != nil {
		return nil, err
	}
	tap, err := h.bus.Subscribe(ctx, ingest.TopicEvents, "")
	if err != nil {
		return nil, err
	}
	defer tap.Close()
	if err := h.bus.Publish(ctx, ingest.TopicEvents, msgs...); err != nil {
		return nil, err
	}
	for i, e := range evs {
		d, err := tap.Fetch(ctx)
		if err != nil {
			return nil, fmt.Errorf("tap: %w", err)
		}
		if !bytes.Equal(d.Value, vals[i]) {
			return nil, fmt.Errorf("tap: message %d is %s, want %s (another publisher?)", i, d.Value, vals[i])
		}
		e.ID = d.Cursor()
	}
	return vals, nil
}

// publishUntapped publishes evs in one batch without learning their ids,
// for batches larger than the bus's queue (a tap would overflow too).
func (h *harness) publishUntapped(t testing.TB, evs ...*ingest.Event) {
	t.Helper()
	msgs, _, err := messages(evs)
	if err == nil {
		err = h.bus.Publish(context.Background(), ingest.TopicEvents, msgs...)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func messages(evs []*ingest.Event) ([]ingest.Message, [][]byte, error) {
	msgs := make([]ingest.Message, len(evs))
	vals := make([][]byte, len(evs))
	for i, e := range evs {
		m, err := ingest.EventMessage(e)
		if err != nil {
			return nil, nil, err
		}
		msgs[i], vals[i] = m, m.Value
	}
	return msgs, vals, nil
}

// delivered is the line the stream sends for a published value: the value
// with the id its consumers derive in front.
func delivered(value []byte, id string) string {
	return string(ingest.WithCursor(nil, value, id))
}

// waitFor polls cond until it holds or the test times out.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ndjsonClient reads a stream line by line, like curl.
type ndjsonClient struct {
	resp  *http.Response
	lines chan []byte // closed at EOF
}

// smallBufferDial dials with a small receive buffer, so a client that stops
// reading stalls the server's writes after little data.
func smallBufferDial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(64 << 10)
	}
	return conn, nil
}

// smallBufferListener shrinks the server side's send buffers likewise.
type smallBufferListener struct{ net.Listener }

func (l smallBufferListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(64 << 10)
	}
	return conn, err
}

// serveSmallBuffers serves the server's handler on a second listener whose
// connections buffer little, and points the harness at it.
func (h *harness) serveSmallBuffers(t *testing.T) {
	t.Helper()
	ts := httptest.NewUnstartedServer(h.srv.Handler())
	ts.Listener = smallBufferListener{ts.Listener}
	ts.Start()
	t.Cleanup(ts.Close)
	h.base = ts.URL
}

var slowClient = &http.Client{Transport: &http.Transport{DialContext: smallBufferDial}}

func (h *harness) openNDJSON(t *testing.T, path string, header http.Header) *ndjsonClient {
	t.Helper()
	c := h.connectNDJSON(t, path, header)
	c.startReading()
	return c
}

// connectNDJSON connects without reading the body yet.
func (h *harness) connectNDJSON(t *testing.T, path string, header http.Header) *ndjsonClient {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, h.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := slowClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d", path, resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Fatalf("GET %s: content type %q", path, ct)
	}
	return &ndjsonClient{resp: resp, lines: make(chan []byte, 1<<14)}
}

func (c *ndjsonClient) startReading() {
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(c.resp.Body)
		sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
		for sc.Scan() {
			c.lines <- slices.Clone(sc.Bytes())
		}
	}()
}

func isHeartbeat(line []byte) bool {
	return strings.HasPrefix(string(line), `{"type":"heartbeat"`)
}

// nextLine returns the next line that is not a heartbeat; ok is false at EOF.
func (c *ndjsonClient) nextLine(t *testing.T) (line []byte, ok bool) {
	t.Helper()
	timeout := time.After(waitLong)
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				return nil, false
			}
			if !isHeartbeat(line) {
				return line, true
			}
		case <-timeout:
			t.Fatal("timed out waiting for a stream line")
		}
	}
}

func (c *ndjsonClient) nextEvent(t *testing.T) ingest.Event {
	t.Helper()
	line, ok := c.nextLine(t)
	if !ok {
		t.Fatal("stream ended, want an event")
	}
	var e ingest.Event
	if err := json.Unmarshal(line, &e); err != nil || e.ID == "" {
		t.Fatalf("line %s is not an event (err %v)", line, err)
	}
	return e
}

// nextIDs reads n events and returns their ids.
func (c *ndjsonClient) nextIDs(t *testing.T, n int) []string {
	t.Helper()
	out := make([]string, n)
	for i := range out {
		out[i] = c.nextEvent(t).ID
	}
	return out
}

func (c *ndjsonClient) expectEOF(t *testing.T) {
	t.Helper()
	if line, ok := c.nextLine(t); ok {
		t.Fatalf("got %s, want the end of the stream", line)
	}
}

// finalLine is the error object a stream ends with.
type finalLine struct {
	Error struct {
		Code    string            `json:"code"`
		Message string            `json:"message"`
		Details map[string]string `json:"details"`
	} `json:"error"`
}

// readUntilFinal collects event ids until the final error line, then
// expects the end of the stream.
func (c *ndjsonClient) readUntilFinal(t *testing.T) ([]string, finalLine) {
	t.Helper()
	var got []string
	for {
		line, ok := c.nextLine(t)
		if !ok {
			t.Fatalf("stream ended after %d events without a final line", len(got))
		}
		if strings.HasPrefix(string(line), `{"error"`) {
			var f finalLine
			if err := json.Unmarshal(line, &f); err != nil {
				t.Fatal(err)
			}
			c.expectEOF(t)
			return got, f
		}
		var e ingest.Event
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatal(err)
		}
		got = append(got, e.ID)
	}
}

func (h *harness) dialWS(t *testing.T, path string, header http.Header) *websocket.Conn {
	t.Helper()
	dialer := websocket.Dialer{NetDialContext: smallBufferDial, HandshakeTimeout: waitLong}
	conn, resp, err := dialer.Dial("ws"+strings.TrimPrefix(h.base, "http")+path, header)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", path, err, status)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// wsNext reads the next text frame that is not a heartbeat.
func wsNext(t *testing.T, conn *websocket.Conn) ([]byte, error) {
	t.Helper()
	for {
		_ = conn.SetReadDeadline(time.Now().Add(waitLong))
		typ, msg, err := conn.ReadMessage()
		if err != nil {
			return nil, err
		}
		if typ != websocket.TextMessage {
			t.Fatalf("frame type %d, want text", typ)
		}
		if !isHeartbeat(msg) {
			return msg, nil
		}
	}
}

func wsNextID(t *testing.T, conn *websocket.Conn) string {
	t.Helper()
	msg, err := wsNext(t, conn)
	if err != nil {
		t.Fatalf("reading websocket: %v", err)
	}
	var e ingest.Event
	if err := json.Unmarshal(msg, &e); err != nil || e.ID == "" {
		t.Fatalf("frame %s is not an event (err %v)", msg, err)
	}
	return e.ID
}

// wsClose reads until the close frame and returns it.
func wsClose(t *testing.T, conn *websocket.Conn) ([]string, *websocket.CloseError) {
	t.Helper()
	var got []string
	for {
		msg, err := wsNext(t, conn)
		if err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) {
				t.Fatalf("after %d events: %v, want a close frame", len(got), err)
			}
			return got, ce
		}
		var e ingest.Event
		if err := json.Unmarshal(msg, &e); err != nil {
			t.Fatal(err)
		}
		got = append(got, e.ID)
	}
}

func tokenHeader(token string) http.Header { return http.Header{"X-Token": {token}} }

func jobPath(job string) string { return "/v1/stream/jobs/" + job }

func assertIDs(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s:\n got %s\nwant %s", what, fmt.Sprint(got), fmt.Sprint(want))
	}
}
