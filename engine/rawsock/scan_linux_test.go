package rawsock_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"trawl/engine"
	"trawl/engine/rawsock"
	"trawl/engine/testbed"
	"trawl/ingest"
)

const testPorts = "40000-40999"

// newInScanner creates a raw transport inside tb's scanner namespace,
// resolving everything from its routes (ARP for the gateway included).
func newInScanner(t *testing.T, tb *testbed.Testbed, cfg rawsock.Config) *rawsock.Transport {
	t.Helper()
	var tr *rawsock.Transport
	err := tb.InScanner(func() error {
		var err error
		tr, err = rawsock.New(cfg, zerolog.New(zerolog.NewTestWriter(t)))
		return err
	})
	if err != nil {
		t.Fatalf("rawsock.New: %v", err)
	}
	t.Cleanup(func() { _ = tr.Close(0) })
	return tr
}

func defaultConfig() rawsock.Config {
	c := rawsock.DefaultConfig()
	c.SourcePorts = testPorts
	return c
}

// scanTestbed scans block × ports through tr and returns what was found.
func scanTestbed(t *testing.T, tr engine.Transport, block string, ports []string, rate int) (map[netip.AddrPort]int, engine.Stats) {
	t.Helper()
	return scanTestbedRetries(t, tr, block, ports, rate, 0)
}

// scanTestbedRetries is scanTestbed with retry passes.
func scanTestbedRetries(t *testing.T, tr engine.Transport, block string, ports []string, rate, retries int) (map[netip.AddrPort]int, engine.Stats) {
	t.Helper()
	policy, err := (&engine.PolicyConfig{Allow: []string{"198.18.0.0/15"}}).Build()
	if err != nil {
		t.Fatal(err)
	}
	var specs []ingest.PortSpec
	for _, p := range ports {
		specs = append(specs, ingest.PortSpec{Ports: p})
	}
	space, err := engine.NewSpace([]ingest.TaskOptions{{Targets: []string{block}, Ports: specs}}, policy)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var mu sync.Mutex
	found := map[netip.AddrPort]int{}
	st, err := engine.Scan(ctx, engine.ScanConfig{
		Space: space, Seed: 42, Shards: 1, Rate: rate, Cooldown: time.Second, Transport: tr, Retries: retries,
	}, func(o engine.Open) {
		mu.Lock()
		found[netip.AddrPortFrom(engine.Addr(o.IP), o.Port)]++
		mu.Unlock()
	}, nil)
	if err != nil {
		t.Fatalf("scan: %v", err)
	}
	return found, st
}

func checkTruth(t *testing.T, tb *testbed.Testbed, found map[netip.AddrPort]int) {
	t.Helper()
	truth := tb.Open()
	missed, extra, dups := 0, 0, 0
	for ap := range truth {
		if found[ap] == 0 {
			if missed++; missed <= 5 {
				t.Errorf("missed open %s", ap)
			}
		}
	}
	for ap, n := range found {
		if !truth[ap] {
			if extra++; extra <= 5 {
				t.Errorf("false positive %s", ap)
			}
		}
		if n > 1 {
			dups++
		}
	}
	if missed+extra+dups > 0 {
		t.Errorf("truth %d, found %d: missed %d, false positives %d, reported twice %d", len(truth), len(found), missed, extra, dups)
	}
}

