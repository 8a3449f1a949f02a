package engine

import (
	"context"
	"errors"
	"testing"
	"time"
)

// measureRate grants batches for about d and returns the achieved rate.
func measureRate(t *testing.T, pps, batch int, d time.Duration) float64 {
	t.Helper()
	l := NewLimiter(pps)
	ctx := context.Background()
	if err := l.Wait(ctx, batch); err != nil { // the first batch goes at once
		t.Fatal(err)
	}
	start := time.Now()
	granted := 0
	for time.Since(start) < d {
		if err := l.Wait(ctx, batch); err != nil {
			t.Fatal(err)
		}
		granted += batch
	}
	return float64(granted) / time.Since(start).Seconds()
}

func TestLimiterAccuracy(t *testing.T) {
	if testing.Short() {
		t.Skip("timing test")
	}
	for _, tc := range []struct{ pps, batch int }{
		{1000, 1},
		{10000, 10},
		{100000, 64},
		{1000000, 256},
	} {
		// a loaded 2-core machine can stall a run: retry before failing
		var got float64
		for attempt := 0; attempt < 5; attempt++ {
			got = measureRate(t, tc.pps, tc.batch, 600*time.Millisecond)
			t.Logf("%d pps, batch %d: attempt %d measured %.0f", tc.pps, tc.batch, attempt, got)
			if got >= 0.95*float64(tc.pps) && got <= 1.05*float64(tc.pps) {
				break
			}
		}
		if got < 0.95*float64(tc.pps) || got > 1.05*float64(tc.pps) {
			t.Errorf("%d pps in batches of %d: measured %.0f pps, want within 5%%", tc.pps, tc.batch, got)
		}
	}
}

func TestLimiterNoBurstAfterStall(t *testing.T) {
	l := NewLimiter(1000)
	ctx := context.Background()
	_ = l.Wait(ctx, 1)
	time.Sleep(100 * time.Millisecond) // the caller stalls
	// of the 100 probes the stall "saved", maxLag's worth (50) go at once,
	// the rest is forgiven: 80 probes still take 30 ms more
	start := time.Now()
	for range 80 {
		_ = l.Wait(ctx, 1)
	}
	if d := time.Since(start); d < 25*time.Millisecond {
		t.Errorf("80 probes at 1000 pps after a stall took %s: burst", d)
	}
}

func TestLimiterUnlimitedAndCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	l := NewLimiter(0)
	start := time.Now()
	for range 100000 {
		if err := l.Wait(ctx, 100); err != nil {
			t.Fatal(err)
		}
	}
	if time.Since(start) > time.Second {
		t.Error("unlimited limiter waited")
	}

	slow := NewLimiter(1)
	_ = slow.Wait(ctx, 10) // the next grant is 10 s away
	go func() {
		time.Sleep(20 * time.Millisecond)
		cancel()
	}()
	start = time.Now()
	if err := slow.Wait(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait after cancel = %v", err)
	}
	if time.Since(start) > time.Second {
		t.Error("Wait did not return on cancel")
	}
	if err := l.Wait(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("unlimited Wait on a canceled ctx = %v", err)
	}
	var nilLimiter *Limiter
	if err := nilLimiter.Wait(context.Background(), 5); err != nil {
		t.Errorf("nil limiter Wait = %v", err)
	}
}

func TestLimiterShared(t *testing.T) {
	if testing.Short() {
		t.Skip("timing test")
	}
	// two callers share one budget
	l := NewLimiter(20000)
	ctx := context.Background()
	done := make(chan int)
	start := time.Now()
	for range 2 {
		go func() {
			n := 0
			for time.Since(start) < 500*time.Millisecond {
				_ = l.Wait(ctx, 10)
				n += 10
			}
			done <- n
		}()
	}
	total := <-done + <-done
	rate := float64(total) / time.Since(start).Seconds()
	if rate > 20000*1.1 {
		t.Errorf("two callers got %.0f pps from a 20000 pps limiter", rate)
	}
}

func BenchmarkLimiterWait(b *testing.B) {
	l := NewLimiter(1 << 30) // fast enough that Wait rarely sleeps
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_ = l.Wait(ctx, 64)
	}
}
