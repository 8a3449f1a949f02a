package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// ErrHelper: a helper process in a namespace did not come up.
var ErrHelper = errors.New("namespace helper failed")

const (
	scannerAddr = "198.19.255.1" // testbed.sh's link addresses
	scriptWait  = 60 * time.Second
	helperWait  = 10 * time.Second
	helperArg   = "__namespace-helper" // argv[1] of the helper mode
)

// bed is one testbed built by testbed.sh: the scanner's and the targets'
// namespaces, a listener helper in the targets' namespace, and a holder in
// the scanner's whose /proc/<pid>/net/dev shows the scanner's veth.
type bed struct {
	log                 zerolog.Logger
	script              string
	Name                string
	ScannerNS, TargetNS string
	ScannerIf, TargetIf string
	SourceIP            string
	GatewayMAC          string
	Block               netip.Prefix
	Hosts               []netip.Addr // the answering hosts when sparse; nil: all of Block
	helpers             []*helper
	holder              *helper // the helper in the scanner's namespace
}

// bedConfig says what to build.
type bedConfig struct {
	Script    string // testbed.sh
	Self      string // this program, started again as the namespace helper
	Block     netip.Prefix
	Ports     []uint16 // listened on in the targets' namespace
	Sparse    []netip.Addr
	DropRST   string // scanner-side source ports whose kernel RSTs are dropped
	WorkDir   string
	Log       zerolog.Logger
	IsSparse  bool
	NameLabel string // "d" or "s", part of the namespace names
}

// buildBed builds a testbed; on error whatever was built is torn down.
func buildBed(ctx context.Context, cfg bedConfig) (_ *bed, err error) {
	var rnd [2]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("cannot pick a testbed name: %w", err)
	}
	name := "bs" + cfg.NameLabel + "-" + hex.EncodeToString(rnd[:])
	b := &bed{log: cfg.Log, script: cfg.Script, Name: name, ScannerNS: name + "-s", TargetNS: name + "-t",
		ScannerIf: name + "s", TargetIf: name + "t", SourceIP: scannerAddr, Block: cfg.Block}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	if err := b.sh(ctx, "up", name, cfg.Block.String()); err != nil {
		return nil, err
	}
	if cfg.IsSparse {
		b.Hosts = cfg.Sparse
		list := filepath.Join(cfg.WorkDir, name+".live")
		var sb strings.Builder
		for _, h := range cfg.Sparse {
			sb.WriteString(h.String())
			sb.WriteByte('\n')
		}
		if err := os.WriteFile(list, []byte(sb.String()), 0o644); err != nil {
			return nil, fmt.Errorf("cannot write the sparse host list: %w", err)
		}
		if err := b.sh(ctx, "sparse", name, cfg.Block.String(), list); err != nil {
			return nil, err
		}
	}
	if cfg.DropRST != "" {
		if err := b.sh(ctx, "droprst", name, cfg.DropRST); err != nil {
			return nil, err
		}
	}
	if err := b.nsRun(ctx, b.TargetNS, synCounterRules, "nft", "-f", "-"); err != nil {
		return nil, err
	}
	// No IPv6 router solicitations or MLD reports on the scanner's veth:
	// its transmit counter then counts only what the tools send.
	if err := b.nsRun(ctx, b.ScannerNS, "", "sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; "+
		"echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/"+b.ScannerIf+"/disable_ipv6"); err != nil {
		return nil, err
	}
	if b.GatewayMAC, err = linkMAC(ctx, b.TargetNS, b.TargetIf); err != nil {
		return nil, err
	}
	ports := make([]string, len(cfg.Ports))
	for i, p := range cfg.Ports {
		ports[i] = strconv.Itoa(int(p))
	}
	for _, h := range []struct{ ns, ports, tick string }{{b.TargetNS, strings.Join(ports, ","), scannerAddr}, {b.ScannerNS, "", ""}} {
		hp, err := startHelper(cfg.Self, h.ns, h.ports, h.tick)
		if err != nil {
			return nil, err
		}
		b.helpers = append(b.helpers, hp)
		if h.ns == b.ScannerNS {
			b.holder = hp
		}
	}
	return b, nil
}

