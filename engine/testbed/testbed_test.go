package testbed

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestPlan(t *testing.T) {
	tb, err := plan(Config{Block: "198.18.0.0/28", OpenPorts: []uint16{443, 22, 443}})
	if err != nil {
		t.Fatal(err)
	}
	if len(tb.Hosts) != 16 || tb.Hosts[0] != netip.MustParseAddr("198.18.0.0") || tb.Hosts[15] != netip.MustParseAddr("198.18.0.15") {
		t.Errorf("dense hosts %v", tb.Hosts)
	}
	if len(tb.OpenPorts) != 2 || tb.OpenPorts[0] != 22 {
		t.Errorf("ports %v, want sorted and deduplicated", tb.OpenPorts)
	}
	if len(tb.Open()) != 32 {
		t.Errorf("truth has %d pairs, want 32", len(tb.Open()))
	}
	if !strings.HasPrefix(tb.Name, "tb-") || len(tb.ScannerIf) > 15 {
		t.Errorf("names %q / %q", tb.Name, tb.ScannerIf)
	}
	other, _ := plan(Config{Block: "198.18.0.0/28", OpenPorts: []uint16{1}})
	if other.Name == tb.Name {
		t.Error("two testbeds got the same name")
	}

	a, _ := plan(Config{Block: "198.18.0.0/20", OpenPorts: []uint16{80}, SparseFraction: 0.01, Seed: 3})
	b, _ := plan(Config{Block: "198.18.0.0/20", OpenPorts: []uint16{80}, SparseFraction: 0.01, Seed: 3})
	if len(a.Hosts) != 41 || len(b.Hosts) != 41 || a.Hosts[0] != b.Hosts[0] || a.Hosts[40] != b.Hosts[40] {
		t.Errorf("sparse fraction: %d and %d hosts, want the same 41", len(a.Hosts), len(b.Hosts))
	}
	h := netip.MustParseAddr("198.18.0.9")
	c, err := plan(Config{Block: "198.18.0.0/24", OpenPorts: []uint16{80}, Sparse: []netip.Addr{h, h}})
	if err != nil || len(c.Hosts) != 1 || !c.Answers(h) || c.Answers(netip.MustParseAddr("198.18.0.8")) {
		t.Errorf("explicit sparse: %v %v", c, err)
	}

	for name, cfg := range map[string]Config{
		"not a CIDR":        {Block: "x", OpenPorts: []uint16{1}},
		"outside the range": {Block: "10.0.0.0/24", OpenPorts: []uint16{1}},
		"wider than it":     {Block: "198.0.0.0/8", OpenPorts: []uint16{1}},
		"over the link":     {Block: "198.19.255.0/24", OpenPorts: []uint16{1}},
		"no ports":          {Block: "198.18.0.0/24"},
		"port 0":            {Block: "198.18.0.0/24", OpenPorts: []uint16{0}},
		"bad fraction":      {Block: "198.18.0.0/24", OpenPorts: []uint16{1}, SparseFraction: 2},
		"both sparse modes": {Block: "198.18.0.0/24", OpenPorts: []uint16{1}, SparseFraction: 0.5, Sparse: []netip.Addr{}},
		"host outside":      {Block: "198.18.0.0/24", OpenPorts: []uint16{1}, Sparse: []netip.Addr{netip.MustParseAddr("198.18.1.1")}},
	} {
		if _, err := plan(cfg); err == nil {
			t.Errorf("%s: planned", name)
		}
	}
}

// dial connects from the scanner's namespace.
func dial(t *testing.T, tb *Testbed, ap netip.AddrPort) error {
	t.Helper()
	return tb.InScanner(func() error {
		c, err := net.DialTimeout("tcp4", ap.String(), 300*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err
	})
}

func TestDenseAnswersEverywhere(t *testing.T) {
	tb := New(t, Config{Block: "198.18.0.0/24", OpenPorts: []uint16{22, 80}})
	for _, ip := range []string{"198.18.0.1", "198.18.0.77", "198.18.0.254"} {
		if err := dial(t, tb, netip.MustParseAddrPort(ip+":80")); err != nil {
			t.Errorf("open %s:80: %v", ip, err)
		}
		if err := dial(t, tb, netip.MustParseAddrPort(ip+":81")); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("closed %s:81: %v, want refused", ip, err)
		}
	}
}

func TestSparseDropsAllButTheLiveHosts(t *testing.T) {
	live := netip.MustParseAddr("198.18.4.10")
	tb := New(t, Config{Block: "198.18.4.0/24", OpenPorts: []uint16{443}, Sparse: []netip.Addr{live}})
	if err := dial(t, tb, netip.AddrPortFrom(live, 443)); err != nil {
		t.Errorf("live host open port: %v", err)
	}
	if err := dial(t, tb, netip.AddrPortFrom(live, 444)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("live host closed port: %v, want refused", err)
	}
	err := dial(t, tb, netip.MustParseAddrPort("198.18.4.11:443"))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("dropped host: %v, want a timeout", err)
	}
}

func TestCleanupRemovesNamespaces(t *testing.T) {
	if err := Available(false); err != nil {
		t.Skipf("skipping: %v", err)
	}
	var name string
	t.Run("build", func(t *testing.T) {
		tb := New(t, Config{Block: "198.18.9.0/30", OpenPorts: []uint16{80}, DropScannerRST: "40000-40010"})
		name = tb.Name
		for _, ns := range []string{tb.ScannerNS, tb.TargetNS} {
			if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
				t.Errorf("namespace %s missing: %v", ns, err)
			}
		}
	})
	for _, suffix := range []string{"-s", "-t"} {
		if _, err := os.Stat(filepath.Join("/run/netns", name+suffix)); !os.IsNotExist(err) {
			t.Errorf("namespace %s%s left behind: %v", name, suffix, err)
		}
	}
}

func TestScriptRejectsBadUsage(t *testing.T) {
	if err := Available(false); err != nil {
		t.Skipf("skipping: %v", err)
	}
	path := filepath.Join(t.TempDir(), "testbed.sh")
	if err := os.WriteFile(path, script, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"up"}, {"bogus", "x"}, {"up", "tb-x"}} {
		if err := runScript(path, args...); err == nil {
			t.Errorf("testbed.sh %v succeeded", args)
		}
	}
	if err := runScript(path, "down", "tb-never-built"); err != nil {
		t.Errorf("down of a missing testbed: %v", err)
	}
}

func TestCommandRunsInsideTheNamespace(t *testing.T) {
	tb := New(t, Config{Block: "198.18.5.0/30", OpenPorts: []uint16{80}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := tb.Command(ctx, tb.ScannerNS, "ip", "-o", "addr", "show", "dev", tb.ScannerIf).CombinedOutput()
	if err != nil || !strings.Contains(string(out), tb.ScannerIP.String()) {
		t.Errorf("ip addr in the scanner namespace: %v: %s", err, out)
	}
}

func TestSparseWithNoLiveHostDropsEverything(t *testing.T) {
	tb := New(t, Config{Block: "198.18.6.0/30", OpenPorts: []uint16{80}, Sparse: []netip.Addr{}})
	if len(tb.Open()) != 0 {
		t.Errorf("truth %v, want empty", tb.Open())
	}
	err := dial(t, tb, netip.MustParseAddrPort("198.18.6.1:80"))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("dial: %v, want a timeout", err)
	}
}
