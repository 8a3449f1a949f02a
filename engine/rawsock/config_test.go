package rawsock

import (
	"flag"
	"strings"
	"testing"
)

func TestConfigFlagsAndValidate(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.RegisterFlags(fs, "raw.")
	if err := fs.Parse([]string{"-raw.interface", "eth1", "-raw.source-ports", "50000-50010", "-raw.ttl", "32", "-raw.send-threads", "3"}); err != nil {
		t.Fatal(err)
	}
	if c.Interface != "eth1" || c.SourcePorts != "50000-50010" || c.TTL != 32 || c.Window != 1024 || c.SendThreads != 3 {
		t.Fatalf("parsed %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	bad := Config{SourceIP: "::1", RouteTo: "x", GatewayMAC: "zz", SourcePorts: "9-1", TTL: 0, Window: 70000, RecvBuffer: -1, SendThreads: 0}
	err := bad.Validate()
	if err == nil {
		t.Fatal("bad config validated")
	}
	for _, want := range []string{"source-ip", "route-to", "gateway-mac", "source-ports", "ttl", "window", "recv-buffer", "send-threads"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestSendThreadsBounds(t *testing.T) {
	c := DefaultConfig()
	if c.SendThreads < 1 || c.SendThreads > 2 {
		t.Errorf("default send threads %d, want 1 or 2", c.SendThreads)
	}
	for n, ok := range map[int]bool{1: true, maxSendThreads: true, maxSendThreads + 1: false, -1: false} {
		c.SendThreads = n
		if err := c.Validate(); (err == nil) != ok {
			t.Errorf("send-threads %d: %v", n, err)
		}
	}
}

func TestParsePortRange(t *testing.T) {
	for in, want := range map[string][2]uint16{"40000-40999": {40000, 40999}, "1234": {1234, 1234}, " 1 - 65535 ": {1, 65535}} {
		lo, hi, err := parsePortRange(in)
		if err != nil || lo != want[0] || hi != want[1] {
			t.Errorf("%q: %d-%d %v, want %v", in, lo, hi, err, want)
		}
	}
	for _, in := range []string{"", "0-10", "10-9", "1-70000", "a-b", "-"} {
		if _, _, err := parsePortRange(in); err == nil {
			t.Errorf("%q parsed", in)
		}
	}
}
