// Package probetest runs real servers for the probe modules' tests: each
// Harness owns a private target network namespace joined to the host by a
// veth pair with addresses from 198.18.0.0/15, starts server programs inside
// it and tears everything down when the test ends, failed or not. Tests dial
// the servers from the host side, so module code runs unchanged.
//
// It needs root and iproute2; without them New skips the test with a message.
package probetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// nsPrefix starts every namespace name the harness creates; the rest is
// "<pid>-<seq>" so a later run can tell leftovers of dead processes.
const nsPrefix = "trawlpt-"

// The harness hands out /30 subnets of subnetPool, one per Harness: the host
// end gets .1 of the /30, the target end .2.
var subnetPool = netip.MustParsePrefix("198.19.0.0/16")

// lockPath serialises subnet allocation between test processes (go test
// runs packages in parallel, and several packages use the harness).
const lockPath = "/run/trawl-probetest.lock"

const (
	// StartTimeout bounds how long Start waits for a server to be ready.
	StartTimeout = 15 * time.Second
	// stopTimeout bounds how long teardown waits for processes to exit.
	stopTimeout = 5 * time.Second
	// outputLimit caps the server output kept for failure messages.
	outputLimit = 64 << 10
)

var nsSeq atomic.Int64

// Harness is one target namespace and the servers running in it.
type Harness struct {
	t        testing.TB
	ns       string
	hostVeth string
	hostIP   netip.Addr
	targetIP netip.Addr
	dir      string

	mu      sync.Mutex
	servers []*Server
}

// Server is one process started in the target namespace.
type Server struct {
	Name   string
	cmd    *exec.Cmd
	out    *cappedBuffer
	exited chan struct{}
	err    error // Wait's result, set before exited closes
}

// Output returns what the server wrote to stdout and stderr so far.
func (s *Server) Output() string { return s.out.String() }

// Exited is closed when the process has ended.
func (s *Server) Exited() <-chan struct{} { return s.exited }

// Require skips the test unless it runs as root and every program in progs
// (names or paths) is installed.
func Require(t testing.TB, progs ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("probetest: needs root to create network namespaces and start servers (CI runs as root)")
	}
	for _, p := range progs {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("probetest: %s is not installed (.ci/deps installs it): %v", p, err)
		}
	}
}

// New creates the target namespace and its veth link, registering their
// teardown with t.Cleanup; it skips the test without root or iproute2.
func New(t testing.TB) *Harness {
	t.Helper()
	Require(t, "ip")
	reapStale(t)
	h := &Harness{t: t, dir: t.TempDir()}
	h.ns = fmt.Sprintf("%s%d-%d", nsPrefix, os.Getpid(), nsSeq.Add(1))
	h.hostVeth = "tp" + randomHex(t, 4) + "h"
	targetVeth := h.hostVeth[:len(h.hostVeth)-1] + "t"

	if err := run("ip", "netns", "add", h.ns); err != nil {
		t.Fatalf("probetest: %v", err)
	}
	t.Cleanup(h.teardown)
	if err := run("ip", "link", "add", h.hostVeth, "type", "veth", "peer", "name", targetVeth, "netns", h.ns); err != nil {
		t.Fatalf("probetest: %v", err)
	}
	if err := h.addressLink(targetVeth); err != nil {
		t.Fatalf("probetest: %v", err)
	}
	return h
}

