package probes

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// trackingModule records how many probes run at once, per host and overall.
type trackingModule struct {
	hold time.Duration

	mu         sync.Mutex
	perHost    map[string]int
	maxPerHost int
	total      int
	maxTotal   int
	probes     int
}

func newTrackingModule(hold time.Duration) *trackingModule {
	return &trackingModule{hold: hold, perHost: make(map[string]int)}
}

func (m *trackingModule) Name() string { return "tracking" }

func (m *trackingModule) Probe(ctx context.Context, t Target) (Result, error) {
	m.mu.Lock()
	m.perHost[t.IP]++
	m.total++
	m.probes++
	m.maxPerHost = max(m.maxPerHost, m.perHost[t.IP])
	m.maxTotal = max(m.maxTotal, m.total)
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.perHost[t.IP]--
		m.total--
		m.mu.Unlock()
	}()
	select {
	case <-time.After(m.hold):
		return Result{Status: StatusSuccess}, nil
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
}

// blockingModule blocks until its ctx ends or release is closed.
type blockingModule struct {
	started chan struct{}
	release chan struct{}
}

func (m *blockingModule) Name() string { return "blocking" }

func (m *blockingModule) Probe(ctx context.Context, _ Target) (Result, error) {
	if m.started != nil {
		m.started <- struct{}{}
	}
	select {
	case <-ctx.Done():
		return Result{}, fmt.Errorf("cannot read: %w", ctx.Err())
	case <-m.release:
		return Result{Status: StatusSuccess}, nil
	}
}

// checkNoLeak fails t if goroutines started during the test outlive it.
func checkNoLeak(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			now := runtime.NumGoroutine()
			if now <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Errorf("goroutines: %d before, %d after\n%s", before, now, buf[:n])
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func probeAll(p *Pool, m Module, targets []Target) []Result {
	results := make([]Result, len(targets))
	var wg sync.WaitGroup
	for i, tg := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = p.Probe(context.Background(), m, tg)
		}()
	}
	wg.Wait()
	return results
}

func TestPoolPerHostCap(t *testing.T) {
	checkNoLeak(t)
	const perHost = 4
	p := NewPool(PoolConfig{Concurrency: 1000, PerHost: perHost, Timeout: 5 * time.Second})
	m := newTrackingModule(200 * time.Microsecond)
	var targets []Target
	for i := range 2000 {
		targets = append(targets, Target{IP: fmt.Sprintf("198.18.0.%d", i%5), Port: 1000 + i, Protocol: "tcp"})
	}
	for i, r := range probeAll(p, m, targets) {
		if r.Status != StatusSuccess {
			t.Fatalf("target %d: status %q (%s)", i, r.Status, r.Error)
		}
	}
	if m.probes != len(targets) {
		t.Fatalf("module ran %d probes, want %d", m.probes, len(targets))
	}
	if m.maxPerHost > perHost {
		t.Fatalf("module saw %d concurrent probes on one host, cap %d", m.maxPerHost, perHost)
	}
	if m.maxPerHost < 2 {
		t.Fatalf("module saw at most %d concurrent probes per host: the pool did not run hosts in parallel", m.maxPerHost)
	}
	if got := p.MaxPerHostSeen(); got < m.maxPerHost || got > perHost {
		t.Fatalf("MaxPerHostSeen = %d, module saw %d, cap %d", got, m.maxPerHost, perHost)
	}
	if p.InFlight() != 0 || p.hostsTracked() != 0 {
		t.Fatalf("after all probes: InFlight %d, hosts tracked %d; want 0, 0", p.InFlight(), p.hostsTracked())
	}
}

func TestPoolGlobalCap(t *testing.T) {
	checkNoLeak(t)
	const global = 8
	p := NewPool(PoolConfig{Concurrency: global, PerHost: 4, Timeout: 5 * time.Second})
	m := newTrackingModule(200 * time.Microsecond)
	var targets []Target
	for i := range 1000 {
		targets = append(targets, Target{IP: fmt.Sprintf("198.18.%d.%d", i/250, i%250), Port: 80})
	}
	probeAll(p, m, targets)
	if m.maxTotal > global {
		t.Fatalf("module saw %d concurrent probes, global cap %d", m.maxTotal, global)
	}
	if m.maxTotal < 2 {
		t.Fatalf("module saw at most %d concurrent probes: no parallelism", m.maxTotal)
	}
}

