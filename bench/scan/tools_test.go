package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func testEnv() scanEnv {
	return scanEnv{Trawl: "/bin/trawl", Interface: "bs-1s", SourceIP: "198.19.255.1", GatewayMAC: "02:00:00:00:00:01",
		Block: "198.18.0.0/20", CooldownSecs: 1, WorkDir: "/w", BlockFile: "/w/bl", AllowFile: "/w/al", RunID: "007"}
}

// flagValue returns the argument after name.
func flagValue(t *testing.T, args []string, name string) string {
	t.Helper()
	i := slices.Index(args, name)
	if i < 0 || i+1 >= len(args) {
		t.Fatalf("%s missing from %v", name, args)
	}
	return args[i+1]
}

func TestToolCommands(t *testing.T) {
	e := testEnv()
	w := workloads(20)["x5-sparse"]
	byID := map[string]setting{}
	for _, s := range settings() {
		byID[settingID(s)] = s
	}

	tr := byID["trawl"].Build(e, w, 0)
	if len(tr) != 1 || !tr[0].Stdout || tr[0].Args[len(tr[0].Args)-1] != e.Block {
		t.Fatalf("trawl: %+v", tr)
	}
	if flagValue(t, tr[0].Args, "--rate") != "1000000000" || flagValue(t, tr[0].Args, "--raw.source-ports") != trawlPorts ||
		flagValue(t, tr[0].Args, "-p") != "22,80,443,3389,8080" || slices.Contains(tr[0].Args, "--cooldown") {
		t.Fatalf("trawl args: %v", tr[0].Args)
	}
	e2 := e
	e2.TrawlCooldown, e2.CooldownSecs = true, 3
	if got := flagValue(t, byID["trawl"].Build(e2, w, 5000)[0].Args, "--cooldown"); got != "3s" {
		t.Fatalf("trawl cooldown %q", got)
	}

	ms := byID["masscan"].Build(e, w, 50000)
	if len(ms) != 1 || flagValue(t, ms[0].Args, "--rate") != "50000" || flagValue(t, ms[0].Args, "--adapter-port") != masscanPorts ||
		flagValue(t, ms[0].Args, "--router-mac") != e.GatewayMAC || flagValue(t, ms[0].Args, "--wait") != "1" ||
		flagValue(t, ms[0].Args, "-oL") != ms[0].Output {
		t.Fatalf("masscan: %+v", ms)
	}

	zm := byID["zmap-T2"].Build(e, w, 0)
	if len(zm) != len(w.Ports) {
		t.Fatalf("zmap: %d runs for %d ports", len(zm), len(w.Ports))
	}
	outs := map[string]bool{}
	for i, inv := range zm {
		if flagValue(t, inv.Args, "-p") != itoa(w.Ports[i]) || flagValue(t, inv.Args, "-T") != "2" || flagValue(t, inv.Args, "-r") != "0" ||
			flagValue(t, inv.Args, "-s") != zmapPorts || flagValue(t, inv.Args, "-w") != e.AllowFile || flagValue(t, inv.Args, "-b") != e.BlockFile ||
			flagValue(t, inv.Args, "-o") != inv.Output || flagValue(t, inv.Args, "--output-filter") != "success = 1 && repeat = 0" {
			t.Fatalf("zmap run %d: %v", i, inv.Args)
		}
		outs[inv.Output] = true
	}
	if len(outs) != len(zm) {
		t.Fatalf("zmap runs share output files: %v", outs)
	}

	nm := byID["nmap"].Build(e, w, 0)
	if !slices.Contains(nm[0].Args, "-T5") || slices.Contains(nm[0].Args, "--min-rate") || flagValue(t, nm[0].Args, "-g") != nmapPort {
		t.Fatalf("nmap unlimited: %v", nm[0].Args)
	}
	nm = byID["nmap"].Build(e, w, 10000)
	if flagValue(t, nm[0].Args, "--min-rate") != "10000" || flagValue(t, nm[0].Args, "--max-rate") != "10000" {
		t.Fatalf("nmap rated: %v", nm[0].Args)
	}
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }

