// Package testbed builds the scanner test network: two network namespaces
// joined by a veth (testbed.sh in this folder does the plumbing and can be
// run by hand or by a benchmark). The targets' namespace answers for a whole
// block of 198.18.0.0/15 through a local route, with listeners on the
// configured ports; closed ports answer RST from its kernel. In sparse
// mode nftables in the targets' namespace drops every probe to a block
// address outside a known set, so the ground truth is exact.
//
// It needs root (network namespaces) and iproute2; sparse mode and
// DropScannerRST also need nftables. New skips the test when they are
// missing.
package testbed

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

//go:embed testbed.sh
var script []byte

// ErrUnavailable: the machine cannot build a testbed (not root, a program
// missing).
var ErrUnavailable = errors.New("testbed unavailable")

var (
	scannerIP = netip.MustParseAddr("198.19.255.1")
	targetIP  = netip.MustParseAddr("198.19.255.2")
	linkNet   = netip.MustParsePrefix("198.19.255.0/30")
	allowed   = netip.MustParsePrefix("198.18.0.0/15")
)

const commandTimeout = 30 * time.Second

// Config describes one testbed.
type Config struct {
	Block     string   // the targets' block, inside 198.18.0.0/15, e.g. "198.18.0.0/24"
	OpenPorts []uint16 // listened on at every address of the block
	// Sparse, when not nil, is the set of hosts that answer; every other
	// address of the block silently drops probes.
	Sparse []netip.Addr
	// SparseFraction > 0 picks that fraction of the block (at least one
	// host) as the answering set, reproducibly from Seed.
	SparseFraction float64
	Seed           uint64
	// DropScannerRST "lo-hi" drops the scanner kernel's RSTs from those
	// source ports (the raw transport's SYN-ACKs otherwise get one each).
	DropScannerRST string
}

// Testbed is a built testbed; it is torn down by the test's Cleanup.
type Testbed struct {
	Name                string // tb-<random>; namespaces are Name+"-s" and Name+"-t"
	ScannerNS, TargetNS string
	ScannerIf, TargetIf string     // the veth ends
	ScannerIP, TargetIP netip.Addr // the link's addresses; TargetIP is the scanner's gateway
	Block               netip.Prefix
	OpenPorts           []uint16
	Hosts               []netip.Addr // the hosts that answer, ascending
	sparse              bool

	listeners []net.Listener
	wg        sync.WaitGroup
}

// Available reports why a testbed cannot be built here (nil if it can).
func Available(needNFT bool) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: needs root for network namespaces", ErrUnavailable)
	}
	progs := []string{"ip", "bash"}
	if needNFT {
		progs = append(progs, "nft")
	}
	for _, p := range progs {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%w: %s not installed (Debian: iproute2, nftables)", ErrUnavailable, p)
		}
	}
	return nil
}

