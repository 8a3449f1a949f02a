package rawsock_test

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"trawl/engine"
	"trawl/engine/rawsock"
	"trawl/engine/testbed"
	"trawl/ingest"
)

func TestRingIsUsedAndSizedFromRecvBuffer(t *testing.T) {
	tb := testbed.New(t, testbed.Config{Block: "198.18.3.0/24", OpenPorts: []uint16{80, 443}})
	cfg := defaultConfig()
	cfg.RecvBuffer = 8 << 20
	tr := newInScanner(t, tb, cfg)
	if !rawsock.UsesRxRing(tr) {
		t.Fatal("the transport reads with recvfrom, want the receive ring")
	}
	if got := rawsock.RingBlocks(tr); got != 32 {
		t.Errorf("ring of %d blocks for an 8 MiB buffer, want 32 of 256 KiB", got)
	}
	found, st := scanTestbed(t, tr, "198.18.3.0/24", []string{"80", "443", "8080"}, 50000)
	checkTruth(t, tb, found)
	rs := tr.Stats()
	if rs.Closed != 256 || rs.Open != 512 || rs.Forged != 0 || st.Sent != 768 {
		t.Errorf("through the ring: scan %+v, transport %+v; want 512 open, 256 closed, nothing forged", st, rs)
	}
}

func TestFallbackToRecvfromWhenTheRingIsRefused(t *testing.T) {
	rawsock.ForceRecvfrom(t)
	tb := testbed.New(t, testbed.Config{Block: "198.18.4.0/24", OpenPorts: []uint16{22}})
	var logs syncBuffer
	var tr *rawsock.Transport
	if err := tb.InScanner(func() error {
		var err error
		tr, err = rawsock.New(defaultConfig(), zerolog.New(&logs))
		return err
	}); err != nil {
		t.Fatalf("New with the ring refused: %v", err)
	}
	t.Cleanup(func() { _ = tr.Close(0) })
	if rawsock.UsesRxRing(tr) {
		t.Fatal("the transport kept a ring the kernel refused")
	}
	if !strings.Contains(logs.String(), "no receive ring") || !strings.Contains(logs.String(), "TPACKET_V3") {
		t.Errorf("the fallback was not logged with its reason: %s", logs.String())
	}
	found, st := scanTestbed(t, tr, "198.18.4.0/24", []string{"22", "80"}, 50000)
	checkTruth(t, tb, found)
	if rs := tr.Stats(); rs.Open != 256 || rs.Closed != 256 || st.Sent != 512 {
		t.Errorf("through recvfrom: scan %+v, transport %+v; want 256 open, 256 closed", st, rs)
	}
}

// TestRingStopsPromptlyWhenIdle: with no traffic the ring loop still
// notices Close within its poll timeout.
func TestRingStopsPromptlyWhenIdle(t *testing.T) {
	tb := testbed.New(t, testbed.Config{Block: "198.18.5.0/28", OpenPorts: []uint16{80}})
	tr := newInScanner(t, tb, defaultConfig())
	if !rawsock.UsesRxRing(tr) {
		t.Fatal("no receive ring")
	}
	if err := tr.Start(context.Background(), func(engine.Reply) {}); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if err := tr.Close(50 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(began); d > time.Second {
		t.Errorf("Close took %s with an idle ring", d)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestMeasureThroughput is the before/after measurement of the receive
// path, not a regular test: TRAWL_RAWSOCK_MEASURE=1 runs a dense /18 × 5
// and a sparse /16 × 5 (1% of hosts answer) at unlimited rate and logs
// pps, recall and CPU; TRAWL_RAWSOCK_RECV=recvfrom measures the fallback.
func TestMeasureThroughput(t *testing.T) {
	if os.Getenv("TRAWL_RAWSOCK_MEASURE") == "" {
		t.Skip("skipping: a measurement; set TRAWL_RAWSOCK_MEASURE=1 to run it")
	}
	if os.Getenv("TRAWL_RAWSOCK_RECV") == "recvfrom" {
		rawsock.ForceRecvfrom(t)
	}
	ports := []uint16{22, 80, 443, 3389, 8080}
	portSpecs := []string{"22", "80", "443", "3389", "8080"}
	for _, w := range []struct {
		name  string
		block string
		frac  float64
	}{
		{"dense /18x5", "198.18.0.0/18", 0},
		{"dense /16x5", "198.18.0.0/16", 0},
		{"sparse /16x5 1%", "198.18.0.0/16", 0.01},
	} {
		if f := os.Getenv("TRAWL_RAWSOCK_ONLY"); f != "" && !strings.HasPrefix(w.name, f) {
			continue
		}
		t.Run(w.name, func(t *testing.T) {
			tb := testbed.New(t, testbed.Config{Block: w.block, OpenPorts: ports, SparseFraction: w.frac, Seed: 11,
				DropScannerRST: testPorts})
			tr := newInScanner(t, tb, defaultConfig())
			via := "recvfrom"
			if rawsock.UsesRxRing(tr) { // Scan closes tr, which unmaps the ring
				via = "ring"
			}
			var before, after unix.Rusage
			_ = unix.Getrusage(unix.RUSAGE_SELF, &before)
			began := time.Now()
			found, st := measureScan(t, tr, w.block, portSpecs)
			wall := time.Since(began)
			_ = unix.Getrusage(unix.RUSAGE_SELF, &after)
			cpu := time.Duration(after.Utime.Nano()-before.Utime.Nano()) + time.Duration(after.Stime.Nano()-before.Stime.Nano())
			truth := tb.Open()
			hit, extra, dups := 0, 0, 0
			for ap, n := range found {
				if truth[ap] {
					hit++
				} else {
					extra++
				}
				if n > 1 {
					dups++
				}
			}
			rs := tr.Stats()
			t.Logf("%s via %s: sent %d in %.2fs send phase = %.0f pps (scan avg %.0f); wall %.2fs incl. 1s cooldown; "+
				"cpu %.2fs (%.2f s/Mprobe); recall %d/%d = %.4f%%, false positives %d, duplicates %d; transport %+v",
				w.name, via,
				st.Sent, (wall - time.Second).Seconds(), float64(st.Sent)/(wall-time.Second).Seconds(), st.AvgPPS,
				wall.Seconds(), cpu.Seconds(), cpu.Seconds()/(float64(st.Sent)/1e6),
				hit, len(truth), 100*float64(hit)/float64(len(truth)), extra, dups, rs)
		})
	}
}

func measureScan(t *testing.T, tr engine.Transport, block string, ports []string) (map[netip.AddrPort]int, engine.Stats) {
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
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var mu sync.Mutex
	found := map[netip.AddrPort]int{}
	st, err := engine.Scan(ctx, engine.ScanConfig{
		Space: space, Seed: 42, Shards: 1, Rate: 0, Cooldown: time.Second, Transport: tr,
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
