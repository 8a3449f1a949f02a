package connect_test

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"trawl/engine"
	"trawl/engine/connect"
)

// filteredPort returns a loopback port whose listener's accept queue is
// full: Linux drops further SYNs, so a connect to it times out as it would
// to a filtered port, without root or a firewall rule.
func filteredPort(t *testing.T) uint16 {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil { // room for one pending connection
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(sa.(*syscall.SockaddrInet4).Port)
	// fill the queue (never accepted)
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}
	for range 2 {
		c, err := net.DialTimeout("tcp4", addr.String(), 200*time.Millisecond)
		if err != nil {
			break // the queue is full
		}
		t.Cleanup(func() { c.Close() })
	}
	return port
}

func TestTransportFilteredAndCooldown(t *testing.T) {
	filtered := filteredPort(t)
	tr := connect.New(connect.Config{Timeout: 10 * time.Second, Concurrency: 4})
	var got replies
	if err := tr.Start(context.Background(), got.add); err != nil {
		t.Fatal(err)
	}
	if err := tr.Send(context.Background(), []engine.Probe{probe(loopback, filtered)}); err != nil {
		t.Fatal(err)
	}
	// the connect hangs; Close gives it the cooldown, then aborts it
	start := time.Now()
	if err := tr.Close(200 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 3*time.Second {
		t.Errorf("Close took %s with a 200ms cooldown and a connect in flight", d)
	}
	if got.n != 0 {
		t.Errorf("a filtered port got replies: %+v", got.m)
	}
}

func TestTransportTimeoutIsFiltered(t *testing.T) {
	filtered := filteredPort(t)
	open := listen(t)
	tr := connect.New(connect.Config{Timeout: 150 * time.Millisecond, Concurrency: 4})
	var got replies
	if err := tr.Start(context.Background(), got.add); err != nil {
		t.Fatal(err)
	}
	if err := tr.Send(context.Background(), []engine.Probe{probe(loopback, filtered), probe(loopback, open)}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(2 * time.Second); err != nil { // waits for the timeout
		t.Fatal(err)
	}
	if got.n != 1 || !got.m[open].Open {
		t.Errorf("replies %+v, want just the open port", got.m)
	}
}

func TestTransportBackpressure(t *testing.T) {
	filtered := filteredPort(t)
	tr := connect.New(connect.Config{Timeout: 10 * time.Second, Concurrency: 1})
	if err := tr.Start(context.Background(), func(engine.Reply) {}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close(0) })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	// the single dialer hangs on the first probe; the second has to wait
	err := tr.Send(ctx, []engine.Probe{probe(loopback, filtered), probe(loopback, filtered)})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Send to a busy pool = %v, want the ctx's deadline", err)
	}
	if tr.Dialers() != 1 {
		t.Errorf("%d dialers, want 1", tr.Dialers())
	}
}
