package vnc

import (
	"context"
	"fmt"
	"io"
	"sync"

	"trawl/probes"
)

// hostGate caps the module's connections open at once to one IP, across
// all probes (a host with VNC on 5900 and 5901 is probed by two workers).
type hostGate struct {
	limit int
	mu    sync.Mutex
	hosts map[string]*hostSlot
}

// hostSlot lives while someone holds or waits for one of its slots.
type hostSlot struct {
	sem  chan struct{}
	refs int
}

func newHostGate(limit int) *hostGate {
	return &hostGate{limit: limit, hosts: make(map[string]*hostSlot)}
}

// acquire waits for a slot for ip until ctx ends; release frees it.
func (g *hostGate) acquire(ctx context.Context, ip string) (release func(), err error) {
	g.mu.Lock()
	h := g.hosts[ip]
	if h == nil {
		h = &hostSlot{sem: make(chan struct{}, g.limit)}
		g.hosts[ip] = h
	}
	h.refs++
	g.mu.Unlock()
	unref := func() {
		g.mu.Lock()
		if h.refs--; h.refs == 0 {
			delete(g.hosts, ip)
		}
		g.mu.Unlock()
	}
	select {
	case h.sem <- struct{}{}:
	case <-ctx.Done():
		unref()
		return nil, fmt.Errorf("cannot get a connection slot for %s: %w", ip, ctx.Err())
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			<-h.sem
			unref()
		})
	}, nil
}

// limitReader feeds the session's reads from the connection: it records
// the evidence and, once armed (left ≥ 0), caps the bytes a screenshot may
// take so a server cannot stream forever.
type limitReader struct {
	r    io.Reader
	rec  *recorder
	left int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.left == 0 {
		return 0, fmt.Errorf("framebuffer update larger than its budget: %w", probes.ErrProtocol)
	}
	if l.left > 0 && int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	if l.left > 0 {
		l.left -= int64(n)
	}
	l.rec.Write(p[:n])
	return n, err
}
