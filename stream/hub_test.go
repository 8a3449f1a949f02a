package stream

import (
	"encoding/json"
	"errors"
	"flag"
	"slices"
	"strings"
	"testing"
	"time"

	"trawl/ingest"
)

func TestConfig(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.RegisterFlags(fs, "stream.")
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if c != DefaultConfig() {
		t.Fatalf("flag defaults %+v differ from DefaultConfig %+v", c, DefaultConfig())
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	err := fs.Parse([]string{"-stream.listen=:9000", "-stream.public-url=https://s.example", "-stream.queue-size=8",
		"-stream.heartbeat=2s", "-stream.write-timeout=3s", "-stream.ring-size=9"})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Listen: ":9000", PublicURL: "https://s.example", QueueSize: 8, Heartbeat: 2 * time.Second,
		WriteTimeout: 3 * time.Second, RingSize: 9}
	if c != want {
		t.Fatalf("parsed %+v, want %+v", c, want)
	}

	bad := Config{Listen: "nohostport", PublicURL: "ftp://x", QueueSize: 0, Heartbeat: 20 * time.Second, RingSize: 0}
	err = bad.Validate()
	for _, field := range []string{"listen", "public-url", "queue-size", "heartbeat", "write-timeout", "ring-size"} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("Validate of %+v: %v, want it to name %s", bad, err, field)
		}
	}
}

// encoded is e as a producer publishes it: without an id.
func encoded(t testing.TB, e ingest.Event) []byte {
	t.Helper()
	m, err := ingest.EventMessage(&e)
	if err != nil {
		t.Fatal(err)
	}
	return m.Value
}

// cursor is the id of the n-th message of a bus that started at epoch.
func cursor(epoch, n int64) string { return ingest.Delivery{Epoch: epoch, Offset: n}.Cursor() }

const testEpoch = 1767225600000 // 2026-01-01 in unix ms

// onBus is e as the server hands it to the decoder: the published bytes
// behind the id of the n-th message.
func onBus(t testing.TB, e ingest.Event, n int64) []byte {
	t.Helper()
	return ingest.WithCursor(nil, encoded(t, e), cursor(testEpoch, n))
}

func TestDecodeItem(t *testing.T) {
	dec := newDecoder()
	port := portEvent(alice, "job_1")
	port.ID = "evt_chosen_by_the_producer" // EventMessage leaves it out
	published := encoded(t, port)
	if strings.Contains(string(published), `"id"`) {
		t.Fatalf("published %s carries an id", published)
	}
	if _, err := dec.decode(published); !errors.Is(err, errNoID) {
		t.Errorf("published bytes without a cursor: %v, want errNoID", err)
	}
	line := onBus(t, port, 7)
	it, err := dec.decode(line)
	if err != nil {
		t.Fatal(err)
	}
	if it.id != cursor(testEpoch, 7) || it.jobID != "job_1" || it.clientID != alice || it.terminal {
		t.Fatalf("item %+v", it)
	}
	if string(it.line) != string(line) {
		t.Fatalf("line %s, want the bytes decoded %s", it.line, line)
	}
	var head eventHead
	if !dec.walk(line, &head) || head.ID != it.id {
		t.Errorf("the walk gave up on the id-first layout, or read id %q", head.ID)
	}
	var back ingest.Event
	if err := json.Unmarshal(it.line, &back); err != nil || back.ID != it.id || back.RecordID != port.RecordID {
		t.Fatalf("line %s reads back as %+v (err %v)", it.line, back, err)
	}

	for i, c := range []struct {
		state    string
		terminal bool
	}{{ingest.StateRunning, false}, {ingest.StateSucceeded, true}, {ingest.StateCanceled, true}} {
		it, err := dec.decode(onBus(t, statusEvent(alice, "job_1", c.state), int64(i)))
		if err != nil || it.terminal != c.terminal {
			t.Errorf("%s: terminal %v (err %v), want %v", c.state, it != nil && it.terminal, err, c.terminal)
		}
	}

	stats := newEvent(alice, "job_1", ingest.TypeScanStats, ingest.ModuleScanner, `{}`)
	if _, err := dec.decode(onBus(t, stats, 8)); !errors.Is(err, errInternal) {
		t.Errorf("scan_stats: %v, want errInternal", err)
	}
	if _, err := dec.decode([]byte(`{"v":99,"id":"evt_1"}`)); !errors.Is(err, ingest.ErrVersion) {
		t.Errorf("newer version: %v, want ErrVersion", err)
	}
	if _, err := dec.decode([]byte(`{"v":1}`)); !errors.Is(err, errNoID) {
		t.Errorf("no id: %v, want errNoID", err)
	}
	if _, err := dec.decode([]byte(`{"id":`)); err == nil {
		t.Error("truncated JSON decoded")
	}
	port.ID = cursor(testEpoch, 9)
	indented, _ := json.MarshalIndent(port, "", "  ")
	it, err = dec.decode(indented)
	if err != nil || strings.Contains(string(it.line), "\n") {
		t.Errorf("indented event: line %q (err %v), want one compact line", it.line, err)
	}
}

