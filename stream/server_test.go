package stream

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"trawl/ingest"
	"trawl/ingest/membus"
)

func TestURLs(t *testing.T) {
	if got := UserStreamURL("http://h:1"); got != "http://h:1/v1/stream" {
		t.Errorf("UserStreamURL = %q", got)
	}
	if got := JobStreamURL("http://h:1/", "job_1"); got != "http://h:1/v1/stream/jobs/job_1" {
		t.Errorf("JobStreamURL = %q", got)
	}
}

func TestRoutesAndAuth(t *testing.T) {
	h := startServer(t, harnessOpts{})
	cases := []struct {
		name, method, path string
		header             http.Header
		status             int
		code               string // error code; "" for a success
	}{
		{"health", "GET", "/health", nil, 200, ""},
		{"unknown route", "GET", "/v1/nope", tokenHeader(aliceToken), 404, "not_found"},
		{"empty job id", "GET", "/v1/stream/jobs/", tokenHeader(aliceToken), 404, "not_found"},
		{"nested job path", "GET", "/v1/stream/jobs/a/b", tokenHeader(aliceToken), 404, "not_found"},
		{"no token", "GET", "/v1/stream", nil, 401, "unauthorized"},
		{"bad token", "GET", "/v1/stream", tokenHeader("nope"), 401, "unauthorized"},
		{"bad bearer", "GET", "/v1/stream/jobs/job_1", http.Header{"Authorization": {"Bearer nope"}}, 401, "unauthorized"},
		{"bad query token", "GET", "/v1/stream?token=nope", nil, 401, "unauthorized"},
		{"malformed since", "GET", "/v1/stream?since=a%20b", tokenHeader(aliceToken), 400, "invalid_request"},
		{"cursor since", "GET", "/v1/stream?since=" + cursor(testEpoch, 42), tokenHeader(aliceToken), 200, ""},
		{"malformed last-event-id", "GET", "/v1/stream", http.Header{"X-Token": {aliceToken}, "Last-Event-Id": {"x/y"}}, 400, "invalid_request"},
		{"wrong method", "POST", "/v1/stream", tokenHeader(aliceToken), 405, "method_not_allowed"},
		{"x-token", "GET", "/v1/stream", tokenHeader(aliceToken), 200, ""},
		{"bearer", "GET", "/v1/stream/jobs/job_1", http.Header{"Authorization": {"Bearer " + aliceToken}}, 200, ""},
		{"query token", "GET", "/v1/stream?token=" + bobToken, nil, 200, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel() // ends the endless streams once the header is checked
			req, err := http.NewRequestWithContext(ctx, c.method, h.base+c.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header = c.header.Clone()
			if req.Header == nil {
				req.Header = http.Header{}
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, c.status)
			}
			if c.code == "" {
				return
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("content type %q", ct)
			}
			var f finalLine
			if err := json.NewDecoder(resp.Body).Decode(&f); err != nil {
				t.Fatal(err)
			}
			if f.Error.Code != c.code || f.Error.Message == "" {
				t.Errorf("error %+v, want code %q with a message", f.Error, c.code)
			}
		})
	}
}

func TestValidIDAcceptsCursors(t *testing.T) {
	for _, d := range []ingest.Delivery{{}, {Epoch: testEpoch, Offset: 1}, {Epoch: 1<<48 - 1, Partition: 1<<16 - 1, Offset: math.MaxInt64}} {
		if id := d.Cursor(); !validID(id) || len(id) != len("ev_")+26 {
			t.Errorf("cursor %q of %+v rejected", id, d)
		}
	}
	for _, bad := range []string{"", "ev_01 2", "ev_01/2", "ev_01\n", "ev_01\"", strings.Repeat("a", maxIDLen+1)} {
		if validID(bad) {
			t.Errorf("validID(%q) = true", bad)
		}
	}
}

