package engine_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"trawl/engine"
	"trawl/engine/fakenet"
	"trawl/ingest"
)

func mustIP(t testing.TB, s string) uint32 {
	t.Helper()
	v, ok := engine.IPv4(netip.MustParseAddr(s))
	if !ok {
		t.Fatalf("%s is not IPv4", s)
	}
	return v
}

// testPolicy allows what the tests scan: loopback and 198.18.0.0/15.
func testPolicy(t testing.TB) engine.Policy {
	t.Helper()
	p, err := (&engine.PolicyConfig{Allow: []string{"127.0.0.0/8", "198.18.0.0/15"}}).Build()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newSpace(t testing.TB, opts ...ingest.TaskOptions) *engine.Space {
	t.Helper()
	s, err := engine.NewSpace(opts, testPolicy(t))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type pair struct {
	ip   uint32
	port uint16
}

// openRandom opens n random pairs of space on net (and returns them).
func openRandom(t testing.TB, net *fakenet.Net, space *engine.Space, n int, seed uint64) map[pair]bool {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	open := map[pair]bool{}
	for len(open) < n {
		a, port, _ := space.At(rng.Uint64N(space.Size()))
		open[pair{a, port}] = true
		net.AddOpen(a, port)
	}
	return open
}

// collector records onOpen calls and fails on concurrent ones.
type collector struct {
	t      testing.TB
	inside atomic.Bool
	mu     sync.Mutex
	found  map[pair]int
	opens  []engine.Open
}

func newCollector(t testing.TB) *collector { return &collector{t: t, found: map[pair]int{}} }

func (c *collector) onOpen(o engine.Open) {
	if !c.inside.CompareAndSwap(false, true) {
		c.t.Error("onOpen called concurrently")
	}
	defer c.inside.Store(false)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.found[pair{o.IP, o.Port}]++
	o.Entries = slices.Clone(o.Entries) // valid only during the call
	c.opens = append(c.opens, o)
}

func TestScanFindsEveryOpenPortOnce(t *testing.T) {
	space := newSpace(t, ingest.TaskOptions{
		Targets: []string{"198.18.0.0/22"},
		Ports:   []ingest.PortSpec{{Ports: "20-30"}},
	})
	net := fakenet.New(fakenet.Config{Duplicate: 0.5, RecordProbes: true, ReplyClosed: true, Seed: 1,
		SrcIP: mustIP(t, "198.18.255.1"), SrcPort: 40000, TTL: 61, Window: 29200})
	open := openRandom(t, net, space, 300, 1)
	net.AddOpen(mustIP(t, "198.19.0.1"), 22) // outside the space: never probed
	c := newCollector(t)
	var statsCalls []engine.Stats
	final, err := engine.Scan(context.Background(), engine.ScanConfig{
		Space: space, Seed: 7, Shard: 0, Shards: 1, Transport: net,
	}, c.onOpen, func(s engine.Stats) { statsCalls = append(statsCalls, s) })
	if err != nil {
		t.Fatal(err)
	}
	if len(c.found) != len(open) {
		t.Errorf("found %d open ports, want %d", len(c.found), len(open))
	}
	for p, n := range c.found {
		if !open[p] || n != 1 {
			t.Errorf("%s:%d reported %d times (open: %v)", engine.FormatIP(p.ip), p.port, n, open[p])
		}
	}
	for _, o := range c.opens {
		if o.TTL != 61 || o.Window != 29200 || o.SrcPort != 40000 || engine.FormatIP(o.SrcIP) != "198.18.255.1" ||
			len(o.Entries) != 1 || o.Entries[0] != 0 {
			t.Errorf("open %+v lacks the reply's details", o)
			break
		}
	}
	probed := net.Probed()
	if uint64(len(probed)) != space.Size() {
		t.Errorf("%d distinct pairs probed, want %d", len(probed), space.Size())
	}
	for k, n := range probed {
		if n != 1 {
			t.Errorf("pair %x probed %d times", k, n)
		}
	}
	if final.Sent != space.Size() || final.Targets != space.Size() || final.Open != uint64(len(open)) ||
		final.Received < space.Size() || final.Duplicates == 0 || !final.Done || final.SendErrors != 0 {
		t.Errorf("final stats %+v", final)
	}
	if len(statsCalls) != 1 || statsCalls[0] != final {
		t.Errorf("onStats got %d calls, want just the final one", len(statsCalls))
	}
}

func TestScanShardsTogetherFindEverythingOnce(t *testing.T) {
	space := newSpace(t,
		ingest.TaskOptions{Targets: []string{"198.18.0.0/22", "198.18.8.1"}, Ports: []ingest.PortSpec{{Ports: "80"}, {Ports: "8000-8009"}}},
		ingest.TaskOptions{Targets: []string{"198.19.0.0/24"}, Ports: []ingest.PortSpec{{Ports: "22"}}},
	)
	const shards = 3
	rng := rand.New(rand.NewPCG(3, 3))
	open := map[pair]bool{}
	for len(open) < 200 {
		a, port, _ := space.At(rng.Uint64N(space.Size()))
		open[pair{a, port}] = true
	}
	c := newCollector(t)
	var sent, targets uint64
	probed := map[uint64]int{}
	for shard := range shards {
		net := fakenet.New(fakenet.Config{RecordProbes: true})
		for p := range open {
			net.AddOpen(p.ip, p.port)
		}
		final, err := engine.Scan(context.Background(), engine.ScanConfig{
			Space: space, Seed: 11, Shard: shard, Shards: shards, Transport: net,
		}, c.onOpen, nil)
		if err != nil {
			t.Fatal(err)
		}
		sent += final.Sent
		targets += final.Targets
		for k, n := range net.Probed() {
			probed[k] += n
		}
	}
	if sent != space.Size() || targets != space.Size() {
		t.Errorf("shards sent %d and counted %d targets, want %d", sent, targets, space.Size())
	}
	if uint64(len(probed)) != space.Size() {
		t.Errorf("%d pairs probed, want %d", len(probed), space.Size())
	}
	for k, n := range probed {
		if n != 1 {
			t.Fatalf("pair %x probed %d times across shards", k, n)
		}
	}
	if len(c.found) != len(open) {
		t.Errorf("shards found %d open ports, want %d", len(c.found), len(open))
	}
	for p, n := range c.found {
		if !open[p] || n != 1 {
			t.Errorf("%s:%d found %d times", engine.FormatIP(p.ip), p.port, n)
		}
	}
}

func TestScanSample(t *testing.T) {
	t.Run("bounded entries stop the scan", func(t *testing.T) {
		space := newSpace(t, ingest.TaskOptions{
			Targets: []string{"198.18.0.0/16"},
			Ports:   []ingest.PortSpec{{Ports: "443", Sample: 5}, {Ports: "80", Sample: 2}},
		})
		net := fakenet.New(fakenet.Config{})
		openRandom(t, net, space, 2000, 5)
		c := newCollector(t)
		final, err := engine.Scan(context.Background(), engine.ScanConfig{Space: space, Seed: 1, Shards: 1, Transport: net}, c.onOpen, nil)
		if err != nil {
			t.Fatal(err)
		}
		perEntry := map[int]int{}
		for _, o := range c.opens {
			for _, e := range o.Entries {
				perEntry[e]++
			}
		}
		if perEntry[0] != 5 || perEntry[1] != 2 || final.Open != 7 {
			t.Errorf("reported %v (open %d), want 5 for entry 0 and 2 for entry 1", perEntry, final.Open)
		}
		// about 1 in 65 pairs is open, so a handful of batches suffice
		if final.Sent >= space.Size()/4 {
			t.Errorf("sent %d of %d probes: the scan did not stop early", final.Sent, space.Size())
		}
		if !final.Done {
			t.Error("final stats not Done")
		}
	})
	t.Run("an unbounded entry keeps the scan going", func(t *testing.T) {
		space := newSpace(t, ingest.TaskOptions{
			Targets: []string{"198.18.0.0/20"},
			Ports:   []ingest.PortSpec{{Ports: "443", Sample: 3}, {Ports: "80"}},
		})
		net := fakenet.New(fakenet.Config{RecordProbes: true})
		open := openRandom(t, net, space, 400, 6)
		var open80 int
		for p := range open {
			if p.port == 80 {
				open80++
			}
		}
		c := newCollector(t)
		final, err := engine.Scan(context.Background(), engine.ScanConfig{Space: space, Seed: 1, Shards: 1, Transport: net}, c.onOpen, nil)
		if err != nil {
			t.Fatal(err)
		}
		var got443, got80 int
		for p := range c.found {
			if p.port == 443 {
				got443++
			} else {
				got80++
			}
		}
		if got443 != 3 || got80 != open80 {
			t.Errorf("found %d on 443 (want 3) and %d on 80 (want %d)", got443, got80, open80)
		}
		// once 443's sample is reached its remaining probes are skipped
		var probed443 int
		for k := range net.Probed() {
			if uint16(k) == 443 {
				probed443++
			}
		}
		if probed443 >= 4096 || final.Sent != 4096+uint64(probed443) {
			t.Errorf("probed 443 on %d ips, sent %d: skipping failed", probed443, final.Sent)
		}
	})
}

func TestScanDelayedRepliesAndCooldown(t *testing.T) {
	space := newSpace(t, ingest.TaskOptions{Targets: []string{"198.18.0.0/24"}, Ports: []ingest.PortSpec{{Ports: "80"}}})
	for _, tc := range []struct {
		name     string
		cooldown time.Duration
		wantAll  bool
	}{
		{"cooldown covers the delay", 500 * time.Millisecond, true},
		{"cooldown too short", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			net := fakenet.New(fakenet.Config{Delay: 50 * time.Millisecond})
			open := openRandom(t, net, space, 20, 9)
			c := newCollector(t)
			final, err := engine.Scan(context.Background(), engine.ScanConfig{
				Space: space, Seed: 1, Shards: 1, Transport: net, Cooldown: tc.cooldown,
			}, c.onOpen, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantAll && len(c.found) != len(open) {
				t.Errorf("found %d of %d with a long enough cooldown", len(c.found), len(open))
			}
			if !tc.wantAll && len(c.found) == len(open) {
				t.Errorf("found all %d though the cooldown ended before the replies were due", len(open))
			}
			if final.Open != uint64(len(c.found)) {
				t.Errorf("stats say %d open, onOpen got %d", final.Open, len(c.found))
			}
			// after Scan returns, no reply arrives any more
			before := len(c.opens)
			time.Sleep(80 * time.Millisecond)
			if len(c.opens) != before {
				t.Error("onOpen called after Scan returned")
			}
		})
	}
}

func TestScanCancel(t *testing.T) {
	space := newSpace(t, ingest.TaskOptions{Targets: []string{"198.18.0.0/16"}, Ports: []ingest.PortSpec{{Ports: "1-1000"}}})
	net := fakenet.New(fakenet.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	final, err := engine.Scan(ctx, engine.ScanConfig{
		Space: space, Seed: 1, Shards: 1, Rate: 5000, Transport: net, Cooldown: time.Minute,
	}, nil, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Scan error = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Scan took %s to stop (the cooldown must be skipped on cancel)", d)
	}
	if !final.Done || final.Sent == 0 || final.Sent >= space.Size() || final.Targets != space.Size() {
		t.Errorf("final stats after cancel: %+v", final)
	}
}

func TestScanPeriodicStats(t *testing.T) {
	space := newSpace(t, ingest.TaskOptions{Targets: []string{"198.18.0.0/20"}, Ports: []ingest.PortSpec{{Ports: "80"}}})
	net := fakenet.New(fakenet.Config{})
	var stats []engine.Stats
	_, err := engine.Scan(context.Background(), engine.ScanConfig{
		Space: space, Seed: 1, Shards: 1, Rate: 10000, Batch: 16, Transport: net, StatsInterval: 50 * time.Millisecond,
	}, nil, func(s engine.Stats) { stats = append(stats, s) })
	if err != nil {
		t.Fatal(err)
	}
	if len(stats) < 3 {
		t.Fatalf("got %d stats over a ~0.4 s scan at 50 ms intervals", len(stats))
	}
	for i, s := range stats {
		last := i == len(stats)-1
		if s.Done != last {
			t.Errorf("stats %d: Done = %v", i, s.Done)
		}
		if i > 0 && s.Sent < stats[i-1].Sent {
			t.Errorf("stats %d: Sent went back", i)
		}
		if !last && (s.Targets != space.Size() || s.AvgPPS <= 0 || i == 0 && s.ETA <= 0) {
			t.Errorf("running stats %d: %+v", i, s)
		}
	}
	mid := stats[len(stats)/2]
	if mid.PPS < 5000 || mid.PPS > 15000 {
		t.Errorf("PPS %.0f at 10000 pps", mid.PPS)
	}
}

func TestScanSendErrorsAndConfig(t *testing.T) {
	space := newSpace(t, ingest.TaskOptions{Targets: []string{"198.18.0.0/24"}, Ports: []ingest.PortSpec{{Ports: "80"}}})
	net := fakenet.New(fakenet.Config{})
	net.FailSends(errors.New("network down"))
	final, err := engine.Scan(context.Background(), engine.ScanConfig{Space: space, Seed: 1, Shards: 1, Transport: net}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if final.SendErrors != 256 || final.Sent != 0 {
		t.Errorf("stats with a failing transport: %+v", final)
	}

	for _, cfg := range []engine.ScanConfig{
		{Space: space, Shards: 1},
		{Transport: net, Shards: 1},
		{Space: space, Transport: net, Shard: 2, Shards: 2},
		{Space: space, Transport: net, Shards: 0},
		{Space: space, Transport: net, Shards: 1, Rate: -1},
	} {
		if _, err := engine.Scan(context.Background(), cfg, nil, nil); !errors.Is(err, engine.ErrScanConfig) {
			t.Errorf("Scan(%+v) error = %v, want ErrScanConfig", cfg, err)
		}
	}
}

func BenchmarkScanFakenet(b *testing.B) {
	space := newSpace(b, ingest.TaskOptions{Targets: []string{"198.18.0.0/16"}, Ports: []ingest.PortSpec{{Ports: "1-16"}}})
	b.ReportAllocs()
	var probes uint64
	start := time.Now()
	for b.Loop() {
		net := fakenet.New(fakenet.Config{})
		openRandom(b, net, space, 100, 1)
		final, err := engine.Scan(context.Background(), engine.ScanConfig{Space: space, Seed: 1, Shards: 1, Batch: 256, Transport: net}, func(engine.Open) {}, nil)
		if err != nil {
			b.Fatal(err)
		}
		probes += final.Sent
	}
	b.ReportMetric(float64(probes)/time.Since(start).Seconds(), "probes/s")
}
