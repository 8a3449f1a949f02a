package connect_test

import (
	"context"
	"errors"
	"flag"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"trawl/engine"
	"trawl/engine/connect"
	"trawl/ingest"
)

func listen(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

// closedPort returns a port nothing listens on (it was free a moment ago).
func closedPort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	return port
}

var loopback = uint32(127<<24 | 1)

func probe(ip uint32, port uint16) engine.Probe { return engine.Probe{IP: ip, Port: port} }

type replies struct {
	mu sync.Mutex
	m  map[uint16]engine.Reply
	n  int
}

func (r *replies) add(rep engine.Reply) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[uint16]engine.Reply{}
	}
	r.m[rep.Port] = rep
	r.n++
}

func TestTransportTellsOpenFromClosed(t *testing.T) {
	open1, open2 := listen(t), listen(t)
	closed1, closed2 := closedPort(t), closedPort(t)
	tr := connect.New(connect.Config{Timeout: time.Second, Concurrency: 2})
	var got replies
	if err := tr.Start(context.Background(), got.add); err != nil {
		t.Fatal(err)
	}
	batch := []engine.Probe{probe(loopback, open1), probe(loopback, closed1), probe(loopback, open2), probe(loopback, closed2)}
	if err := tr.Send(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(time.Second); err != nil {
		t.Fatal(err)
	}
	if got.n != 4 {
		t.Fatalf("got %d replies, want 4: %+v", got.n, got.m)
	}
	for _, port := range []uint16{open1, open2} {
		r := got.m[port]
		if !r.Open || r.IP != loopback || r.SrcIP != loopback || r.SrcPort == 0 {
			t.Errorf("open port %d: reply %+v", port, r)
		}
	}
	for _, port := range []uint16{closed1, closed2} {
		if r := got.m[port]; r.Open {
			t.Errorf("closed port %d reported open", port)
		}
	}
	if tr.Dialers() > 2 {
		t.Errorf("%d dialers for a concurrency of 2", tr.Dialers())
	}
	if err := tr.Send(context.Background(), batch); !errors.Is(err, engine.ErrTransportClosed) {
		t.Errorf("Send after Close = %v, want ErrTransportClosed", err)
	}
}

func TestConfig(t *testing.T) {
	var c connect.Config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.RegisterFlags(fs, "connect.")
	if c != connect.DefaultConfig() {
		t.Errorf("RegisterFlags defaults = %+v", c)
	}
	if err := fs.Parse([]string{"-connect.timeout=300ms", "-connect.concurrency=8"}); err != nil {
		t.Fatal(err)
	}
	if c.Timeout != 300*time.Millisecond || c.Concurrency != 8 || c.Validate() != nil {
		t.Errorf("parsed %+v", c)
	}
	bad := connect.Config{Timeout: 0, Concurrency: 0}
	if err := bad.Validate(); err == nil {
		t.Error("Validate accepted a zero timeout and concurrency")
	}
}

// TestScanOverLoopback runs the engine's scan loop on the connect
// transport against real listeners, with a policy that allows loopback.
func TestScanOverLoopback(t *testing.T) {
	open := []uint16{listen(t), listen(t), listen(t)}
	closed := []uint16{closedPort(t), closedPort(t)}
	var ports []ingest.PortSpec
	for _, p := range append(append([]uint16{}, open...), closed...) {
		ports = append(ports, ingest.PortSpec{Ports: strconv.Itoa(int(p))})
	}
	policy, err := (&engine.PolicyConfig{Allow: []string{"127.0.0.0/8"}}).Build()
	if err != nil {
		t.Fatal(err)
	}
	space, err := engine.NewSpace([]ingest.TaskOptions{{Targets: []string{"127.0.0.1"}, Ports: ports}}, policy)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	found := map[uint16]bool{}
	final, err := engine.Scan(context.Background(), engine.ScanConfig{
		Space: space, Seed: 1, Shards: 1, Rate: 1000, Cooldown: time.Second,
		Transport: connect.New(connect.Config{Timeout: time.Second, Concurrency: 4}),
	}, func(o engine.Open) {
		mu.Lock()
		defer mu.Unlock()
		found[o.Port] = true
		if o.SrcIP != loopback || o.SrcPort == 0 {
			t.Errorf("open %+v lacks the source address", o)
		}
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != len(open) {
		t.Errorf("found %v, want %v", found, open)
	}
	for _, p := range open {
		if !found[p] {
			t.Errorf("open port %d not found", p)
		}
	}
	if final.Sent != 5 || final.Received != 5 || final.Open != 3 {
		t.Errorf("final stats %+v", final)
	}
}