// Every tool's source ports lie in the range whose kernel RSTs are dropped.
func TestSourcePortsUnderRSTPolicy(t *testing.T) {
	var drop [][2]int
	for _, r := range strings.Split(dropRSTPorts, ",") {
		lo, hi := portRange(t, r)
		drop = append(drop, [2]int{lo, hi})
	}
	for _, r := range []string{trawlPorts, masscanPorts, zmapPorts, nmapPort} {
		a, b := portRange(t, r)
		if !slices.ContainsFunc(drop, func(d [2]int) bool { return a >= d[0] && b <= d[1] }) {
			t.Errorf("%s outside the RST-drop ranges %s", r, dropRSTPorts)
		}
	}
	// trawl's range lies above Linux's default ephemeral range, so trawl
	// guards its host's stack in the bench as by default.
	if a, _ := portRange(t, trawlPorts); a <= 60999 {
		t.Errorf("trawl's range %s overlaps the default ephemeral range", trawlPorts)
	}
	ma, mb := portRange(t, masscanPorts)
	if n := mb - ma + 1; n&(n-1) != 0 {
		t.Errorf("masscan's range %s is not a power of two", masscanPorts)
	}
}

func portRange(t *testing.T, s string) (int, int) {
	t.Helper()
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		b = a
	}
	var lo, hi int
	for _, c := range a {
		lo = lo*10 + int(c-'0')
	}
	for _, c := range b {
		hi = hi*10 + int(c-'0')
	}
	if lo < 1 || hi > 65535 || lo > hi {
		t.Fatalf("bad range %q", s)
	}
	return lo, hi
}

func TestConfig(t *testing.T) {
	parse := func(args ...string) (Config, error) {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		var c Config
		c.RegisterFlags(fs, "")
		if err := fs.Parse(args); err != nil {
			return c, err
		}
		return c, c.Validate()
	}
	c, err := parse()
	if err != nil {
		t.Fatalf("defaults: %v", err)
	}
	sets, _ := c.pickSettings()
	loads, _ := c.pickWorkloads()
	if len(sets) != 5 || len(loads) != 4 || c.Bits != 16 {
		t.Fatalf("defaults: %d settings, %d workloads, /%d", len(sets), len(loads), c.Bits)
	}
	_, err = parse("-bits", "8", "-cooldown", "1500ms", "-tools", "trawl,pf", "-workloads", "x9", "-rates", "fast", "-sparse-fraction", "0")
	for _, want := range []string{"bits", "cooldown", "unknown tool", "unknown workload", "rate", "sparse-fraction"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %q", err, want)
		}
	}
}

func TestQuickDefaults(t *testing.T) {
	var out, errOut bytes.Buffer
	// Validation fails after --quick has applied its defaults (bad tool),
	// so nothing touches the network.
	if code := run(context.Background(), []string{"--quick", "--tools", "pf"}, &out, &errOut); code != 2 {
		t.Fatalf("exit %d, want 2; stderr %s", code, errOut.String())
	}
	if !strings.Contains(errOut.String(), "unknown tool") {
		t.Fatalf("stderr %s", errOut.String())
	}
}

func TestLastLine(t *testing.T) {
	if got := lastLine("start\nrate: 1%   \rrate: 2%, waiting -3-secs   \r  \n"); got != "rate: 2%, waiting -3-secs" {
		t.Fatalf("got %q", got)
	}
	if got := lastLine(strings.Repeat("x", 1000)); len(got) > 310 {
		t.Fatalf("not bounded: %d bytes", len(got))
	}
}

