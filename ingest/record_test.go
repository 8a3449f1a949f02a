package ingest_test

import (
	"cmp"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"trawl/ingest"
)

func sampleEvent() *ingest.Event {
	return &ingest.Event{
		ID:       "evt_01hzy3k5q8x9m2n4p6r7s8t9v0",
		RecordID: ingest.RecordID("job_1", "198.18.0.7", "22", "ssh"),
		Origin: ingest.Origin{JobID: "job_1", ClientID: "usr_1", Type: "ssh", Module: ingest.ModuleGrabber,
			TS: 1718000000123, IP: "198.18.0.1", Port: 40000},
		Target: ingest.Target{IP: "198.18.0.7", Port: 22, Protocol: "tcp"},
		Result: ingest.Result{Data: json.RawMessage(`{"banner":"SSH-2.0-OpenSSH_9.6","algorithms":{"kex":["curve25519-sha256"]}}`)},
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	cases := []struct {
		name     string
		in, into any
	}{
		{"event", sampleEvent(), &ingest.Event{}},
		{"task", &ingest.Task{Kind: ingest.TaskStart, JobID: "job_1", ClientID: "usr_1", Type: ingest.JobScan,
			Shards: 2, Rate: 1000, Seed: 42, Options: []ingest.TaskOptions{{
				Targets: []string{"198.18.0.0/24"},
				Ports:   []ingest.PortSpec{{Ports: "22", Modules: []string{"ssh"}}, {Ports: "8000-8100", Sample: 10}},
			}}}, &ingest.Task{}},
		{"open port", &ingest.OpenPort{JobID: "job_1", ClientID: "usr_1", IP: "198.18.0.7", Port: 22,
			Protocol: "tcp", TTL: 64, Window: 65535, Modules: []string{"ssh"}, Found: 1718000000123,
			SourceIP: "198.18.0.1", SourcePort: 40000}, &ingest.OpenPort{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			prefix := []byte("keep:")
			b, err := ingest.Encode(prefix, tc.in)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if !strings.HasPrefix(string(b), "keep:") {
				t.Fatalf("Encode did not append to dst: %q", b)
			}
			if err := ingest.Decode(b[len(prefix):], tc.into); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(tc.into, tc.in) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", tc.into, tc.in)
			}
			if v := reflect.ValueOf(tc.into).Elem().FieldByName("V").Int(); v != ingest.SchemaVersion {
				t.Fatalf("decoded version %d, want %d", v, ingest.SchemaVersion)
			}
		})
	}
}

func TestEventMessageKeyedByJobWithoutID(t *testing.T) {
	e := sampleEvent()
	orig := *e
	m, err := ingest.EventMessage(e)
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Key) != e.Origin.JobID {
		t.Fatalf("key = %q, want the job id %q", m.Key, e.Origin.JobID)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(m.Value, &raw); err != nil {
		t.Fatalf("message value %s: %v", m.Value, err)
	}
	if id, ok := raw["id"]; ok {
		t.Fatalf("message carries id %s, want none: consumers derive it from the position", id)
	}
	var got ingest.Event
	if err := ingest.Decode(m.Value, &got); err != nil {
		t.Fatal(err)
	}
	// Everything but the id goes on the wire.
	want := orig
	want.ID = ""
	want.V = ingest.SchemaVersion
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decoded:\n got %+v\nwant %+v", got, want)
	}
	// The caller's event keeps its id.
	if e.ID != orig.ID {
		t.Fatalf("EventMessage changed the event's id to %q", e.ID)
	}
}