// TestIDsFollowTopicOrder: an event's id is its position on the bus, not
// what its producer chose, so ids sort in the order the topic holds the
// events even when producers made them in another order, the stream's ids
// are the ones the ingester stores, and a resume from any of them, merging
// storage with the ring, continues exactly: nothing lost, nothing repeated.
func TestIDsFollowTopicOrder(t *testing.T) {
	h := startServer(t, harnessOpts{})
	c := h.openNDJSON(t, jobPath("job_1"), tokenHeader(aliceToken))
	e := append(events(4, alice, "job_1"), statusEvent(alice, "job_1", ingest.StateSucceeded))
	for i := range e { // the producers' own ids run against the topic order
		e[len(e)-1-i].ID = ingest.NewID("evt_")
	}
	chosen := ids(e)
	h.publish(t, ptrs(e)...)
	got := c.nextIDs(t, len(e))
	c.expectEOF(t)
	assertIDs(t, "job stream", got, ids(e))
	for i, id := range got {
		if slices.Contains(chosen, id) {
			t.Fatalf("the stream sent the producer's id %s", id)
		}
		if !strings.HasPrefix(id, "ev_") || !validID(id) {
			t.Fatalf("id %q is not a cursor", id)
		}
		if i > 0 && id <= got[i-1] {
			t.Fatalf("ids out of topic order: %s after %s", id, got[i-1])
		}
	}

	h.src.add(e[:2]...) // the ingester is behind: the rest is only in the ring
	for k := range len(e) - 1 {
		again := h.openNDJSON(t, jobPath("job_1")+"?since="+got[k], tokenHeader(aliceToken))
		assertIDs(t, "resume since e["+strconv.Itoa(k)+"]", again.nextIDs(t, len(e)-1-k), got[k+1:])
		again.expectEOF(t)
	}
}

func TestNDJSONLiveUserStream(t *testing.T) {
	h := startServer(t, harnessOpts{})
	c := h.openNDJSON(t, "/v1/stream", tokenHeader(aliceToken))

	a1 := portEvent(alice, "job_1")
	b1 := portEvent(bob, "job_2")
	stats := newEvent(alice, "job_1", ingest.TypeScanStats, ingest.ModuleScanner, `{"shard":0}`)
	a2 := portEvent(alice, "job_3")
	vals := h.publish(t, &a1, &b1, &stats, &a2)

	for _, want := range []string{delivered(vals[0], a1.ID), delivered(vals[3], a2.ID)} {
		line, ok := c.nextLine(t)
		if !ok {
			t.Fatal("stream ended")
		}
		if string(line) != want {
			t.Fatalf("line\n %s\nwant the bus bytes behind their id\n %s", line, want)
		}
	}
	waitFor(t, "delivery count", func() bool { return h.srv.Stats().Delivered == 2 })
	st := h.srv.Stats()
	if st.Subscribers != 1 || st.Events != 3 || st.Replayed != 0 {
		t.Errorf("stats %+v: want 1 subscriber, 3 visible events, nothing replayed", st)
	}
}

func TestJobStreamFilter(t *testing.T) {
	h := startServer(t, harnessOpts{})
	job := h.openNDJSON(t, jobPath("job_1"), tokenHeader(aliceToken))
	user := h.openNDJSON(t, "/v1/stream", tokenHeader(aliceToken))

	evs := []ingest.Event{portEvent(alice, "job_1"), portEvent(alice, "job_2"), portEvent(alice, "job_1")}
	h.publish(t, ptrs(evs)...)
	assertIDs(t, "job stream", job.nextIDs(t, 2), []string{evs[0].ID, evs[2].ID})
	assertIDs(t, "user stream", user.nextIDs(t, 3), ids(evs))
}

func TestOwnership(t *testing.T) {
	h := startServer(t, harnessOpts{})
	stored := portEvent(alice, "job_1")
	storedEarlier(&stored)
	h.src.add(stored)
	h.src.leaky = true // a store that forgets the client filter must not leak either

	bobJob := h.openNDJSON(t, jobPath("job_1"), tokenHeader(bobToken))
	bobUser := h.openNDJSON(t, "/v1/stream?since="+stored.ID[:10], tokenHeader(bobToken))

	aliceLive := portEvent(alice, "job_1")
	bobMarker := portEvent(bob, "job_1")
	h.publish(t, &aliceLive, &bobMarker)
	assertIDs(t, "bob's job stream", bobJob.nextIDs(t, 1), []string{bobMarker.ID})
	assertIDs(t, "bob's user stream", bobUser.nextIDs(t, 1), []string{bobMarker.ID})
}