// TestWalkAgreesWithEncodingJSON: the hand walk either gives up or reads
// exactly what encoding/json reads.
func TestWalkAgreesWithEncodingJSON(t *testing.T) {
	cases := []struct {
		doc    string
		walked bool // the walk handles it without encoding/json
	}{
		{`{"v":1,"id":"evt_1","origin":{"job_id":"job_1","client_id":"usr_a","type":"port","ts":5},"result":{"data":{"a":[1,{"b":"}]\""}]}}}`, true},
		// the layout the server decodes: ingest.WithCursor puts the id first
		{`{"id":"ev_01kdx6gf0000000000000000f","v":1,"record_id":"rec_1","origin":{"job_id":"job_1","client_id":"usr_a","type":"port"},"result":{"data":{}}}`, true},
		{`{"id":"ev_01kdx6gf0000000000000000f"}`, true},
		{` { "origin" : { "type" : "port" , "ip": null } , "id" : "evt_2" , "x": [true, false, -1.5e3] } `, true},
		{`{"id":"evt_3","origin":null}`, false},
		{`{"id":"evt_3","origin":{"job_id":null}}`, true},
		{`{"ID":"evt_4"}`, false},
		{`{"id":"evt_\u0035"}`, false},
		{`{"v":1.0,"id":"evt_6"}`, false},
		{`{"v":-1,"id":"evt_7"}`, false},
		{`{"v":01,"id":"evt_8"}`, false},
		{`{"id":"evt_9","origin":{"Type":"scan_stats"}}`, false},
		{`{"id":"evt_10","origin":{"type":"port"},"origin":{"job_id":"job_2"}}`, true},
		{`{"id":"evt_11"} x`, false},
		{`{"id":"evt_12","x":[}`, false},
		{`{"id":"evt_13","x":{]}`, false},
		{`{"id":"evt_14",}`, false},
		{`[]`, false},
		{``, false},
	}
	for _, c := range cases {
		var walked eventHead
		ok := newDecoder().walk([]byte(c.doc), &walked)
		if ok != c.walked {
			t.Errorf("%s: walked %v, want %v", c.doc, ok, c.walked)
		}
		if !ok {
			continue
		}
		var want eventHead
		if err := json.Unmarshal([]byte(c.doc), &want); err != nil {
			t.Errorf("%s: walked a document encoding/json rejects: %v", c.doc, err)
		} else if walked != want {
			t.Errorf("%s: walked %+v, encoding/json %+v", c.doc, walked, want)
		}
	}
}

