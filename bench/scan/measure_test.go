package main

import (
	"context"
	"errors"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

const netDev = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
bs-ab12s: 1200      20    0    0    0     0          0         0   640000   10000    0    7    0     0       0          0
`

func TestParseNetDev(t *testing.T) {
	got, err := parseNetDev([]byte(netDev), "bs-ab12s")
	if err != nil {
		t.Fatal(err)
	}
	if got != (txCounters{Packets: 10000, Dropped: 7}) {
		t.Fatalf("got %+v", got)
	}
	if _, err := parseNetDev([]byte(netDev), "eth0"); !errors.Is(err, ErrNoInterface) {
		t.Fatalf("missing interface: got %v", err)
	}
	if _, err := parseNetDev([]byte("x: 1 2 3\n"), "x"); !errors.Is(err, ErrParse) {
		t.Fatalf("short line: got %v", err)
	}
	if _, err := parseNetDev([]byte("x: 1 2 3 4 5 6 7 8 9 y 11 12\n"), "x"); !errors.Is(err, ErrParse) {
		t.Fatalf("bad number: got %v", err)
	}
}

func samples(start time.Time, every time.Duration, tx ...uint64) []sample {
	s := make([]sample, len(tx))
	for i, v := range tx {
		s[i] = sample{At: start.Add(time.Duration(i) * every), TX: txCounters{Packets: v}}
	}
	return s
}

func TestSendWindow(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := time.Millisecond
	cases := []struct {
		name     string
		s        []sample
		wantSent uint64
		wantDur  time.Duration
	}{
		// increases at samples 2..5: start mid(1,2)=1.5ms, end mid(4,5)=4.5ms
		{"steady", samples(t0, ms, 100, 100, 200, 300, 400, 500, 500, 500), 400, 3 * ms},
		{"one burst counts half an interval", samples(t0, ms, 0, 0, 50, 50), 50, ms / 2},
		{"nothing sent", samples(t0, ms, 7, 7, 7), 0, 0},
		{"one sample", samples(t0, ms, 7), 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sent, dur := sendWindow(tc.s)
			if sent != tc.wantSent || dur != tc.wantDur {
				t.Fatalf("got %d in %s, want %d in %s", sent, dur, tc.wantSent, tc.wantDur)
			}
		})
	}
}

func TestSamplerReadsAFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dev")
	if err := os.WriteFile(path, []byte(netDev), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stop := startSampler(ctx, sampler{path: path, ifname: "bs-ab12s", every: time.Millisecond})
	time.Sleep(30 * time.Millisecond)
	got, err := stop()
	if err != nil {
		t.Fatal(err)
	}
	// Unchanged counters collapse to a few samples, first and last kept.
	if len(got) < 2 || len(got) > 3 {
		t.Fatalf("got %d samples of unchanged counters, want 2..3", len(got))
	}
	if got[0].TX.Packets != 10000 || !got[len(got)-1].At.After(got[0].At.Add(20*time.Millisecond)) {
		t.Fatalf("samples %+v", got)
	}
	if _, err := (sampler{path: filepath.Join(t.TempDir(), "none"), ifname: "x", every: time.Millisecond}).run(ctx); err == nil {
		t.Fatal("a missing file was sampled")
	}
}

func TestScore(t *testing.T) {
	block := netip.MustParsePrefix("198.18.0.0/30")
	dense := newTruth(block, nil, []uint16{22, 80})
	if dense.count != 8 {
		t.Fatalf("dense truth count %d, want 8", dense.count)
	}
	tl := newTally()
	for _, s := range []string{"198.18.0.0:22", "198.18.0.0:22", "198.18.0.1:80", "198.18.0.1:443", "198.18.9.9:22", "198.18.0.3:80"} {
		tl.add(netip.MustParseAddrPort(s))
	}
	got := tl.score(dense)
	want := score{Found: 3, Truth: 8, Recall: 3.0 / 8, Duplicates: 1, FalsePositives: 2}
	if got != want {
		t.Fatalf("dense: got %+v, want %+v", got, want)
	}
	sparse := newTruth(block, []netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("10.0.0.1")}, []uint16{80})
	if sparse.count != 1 {
		t.Fatalf("sparse truth count %d, want 1 (hosts outside the block ignored)", sparse.count)
	}
	got = tl.score(sparse)
	if got.Found != 1 || got.FalsePositives != 4 || math.Abs(got.Recall-1) > 1e-12 {
		t.Fatalf("sparse: got %+v", got)
	}
	if s := newTally().score(newTruth(block, []netip.Addr{}, []uint16{80})); s.Recall != 0 || s.Truth != 0 {
		t.Fatalf("empty truth: got %+v", s)
	}
}