func TestPoolInFlight(t *testing.T) {
	checkNoLeak(t)
	p := NewPool(PoolConfig{Concurrency: 10, PerHost: 2, Timeout: 5 * time.Second})
	m := &blockingModule{started: make(chan struct{}, 10), release: make(chan struct{})}
	done := make(chan Result, 3)
	for i := range 3 {
		go func() { done <- p.Probe(context.Background(), m, Target{IP: "198.18.0.1", Port: i}) }()
	}
	<-m.started
	<-m.started
	// the third waits for the host's slot
	time.Sleep(20 * time.Millisecond)
	if got := p.InFlight(); got != 2 {
		t.Fatalf("InFlight = %d, want 2 (third waits for the host)", got)
	}
	close(m.release)
	for range 3 {
		if r := <-done; r.Status != StatusSuccess {
			t.Fatalf("status %q", r.Status)
		}
	}
	if p.InFlight() != 0 || p.MaxPerHostSeen() != 2 {
		t.Fatalf("InFlight %d, MaxPerHostSeen %d; want 0, 2", p.InFlight(), p.MaxPerHostSeen())
	}
}

func TestPoolTimeout(t *testing.T) {
	checkNoLeak(t)
	p := NewPool(PoolConfig{Concurrency: 4, PerHost: 4, Timeout: 30 * time.Millisecond})
	start := time.Now()
	r := p.Probe(context.Background(), &blockingModule{release: make(chan struct{})}, Target{IP: "198.18.0.1", Port: 22})
	if r.Status != StatusTimeout {
		t.Fatalf("status %q (%s), want timeout", r.Status, r.Error)
	}
	if !strings.Contains(r.Error, "deadline exceeded") {
		t.Fatalf("error %q does not say why", r.Error)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("timeout took %v", el)
	}
	if r.Started.IsZero() || r.Duration < 30*time.Millisecond {
		t.Fatalf("timing not filled: started %v duration %v", r.Started, r.Duration)
	}
}

func TestPoolWaitIsCtxAware(t *testing.T) {
	checkNoLeak(t)
	p := NewPool(PoolConfig{Concurrency: 1, PerHost: 1, Timeout: 5 * time.Second})
	busy := &blockingModule{started: make(chan struct{}, 1), release: make(chan struct{})}
	first := make(chan Result, 1)
	go func() { first <- p.Probe(context.Background(), busy, Target{IP: "198.18.0.1", Port: 1}) }()
	<-busy.started

	// waiting for the same host's slot
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	if r := p.Probe(ctx, busy, Target{IP: "198.18.0.1", Port: 2}); r.Status != StatusCanceled {
		t.Fatalf("host wait canceled: status %q, want canceled", r.Status)
	}
	// waiting for a global slot (another host)
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if r := p.Probe(ctx, busy, Target{IP: "198.18.0.2", Port: 1}); r.Status != StatusTimeout {
		t.Fatalf("global wait timed out: status %q, want timeout", r.Status)
	}
	close(busy.release)
	if r := <-first; r.Status != StatusSuccess {
		t.Fatalf("first: %q", r.Status)
	}
	if p.hostsTracked() != 0 {
		t.Fatalf("hosts tracked after all done: %d", p.hostsTracked())
	}
}

type statuslessModule struct{}

func (statuslessModule) Name() string { return "statusless" }
func (statuslessModule) Probe(context.Context, Target) (Result, error) {
	return Result{Data: map[string]any{"x": 1}}, nil
}

type failingModule struct{ err error }

func (failingModule) Name() string { return "failing" }
func (m failingModule) Probe(context.Context, Target) (Result, error) {
	return Result{}, m.err
}