// addressLink picks a free /30 and configures both veth ends, holding a
// file lock so two test processes never take the same subnet.
func (h *Harness) addressLink(targetVeth string) error {
	unlock, err := lockFile(lockPath)
	if err != nil {
		return err
	}
	defer unlock()
	subnet, err := freeSubnet()
	if err != nil {
		return err
	}
	h.hostIP = subnet.Addr().Next()
	h.targetIP = h.hostIP.Next()
	steps := [][]string{
		{"ip", "addr", "add", h.hostIP.String() + "/30", "dev", h.hostVeth},
		{"ip", "link", "set", h.hostVeth, "up"},
		{"ip", "-n", h.ns, "addr", "add", h.targetIP.String() + "/30", "dev", targetVeth},
		{"ip", "-n", h.ns, "link", "set", targetVeth, "up"},
		{"ip", "-n", h.ns, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// freeSubnet returns a random /30 of subnetPool that no host interface uses.
func freeSubnet() (netip.Prefix, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("cannot list host addresses: %w", err)
	}
	used := func(p netip.Prefix) bool {
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if ok && p.Contains(ip.Unmap()) {
				return true
			}
		}
		return false
	}
	slots := 1 << (32 - subnetPool.Bits() - 2)
	base := subnetPool.Addr().As4()
	for range 64 {
		var b [2]byte
		if _, err := rand.Read(b[:]); err != nil {
			return netip.Prefix{}, fmt.Errorf("cannot pick a subnet: %w", err)
		}
		slot := (int(b[0])<<8 | int(b[1])) % slots
		a := base
		off := slot * 4
		a[2] += byte(off >> 8)
		a[3] += byte(off)
		p := netip.PrefixFrom(netip.AddrFrom4(a), 30)
		if !used(p) {
			return p, nil
		}
	}
	return netip.Prefix{}, errors.New("cannot find a free test subnet")
}

// Namespace is the target namespace's name (for `ip netns exec`).
func (h *Harness) Namespace() string { return h.ns }

// IP is the servers' address, the target end of the veth link.
func (h *Harness) IP() netip.Addr { return h.targetIP }

// HostIP is the address the test dials from.
func (h *Harness) HostIP() netip.Addr { return h.hostIP }

// Addr is "ip:port" of a server listening on port in the namespace.
func (h *Harness) Addr(port int) string {
	return netip.AddrPortFrom(h.targetIP, uint16(port)).String()
}

// Dir is a per-harness temporary directory for configs, keys and certs.
func (h *Harness) Dir() string { return h.dir }

// Start runs argv inside the namespace and waits until ready returns nil
// (polled until StartTimeout); it fails the test when the process exits
// first or never becomes ready. A nil ready waits for nothing. The process
// is stopped at teardown.
func (h *Harness) Start(name string, argv []string, ready func(ctx context.Context) error) *Server {
	h.t.Helper()
	s, err := h.start(name, argv, ready)
	if err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	return s
}

func (h *Harness) start(name string, argv []string, ready func(ctx context.Context) error) (*Server, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("cannot start %s: empty command", name)
	}
	s := &Server{Name: name, out: &cappedBuffer{limit: outputLimit}, exited: make(chan struct{})}
	s.cmd = exec.Command("ip", append([]string{"netns", "exec", h.ns}, argv...)...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	// Own process group so teardown can signal the server's children too;
	// killed with the test process if that dies first.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("cannot start %s: %w", name, err)
	}
	h.mu.Lock()
	h.servers = append(h.servers, s)
	h.mu.Unlock()
	go func() {
		s.err = s.cmd.Wait()
		close(s.exited)
	}()
	if ready == nil {
		return s, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	var lastErr error
	for {
		attempt, stop := context.WithTimeout(ctx, time.Second)
		lastErr = ready(attempt)
		stop()
		if lastErr == nil {
			return s, nil
		}
		select {
		case <-s.exited:
			return nil, fmt.Errorf("cannot start %s: exited (%v) before it was ready: %v\n%s", name, s.err, lastErr, s.Output())
		case <-ctx.Done():
			return nil, fmt.Errorf("cannot start %s: not ready after %v: %v\n%s", name, StartTimeout, lastErr, s.Output())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// DialReady returns a ready check that succeeds once port accepts a TCP
// connection and, when greeting is not empty, the server's first bytes start
// with greeting.
func (h *Harness) DialReady(port int, greeting string) func(ctx context.Context) error {
	addr := h.Addr(port)
	return func(ctx context.Context) error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if greeting == "" {
			return nil
		}
		if dl, ok := ctx.Deadline(); ok {
			_ = c.SetReadDeadline(dl)
		}
		buf := make([]byte, len(greeting))
		n, err := readFull(c, buf)
		if err != nil {
			return fmt.Errorf("cannot read greeting of %s: %w (got %q)", addr, err, buf[:n])
		}
		if string(buf) != greeting {
			return fmt.Errorf("greeting of %s is %q, want %q", addr, buf, greeting)
		}
		return nil
	}
}

func readFull(c net.Conn, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		k, err := c.Read(buf[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Exec runs argv inside the namespace to completion (bounded by ctx) and
// returns its combined output.
func (h *Harness) Exec(ctx context.Context, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.ns}, argv...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("cannot run %s: %w: %s", strings.Join(argv, " "), err, out)
	}
	return string(out), nil
}

// teardown stops every process in the namespace, then removes it and the
// host end of the link.
func (h *Harness) teardown() {
	h.mu.Lock()
	servers := append([]*Server(nil), h.servers...)
	h.mu.Unlock()
	for i := len(servers) - 1; i >= 0; i-- {
		s := servers[i]
		if s.cmd.Process != nil {
			_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		}
	}
	killNamespace(h.ns)
	deadline := time.After(stopTimeout)
	for _, s := range servers {
		select {
		case <-s.exited:
		case <-deadline:
			h.t.Errorf("probetest: %s did not exit within %v", s.Name, stopTimeout)
		}
	}
	if err := run("ip", "netns", "del", h.ns); err != nil {
		h.t.Errorf("probetest: %v", err)
	}
	// The link goes with the namespace, asynchronously; delete it only if
	// it lingers (a process still holding the namespace, say).
	for wait := time.Now().Add(time.Second); linkExists(h.hostVeth) && time.Now().Before(wait); {
		time.Sleep(10 * time.Millisecond)
	}
	if linkExists(h.hostVeth) {
		if err := run("ip", "link", "del", h.hostVeth); err != nil && linkExists(h.hostVeth) {
			h.t.Errorf("probetest: %v", err)
		}
	}
}

// killNamespace SIGKILLs every process left in ns (children that changed
// process group, say) and waits briefly for them to go.
func killNamespace(ns string) {
	deadline := time.Now().Add(stopTimeout)
	for time.Now().Before(deadline) {
		out, err := exec.Command("ip", "netns", "pids", ns).Output()
		if err != nil {
			return
		}
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			return
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// reapStale removes namespaces left by test processes that died before
// their cleanup ran (a killed `go test`, say).
func reapStale(t testing.TB) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], nsPrefix) {
			continue
		}
		pidText, _, _ := strings.Cut(strings.TrimPrefix(f[0], nsPrefix), "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || processAlive(pid) {
			continue
		}
		killNamespace(f[0])
		if err := run("ip", "netns", "del", f[0]); err != nil {
			t.Logf("probetest: cannot remove stale namespace: %v", err)
		}
	}
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func linkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cannot run %s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func lockFile(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cannot open lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("cannot lock %s: %w", path, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("probetest: cannot make a name: %v", err)
	}
	return hex.EncodeToString(b)
}

// cappedBuffer keeps the first limit bytes written to it; safe for the
// process's stdout and stderr copiers at once.
type cappedBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	limit int
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.limit - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *cappedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
