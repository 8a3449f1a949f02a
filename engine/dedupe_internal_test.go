package engine

import (
	"sync/atomic"
	"testing"

	"trawl/ingest"
)

func TestIndexInInvertsAt(t *testing.T) {
	p, err := (&PolicyConfig{Allow: []string{"198.18.0.0/15"}}).Build()
	if err != nil {
		t.Fatal(err)
	}
	space, err := NewSpace([]ingest.TaskOptions{
		{Targets: []string{"198.18.0.0/26", "198.18.1.5", "198.18.2.10-198.18.2.20"}, Ports: []ingest.PortSpec{{Ports: "80"}, {Ports: "8000-8002"}}},
		{Targets: []string{"198.19.0.0/28"}, Ports: []ingest.PortSpec{{Ports: "22"}, {Ports: "79-81"}}},
	}, p)
	if err != nil {
		t.Fatal(err)
	}
	for i := range space.Size() {
		ip, port, e := space.At(i)
		got, ok := space.indexIn(e, ip, port)
		if !ok || got != i {
			t.Fatalf("indexIn(%d, %s, %d) = %d, %v; want %d", e, FormatIP(ip), port, got, ok, i)
		}
	}
	ip := parseIP(t, "198.18.0.1")
	for _, c := range []struct {
		e    int
		ip   uint32
		port uint16
	}{{0, ip, 81}, {1, ip, 7999}, {0, ip + 1000, 80}, {2, ip, 22}} {
		if i, ok := space.indexIn(c.e, c.ip, c.port); ok {
			t.Errorf("indexIn(%d, %s, %d) = %d: not in that entry", c.e, FormatIP(c.ip), c.port, i)
		}
	}
}

func parseIP(tb testing.TB, s string) uint32 {
	tb.Helper()
	r, err := ParseTarget(s)
	if err != nil {
		tb.Fatal(err)
	}
	return r.First
}

func TestBitmapSetAndHas(t *testing.T) {
	b := newBitmap(130)
	if len(b) != 3 || bitmapBytes(130) != 24 || bitmapBytes(0) != 0 {
		t.Fatalf("bitmap of 130 bits has %d words, bitmapBytes %d", len(b), bitmapBytes(130))
	}
	for _, i := range []uint64{0, 63, 64, 129} {
		if b.has(i) || b.set(i) {
			t.Errorf("bit %d set before set", i)
		}
		if !b.has(i) || !b.set(i) {
			t.Errorf("bit %d not set after set", i)
		}
	}
	if b.has(1) || b.has(65) || b.has(128) {
		t.Error("neighbouring bits set")
	}
}

func TestRecentKeysForgetsTheOldest(t *testing.T) {
	r := newRecentKeys(3)
	for k := uint64(1); k <= 3; k++ {
		if !r.add(k) {
			t.Fatalf("key %d not new", k)
		}
	}
	if r.add(2) {
		t.Error("key 2 new again while in the window")
	}
	if !r.add(4) { // evicts 1
		t.Error("key 4 not new")
	}
	if r.add(3) || r.add(4) {
		t.Error("keys 3, 4 forgotten too early")
	}
	if !r.add(1) { // 1 was evicted; evicts 2
		t.Error("key 1 still remembered beyond the window")
	}
	if len(r.set) != 3 || len(r.ring) != 3 {
		t.Errorf("window holds %d keys (ring %d), want 3", len(r.set), len(r.ring))
	}
	if z := newRecentKeys(0); !z.add(9) || z.add(9) {
		t.Error("a window of 0 must still hold the last key")
	}
}

func TestReplySetsChooseByTheCap(t *testing.T) {
	p, err := (&PolicyConfig{Allow: []string{"10.0.0.0/8"}}).Build()
	if err != nil {
		t.Fatal(err)
	}
	space, err := NewSpace([]ingest.TaskOptions{{Targets: []string{"10.0.0.0/8"}, Ports: []ingest.PortSpec{{Ports: "1-1000"}}}}, p)
	if err != nil {
		t.Fatal(err)
	}
	// /8 × 1000 ports: 2 GiB of bits, far beyond the default cap
	open, answered := newReplySets(ScanConfig{Space: space, Retries: 2})
	if open.bits != nil || answered != nil || open.window == nil || open.window.limit != DefaultDedupeWindow {
		t.Errorf("a /8 × 1000 got bitmaps: %d words, answered %d", len(open.bits), len(answered))
	}
	small, err := NewSpace([]ingest.TaskOptions{{Targets: []string{"10.0.0.0/8"}, Ports: []ingest.PortSpec{{Ports: "80"}}}}, p)
	if err != nil {
		t.Fatal(err)
	}
	open, answered = newReplySets(ScanConfig{Space: small, Retries: 1})
	if uint64(len(open.bits)) != 1<<24/64 || uint64(len(answered)) != 1<<24/64 || open.window != nil {
		t.Errorf("a /8 × 1 got %d and %d words, want %d each", len(open.bits), len(answered), 1<<24/64)
	}
	open, answered = newReplySets(ScanConfig{Space: small})
	if open.bits == nil || answered != nil {
		t.Error("without retries the answered bitmap is not needed")
	}
	// exactly at the cap: both bitmaps fit 4 MiB
	open, answered = newReplySets(ScanConfig{Space: small, Retries: 1, BitmapBytes: 4 << 20})
	if open.bits == nil || answered == nil {
		t.Error("two 2 MiB bitmaps must fit a 4 MiB cap")
	}
	open, _ = newReplySets(ScanConfig{Space: small, Retries: 1, BitmapBytes: 4<<20 - 1, DedupeWindow: 5})
	if open.bits != nil || open.window.limit != 5 {
		t.Error("a cap one byte short must fall back to the window")
	}
}

// BenchmarkOpenSetBitmap is the exact dedupe of one open reply.
func BenchmarkOpenSetBitmap(b *testing.B) {
	const n = 1 << 24
	o := newOpenSet(n, true, 0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		idx := uint64(i) * 0x9e3779b97f4a7c15 % n
		o.add(idx, idx)
	}
}

// BenchmarkOpenSetWindow is the bounded dedupe at steady state (full window).
func BenchmarkOpenSetWindow(b *testing.B) {
	o := newOpenSet(0, false, 1<<16)
	for k := range uint64(1 << 16) {
		o.add(0, k)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		o.add(0, uint64(i)*0x9e3779b97f4a7c15)
	}
}

// BenchmarkHandleOpenReply is the reply path of a /16 × 1 scan: match,
// index, dedupe, count (half the replies duplicates).
func BenchmarkHandleOpenReply(b *testing.B) {
	p, err := (&PolicyConfig{Allow: []string{"198.18.0.0/15"}}).Build()
	if err != nil {
		b.Fatal(err)
	}
	space, err := NewSpace([]ingest.TaskOptions{{Targets: []string{"198.18.0.0/16"}, Ports: []ingest.PortSpec{{Ports: "80"}}}}, p)
	if err != nil {
		b.Fatal(err)
	}
	s := &scan{space: space, full: make([]atomic.Bool, 1), found: make([]int, 1), allFull: make(chan struct{}),
		matchBuf: make([]int, 0, 4), passes: 1}
	s.reported, s.answered = newReplySets(ScanConfig{Space: space, Retries: 1})
	base := parseIP(b, "198.18.0.0")
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		s.handle(Reply{IP: base + uint32(i>>1)&0xffff, Port: 80, Open: i&1 == 0})
	}
}
