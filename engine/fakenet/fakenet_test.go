package fakenet_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"trawl/engine"
	"trawl/engine/fakenet"
)

func probes(n int) []engine.Probe {
	out := make([]engine.Probe, n)
	for i := range out {
		out[i] = engine.Probe{IP: uint32(i), Port: 80}
	}
	return out
}

func TestLossAndDuplicates(t *testing.T) {
	net := fakenet.New(fakenet.Config{Loss: 0.25, Duplicate: 0.5, Seed: 1, RecordProbes: true})
	for i := range 4000 {
		net.AddOpen(uint32(i), 80)
	}
	var got atomic.Uint64
	if err := net.Start(context.Background(), func(r engine.Reply) {
		if !r.Open {
			t.Error("closed reply without ReplyClosed")
		}
		got.Add(1)
	}); err != nil {
		t.Fatal(err)
	}
	all := probes(8000) // half open
	for i := 0; i < len(all); i += 64 {
		if err := net.Send(context.Background(), all[i:i+64]); err != nil {
			t.Fatal(err)
		}
	}
	if err := net.Close(0); err != nil {
		t.Fatal(err)
	}
	c := net.Counters()
	// 4000 open: ~1000 lost, ~3000 delivered plus ~1500 duplicates
	if c.Sent != 8000 || c.Lost < 850 || c.Lost > 1150 || c.Replies < 4200 || c.Replies > 4800 || c.Replies != got.Load() {
		t.Errorf("counters %+v, callbacks %d", c, got.Load())
	}
	if net.Probes(7, 80) != 1 || net.Probes(9000, 80) != 0 || len(net.Probed()) != 8000 {
		t.Error("probe record wrong")
	}
	if err := net.Send(context.Background(), all[:1]); !errors.Is(err, engine.ErrTransportClosed) {
		t.Errorf("Send after Close = %v", err)
	}
}

func TestDelayAndCooldown(t *testing.T) {
	net := fakenet.New(fakenet.Config{Delay: 30 * time.Millisecond, ReplyClosed: true})
	net.AddOpen(1, 80)
	var open, closed atomic.Int32
	_ = net.Start(context.Background(), func(r engine.Reply) {
		if r.Open {
			open.Add(1)
		} else {
			closed.Add(1)
		}
	})
	start := time.Now()
	if err := net.Send(context.Background(), probes(3)); err != nil {
		t.Fatal(err)
	}
	if open.Load()+closed.Load() != 0 {
		t.Error("delayed replies arrived at once")
	}
	if err := net.Close(time.Second); err != nil {
		t.Fatal(err)
	}
	if open.Load() != 1 || closed.Load() != 2 {
		t.Errorf("got %d open and %d closed replies, want 1 and 2", open.Load(), closed.Load())
	}
	if d := time.Since(start); d < 30*time.Millisecond || d > 900*time.Millisecond {
		t.Errorf("Close returned after %s: it should wait for the due replies only", d)
	}
}

func TestFailSends(t *testing.T) {
	net := fakenet.New(fakenet.Config{})
	_ = net.Start(context.Background(), func(engine.Reply) {})
	boom := errors.New("boom")
	net.FailSends(boom)
	if err := net.Send(context.Background(), probes(1)); !errors.Is(err, boom) {
		t.Errorf("Send = %v, want boom", err)
	}
	net.FailSends(nil)
	if err := net.Send(context.Background(), probes(1)); err != nil {
		t.Errorf("Send = %v after clearing the failure", err)
	}
}