func TestWithCursor(t *testing.T) {
	const cursor = "ev_01m7zztze00000000000000007"
	m, err := ingest.EventMessage(sampleEvent())
	if err != nil {
		t.Fatal(err)
	}
	objects := []struct {
		name  string
		value string
		want  ingest.Event // the decoded result, ID aside
	}{
		{"event", string(m.Value), func() ingest.Event {
			e := *sampleEvent()
			e.ID, e.V = "", ingest.SchemaVersion
			return e
		}()},
		{"empty object", "{}", ingest.Event{}},
		{"one field", `{"v":1}`, ingest.Event{V: 1}},
	}
	for _, tc := range objects {
		t.Run(tc.name, func(t *testing.T) {
			value := []byte(tc.value)
			out := ingest.WithCursor([]byte("keep:"), value, cursor)
			if string(value) != tc.value {
				t.Fatalf("WithCursor changed its input to %s", value)
			}
			if !strings.HasPrefix(string(out), "keep:") {
				t.Fatalf("WithCursor did not append to dst: %s", out)
			}
			out = out[len("keep:"):]
			if !strings.HasPrefix(string(out), `{"id":"`+cursor+`"`) {
				t.Fatalf("WithCursor = %s, want the id as the first field", out)
			}
			if !json.Valid(out) {
				t.Fatalf("WithCursor = %s, not valid JSON", out)
			}
			var got ingest.Event
			if err := ingest.Decode(out, &got); err != nil {
				t.Fatalf("Decode(%s): %v", out, err)
			}
			if got.ID != cursor {
				t.Fatalf("decoded id %q, want the cursor %q", got.ID, cursor)
			}
			got.ID = ""
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("decoded:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
	if got := string(ingest.WithCursor(nil, []byte("{}"), cursor)); got != `{"id":"`+cursor+`"}` {
		t.Fatalf("WithCursor of {} = %s", got)
	}
	// What is not a JSON object passes through untouched.
	for _, value := range []string{"", "{", "not json", `[{"a":1}]`, `"str"`, "null", "\x00\xff"} {
		out := ingest.WithCursor([]byte("keep:"), []byte(value), cursor)
		if string(out) != "keep:"+value {
			t.Errorf("WithCursor(%q) = %q, want it appended unchanged", value, out)
		}
	}
}

func TestDeliveryCursor(t *testing.T) {
	// Fixed values guard the derivation: stored ids and clients' since
	// cursors must survive an upgrade.
	if got, want := (ingest.Delivery{}).Cursor(), "ev_"+strings.Repeat("0", 26); got != want {
		t.Fatalf("zero Cursor = %q, want %q", got, want)
	}
	if got, want := (ingest.Delivery{Offset: 33}).Cursor(), "ev_"+strings.Repeat("0", 24)+"11"; got != want {
		t.Fatalf("Cursor at offset 33 = %q, want %q", got, want)
	}

	type pos struct {
		epoch     int64
		partition int
		offset    int64
	}
	var sample []pos
	for _, epoch := range []int64{0, 1, 1718000000123, 1718000000124, 1<<47 - 1, 1<<48 - 1} {
		for _, partition := range []int{0, 1, 31, 32, 255, 1<<16 - 1} {
			for _, offset := range []int64{0, 1, 31, 32, 1023, 1 << 32, 1<<40 + 7, math.MaxInt64 - 1, math.MaxInt64} {
				sample = append(sample, pos{epoch, partition, offset})
			}
		}
	}
	cmpPos := func(a, b pos) int {
		return cmp.Or(cmp.Compare(a.epoch, b.epoch), cmp.Compare(a.partition, b.partition), cmp.Compare(a.offset, b.offset))
	}
	cursors := make([]string, len(sample))
	for i, p := range sample {
		c := ingest.Delivery{Epoch: p.epoch, Partition: p.partition, Offset: p.offset}.Cursor()
		if len(c) != 29 || !strings.HasPrefix(c, "ev_") {
			t.Fatalf("Cursor%+v = %q, want ev_ and 26 digits (29 characters)", p, c)
		}
		for _, r := range c[3:] {
			if !strings.ContainsRune("0123456789abcdefghjkmnpqrstvwxyz", r) {
				t.Fatalf("Cursor%+v = %q holds %q, not Crockford base32", p, c, r)
			}
		}
		cursors[i] = c
	}
	// Comparing every pair: cursors order exactly as (epoch, partition,
	// offset) do, so distinct positions never share a cursor.
	for i := range sample {
		for j := range sample {
			if got, want := strings.Compare(cursors[i], cursors[j]), cmpPos(sample[i], sample[j]); got != want {
				t.Fatalf("Cursor%+v = %q vs Cursor%+v = %q compare %d, want %d",
					sample[i], cursors[i], sample[j], cursors[j], got, want)
			}
		}
	}
	// Other fields of the delivery do not matter.
	d := ingest.Delivery{Epoch: 5, Partition: 2, Offset: 9}
	other := d
	other.Message = ingest.Message{Key: []byte("k"), Value: []byte("v")}
	other.Token = 42
	if d.Cursor() != other.Cursor() {
		t.Fatalf("Cursor depends on key, value or token: %q vs %q", d.Cursor(), other.Cursor())
	}
}

func BenchmarkWithCursor(b *testing.B) {
	m, err := ingest.EventMessage(sampleEvent())
	if err != nil {
		b.Fatal(err)
	}
	d := ingest.Delivery{Message: m, Epoch: 1718000000123, Offset: 1 << 20}
	buf := make([]byte, 0, len(m.Value)+64)
	b.SetBytes(int64(len(m.Value)))
	b.ReportAllocs()
	for b.Loop() {
		buf = ingest.WithCursor(buf[:0], d.Value, d.Cursor())
	}
}

func TestDecodeRejects(t *testing.T) {
	cases := []struct {
		name        string
		in          string
		into        any
		wantVersion bool
	}{
		{"newer event", `{"v":2,"id":"evt_x","origin":{"job_id":"job_1"}}`, &ingest.Event{}, true},
		{"newer task", `{"v":99,"kind":"start"}`, &ingest.Task{}, true},
		{"newer open port", `{"v":2,"ip":"198.18.0.1"}`, &ingest.OpenPort{}, true},
		{"garbage", `not json`, &ingest.Event{}, false},
		{"truncated", `{"v":1,"id":"evt_`, &ingest.Event{}, false},
		{"wrong shape", `{"v":1,"origin":"job_1"}`, &ingest.Event{}, false},
		{"empty", ``, &ingest.Task{}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := ingest.Decode([]byte(tc.in), tc.into)
			if err == nil {
				t.Fatal("Decode accepted it")
			}
			if got := errors.Is(err, ingest.ErrVersion); got != tc.wantVersion {
				t.Fatalf("Decode error %v: errors.Is(ErrVersion) = %v, want %v", err, got, tc.wantVersion)
			}
		})
	}
	// Older records (a build before versions, v absent) are still read.
	var e ingest.Event
	if err := ingest.Decode([]byte(`{"id":"evt_old","origin":{"job_id":"job_1"}}`), &e); err != nil {
		t.Fatalf("Decode of a record without v: %v", err)
	}
}

func TestEncodeRejectsNonRecords(t *testing.T) {
	dst := []byte("x")
	got, err := ingest.Encode(dst, struct{ A int }{1})
	if err == nil {
		t.Fatal("Encode accepted a non-record")
	}
	if string(got) != "x" {
		t.Fatalf("Encode changed dst on error: %q", got)
	}
}

func TestNewIDIncreasesWithinAGoroutine(t *testing.T) {
	const prefix = "job_"
	prev := ingest.NewID(prefix)
	for range 100_000 {
		id := ingest.NewID(prefix)
		if id <= prev {
			t.Fatalf("NewID = %q after %q, want strictly increasing", id, prev)
		}
		prev = id
	}
}

func TestNewIDUniqueAcrossGoroutines(t *testing.T) {
	const goroutines, each = 4, 5000
	var mu sync.Mutex
	seen := make(map[string]bool, goroutines*each)
	var wg sync.WaitGroup
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids := make([]string, each)
			for i := range ids {
				ids[i] = ingest.NewID("evt_")
			}
			mu.Lock()
			defer mu.Unlock()
			for _, id := range ids {
				if seen[id] {
					t.Errorf("duplicate id %q", id)
				}
				seen[id] = true
			}
		}()
	}
	wg.Wait()
}

func TestNewIDShapeAndTime(t *testing.T) {
	for _, prefix := range []string{"job_", "key_", ""} {
		before := time.Now().Truncate(time.Millisecond)
		id := ingest.NewID(prefix)
		after := time.Now()
		if !strings.HasPrefix(id, prefix) || len(id) != len(prefix)+26 {
			t.Fatalf("NewID(%q) = %q, want the prefix and 26 characters", prefix, id)
		}
		for _, c := range id[len(prefix):] {
			if !strings.ContainsRune("0123456789abcdefghjkmnpqrstvwxyz", c) {
				t.Fatalf("NewID(%q) = %q holds %q, not Crockford base32", prefix, id, c)
			}
		}
		ts, ok := ingest.IDTime(prefix, id)
		if !ok {
			t.Fatalf("IDTime(%q, %q) failed", prefix, id)
		}
		if ts.Before(before) || ts.After(after) {
			t.Fatalf("IDTime = %v, want within [%v, %v]", ts, before, after)
		}
	}
}

func TestIDTimeRejects(t *testing.T) {
	id := ingest.NewID("job_")
	cases := map[string]struct{ prefix, id string }{
		"wrong prefix": {"key_", id},
		"too short":    {"job_", id[:len(id)-1]},
		"too long":     {"job_", id + "0"},
		"bad digit":    {"job_", "job_u" + id[5:]}, // u is not in Crockford's alphabet
	}
	for name, tc := range cases {
		if _, ok := ingest.IDTime(tc.prefix, tc.id); ok {
			t.Errorf("%s: IDTime(%q, %q) accepted it", name, tc.prefix, tc.id)
		}
	}
}

func TestRecordIDStable(t *testing.T) {
	a := ingest.RecordID("job_1", "198.18.0.7", "22", "ssh")
	if b := ingest.RecordID("job_1", "198.18.0.7", "22", "ssh"); a != b {
		t.Fatalf("RecordID not stable: %q vs %q", a, b)
	}
	// A fixed value guards against an accidental change of the derivation,
	// which would duplicate every fact stored before it.
	// (sha256 of the parts, each followed by a NUL byte, first 16 bytes.)
	if want := "rec_6180481a21b69199858daacbf49b530e"; a != want {
		t.Fatalf("RecordID = %q, want %q", a, want)
	}
	if !strings.HasPrefix(a, "rec_") || len(a) != len("rec_")+32 {
		t.Fatalf("RecordID = %q, want rec_ and 32 hex digits", a)
	}
	distinct := [][]string{
		{"job_1", "198.18.0.7", "22", "ssh"},
		{"job_1", "198.18.0.7", "23", "ssh"},
		{"job_2", "198.18.0.7", "22", "ssh"},
		{"job_1198.18.0.7", "22", "ssh"}, // part boundaries matter
		{"job_1", "198.18.0.7", "22ssh"},
		{},
	}
	seen := make(map[string][]string)
	for _, parts := range distinct {
		id := ingest.RecordID(parts...)
		if prev, ok := seen[id]; ok {
			t.Fatalf("RecordID(%q) = RecordID(%q) = %q", parts, prev, id)
		}
		seen[id] = parts
	}
}

func BenchmarkEncodeEvent(b *testing.B) {
	e := sampleEvent()
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		var err error
		buf, err = ingest.Encode(buf[:0], e)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkDecodeEvent(b *testing.B) {
	raw, err := ingest.Encode(nil, sampleEvent())
	if err != nil {
		b.Fatal(err)
	}
	var e ingest.Event
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		if err := ingest.Decode(raw, &e); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNewID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = ingest.NewID("evt_")
	}
}

func TestPeekOriginAgreesWithDecode(t *testing.T) {
	events := []ingest.Event{
		{Origin: ingest.Origin{JobID: "job_1", ClientID: "usr_1", Type: ingest.TypePort, Module: ingest.ModulePortscan}, Target: ingest.Target{IP: "198.18.0.1", Port: 22},
			Result: ingest.Result{Data: json.RawMessage(`{"type":"decoy","module":"decoy"}`)}},
		{RecordID: "rec_1", Origin: ingest.Origin{JobID: "job_1", Type: "ssh", Module: ingest.ModuleGrabber}, Result: ingest.Result{Data: json.RawMessage(`{}`)}},
		{Origin: ingest.Origin{JobID: "job_1", Type: ingest.TypeScanStats, Module: ingest.ModuleScanner}, Result: ingest.Result{Data: json.RawMessage(`{"shard":0}`)}},
	}
	for _, e := range events {
		m, err := ingest.EventMessage(&e)
		if err != nil {
			t.Fatal(err)
		}
		typ, mod, ok := ingest.PeekOrigin(m.Value)
		if !ok || string(typ) != e.Origin.Type || string(mod) != e.Origin.Module {
			t.Fatalf("ingest.PeekOrigin = %q %q %v, want %q %q", typ, mod, ok, e.Origin.Type, e.Origin.Module)
		}
	}
	if _, _, ok := ingest.PeekOrigin([]byte(`{"origin":{"job_id":"j"}}`)); ok {
		t.Fatal("an event without type and module peeked ok")
	}
}