func FuzzWalk(f *testing.F) {
	f.Add([]byte(`{"v":1,"id":"evt_1","origin":{"job_id":"j","client_id":"c","type":"port"},"result":{"data":{}}}`))
	f.Add([]byte(`{"id":"e","x":[{"a":"\""}]}`))
	f.Add([]byte("{\"origin\":{\"type\":\"\xd3\"}}")) // invalid UTF-8: encoding/json rewrites it
	f.Fuzz(func(t *testing.T, doc []byte) {
		var walked eventHead
		if !newDecoder().walk(doc, &walked) || !json.Valid(doc) {
			return // the walk only checks the structure of values it skips
		}
		var want eventHead
		if err := json.Unmarshal(doc, &want); err != nil {
			t.Fatalf("%s: walked a document encoding/json rejects: %v", doc, err)
		}
		if walked != want {
			t.Fatalf("%s: walked %+v, encoding/json %+v", doc, walked, want)
		}
	})
}

func TestRingKeepsNewestMatching(t *testing.T) {
	r := newRing(4)
	var all []*item
	for i := range 6 {
		client := alice
		if i == 4 {
			client = bob
		}
		it := &item{id: cursor(testEpoch, int64(i)), jobID: "job_" + string(rune('a'+i%2)), clientID: client}
		all = append(all, it)
		r.add(it)
	}
	idsOf := func(items []*item) []string {
		var out []string
		for _, it := range items {
			out = append(out, it.id)
		}
		return out
	}
	// kept: all[2..5]; alice's: 2, 3, 5
	if got, want := idsOf(r.matching(alice, "", "", r.next)), idsOf([]*item{all[2], all[3], all[5]}); !slices.Equal(got, want) {
		t.Errorf("alice: %v, want %v", got, want)
	}
	if got, want := idsOf(r.matching(alice, "job_b", "", r.next)), idsOf([]*item{all[3], all[5]}); !slices.Equal(got, want) {
		t.Errorf("alice job_b: %v, want %v", got, want)
	}
	if got, want := idsOf(r.matching(alice, "", all[3].id, r.next)), idsOf([]*item{all[5]}); !slices.Equal(got, want) {
		t.Errorf("alice after %s: %v, want %v", all[3].id, got, want)
	}
	// A snapshot up to seq 4 keeps what was kept then; what was overwritten
	// since (all[2], all[3] by later adds) is gone.
	upto := r.next - 2
	r.add(&item{id: cursor(testEpoch, 6), clientID: alice})
	r.add(&item{id: cursor(testEpoch, 7), clientID: alice})
	if got, want := idsOf(r.matching(alice, "", "", upto)), []string(nil); !slices.Equal(got, want) {
		t.Errorf("alice up to %d after overwrites: %v, want %v", upto, got, want)
	}
}

func TestHubDropsSlowSubscriberWithoutBlocking(t *testing.T) {
	var st counters
	h := newHub(2, 16, &st)
	slow := h.subscribe(alice, "", "", false)
	fast := h.subscribe(alice, "", "", false)
	other := h.subscribe(bob, "", "", false)
	for i := range 3 {
		h.publish(&item{id: cursor(testEpoch, int64(i)), jobID: "job_1", clientID: alice})
		if i < 2 {
			<-fast.queue
		}
	}
	select {
	case <-slow.kicked:
		if slow.reason != endSlow {
			t.Fatalf("reason %v, want slow", slow.reason)
		}
	default:
		t.Fatal("slow subscriber kept")
	}
	select {
	case <-fast.kicked:
		t.Fatal("fast subscriber kicked")
	case <-other.kicked:
		t.Fatal("other client's subscriber kicked")
	default:
	}
	if n := h.subscribers(); n != 2 || st.droppedSlow.Load() != 1 {
		t.Fatalf("%d subscribers, %d dropped; want 2 and 1", n, st.droppedSlow.Load())
	}
	h.unsubscribe(slow) // after a kick: harmless
	h.unsubscribe(fast)
	h.close(endShutdown)
	if n := h.subscribers(); n != 0 || other.reason != endShutdown {
		t.Fatalf("%d subscribers left, other's reason %v", n, other.reason)
	}
	late := h.subscribe(alice, "", "", true)
	select {
	case <-late.kicked:
		if late.reason != endShutdown || h.subscribers() != 0 {
			t.Fatalf("late subscriber: reason %v, %d registered", late.reason, h.subscribers())
		}
	default:
		t.Fatal("a closed hub registered a subscriber")
	}
}