func TestWebsocketDelivery(t *testing.T) {
	h := startServer(t, harnessOpts{cfg: func(c *Config) { c.Heartbeat = 40 * time.Millisecond }})
	job := h.dialWS(t, jobPath("job_1")+"?token="+aliceToken, nil)
	user := h.dialWS(t, "/v1/stream", tokenHeader(aliceToken))
	pinged := make(chan struct{}, 1)
	user.SetPingHandler(func(data string) error {
		select {
		case pinged <- struct{}{}:
		default:
		}
		return user.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})

	e1, e2 := portEvent(alice, "job_1"), portEvent(alice, "job_2")
	done := statusEvent(alice, "job_1", ingest.StateSucceeded)
	published := []*ingest.Event{&e1, &e2, &done}
	vals := h.publish(t, published...)

	got, ce := wsClose(t, job)
	assertIDs(t, "job stream", got, []string{e1.ID, done.ID})
	if ce.Code != websocket.CloseNormalClosure || ce.Text != "job finished" {
		t.Errorf("close %d %q, want 1000 \"job finished\"", ce.Code, ce.Text)
	}

	for i, e := range published {
		msg, err := wsNext(t, user)
		if err != nil {
			t.Fatal(err)
		}
		if want := delivered(vals[i], e.ID); string(msg) != want {
			t.Fatalf("frame %d\n %s\nwant the bus bytes behind their id\n %s", i, msg, want)
		}
	}
	// Idle: heartbeat text frames and pings keep the connection alive.
	_ = user.SetReadDeadline(time.Now().Add(waitLong))
	_, msg, err := user.ReadMessage()
	if err != nil || !isHeartbeat(msg) {
		t.Fatalf("idle frame %s (err %v), want a heartbeat", msg, err)
	}
	select {
	case <-pinged:
	case <-time.After(waitLong):
		t.Fatal("no ping")
	}
}

func TestWebsocketUnauthorized(t *testing.T) {
	h := startServer(t, harnessOpts{})
	_, resp, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(h.base, "http")+"/v1/stream?token=nope", nil)
	if err == nil {
		t.Fatal("dial succeeded with a bad token")
	}
	if resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("response %v, want 401", resp)
	}
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), `"code":"unauthorized"`) {
		t.Errorf("body %s, want the unauthorized error object", body)
	}
}

// TestSinceReplayMergesStorageRingAndLive resumes a client whose missed
// events are partly stored, partly only in the ring (not yet ingested), and
// partly published while it replays: each arrives once, in id order, and
// the ring's events are the bus bytes behind their id.
func TestSinceReplayMergesStorageRingAndLive(t *testing.T) {
	h := startServer(t, harnessOpts{})
	e := events(10, alice, "job_1")
	other := portEvent(bob, "job_1")
	h.src.maxLimit = 2
	inRing := []*ingest.Event{&e[0], &e[1], &e[2], &e[3], &other, &e[4], &e[5], &e[6], &e[7]}
	vals := h.publish(t, inRing...)
	busLine := make(map[string]string) // id → the line the bus bytes make
	for i, ev := range inRing {
		busLine[ev.ID] = delivered(vals[i], ev.ID)
	}
	h.src.add(e[0], e[1], e[2], e[4]) // e[3], e[5..7]: ingester behind
	waitFor(t, "ring", func() bool { return h.srv.Stats().Events == 9 })
	h.src.onQuery = func(call int) {
		if call != 1 {
			return
		}
		// e[8] is published and ingested while the replay runs. This runs
		// on the server's goroutine: report, never FailNow.
		if _, err := h.tryPublish(&e[8]); err != nil {
			t.Error(err)
		}
		h.src.add(e[8])
		for deadline := time.Now().Add(waitLong); h.srv.Stats().Events < 10 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
	}

	c := h.openNDJSON(t, "/v1/stream?since="+e[1].ID, tokenHeader(aliceToken))
	var got []string
	for i := 2; i <= 8; i++ {
		line, ok := c.nextLine(t)
		if !ok {
			t.Fatalf("stream ended after %d replayed events", len(got))
		}
		var ev ingest.Event
		if err := json.Unmarshal(line, &ev); err != nil {
			t.Fatal(err)
		}
		got = append(got, ev.ID)
		// what the ring holds goes out as the bus bytes, stored or not
		if want, ok := busLine[ev.ID]; ok && string(line) != want {
			t.Fatalf("e[%d] from the ring\n %s\nwant\n %s", i, line, want)
		}
	}
	assertIDs(t, "replay", got, ids(e[2:9]))
	h.publish(t, &e[9])
	assertIDs(t, "live", c.nextIDs(t, 1), []string{e[9].ID})
	if st := h.srv.Stats(); st.Replayed != 7 || st.Delivered != 8 {
		t.Errorf("stats %+v: want 7 replayed of 8 delivered", st)
	}
}