func (b *bed) sh(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, scriptWait)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", append([]string{b.script}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cannot run testbed.sh %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	if s := strings.TrimSpace(string(out)); s != "" {
		b.log.Info().Str("testbed", b.Name).Msg(s)
	}
	return nil
}

// synCounterRules count the SYNs (probes) arriving in the targets'
// namespace, before the sparse mode's drop: whatever a tool sends besides
// probes (masscan's RSTs to SYN-ACKs) is not counted as a probe.
const synCounterRules = `table ip benchcount {
  counter probes { }
  chain pre { type filter hook prerouting priority -400; policy accept;
    tcp flags & (syn | ack) == syn counter name "probes"
  }
}
`

func (b *bed) nsRun(ctx context.Context, ns, stdin string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, scriptWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("cannot run %s in %s: %w: %s", strings.Join(args, " "), ns, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// probesSeen reads the targets' SYN counter.
func (b *bed) probesSeen(ctx context.Context) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, scriptWait)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", b.TargetNS, "nft", "-j", "list", "counter", "ip", "benchcount", "probes").Output()
	if err != nil {
		return 0, fmt.Errorf("cannot read the probe counter in %s: %w", b.TargetNS, err)
	}
	return parseNftCounter(out)
}

// parseNftCounter reads the packets of the one named counter in `nft -j
// list counter` output.
func parseNftCounter(js []byte) (uint64, error) {
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Packets *uint64 `json:"packets"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(js, &doc); err != nil {
		return 0, fmt.Errorf("%w: nft counter: %v", ErrParse, err)
	}
	for _, o := range doc.Nftables {
		if o.Counter != nil && o.Counter.Packets != nil {
			return *o.Counter.Packets, nil
		}
	}
	return 0, fmt.Errorf("%w: no counter in nft output %q", ErrParse, strings.TrimSpace(string(js)))
}

// netDevPath is the scanner namespace's /proc/net/dev, through the holder.
func (b *bed) netDevPath() string {
	return fmt.Sprintf("/proc/%d/net/dev", b.holder.cmd.Process.Pid)
}

// close stops the helpers and deletes the namespaces (idempotent).
func (b *bed) close() {
	for _, h := range b.helpers {
		h.stop()
	}
	b.helpers = nil
	// A fresh context: teardown must run even when the bench was interrupted.
	if err := b.sh(context.Background(), "down", b.Name); err != nil {
		b.log.Error().Err(err).Str("testbed", b.Name).Msg("teardown")
	}
}

// linkMAC reads an interface's MAC inside a namespace.
func linkMAC(ctx context.Context, ns, ifname string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, scriptWait)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "-n", ns, "-j", "link", "show", "dev", ifname).Output()
	if err != nil {
		return "", fmt.Errorf("cannot read the MAC of %s in %s: %w", ifname, ns, err)
	}
	return parseLinkMAC(out)
}

func parseLinkMAC(js []byte) (string, error) {
	var links []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal(js, &links); err != nil || len(links) != 1 {
		return "", fmt.Errorf("%w: ip -j link output %q", ErrParse, strings.TrimSpace(string(js)))
	}
	if mac, err := net.ParseMAC(links[0].Address); err != nil || len(mac) != 6 {
		return "", fmt.Errorf("%w: MAC %q", ErrParse, links[0].Address)
	}
	return links[0].Address, nil
}

// sparseHosts picks round(fraction × block size) hosts of block (at least
// one), reproducibly from seed, in ascending order.
func sparseHosts(block netip.Prefix, fraction float64, seed uint64) []netip.Addr {
	size := 1 << (32 - block.Bits())
	n := max(1, int(math.Round(fraction*float64(size))))
	r := mrand.New(mrand.NewPCG(seed, 0x62656e6368736361))
	base := block.Masked().Addr().As4()
	first := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	picked := r.Perm(size)[:n]
	hosts := make([]netip.Addr, 0, n)
	marks := make([]bool, size)
	for _, i := range picked {
		marks[i] = true
	}
	for i, m := range marks {
		if m {
			v := first + uint32(i)
			hosts = append(hosts, netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}))
		}
	}
	return hosts
}

// helper is this program running in a namespace (see runHelper); it lives
// until its stdin closes, so it also ends when the bench dies.
type helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan error
}

func startHelper(self, ns, ports, tick string) (*helper, error) {
	cmd := exec.Command("ip", "netns", "exec", ns, self, helperArg, ports, tick)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("cannot start the helper in %s: %w", ns, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("cannot start the helper in %s: %w", ns, err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("cannot start the helper in %s: %w", ns, err)
	}
	h := &helper{cmd: cmd, stdin: stdin, done: make(chan error, 1)}
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- strings.TrimSpace(line)
		_, _ = io.Copy(io.Discard, stdout)
		h.done <- cmd.Wait()
	}()
	select {
	case line := <-ready:
		if line == "ready" {
			return h, nil
		}
		h.stop()
		return nil, fmt.Errorf("%w in %s: %q", ErrHelper, ns, line)
	case <-time.After(helperWait):
		h.stop()
		return nil, fmt.Errorf("%w in %s: not ready after %s", ErrHelper, ns, helperWait)
	}
}

func (h *helper) stop() {
	_ = h.stdin.Close()
	select {
	case <-h.done:
	case <-time.After(helperWait):
		_ = h.cmd.Process.Kill()
		<-h.done
	}
}

// tickEvery paces the background trickle to the scanner.
const tickEvery = 100 * time.Millisecond

// runHelper is the helper mode: listen on the given ports (AnyIP makes
// 0.0.0.0:port accept for the whole block), close what is accepted, say
// "ready", and exit when stdin closes. With a tick address it also sends
// that address an ICMP echo reply every tickEvery: a quiet testbed, unlike
// a real network, has no background traffic, and masscan's receive thread
// (libpcap) then blocks forever after the scan. An unsolicited echo reply
// gets no answer, so the scanner's transmit counter stays the tools' own.
func runHelper(ports, tick string, stdin io.Reader, stdout io.Writer) int {
	if tick != "" {
		stopTick, err := startTick(tick)
		if err != nil {
			fmt.Fprintf(stdout, "cannot send ticks to %s: %v\n", tick, err)
			return 1
		}
		defer stopTick()
	}
	var ls []net.Listener
	for _, p := range strings.Split(ports, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		l, err := net.Listen("tcp4", "0.0.0.0:"+p)
		if err != nil {
			fmt.Fprintf(stdout, "cannot listen on port %s: %v\n", p, err)
			return 1
		}
		ls = append(ls, l)
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				_ = c.Close()
			}
		}()
	}
	fmt.Fprintln(stdout, "ready")
	_, _ = io.Copy(io.Discard, stdin)
	for _, l := range ls {
		_ = l.Close()
	}
	return 0
}

// echoReply is an ICMP echo reply (type 0) with id 0x7462, seq 1, no data.
var echoReply = func() []byte {
	m := []byte{0, 0, 0, 0, 0x74, 0x62, 0, 1}
	var sum uint32
	for i := 0; i < len(m); i += 2 {
		sum += uint32(m[i])<<8 | uint32(m[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	cs := ^uint16(sum)
	m[2], m[3] = byte(cs>>8), byte(cs)
	return m
}()

func startTick(addr string) (stop func(), err error) {
	ip := net.ParseIP(addr)
	if ip == nil {
		return nil, fmt.Errorf("bad address %q", addr)
	}
	c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(tickEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_, _ = c.WriteTo(echoReply, &net.IPAddr{IP: ip})
			}
		}
	}()
	return func() { close(done); <-finished; c.Close() }, nil
}