func TestScanDenseBlockFindsExactlyTheOpenPorts(t *testing.T) {
	tb := testbed.New(t, testbed.Config{Block: "198.18.0.0/24", OpenPorts: []uint16{22, 80, 443}})
	tr := newInScanner(t, tb, defaultConfig())
	if tr.SourceIP() != tb.ScannerIP.String() || tr.Interface() != tb.ScannerIf {
		t.Errorf("resolved %s on %s, want %s on %s", tr.SourceIP(), tr.Interface(), tb.ScannerIP, tb.ScannerIf)
	}
	var gwMAC string
	if err := tb.InTarget(func() error {
		ifi, err := net.InterfaceByName(tb.TargetIf)
		if err == nil {
			gwMAC = ifi.HardwareAddr.String()
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if tr.GatewayMAC() != gwMAC {
		t.Errorf("gateway MAC %s, want the targets' veth %s", tr.GatewayMAC(), gwMAC)
	}

	// 8080 is closed: every host answers it with a RST
	found, st := scanTestbed(t, tr, "198.18.0.0/24", []string{"22", "80", "443", "8080"}, 20000)
	checkTruth(t, tb, found)
	rs := tr.Stats()
	t.Logf("scan %+v; transport %+v", st, rs)
	if st.Sent != 256*4 || rs.Sent != 256*4 || rs.SendErrors != 0 {
		t.Errorf("sent %d (transport %d, errors %d), want %d", st.Sent, rs.Sent, rs.SendErrors, 256*4)
	}
	if rs.Closed < 256 {
		t.Errorf("closed replies %d, want at least one RST per host for 8080", rs.Closed)
	}
	if rs.Forged != 0 || st.Rejected != rs.Forged {
		t.Errorf("%d replies failed validation on a clean network (scan stats say %d)", rs.Forged, st.Rejected)
	}
	if st.Received != rs.Open+rs.Closed {
		t.Errorf("scan received %d replies, the transport validated %d", st.Received, rs.Open+rs.Closed)
	}
}

// TestSendThreadsLoseNothingAtFullSpeed: unlimited rate on a dense block
// with one and with several send threads finds exactly the open ports, and
// every probe queued to a thread goes out before Close returns. The
// scanner's kernel RSTs stay on: a half-open connection left by the first
// scan would answer a second scan's SYN on the same 4-tuple with a bare ACK.
func TestSendThreadsLoseNothingAtFullSpeed(t *testing.T) {
	tb := testbed.New(t, testbed.Config{Block: "198.18.4.0/22", OpenPorts: []uint16{22, 443}})
	for _, threads := range []int{1, 3} {
		cfg := defaultConfig()
		cfg.SendThreads = threads
		tr := newInScanner(t, tb, cfg)
		found, st := scanTestbed(t, tr, "198.18.4.0/22", []string{"22", "80", "443"}, 0)
		checkTruth(t, tb, found)
		rs := tr.Stats()
		t.Logf("%d send threads: scan %+v; transport %+v", threads, st, rs)
		if st.Sent != 1024*3 || rs.Sent != 1024*3 || rs.SendErrors != 0 {
			t.Errorf("%d threads: sent %d (transport %d, errors %d), want %d", threads, st.Sent, rs.Sent, rs.SendErrors, 1024*3)
		}
		if err := tr.Close(0); err != nil {
			t.Errorf("close: %v", err)
		}
		if err := tr.Send(context.Background(), []engine.Probe{{IP: 0xC6120401, Port: 22}}); !errors.Is(err, engine.ErrTransportClosed) {
			t.Errorf("%d threads: send after close: %v, want ErrTransportClosed", threads, err)
		}
	}
}

func TestScanSparseBlockFindsExactlyTheOpenPorts(t *testing.T) {
	tb := testbed.New(t, testbed.Config{
		Block: "198.18.16.0/20", OpenPorts: []uint16{22, 443}, SparseFraction: 0.02, Seed: 7,
		DropScannerRST: testPorts,
	})
	tr := newInScanner(t, tb, defaultConfig())
	found, st := scanTestbed(t, tr, "198.18.16.0/20", []string{"22", "80", "443"}, 50000)
	checkTruth(t, tb, found)
	t.Logf("sparse: %d hosts answer; scan %+v; transport %+v", len(tb.Hosts), st, tr.Stats())
	if len(tb.Hosts) != 82 {
		t.Errorf("2%% of a /20 is %d hosts, want 82", len(tb.Hosts))
	}
}

func TestScanRetriesResendOnlyToSilentTargets(t *testing.T) {
	tb := testbed.New(t, testbed.Config{
		Block: "198.18.32.0/22", OpenPorts: []uint16{22}, SparseFraction: 0.05, Seed: 3,
		DropScannerRST: testPorts,
	})
	tr := newInScanner(t, tb, defaultConfig())
	found, st := scanTestbedRetries(t, tr, "198.18.32.0/22", []string{"22", "80"}, 100000, 2)
	checkTruth(t, tb, found)
	t.Logf("%d hosts answer; scan %+v; transport %+v", len(tb.Hosts), st, tr.Stats())
	// every answering host answers both ports (22 open, 80 with a RST), so
	// each retry pass resends exactly the silent pairs
	silent := uint64(1024*2 - 2*len(tb.Hosts))
	if st.Retried != 2*silent || st.Sent != 1024*2+2*silent || st.Pass != 2 {
		t.Errorf("sent %d, retried %d in pass %d; want 2 × %d silent pairs resent", st.Sent, st.Retried, st.Pass, silent)
	}
}

func TestTransportLifecycle(t *testing.T) {
	tb := testbed.New(t, testbed.Config{Block: "198.18.1.0/28", OpenPorts: []uint16{80}})
	cfg := defaultConfig()
	cfg.GatewayMAC = "02:00:00:00:00:01" // no ARP when given
	cfg.Interface = tb.ScannerIf
	tr := newInScanner(t, tb, cfg)
	if tr.GatewayMAC() != cfg.GatewayMAC {
		t.Errorf("gateway MAC %s, want the configured one", tr.GatewayMAC())
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := tr.Start(ctx, func(engine.Reply) {}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Start(ctx, func(engine.Reply) {}); err == nil {
		t.Error("second Start succeeded")
	}
	cancel() // Close returns at once when Start's ctx is gone
	began := time.Now()
	if err := tr.Close(time.Minute); err != nil {
		t.Fatal(err)
	}
	if time.Since(began) > 5*time.Second {
		t.Errorf("Close waited %s after ctx ended", time.Since(began))
	}
	if err := tr.Send(context.Background(), []engine.Probe{{IP: 0xc6120101, Port: 80}}); !errors.Is(err, engine.ErrTransportClosed) {
		t.Errorf("Send after Close: %v, want ErrTransportClosed", err)
	}
}

func TestNewFailures(t *testing.T) {
	tb := testbed.New(t, testbed.Config{Block: "198.18.2.0/28", OpenPorts: []uint16{80}})
	cases := map[string]rawsock.Config{
		"invalid config":    {SourcePorts: "x"},
		"unknown interface": func() rawsock.Config { c := defaultConfig(); c.Interface = "nope0"; return c }(),
		"gateway not answering ARP": func() rawsock.Config {
			c := defaultConfig()
			c.RouteTo = "198.19.255.3" // on-link, nobody there
			return c
		}(),
	}
	for name, cfg := range cases {
		t.Run(name, func(t *testing.T) {
			err := tb.InScanner(func() error {
				tr, err := rawsock.New(cfg, zerolog.Nop())
				if err == nil {
					_ = tr.Close(0)
				}
				return err
			})
			if err == nil {
				t.Fatal("New succeeded")
			}
			t.Log(err)
		})
	}
	t.Run("no route", func(t *testing.T) {
		err := tb.InTarget(func() error { // the targets' side has no default route
			_, err := rawsock.New(defaultConfig(), zerolog.Nop())
			return err
		})
		if !errors.Is(err, rawsock.ErrNoRoute) {
			t.Fatalf("New: %v, want ErrNoRoute", err)
		}
	})
}

// BenchmarkSend measures the send path (patch + sendmmsg) into a testbed
// whose targets drop everything, per probe.
func BenchmarkSend(b *testing.B) {
	tb := testbed.New(b, testbed.Config{Block: "198.18.0.0/16", OpenPorts: []uint16{80}, Sparse: []netip.Addr{}})
	var tr *rawsock.Transport
	if err := tb.InScanner(func() error {
		var err error
		tr, err = rawsock.New(defaultConfig(), zerolog.Nop())
		return err
	}); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := tr.Start(ctx, func(engine.Reply) {}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = tr.Close(0) })
	batch := make([]engine.Probe, engine.DefaultBatch)
	b.ReportAllocs()
	b.ResetTimer()
	ip := uint32(0xc6120000)
	for i := 0; i < b.N; i += len(batch) {
		for j := range batch {
			ip++
			batch[j] = engine.Probe{IP: 0xc6120000 | ip&0xffff, Port: 80}
		}
		if err := tr.Send(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
}

// tcpOutRsts reads the scanner namespace's count of RSTs its TCP stack
// sent (/proc/thread-self: /proc/net would show the process's namespace).
func tcpOutRsts(t *testing.T, tb *testbed.Testbed) int {
	t.Helper()
	var snmp []byte
	if err := tb.InScanner(func() (err error) {
		snmp, err = os.ReadFile("/proc/thread-self/net/snmp")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, line := range strings.Split(string(snmp), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		if i := slices.Index(names, "OutRsts"); i > 0 && i < len(f) {
			n, err := strconv.Atoi(f[i])
			if err != nil {
				t.Fatalf("OutRsts %q: %v", f[i], err)
			}
			return n
		}
	}
	t.Fatalf("no Tcp OutRsts in /proc/net/snmp:\n%s", snmp)
	return 0
}

// trawlTables lists the scanner namespace's nftables tables made by trawl.
func trawlTables(t *testing.T, tb *testbed.Testbed) []string {
	t.Helper()
	out, err := tb.Command(context.Background(), tb.ScannerNS, "nft", "list", "tables").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list tables: %v\n%s", err, out)
	}
	var tables []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, " trawl_") {
			tables = append(tables, strings.TrimSpace(line))
		}
	}
	return tables
}

// The host stack guard keeps the scanner namespace's TCP stack from seeing
// the scan's replies: it sends no RST while every open port is still found,
// and its table exists exactly while the transport does. Off, or with
// source ports in the ephemeral range (refused), the stack answers every
// SYN-ACK with a RST.
func TestGuardHostStack(t *testing.T) {
	tb := testbed.New(t, testbed.Config{Block: "198.18.0.0/26", OpenPorts: []uint16{80, 443}})
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("skipping: nft not installed (Debian: nftables)")
	}
	for _, tc := range []struct {
		name, ports string
		guard       bool
	}{
		{"guarded", "61000-61099", true},
		{"off", "61000-61099", false},
		{"ephemeral ports refused", "40000-40099", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := rawsock.DefaultConfig()
			cfg.SourcePorts, cfg.GuardHostStack = tc.ports, tc.guard
			before := tcpOutRsts(t, tb)
			tr := newInScanner(t, tb, cfg)
			guarded := tc.guard && tc.ports == "61000-61099"
			if tables := trawlTables(t, tb); len(tables) != map[bool]int{true: 1, false: 0}[guarded] {
				t.Errorf("trawl tables while scanning: %q", tables)
			}
			found, _ := scanTestbed(t, tr, "198.18.0.0/26", []string{"80", "443", "8080"}, 20000)
			checkTruth(t, tb, found)
			if err := tr.Close(0); err != nil {
				t.Fatalf("Close: %v", err)
			}
			rsts := tcpOutRsts(t, tb) - before
			if guarded && rsts != 0 {
				t.Errorf("the guarded stack sent %d RSTs", rsts)
			}
			if !guarded && rsts < len(tb.Open()) {
				t.Errorf("the unguarded stack sent %d RSTs, want one per open port (%d) at least", rsts, len(tb.Open()))
			}
			if tables := trawlTables(t, tb); len(tables) != 0 {
				t.Errorf("trawl tables left after Close: %q", tables)
			}
		})
	}
}