func TestLastEventID(t *testing.T) {
	h := startServer(t, harnessOpts{})
	e := events(4, alice, "job_1")
	storedEarlier(ptrs(e[:3])...) // stored before a restart, gone from the ring
	h.src.add(e[:3]...)

	hdr := tokenHeader(aliceToken)
	hdr.Set("Last-Event-ID", e[0].ID)
	c := h.openNDJSON(t, "/v1/stream", hdr)
	assertIDs(t, "ndjson replay", c.nextIDs(t, 2), ids(e[1:3]))

	ws := h.dialWS(t, jobPath("job_1"), hdr)
	assertIDs(t, "websocket replay", []string{wsNextID(t, ws), wsNextID(t, ws)}, ids(e[1:3]))

	h.publish(t, &e[3])
	assertIDs(t, "ndjson live", c.nextIDs(t, 1), ids(e[3:]))
	assertIDs(t, "websocket live", []string{wsNextID(t, ws)}, ids(e[3:]))
}

func TestJobStreamEndsAfterTerminal(t *testing.T) {
	h := startServer(t, harnessOpts{})
	job := h.openNDJSON(t, jobPath("job_1"), tokenHeader(aliceToken))
	user := h.openNDJSON(t, "/v1/stream", tokenHeader(aliceToken))

	e1 := portEvent(alice, "job_1")
	running := statusEvent(alice, "job_1", ingest.StateRunning)
	done := statusEvent(alice, "job_1", ingest.StateFailed)
	late := portEvent(alice, "job_1")
	marker := portEvent(alice, "job_2")
	h.publish(t, &e1, &running, &done, &late, &marker)

	assertIDs(t, "job stream", job.nextIDs(t, 3), []string{e1.ID, running.ID, done.ID})
	job.expectEOF(t)
	assertIDs(t, "user stream", user.nextIDs(t, 4), []string{e1.ID, running.ID, done.ID, marker.ID})
	if st := h.srv.Stats(); st.PostTerminal != 1 {
		t.Errorf("post-terminal drops %d, want 1", st.PostTerminal)
	}
	// A job stream opened after the end replays the job and ends at once.
	h.src.add(e1, running, done)
	again := h.openNDJSON(t, jobPath("job_1"), tokenHeader(aliceToken))
	assertIDs(t, "finished job", again.nextIDs(t, 3), []string{e1.ID, running.ID, done.ID})
	again.expectEOF(t)
}

func TestJobStreamReplaysFromStart(t *testing.T) {
	h := startServer(t, harnessOpts{})
	stored := events(3, alice, "job_1")
	storedEarlier(ptrs(stored)...)
	h.src.add(stored...)
	inRing := portEvent(alice, "job_1")
	h.publish(t, &inRing)
	waitFor(t, "ring", func() bool { return h.srv.Stats().Events == 1 })

	c := h.openNDJSON(t, jobPath("job_1"), tokenHeader(aliceToken))
	assertIDs(t, "replay", c.nextIDs(t, 4), append(ids(stored), inRing.ID))
}

func TestReplayWithoutStoreUsesRing(t *testing.T) {
	h := startServer(t, harnessOpts{noStore: true})
	e := events(3, alice, "job_1")
	h.publish(t, ptrs(e)...)
	waitFor(t, "ring", func() bool { return h.srv.Stats().Events == 3 })
	c := h.openNDJSON(t, "/v1/stream?since="+e[0].ID, tokenHeader(aliceToken))
	assertIDs(t, "ring replay", c.nextIDs(t, 2), ids(e[1:]))
}

// openSlow connects a stream client that does not read, publishes large
// events until the server drops it as slow, and returns what was published.
func openSlow(t *testing.T, h *harness, connect func()) []ingest.Event {
	t.Helper()
	h.serveSmallBuffers(t)
	connect()
	blob := `{"blob":"` + strings.Repeat("x", 16<<10) + `"}`
	var published []ingest.Event
	for h.srv.Stats().DroppedSlow == 0 {
		if len(published) == 2000 {
			t.Fatal("subscriber never dropped")
		}
		e := newEvent(alice, "job_1", ingest.TypePort, ingest.ModulePortscan, blob)
		h.publish(t, &e)
		h.src.add(e) // the ingester keeps up
		published = append(published, e)
		time.Sleep(time.Millisecond)
	}
	return published
}