// New builds a testbed for t, skipping t when the machine cannot, and
// failing it when building goes wrong. Everything is torn down on Cleanup,
// also after a failure.
func New(t testing.TB, cfg Config) *Testbed {
	t.Helper()
	needNFT := cfg.Sparse != nil || cfg.SparseFraction > 0 || cfg.DropScannerRST != ""
	if err := Available(needNFT); err != nil {
		t.Skipf("skipping: %v", err)
	}
	tb, err := plan(cfg)
	if err != nil {
		t.Fatalf("testbed config: %v", err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "testbed.sh")
	if err := os.WriteFile(path, script, 0o755); err != nil {
		t.Fatalf("cannot write testbed.sh: %v", err)
	}
	run := func(args ...string) error { return runScript(path, args...) }
	t.Cleanup(func() {
		tb.closeListeners()
		if err := run("down", tb.Name); err != nil {
			t.Errorf("testbed teardown: %v", err)
		}
	})
	if err := run("up", tb.Name, tb.Block.String()); err != nil {
		t.Fatalf("testbed up: %v", err)
	}
	if tb.sparse {
		list := filepath.Join(dir, "live")
		var b strings.Builder
		for _, h := range tb.Hosts {
			b.WriteString(h.String())
			b.WriteByte('\n')
		}
		if err := os.WriteFile(list, []byte(b.String()), 0o644); err != nil {
			t.Fatalf("cannot write the sparse host list: %v", err)
		}
		if err := run("sparse", tb.Name, tb.Block.String(), list); err != nil {
			t.Fatalf("testbed sparse: %v", err)
		}
	}
	if cfg.DropScannerRST != "" {
		if err := run("droprst", tb.Name, cfg.DropScannerRST); err != nil {
			t.Fatalf("testbed droprst: %v", err)
		}
	}
	if err := tb.listen(); err != nil {
		t.Fatalf("testbed listeners: %v", err)
	}
	return tb
}

// plan checks cfg and derives names, addresses and the answering hosts.
func plan(cfg Config) (*Testbed, error) {
	block, err := netip.ParsePrefix(cfg.Block)
	if err != nil || !block.Addr().Is4() {
		return nil, fmt.Errorf("block %q: want an IPv4 CIDR", cfg.Block)
	}
	block = block.Masked()
	if !allowed.Overlaps(block) || block.Bits() < allowed.Bits() {
		return nil, fmt.Errorf("block %s: must lie inside %s", block, allowed)
	}
	if block.Overlaps(linkNet) {
		return nil, fmt.Errorf("block %s overlaps the testbed link %s", block, linkNet)
	}
	if len(cfg.OpenPorts) == 0 {
		return nil, errors.New("no open ports")
	}
	for _, p := range cfg.OpenPorts {
		if p == 0 {
			return nil, errors.New("open port 0")
		}
	}
	if cfg.SparseFraction < 0 || cfg.SparseFraction > 1 {
		return nil, fmt.Errorf("sparse fraction %v: want 0..1", cfg.SparseFraction)
	}
	if cfg.Sparse != nil && cfg.SparseFraction > 0 {
		return nil, errors.New("set Sparse or SparseFraction, not both")
	}
	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("cannot pick a name: %w", err)
	}
	name := "tb-" + hex.EncodeToString(rnd[:])
	tb := &Testbed{
		Name: name, ScannerNS: name + "-s", TargetNS: name + "-t", ScannerIf: name + "s", TargetIf: name + "t",
		ScannerIP: scannerIP, TargetIP: targetIP, Block: block,
		OpenPorts: slices.Compact(slices.Sorted(slices.Values(cfg.OpenPorts))),
	}
	first := binary.BigEndian.Uint32(block.Addr().AsSlice())
	size := uint64(1) << (32 - block.Bits())
	switch {
	case cfg.Sparse != nil:
		tb.sparse = true
		for _, h := range cfg.Sparse {
			if !block.Contains(h) {
				return nil, fmt.Errorf("sparse host %s outside the block %s", h, block)
			}
		}
		tb.Hosts = slices.Compact(slices.SortedFunc(slices.Values(cfg.Sparse), netip.Addr.Compare))
	case cfg.SparseFraction > 0:
		tb.sparse = true
		n := max(1, int(math.Round(cfg.SparseFraction*float64(size))))
		r := mrand.New(mrand.NewPCG(cfg.Seed, 0x7465737462656421))
		for _, i := range r.Perm(int(size))[:n] {
			tb.Hosts = append(tb.Hosts, addr(first+uint32(i)))
		}
		slices.SortFunc(tb.Hosts, netip.Addr.Compare)
	default:
		for i := range size {
			tb.Hosts = append(tb.Hosts, addr(first+uint32(i)))
		}
	}
	return tb, nil
}

func addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func runScript(path string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", append([]string{path}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("testbed.sh %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// listen opens a listener per open port in the targets' namespace; AnyIP
// makes 0.0.0.0:port accept for every address of the block. Accepted
// connections (from connect scans) are closed at once.
func (tb *Testbed) listen() error {
	return tb.InTarget(func() error {
		for _, p := range tb.OpenPorts {
			l, err := net.Listen("tcp4", "0.0.0.0:"+strconv.Itoa(int(p)))
			if err != nil {
				return fmt.Errorf("cannot listen on port %d: %w", p, err)
			}
			tb.listeners = append(tb.listeners, l)
			tb.wg.Add(1)
			go func() {
				defer tb.wg.Done()
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					_ = c.Close()
				}
			}()
		}
		return nil
	})
}

func (tb *Testbed) closeListeners() {
	for _, l := range tb.listeners {
		_ = l.Close()
	}
	tb.wg.Wait()
	tb.listeners = nil
}

// InScanner runs fn on an OS thread inside the scanner's namespace and
// returns its error. Sockets fn opens stay in that namespace and may be
// used from any goroutine afterwards. The thread is discarded after fn.
func (tb *Testbed) InScanner(fn func() error) error { return inNetns(tb.ScannerNS, fn) }

// InTarget runs fn inside the targets' namespace, like InScanner.
func (tb *Testbed) InTarget(fn func() error) error { return inNetns(tb.TargetNS, fn) }

func inNetns(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine instead of
		// going back to the scheduler inside another namespace.
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/run/netns", name))
		if err != nil {
			errc <- fmt.Errorf("cannot open netns %s: %w", name, err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("cannot enter netns %s: %w", name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Command returns a command that runs inside the namespace ns (ScannerNS
// or TargetNS) through `ip netns exec`, e.g. for a peer scanner.
func (tb *Testbed) Command(ctx context.Context, ns string, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// Open is the exact ground truth: every answering host × every open port.
func (tb *Testbed) Open() map[netip.AddrPort]bool {
	m := make(map[netip.AddrPort]bool, len(tb.Hosts)*len(tb.OpenPorts))
	for _, h := range tb.Hosts {
		for _, p := range tb.OpenPorts {
			m[netip.AddrPortFrom(h, p)] = true
		}
	}
	return m
}

// Answers reports whether h answers probes (open: SYN-ACK, closed: RST).
func (tb *Testbed) Answers(h netip.Addr) bool {
	_, found := slices.BinarySearchFunc(tb.Hosts, h, netip.Addr.Compare)
	return found
}
