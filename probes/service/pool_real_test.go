package service

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"trawl/probes"
)

// TestServiceThroughPoolAt2000 runs the real service module through the
// worker pool over 2,000 open loopback ports at once (500 addresses, the
// pool's per-host cap 4): every port is identified, the servers never see
// more than 4 connections to one address, all 2,000 are open together,
// and no goroutine or file descriptor outlives the run.
func TestServiceThroughPoolAt2000(t *testing.T) {
	const (
		ports   = 2000
		perHost = 4
		hosts   = ports / perHost
		banner  = "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
	)
	goroutines, fds := runtime.NumGoroutine(), countFDs(t)
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > goroutines || countFDs(t) > fds {
			if time.Now().After(deadline) {
				t.Errorf("leak: goroutines %d before, %d after; file descriptors %d before, %d after",
					goroutines, runtime.NumGoroutine(), fds, countFDs(t))
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})

	var (
		mu                        sync.Mutex
		open                      = map[string]int{}
		total, maxTotal, maxPerIP int
		gate                      = make(chan struct{})
		gateOnce                  sync.Once
		wg                        sync.WaitGroup
		lns                       []net.Listener
	)
	openGate := func() { gateOnce.Do(func() { close(gate) }) }
	t.Cleanup(func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
		openGate()
		wg.Wait()
	})
	// the greeting waits until all connections are open (or 20 s pass)
	timer := time.AfterFunc(20*time.Second, openGate)
	t.Cleanup(func() { timer.Stop() })
	serve := func(c net.Conn, ip string) {
		defer c.Close()
		mu.Lock()
		open[ip]++
		total++
		maxPerIP, maxTotal = max(maxPerIP, open[ip]), max(maxTotal, total)
		if total == ports {
			openGate()
		}
		mu.Unlock()
		defer func() { mu.Lock(); open[ip]--; total--; mu.Unlock() }()
		<-gate
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(banner)); err != nil {
			return
		}
		buf := make([]byte, 512)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}
	var targets []probes.Target
	for i := range ports {
		ip := fmt.Sprintf("127.78.%d.%d", (i%hosts)/250, (i%hosts)%250+1)
		ln, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatalf("cannot listen on %s: %v", ip, err)
		}
		lns = append(lns, ln)
		targets = append(targets, probes.Target{IP: ip, Port: ln.Addr().(*net.TCPAddr).Port, Protocol: "tcp"})
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				wg.Go(func() { serve(c, ip) })
			}
		})
	}

	m := New(Config{GreetingWait: 25 * time.Second, ReplyWait: 2 * time.Second, PortBudget: 30 * time.Second})
	pool := probes.NewPool(probes.PoolConfig{Concurrency: ports, PerHost: perHost, Timeout: 40 * time.Second})
	results := make([]probes.Result, ports)
	start := time.Now()
	var probing sync.WaitGroup
	for i, tg := range targets {
		probing.Go(func() { results[i] = pool.Probe(context.Background(), m, tg) })
	}
	probing.Wait()
	elapsed := time.Since(start)
	for i, r := range results {
		if r.Status != probes.StatusSuccess || r.Data["product"] != "OpenSSH" || r.Data["version"] != "9.2p1" {
			t.Fatalf("target %d %+v: status %q (%s) product %v version %v", i, targets[i], r.Status, r.Error, r.Data["product"], r.Data["version"])
		}
	}
	mu.Lock()
	t.Logf("%d ports identified in %v; at once: %d overall, %d per host", ports, elapsed, maxTotal, maxPerIP)
	if maxPerIP > perHost || pool.MaxPerHostSeen() > perHost {
		t.Errorf("per-host cap %d exceeded: servers saw %d, pool %d", perHost, maxPerIP, pool.MaxPerHostSeen())
	}
	if maxTotal != ports {
		t.Errorf("at most %d connections open at once, want all %d", maxTotal, ports)
	}
	mu.Unlock()
	if pool.InFlight() != 0 {
		t.Errorf("InFlight %d after all probes", pool.InFlight())
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count file descriptors (no /proc): %v", err)
	}
	return len(ents)
}