func TestSlowConsumerNDJSON(t *testing.T) {
	h := startServer(t, harnessOpts{cfg: func(c *Config) { c.QueueSize = 4; c.WriteTimeout = 20 * time.Second }})
	var c *ndjsonClient
	published := openSlow(t, h, func() { c = h.connectNDJSON(t, "/v1/stream/jobs/job_1", tokenHeader(aliceToken)) })
	c.startReading()
	got, final := c.readUntilFinal(t)
	if final.Error.Code != CodeSlowConsumer || final.Error.Message == "" {
		t.Fatalf("final line %+v, want slow_consumer", final.Error)
	}
	if len(got) == 0 || len(got) >= len(published) {
		t.Fatalf("got %d of %d events before the drop", len(got), len(published))
	}
	if resume := final.Error.Details["resume_since"]; resume != got[len(got)-1] {
		t.Fatalf("resume_since %q, want the last delivered id %q", resume, got[len(got)-1])
	}
	again := h.openNDJSON(t, "/v1/stream/jobs/job_1?since="+got[len(got)-1], tokenHeader(aliceToken))
	got = append(got, again.nextIDs(t, len(published)-len(got))...)
	assertIDs(t, "events across the reconnect", got, ids(published))
}

func TestSlowConsumerWebsocket(t *testing.T) {
	h := startServer(t, harnessOpts{cfg: func(c *Config) { c.QueueSize = 4; c.WriteTimeout = 20 * time.Second }})
	var conn *websocket.Conn
	published := openSlow(t, h, func() { conn = h.dialWS(t, "/v1/stream", tokenHeader(aliceToken)) })
	got, ce := wsClose(t, conn)
	if ce.Code != CloseSlowConsumer {
		t.Fatalf("close code %d, want %d", ce.Code, CloseSlowConsumer)
	}
	if len(got) == 0 || len(got) >= len(published) {
		t.Fatalf("got %d of %d events before the drop", len(got), len(published))
	}
	resume, ok := strings.CutPrefix(ce.Text, CodeSlowConsumer+" resume_since=")
	if !ok || resume != got[len(got)-1] {
		t.Fatalf("close reason %q, want the last delivered id %q", ce.Text, got[len(got)-1])
	}
	again := h.dialWS(t, "/v1/stream?since="+resume, tokenHeader(aliceToken))
	for len(got) < len(published) {
		got = append(got, wsNextID(t, again))
	}
	assertIDs(t, "events across the reconnect", got, ids(published))
}

func TestHeartbeat(t *testing.T) {
	h := startServer(t, harnessOpts{cfg: func(c *Config) { c.Heartbeat = 30 * time.Millisecond }})
	c := h.openNDJSON(t, "/v1/stream", tokenHeader(aliceToken))
	before := time.Now().UnixMilli()
	for range 2 {
		select {
		case line := <-c.lines:
			var hb struct {
				Type string `json:"type"`
				TS   int64  `json:"ts"`
			}
			if err := json.Unmarshal(line, &hb); err != nil || hb.Type != "heartbeat" {
				t.Fatalf("idle line %s, want a heartbeat", line)
			}
			if hb.TS < before-1000 || hb.TS > time.Now().UnixMilli()+1000 {
				t.Fatalf("heartbeat ts %d is not now", hb.TS)
			}
		case <-time.After(waitLong):
			t.Fatal("no heartbeat")
		}
	}
}

func TestBusOverflowResetsSubscribers(t *testing.T) {
	h := startServer(t, harnessOpts{busQueue: 8})
	c := h.openNDJSON(t, "/v1/stream", tokenHeader(aliceToken))
	h.publishUntapped(t, ptrs(events(20, alice, "job_1"))...) // one batch: the server's subscription overflows

	_, final := c.readUntilFinal(t)
	if final.Error.Code != CodeStreamReset {
		t.Fatalf("final line %+v, want stream_reset", final.Error)
	}
	if _, ok := final.Error.Details["resume_since"]; !ok {
		t.Fatal("no resume_since")
	}
	if st := h.srv.Stats(); st.BusResets != 1 {
		t.Fatalf("bus resets %d, want 1", st.BusResets)
	}
	// The server lives on, on a new subscription.
	again := h.openNDJSON(t, "/v1/stream", tokenHeader(aliceToken))
	e := portEvent(alice, "job_1")
	h.publish(t, &e)
	assertIDs(t, "after the reset", again.nextIDs(t, 1), []string{e.ID})
}

// brokenBus hands out subscriptions whose Fetch always fails.
type brokenBus struct{ ingest.Bus }

type brokenSub struct{ ingest.Subscription }

func (brokenBus) Subscribe(context.Context, string, string) (ingest.Subscription, error) {
	return brokenSub{}, nil
}

func (brokenSub) Fetch(ctx context.Context) (ingest.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return ingest.Delivery{}, err
	}
	return ingest.Delivery{}, errors.New("broken")
}