func TestPoolModuleFaults(t *testing.T) {
	p := NewPool(DefaultPoolConfig())
	r := p.Probe(context.Background(), statuslessModule{}, Target{IP: "198.18.0.1"})
	if r.Status != StatusError || !strings.Contains(r.Error, "no status") {
		t.Fatalf("statusless: %q %q", r.Status, r.Error)
	}
	r = p.Probe(context.Background(), failingModule{fmt.Errorf("cannot parse: %w", ErrProtocol)}, Target{IP: "198.18.0.1"})
	if r.Status != StatusProtocolError || r.Error != "cannot parse: protocol error" {
		t.Fatalf("failing: %q %q", r.Status, r.Error)
	}
}

func TestPoolConfigFlags(t *testing.T) {
	var c PoolConfig
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.RegisterFlags(fs, "worker.")
	if c != DefaultPoolConfig() {
		t.Fatalf("defaults after RegisterFlags: %+v", c)
	}
	if err := fs.Parse([]string{"-worker.concurrency=5", "-worker.per-host=2", "-worker.timeout=3s"}); err != nil {
		t.Fatal(err)
	}
	if c != (PoolConfig{Concurrency: 5, PerHost: 2, Timeout: 3 * time.Second}) {
		t.Fatalf("parsed: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	err := PoolConfig{}.Validate()
	for _, want := range []string{"concurrency", "per-host", "timeout"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("zero config: %v, want a %s error", err, want)
		}
	}
	if errors.Unwrap(err) != nil {
		t.Fatal("joined errors should not unwrap to one")
	}
}

func BenchmarkPoolProbe(b *testing.B) {
	p := NewPool(DefaultPoolConfig())
	m := statusModule{}
	tg := Target{IP: "198.18.0.1", Port: 22}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		p.Probe(ctx, m, tg)
	}
}

type statusModule struct{}

func (statusModule) Name() string { return "status" }
func (statusModule) Probe(context.Context, Target) (Result, error) {
	return Result{Status: StatusSuccess}, nil
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count file descriptors (no /proc): %v", err)
	}
	return len(ents)
}

// checkNoFDLeak fails t if the process holds more file descriptors after
// the test (its cleanups run first) than before, once closes settle.
func checkNoFDLeak(t *testing.T) {
	t.Helper()
	before := openFDs(t)
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			now := openFDs(t)
			if now <= before {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("file descriptors: %d before, %d after", before, now)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// gatedServers listens on n loopback ports spread over hosts addresses of
// 127.0.0.0/8 and holds every connection's greeting until all n
// connections are open at once (or gateWait passes), so the test proves
// the concurrency it claims. It records the most connections seen open at
// once per address and overall.
type gatedServers struct {
	targets  []Target
	greeting []byte
	n        int
	gate     chan struct{}
	gateOnce sync.Once

	mu         sync.Mutex
	open       map[string]int
	maxPerHost int
	total      int
	maxTotal   int
	accepted   int
}

func startGatedServers(t *testing.T, hosts, n int, greeting string, gateWait time.Duration) *gatedServers {
	t.Helper()
	s := &gatedServers{greeting: []byte(greeting), n: n, gate: make(chan struct{}), open: map[string]int{}}
	var wg sync.WaitGroup
	var lns []net.Listener
	var conns sync.Map
	t.Cleanup(func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
		conns.Range(func(c, _ any) bool { _ = c.(net.Conn).Close(); return true })
		s.openGate()
		wg.Wait()
	})
	for i := range n {
		ip := fmt.Sprintf("127.77.%d.%d", (i%hosts)/250, (i%hosts)%250+1)
		ln, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatalf("cannot listen on %s: %v", ip, err)
		}
		lns = append(lns, ln)
		s.targets = append(s.targets, Target{IP: ip, Port: ln.Addr().(*net.TCPAddr).Port, Protocol: "tcp"})
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				conns.Store(c, nil)
				wg.Go(func() {
					defer conns.Delete(c)
					defer c.Close()
					s.serve(c, ip)
				})
			}
		})
	}
	go func() {
		select {
		case <-time.After(gateWait):
			s.openGate()
		case <-s.gate:
		}
	}()
	return s
}

