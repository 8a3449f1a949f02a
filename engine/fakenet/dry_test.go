package fakenet_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"trawl/engine"
	"trawl/engine/fakenet"
)

func TestDryCountsAndNeverReplies(t *testing.T) {
	d := fakenet.NewDry()
	if err := d.Send(context.Background(), make([]engine.Probe, 3)); !errors.Is(err, engine.ErrTransportClosed) {
		t.Errorf("send before start: %v, want ErrTransportClosed", err)
	}
	replied := false
	if err := d.Start(context.Background(), func(engine.Reply) { replied = true }); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background(), nil); err == nil {
		t.Error("a second Start succeeded")
	}
	for range 4 {
		if err := d.Send(context.Background(), make([]engine.Probe, 64)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Send(ctx, make([]engine.Probe, 64)); !errors.Is(err, context.Canceled) {
		t.Errorf("send on a canceled ctx: %v", err)
	}
	began := time.Now()
	if err := d.Close(time.Hour); err != nil {
		t.Fatal(err)
	}
	if time.Since(began) > time.Second {
		t.Error("Close waited for a cooldown though nothing can reply")
	}
	if err := d.Send(context.Background(), make([]engine.Probe, 1)); !errors.Is(err, engine.ErrTransportClosed) {
		t.Errorf("send after close: %v, want ErrTransportClosed", err)
	}
	if c := d.Counters(); c.Sent != 256 || c.Batches != 4 || c.Replies != 0 || replied {
		t.Errorf("counters %+v (replied %v), want 256 probes in 4 batches and no replies", c, replied)
	}
}