func (brokenSub) Close() error { return nil }

func TestBrokenBusBacksOff(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	s := New(cfg, brokenBus{}, &fakeSource{}, testAuth, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-s.Ready()
	time.Sleep(300 * time.Millisecond)
	if n := s.Stats().BusResets; n < 2 || n > 5 {
		t.Errorf("%d resubscriptions in 300ms, want a few (backing off)", n)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(waitLong):
		t.Fatal("Run did not return")
	}
}

func TestReplayFailure(t *testing.T) {
	h := startServer(t, harnessOpts{})
	h.src.err = errors.New("disk on fire")
	c := h.openNDJSON(t, jobPath("job_1"), tokenHeader(aliceToken))
	_, final := c.readUntilFinal(t)
	if final.Error.Code != CodeInternal {
		t.Fatalf("final line %+v, want internal", final.Error)
	}
	ws := h.dialWS(t, jobPath("job_1"), tokenHeader(aliceToken))
	if _, ce := wsClose(t, ws); ce.Code != websocket.CloseInternalServerErr {
		t.Fatalf("close code %d, want %d", ce.Code, websocket.CloseInternalServerErr)
	}
}

func TestShutdownClosesConnections(t *testing.T) {
	h := startServer(t, harnessOpts{})
	h.src.blockJob = "job_slow"
	c := h.openNDJSON(t, "/v1/stream", tokenHeader(aliceToken))
	ws := h.dialWS(t, jobPath("job_1"), tokenHeader(aliceToken))
	replaying := h.openNDJSON(t, jobPath("job_slow"), tokenHeader(aliceToken))
	e := portEvent(alice, "job_1")
	h.publish(t, &e)
	assertIDs(t, "before shutdown", c.nextIDs(t, 1), []string{e.ID})
	assertIDs(t, "websocket before shutdown", []string{wsNextID(t, ws)}, []string{e.ID})

	h.stop(t)
	_, final := c.readUntilFinal(t)
	if final.Error.Code != CodeShuttingDown || final.Error.Details["resume_since"] != e.ID {
		t.Fatalf("final line %+v, want shutting_down resuming after %s", final.Error, e.ID)
	}
	got, ce := wsClose(t, ws)
	assertIDs(t, "websocket after shutdown", got, nil)
	if ce.Code != websocket.CloseGoingAway || !strings.Contains(ce.Text, e.ID) {
		t.Fatalf("close %d %q, want 1001 with the resume id", ce.Code, ce.Text)
	}
	if _, final := replaying.readUntilFinal(t); final.Error.Code != CodeShuttingDown {
		t.Fatalf("replaying stream's final line %+v, want shutting_down", final.Error)
	}
	if _, err := http.Get(h.base + "/health"); err == nil {
		t.Fatal("server still accepting connections")
	}
	if n := h.srv.Stats().Subscribers; n != 0 {
		t.Fatalf("%d subscribers left", n)
	}
}

func TestRunErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	bus := membus.New(membus.DefaultConfig(), zerolog.Nop())
	defer bus.Close()
	cfg := DefaultConfig()
	cfg.Listen = ln.Addr().String()
	s := New(cfg, bus, &fakeSource{}, testAuth, zerolog.Nop())
	if err := s.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "cannot listen") {
		t.Fatalf("Run on a busy port: %v", err)
	}
	if err := s.Run(context.Background()); !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("second Run: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := New(cfg, bus, &fakeSource{}, testAuth, zerolog.Nop()).Run(ctx); err != nil {
		t.Fatalf("Run with an ended context: %v, want nil", err)
	}
}

func TestPublicURL(t *testing.T) {
	cfg := DefaultConfig()
	s := New(cfg, nil, nil, testAuth, zerolog.Nop())
	if got := s.PublicURL(); got != "http://"+cfg.Listen {
		t.Errorf("PublicURL = %q", got)
	}
	cfg.PublicURL = "https://stream.example/"
	if got := New(cfg, nil, nil, testAuth, zerolog.Nop()).PublicURL(); got != "https://stream.example" {
		t.Errorf("PublicURL = %q", got)
	}
}

func TestHeartbeatLineFormat(t *testing.T) {
	got := string(appendHeartbeat(nil, 1700000000123))
	if got != `{"type":"heartbeat","ts":1700000000123}` {
		t.Fatalf("heartbeat %s", got)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(got), &v); err != nil {
		t.Fatal(err)
	}
}