func (s *gatedServers) openGate() { s.gateOnce.Do(func() { close(s.gate) }) }

func (s *gatedServers) serve(c net.Conn, ip string) {
	s.mu.Lock()
	s.open[ip]++
	s.total++
	s.accepted++
	s.maxPerHost = max(s.maxPerHost, s.open[ip])
	s.maxTotal = max(s.maxTotal, s.total)
	all := s.total >= s.n
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.open[ip]--
		s.total--
		s.mu.Unlock()
	}()
	if all {
		s.openGate()
	}
	<-s.gate
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(s.greeting); err != nil {
		return
	}
	// wait for the client to hang up (or the deadline)
	_, _ = io.Copy(io.Discard, c)
}

// bannerModule dials the target, reads one line and hangs up: the network
// side of a real module, small enough to live in this package's tests.
type bannerModule struct{ dialer net.Dialer }

func (bannerModule) Name() string { return "banner" }

func (m *bannerModule) Probe(ctx context.Context, t Target) (Result, error) {
	c, err := m.dialer.DialContext(ctx, "tcp", net.JoinHostPort(t.IP, strconv.Itoa(t.Port)))
	if err != nil {
		return Result{}, fmt.Errorf("cannot connect: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return Result{}, fmt.Errorf("cannot read the banner: %w", err)
	}
	return Result{Status: StatusSuccess, Data: map[string]any{"banner": line}}, nil
}

// TestPoolNoLeakAt2000 probes 2,000 open ports at once through the pool
// and checks the per-host cap held, all 2,000 were open together, and no
// goroutine or file descriptor outlived the run.
func TestPoolNoLeakAt2000(t *testing.T) {
	checkNoLeak(t)
	checkNoFDLeak(t)
	const (
		ports   = 2000
		perHost = 4
		hosts   = ports / perHost
	)
	srv := startGatedServers(t, hosts, ports, "SSH-2.0-trawl\r\n", 20*time.Second)
	p := NewPool(PoolConfig{Concurrency: ports, PerHost: perHost, Timeout: 30 * time.Second})
	start := time.Now()
	results := probeAll(p, &bannerModule{}, srv.targets)
	elapsed := time.Since(start)
	for i, r := range results {
		if r.Status != StatusSuccess || r.Data["banner"] != "SSH-2.0-trawl\r\n" {
			t.Fatalf("target %d %+v: status %q (%s) data %v", i, srv.targets[i], r.Status, r.Error, r.Data)
		}
	}
	srv.mu.Lock()
	maxPerHost, maxTotal, accepted := srv.maxPerHost, srv.maxTotal, srv.accepted
	srv.mu.Unlock()
	t.Logf("%d ports in %v; at once: %d overall, %d per host", ports, elapsed, maxTotal, maxPerHost)
	if accepted != ports {
		t.Errorf("servers accepted %d connections, want %d", accepted, ports)
	}
	if maxPerHost > perHost || p.MaxPerHostSeen() > perHost {
		t.Errorf("per-host cap %d exceeded: servers saw %d at once, pool %d", perHost, maxPerHost, p.MaxPerHostSeen())
	}
	if maxTotal != ports {
		t.Errorf("at most %d connections were open at once, want all %d", maxTotal, ports)
	}
	if p.InFlight() != 0 || p.hostsTracked() != 0 {
		t.Errorf("after all probes: InFlight %d, hosts tracked %d; want 0, 0", p.InFlight(), p.hostsTracked())
	}
}

// TestFDLeakCheckCatchesALeak proves the count the leak check relies on
// is not vacuous: one descriptor opened shows, and goes when closed.
func TestFDLeakCheckCatchesALeak(t *testing.T) {
	before := openFDs(t)
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	if got := openFDs(t); got != before+1 {
		t.Errorf("after opening one file: %d descriptors, want %d", got, before+1)
	}
	f.Close()
	if got := openFDs(t); got != before {
		t.Errorf("after closing it: %d descriptors, want %d", got, before)
	}
}
