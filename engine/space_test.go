package engine

import (
	"errors"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"trawl/ingest"
)

// testPolicy allows what the tests scan: loopback and 198.18.0.0/15.
func testPolicy(t testing.TB) Policy {
	t.Helper()
	p, err := (&PolicyConfig{Allow: []string{"127.0.0.0/8", "198.18.0.0/15"}}).Build()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSpaceMapping(t *testing.T) {
	opts := []ingest.TaskOptions{
		{
			Targets: []string{"198.18.0.0/30", "10.0.0.1" /* excluded */, "198.18.0.10"},
			Ports: []ingest.PortSpec{
				{Ports: "22", Modules: []string{"ssh"}},
				{Ports: "80-82", Sample: 2, Modules: []string{"service"}},
			},
		},
		{
			Targets: []string{"198.18.1.0-198.18.1.1"},
			Ports:   []ingest.PortSpec{{Ports: "443"}},
		},
	}
	s, err := NewSpace(opts, DefaultPolicy().withAllow(t, "198.18.0.0/15"))
	if err != nil {
		t.Fatal(err)
	}
	// block 0 has 5 allowed ips: 5×1 + 5×3; block 1: 2×1
	if s.Size() != 5+15+2 {
		t.Fatalf("Size = %d, want 22", s.Size())
	}
	if s.Excluded() != 1 {
		t.Errorf("Excluded = %d, want 1", s.Excluded())
	}
	entries := s.Entries()
	if len(entries) != 3 || entries[1].Block != 0 || entries[1].Index != 1 || entries[1].Sample != 2 ||
		entries[1].Ports != (PortRange{80, 82}) || entries[2].Block != 1 || entries[2].Index != 0 {
		t.Fatalf("Entries = %+v", entries)
	}
	seen := map[uint64]int{}
	perEntry := map[int]int{}
	for i := range s.Size() {
		a, port, e := s.At(i)
		seen[uint64(a)<<16|uint64(port)]++
		perEntry[e]++
		if !s.Targets(entries[e].Block).Contains(a) || !entries[e].Ports.Contains(port) {
			t.Fatalf("At(%d) = %s:%d in entry %d, which does not hold it", i, FormatIP(a), port, e)
		}
		if m := s.Match(a, port); len(m) != 1 || m[0] != e {
			t.Fatalf("Match(%s:%d) = %v, want [%d]", FormatIP(a), port, m, e)
		}
	}
	if len(seen) != 22 || perEntry[0] != 5 || perEntry[1] != 15 || perEntry[2] != 2 {
		t.Errorf("At covers %d pairs, per entry %v", len(seen), perEntry)
	}
	for _, tc := range []struct {
		ip   string
		port uint16
	}{{"198.18.0.4", 22}, {"10.0.0.1", 22}, {"198.18.0.1", 443}, {"198.18.1.0", 22}, {"198.18.0.10", 83}} {
		if m := s.Match(ip(t, tc.ip), tc.port); len(m) != 0 {
			t.Errorf("Match(%s:%d) = %v, want none", tc.ip, tc.port, m)
		}
	}
	if s.overlaps {
		t.Error("disjoint entries reported as overlapping")
	}
}

func (p Policy) withAllow(t testing.TB, allow ...string) Policy {
	t.Helper()
	set, err := ParseTargets(allow)
	if err != nil {
		t.Fatal(err)
	}
	return newPolicy(p.rules, set)
}

func TestSpaceOverlaps(t *testing.T) {
	opts := []ingest.TaskOptions{
		{Targets: []string{"198.18.0.0/31"}, Ports: []ingest.PortSpec{{Ports: "80-81", Sample: 1}, {Ports: "81"}}},
		{Targets: []string{"198.18.0.1"}, Ports: []ingest.PortSpec{{Ports: "81"}}},
	}
	s, err := NewSpace(opts, testPolicy(t))
	if err != nil {
		t.Fatal(err)
	}
	if !s.overlaps {
		t.Fatal("overlap not detected")
	}
	if m := s.Match(ip(t, "198.18.0.1"), 81); len(m) != 3 {
		t.Errorf("Match(198.18.0.1:81) = %v, want all three entries", m)
	}
	full := make([]atomic.Bool, 3)
	// each pair is considered once, at its first entry's index
	considered := map[uint64]int{}
	for i := range s.Size() {
		a, port, e := s.At(i)
		if !s.skip(a, port, e, full) {
			considered[uint64(a)<<16|uint64(port)]++
		}
	}
	if len(considered) != 4 {
		t.Errorf("considered %d distinct pairs, want 4", len(considered))
	}
	for k, n := range considered {
		if n != 1 {
			t.Errorf("pair %x considered %d times", k, n)
		}
	}
	// entry 0 full: 198.18.0.x:81 still wanted by entries 1 and 2, port 80 not
	full[0].Store(true)
	for i := range s.Size() {
		a, port, e := s.At(i)
		if e == 0 && port == 80 && !s.skip(a, port, e, full) {
			t.Errorf("%s:80 probed though its only entry is full", FormatIP(a))
		}
		if e == 0 && port == 81 && s.skip(a, port, e, full) {
			t.Errorf("%s:81 skipped though entry 1 wants it", FormatIP(a))
		}
	}
}

func TestNewSpaceErrors(t *testing.T) {
	p := DefaultPolicy()
	ports := []ingest.PortSpec{{Ports: "80"}}
	for _, tc := range []struct {
		name  string
		opts  []ingest.TaskOptions
		want  []error
		names []string
	}{
		{"no options", nil, []error{ErrEmptyTargets}, []string{"options"}},
		{"no targets", []ingest.TaskOptions{{Ports: ports}}, []error{ErrEmptyTargets}, []string{"options[0].targets"}},
		{"hostname", []ingest.TaskOptions{{Targets: []string{"8.8.8.8", "example.com"}, Ports: ports}},
			[]error{ErrHostname}, []string{"options[0].targets[1]", "example.com"}},
		{"ipv6", []ingest.TaskOptions{{Targets: []string{"2001:db8::1"}, Ports: ports}}, []error{ErrIPv6}, []string{"options[0].targets[0]"}},
		{"bad port", []ingest.TaskOptions{{Targets: []string{"8.8.8.8"}, Ports: []ingest.PortSpec{{Ports: "80"}, {Ports: "0"}}}},
			[]error{ErrPort}, []string{"options[0].ports[1]"}},
		{"no ports", []ingest.TaskOptions{{Targets: []string{"8.8.8.8"}}}, []error{ErrPort}, []string{"options[0].ports"}},
		{"bad hostname map", []ingest.TaskOptions{{Targets: []string{"8.8.8.8"}, Ports: ports, Hostnames: map[string]string{"8.8.8.8": "", "x": "a.example"}}},
			[]error{ErrTarget}, []string{"options[0].hostnames", `"8.8.8.8"`, `"x"`}},
		{"negative sample", []ingest.TaskOptions{{Targets: []string{"8.8.8.8"}, Ports: []ingest.PortSpec{{Ports: "80", Sample: -1}}}},
			[]error{ErrSample}, []string{"options[0].ports[0]"}},
		{"all excluded", []ingest.TaskOptions{
			{Targets: []string{"8.8.8.8"}, Ports: ports},
			{Targets: []string{"127.0.0.1", "198.18.0.0/24"}, Ports: ports},
		}, []error{ErrOutsidePolicy}, []string{"options[1].targets", `targets[0] "127.0.0.1"`, "127.0.0.0/8", "198.18.0.0/15", "benchmarking"}},
		{"several at once", []ingest.TaskOptions{
			{Targets: []string{"bad target"}, Ports: []ingest.PortSpec{{Ports: "99999"}}},
			{Targets: []string{"::1"}, Ports: ports},
		}, []error{ErrTarget, ErrPort, ErrIPv6}, []string{"options[0].targets[0]", "options[0].ports[0]", "options[1].targets[0]"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewSpace(tc.opts, p)
			if err == nil || s != nil {
				t.Fatalf("NewSpace = %v, %v; want an error", s, err)
			}
			for _, w := range tc.want {
				if !errors.Is(err, w) {
					t.Errorf("error %q is not %v", err, w)
				}
			}
			for _, n := range tc.names {
				if !strings.Contains(err.Error(), n) {
					t.Errorf("error %q does not mention %q", err, n)
				}
			}
		})
	}
}

func TestSpaceHostname(t *testing.T) {
	s, err := NewSpace([]ingest.TaskOptions{
		{Targets: []string{"8.8.8.8", "8.8.4.4"}, Ports: []ingest.PortSpec{{Ports: "443"}}, Hostnames: map[string]string{"8.8.8.8": "dns.example"}},
		{Targets: []string{"8.8.8.8"}, Ports: []ingest.PortSpec{{Ports: "853"}}, Hostnames: map[string]string{"8.8.8.8": "dot.example"}},
	}, DefaultPolicy())
	if err != nil {
		t.Fatal(err)
	}
	ip := func(a string) uint32 { v, _ := IPv4(netip.MustParseAddr(a)); return v }
	for _, tc := range []struct {
		ip      string
		entries []int
		want    string
	}{
		{"8.8.8.8", []int{0}, "dns.example"},
		{"8.8.8.8", []int{1}, "dot.example"},
		{"8.8.8.8", []int{1, 0}, "dot.example"},
		{"8.8.4.4", []int{0}, ""},
		{"8.8.8.8", nil, ""},
	} {
		if got := s.Hostname(ip(tc.ip), tc.entries); got != tc.want {
			t.Errorf("Hostname(%s, %v) = %q, want %q", tc.ip, tc.entries, got, tc.want)
		}
	}
}

func TestNewSpacePartlyExcluded(t *testing.T) {
	// a block with some allowed targets is fine; the excluded part is counted
	s, err := NewSpace([]ingest.TaskOptions{{Targets: []string{"127.0.0.1", "8.8.8.8"}, Ports: []ingest.PortSpec{{Ports: "53"}}}}, DefaultPolicy())
	if err != nil {
		t.Fatal(err)
	}
	if s.Size() != 1 || s.Excluded() != 1 {
		t.Errorf("Size %d Excluded %d, want 1 and 1", s.Size(), s.Excluded())
	}
	if a, port, _ := s.At(0); FormatIP(a) != "8.8.8.8" || port != 53 {
		t.Errorf("At(0) = %s:%d", FormatIP(a), port)
	}
}

func BenchmarkSpaceAt(b *testing.B) {
	s, err := NewSpace([]ingest.TaskOptions{
		{Targets: []string{"198.18.0.0/16", "198.19.0.0/20"}, Ports: []ingest.PortSpec{{Ports: "1-1024"}, {Ports: "8080"}}},
		{Targets: []string{"198.19.128.0/24"}, Ports: []ingest.PortSpec{{Ports: "22"}, {Ports: "443"}, {Ports: "8000-9000"}}},
	}, testPolicy(b))
	if err != nil {
		b.Fatal(err)
	}
	n := s.Size()
	b.ReportAllocs()
	var sink uint32
	for i := 0; b.Loop(); i++ {
		a, port, e := s.At(uint64(i) * 2654435761 % n)
		sink += a + uint32(port) + uint32(e)
	}
	_ = sink
}
