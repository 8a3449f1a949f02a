package engine_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"trawl/engine"
	"trawl/engine/fakenet"
	"trawl/ingest"
)

// lossyScan scans a /20 × 10 ports (40960 pairs, 8000 open) through a
// network losing 20% of replies, closed ports answering, and returns the
// collector, the network and the final stats.
func lossyScan(t *testing.T, cfg engine.ScanConfig, closedReply bool) (*collector, *fakenet.Net, map[pair]bool, engine.Stats) {
	t.Helper()
	space := newSpace(t, ingest.TaskOptions{Targets: []string{"198.18.0.0/20"}, Ports: []ingest.PortSpec{{Ports: "8000-8009"}}})
	net := fakenet.New(fakenet.Config{Loss: 0.2, ReplyClosed: closedReply, RecordProbes: true, Seed: 11})
	open := openRandom(t, net, space, 8000, 3)
	cfg.Space, cfg.Seed, cfg.Shards, cfg.Transport = space, 5, 1, net
	c := newCollector(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	final, err := engine.Scan(ctx, cfg, c.onOpen, nil)
	if err != nil {
		t.Fatal(err)
	}
	for p, n := range c.found {
		if !open[p] || n != 1 {
			t.Errorf("%s:%d reported %d times (open: %v)", engine.FormatIP(p.ip), p.port, n, open[p])
		}
	}
	return c, net, open, final
}

func recall(c *collector, open map[pair]bool) float64 {
	return float64(len(c.found)) / float64(len(open))
}

func maxProbes(net *fakenet.Net) int {
	most := 0
	for _, n := range net.Probed() {
		most = max(most, n)
	}
	return most
}

func TestScanRetriesRecoverLostReplies(t *testing.T) {
	t.Run("no retries lose what the network loses", func(t *testing.T) {
		c, net, open, final := lossyScan(t, engine.ScanConfig{}, true)
		t.Logf("recall %.4f", recall(c, open))
		if r := recall(c, open); r > 0.9 {
			t.Errorf("recall %.4f without retries on a 20%% lossy network, want < 0.9", r)
		}
		if maxProbes(net) != 1 || final.Sent != 40960 || final.Retried != 0 || final.Pass != 0 {
			t.Errorf("max probes per pair %d, stats %+v: want one pass of 40960", maxProbes(net), final)
		}
	})
	t.Run("two retries with the answered bitmap", func(t *testing.T) {
		c, net, open, final := lossyScan(t, engine.ScanConfig{Retries: 2}, true)
		t.Logf("recall %.4f, stats %+v", recall(c, open), final)
		if r := recall(c, open); r < 0.99 {
			t.Errorf("recall %.4f with 2 retries, want ≥ 0.99", r)
		}
		if m := maxProbes(net); m > 3 {
			t.Errorf("a pair was probed %d times, want at most retries+1 = 3", m)
		}
		// every pair answers (closed ones with a RST) unless its reply is
		// lost, so a retry pass resends about a fifth of the previous one
		if final.Retried == 0 || final.Retried > 40960*2/4 {
			t.Errorf("retried %d probes, want about 40960·(0.2+0.04)", final.Retried)
		}
		if final.Sent != 40960+final.Retried || final.Pass != 2 || final.Progress != 1 || final.Targets != 40960 {
			t.Errorf("final stats %+v", final)
		}
		if final.Open != uint64(len(c.found)) {
			t.Errorf("stats say %d open, %d reported", final.Open, len(c.found))
		}
	})
	t.Run("two retries beyond the bitmap cap resend everything", func(t *testing.T) {
		c, net, open, final := lossyScan(t, engine.ScanConfig{Retries: 2, BitmapBytes: 64}, false)
		t.Logf("recall %.4f, stats %+v", recall(c, open), final)
		if r := recall(c, open); r < 0.99 {
			t.Errorf("recall %.4f with 2 retries, want ≥ 0.99", r)
		}
		probed := net.Probed()
		if len(probed) != 40960 {
			t.Errorf("%d pairs probed, want all 40960", len(probed))
		}
		for k, n := range probed {
			if n != 3 {
				t.Fatalf("pair %x probed %d times, want exactly 3 without a bitmap", k, n)
			}
		}
		// the window (default 1M) holds every open port here: none twice
		if final.Sent != 3*40960 || final.Retried != 2*40960 || final.Duplicates == 0 {
			t.Errorf("final stats %+v: want 3 full passes and duplicates absorbed", final)
		}
	})
}

func TestScanRetryWaitsForTheCooldown(t *testing.T) {
	// every pair answers after 30ms; the retry pass must not start before
	// the first pass's replies are in, so nothing is probed twice
	space := newSpace(t, ingest.TaskOptions{Targets: []string{"198.18.0.0/24"}, Ports: []ingest.PortSpec{{Ports: "22"}, {Ports: "80"}}})
	net := fakenet.New(fakenet.Config{Delay: 30 * time.Millisecond, ReplyClosed: true, RecordProbes: true})
	openRandom(t, net, space, 50, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	began := time.Now()
	final, err := engine.Scan(ctx, engine.ScanConfig{
		Space: space, Seed: 3, Shards: 1, Transport: net, Retries: 3, Cooldown: 200 * time.Millisecond,
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if maxProbes(net) != 1 || final.Sent != 512 || final.Retried != 0 || final.Open != 50 {
		t.Errorf("max probes per pair %d, stats %+v: want one probe each", maxProbes(net), final)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("scan took %s", took)
	}
}

func TestScanCanceledBetweenPasses(t *testing.T) {
	space := newSpace(t, ingest.TaskOptions{Targets: []string{"198.18.0.0/24"}, Ports: []ingest.PortSpec{{Ports: "22"}}})
	net := fakenet.New(fakenet.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	began := time.Now()
	final, err := engine.Scan(ctx, engine.ScanConfig{
		Space: space, Seed: 3, Shards: 1, Transport: net, Retries: 2, Cooldown: time.Hour,
	}, nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the deadline", err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("cancel took %s to end the scan", took)
	}
	if final.Sent != 256 || final.Retried != 0 || !final.Done || final.Targets != 256 {
		t.Errorf("final stats %+v: want the first pass only", final)
	}
}

func TestScanDedupeWindowBeyondTheCap(t *testing.T) {
	space := newSpace(t, ingest.TaskOptions{Targets: []string{"198.18.0.0/22"}, Ports: []ingest.PortSpec{{Ports: "20-30"}}})
	net := fakenet.New(fakenet.Config{Duplicate: 0.9, Seed: 4})
	open := openRandom(t, net, space, 300, 9)
	c := newCollector(t)
	final, err := engine.Scan(context.Background(), engine.ScanConfig{
		Space: space, Seed: 7, Shards: 1, Transport: net, BitmapBytes: 8, DedupeWindow: 1000,
	}, c.onOpen, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.found) != len(open) {
		t.Errorf("found %d, want %d", len(c.found), len(open))
	}
	for p, n := range c.found {
		if n != 1 {
			t.Errorf("%s:%d reported %d times", engine.FormatIP(p.ip), p.port, n)
		}
	}
	if final.Duplicates == 0 || final.Open != uint64(len(open)) {
		t.Errorf("final stats %+v", final)
	}
}

// rejecting is a transport that also counts rejected replies.
type rejecting struct {
	*fakenet.Net
	n uint64
}

func (r rejecting) Rejected() uint64 { return r.n }

func TestScanStatsCarryProgressAndRejects(t *testing.T) {
	space := newSpace(t, ingest.TaskOptions{Targets: []string{"198.18.0.0/20"}, Ports: []ingest.PortSpec{{Ports: "80"}}})
	net := fakenet.New(fakenet.Config{ReplyClosed: true, Loss: 0.5, Seed: 1})
	openRandom(t, net, space, 100, 1)
	var all []engine.Stats
	final, err := engine.Scan(context.Background(), engine.ScanConfig{
		Space: space, Seed: 2, Shards: 1, Transport: rejecting{net, 7}, Rate: 40000, Retries: 1,
		StatsInterval: 10 * time.Millisecond,
	}, nil, func(s engine.Stats) { all = append(all, s) })
	if err != nil {
		t.Fatal(err)
	}
	if len(all) < 5 {
		t.Fatalf("%d stats calls, want several over ~150ms", len(all))
	}
	last := 0.0
	for _, s := range all {
		if s.Progress < last || s.Progress > 1 {
			t.Errorf("progress went %f → %f", last, s.Progress)
		}
		last = s.Progress
		if s.Rejected != 7 {
			t.Errorf("rejected %d, want the transport's 7", s.Rejected)
		}
		if !s.Done && s.Progress > 0 && s.Progress < 1 && s.ETA <= 0 {
			t.Errorf("no ETA at progress %f", s.Progress)
		}
	}
	if final.Progress != 1 || final.ETA != 0 || final.Pass != 1 || final.Retried == 0 || final.Received == 0 {
		t.Errorf("final stats %+v", final)
	}
	if final.Received != net.Counters().Replies {
		t.Errorf("received %d, the network delivered %d", final.Received, net.Counters().Replies)
	}
}

func TestScanConfigRejectsNegativeRetries(t *testing.T) {
	space := newSpace(t, ingest.TaskOptions{Targets: []string{"198.18.0.1"}, Ports: []ingest.PortSpec{{Ports: "80"}}})
	for _, cfg := range []engine.ScanConfig{{Retries: -1}, {BitmapBytes: -1}, {DedupeWindow: -1}} {
		cfg.Space, cfg.Shards, cfg.Transport = space, 1, fakenet.NewDry()
		if _, err := engine.Scan(context.Background(), cfg, nil, nil); !errors.Is(err, engine.ErrScanConfig) {
			t.Errorf("%+v: err %v, want ErrScanConfig", cfg, err)
		}
	}
}