func TestEchoReplyChecksum(t *testing.T) {
	var sum uint32
	for i := 0; i < len(echoReply); i += 2 {
		sum += uint32(echoReply[i])<<8 | uint32(echoReply[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	if echoReply[0] != 0 || sum != 0xffff {
		t.Fatalf("echo reply %x: type %d, checksum sum %#x", echoReply, echoReply[0], sum)
	}
}

func TestTailBuffer(t *testing.T) {
	tb := &tailBuffer{max: 8}
	_, _ = tb.Write([]byte("hello "))
	_, _ = tb.Write([]byte("world!"))
	if tb.String() != "o world!" {
		t.Fatalf("got %q", tb.String())
	}
}

func TestBedParsers(t *testing.T) {
	mac, err := parseLinkMAC([]byte(`[{"ifindex":2,"ifname":"bs-1t","address":"fe:d4:8f:57:cd:7d","broadcast":"ff:ff:ff:ff:ff:ff"}]`))
	if err != nil || mac != "fe:d4:8f:57:cd:7d" {
		t.Fatalf("got %q, %v", mac, err)
	}
	for _, bad := range []string{`[]`, `nope`, `[{"address":"zz"}]`} {
		if _, err := parseLinkMAC([]byte(bad)); !errors.Is(err, ErrParse) {
			t.Errorf("%s: got %v", bad, err)
		}
	}
	n, err := parseNftCounter([]byte(`{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"family": "ip", "name": "probes", "table": "benchcount", "handle": 1, "packets": 65536, "bytes": 2621440}}]}`))
	if err != nil || n != 65536 {
		t.Fatalf("got %d, %v", n, err)
	}
	for _, bad := range []string{`{"nftables": [{"metainfo": {}}]}`, `{`} {
		if _, err := parseNftCounter([]byte(bad)); !errors.Is(err, ErrParse) {
			t.Errorf("%s: got %v", bad, err)
		}
	}
}

func TestSparseHosts(t *testing.T) {
	block := netip.MustParsePrefix("198.18.0.0/16")
	a := sparseHosts(block, 0.01, 7)
	if len(a) != 655 {
		t.Fatalf("%d hosts, want 655 (1%% of 65536)", len(a))
	}
	if !slices.IsSortedFunc(a, netip.Addr.Compare) || len(slices.Compact(slices.Clone(a))) != len(a) {
		t.Fatal("hosts not ascending and distinct")
	}
	for _, h := range a {
		if !block.Contains(h) {
			t.Fatalf("%s outside %s", h, block)
		}
	}
	if !slices.Equal(a, sparseHosts(block, 0.01, 7)) {
		t.Fatal("same seed, different hosts")
	}
	if slices.Equal(a, sparseHosts(block, 0.01, 8)) {
		t.Fatal("different seeds, same hosts")
	}
	if n := len(sparseHosts(netip.MustParsePrefix("198.18.0.0/24"), 0.001, 1)); n != 1 {
		t.Fatalf("tiny fraction: %d hosts, want at least 1", n)
	}
}

// The helper mode listens, says ready, accepts and closes, and exits when
// its stdin closes; a port it cannot use fails it.
func TestRunHelper(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := itoa(uint16(l.Addr().(*net.TCPAddr).Port))
	l.Close()

	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan int, 1)
	go func() { done <- runHelper(port, "", inR, outW); outW.Close() }()
	t.Cleanup(func() { inW.Close() })
	line := make(chan string, 1)
	go func() {
		b := make([]byte, 6)
		n, _ := io.ReadFull(outR, b)
		line <- string(b[:n])
		_, _ = io.Copy(io.Discard, outR)
	}()
	select {
	case got := <-line:
		if got != "ready\n" {
			t.Fatalf("helper said %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("helper not ready after 5s")
	}
	c, err := net.DialTimeout("tcp4", "127.0.0.1:"+port, 5*time.Second)
	if err != nil {
		t.Fatalf("helper does not listen: %v", err)
	}
	c.Close()
	inW.Close()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("helper still running 5s after stdin closed")
	}

	var out bytes.Buffer
	if code := runHelper("notaport", "", strings.NewReader(""), &out); code != 1 || !strings.Contains(out.String(), "cannot listen") {
		t.Fatalf("bad port: exit %d, %q", code, out.String())
	}
}
