package engine_test

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"trawl/engine"
	"trawl/engine/fakenet"
	"trawl/ingest"
)

// slashEight is a /8 × 1 port space: 16.8M probes.
func slashEight(tb testing.TB) *engine.Space {
	tb.Helper()
	p, err := (&engine.PolicyConfig{Allow: []string{"10.0.0.0/8"}}).Build()
	if err != nil {
		tb.Fatal(err)
	}
	space, err := engine.NewSpace([]ingest.TaskOptions{{Targets: []string{"10.0.0.0/8"}, Ports: []ingest.PortSpec{{Ports: "80"}}}}, p)
	if err != nil {
		tb.Fatal(err)
	}
	return space
}

// TestDryScanMemoryIsBounded sweeps half of a /8 × 1 port twice (shard 0
// of 2, one retry pass: 16.8M probes, with both bitmaps over the whole
// space) and samples the heap meanwhile: what the scan holds must not grow
// with the probes sent.
func TestDryScanMemoryIsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("sweeps 16.8M probes")
	}
	const heapCap = 64 << 20
	space := slashEight(t)
	dry := fakenet.NewDry()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var peak uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	final, err := engine.Scan(ctx, engine.ScanConfig{
		Space: space, Seed: 1, Shard: 0, Shards: 2, Transport: dry, Batch: 1024, Retries: 1,
		StatsInterval: 100 * time.Millisecond,
	}, nil, func(engine.Stats) {})
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	// nothing answers, so the retry pass resends everything
	if final.Sent != 2*final.Targets || dry.Counters().Sent != final.Sent || final.Targets < space.Size()/2-8 {
		t.Errorf("sent %d (dry saw %d) for %d targets, want 2 passes over half of %d",
			final.Sent, dry.Counters().Sent, final.Targets, space.Size())
	}
	t.Logf("%d probes in %s (%.0f/s); peak heap in use %.1f MiB", final.Sent, final.Elapsed.Round(time.Millisecond),
		final.AvgPPS, float64(peak)/(1<<20))
	if peak > heapCap {
		t.Errorf("peak heap in use %d MiB, want under %d MiB", peak>>20, heapCap>>20)
	}
}

// BenchmarkScanDry is the engine's own cost per probe: permutation walk,
// space lookup, batching and the limiter's bookkeeping, over shard 0 of 16
// of a /8 × 1 port (1M probes an op).
func BenchmarkScanDry(b *testing.B) {
	space := slashEight(b)
	b.ReportAllocs()
	var sent uint64
	for b.Loop() {
		dry := fakenet.NewDry()
		if _, err := engine.Scan(context.Background(), engine.ScanConfig{Space: space, Seed: 1, Shards: 16, Transport: dry}, nil, nil); err != nil {
			b.Fatal(err)
		}
		sent += dry.Counters().Sent
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(sent), "ns/probe")
}
