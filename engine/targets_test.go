package engine

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"strings"
	"testing"
)

func ip(t testing.TB, s string) uint32 {
	t.Helper()
	v, ok := IPv4(netip.MustParseAddr(s))
	if !ok {
		t.Fatalf("%s is not IPv4", s)
	}
	return v
}

func TestParseTargetsValid(t *testing.T) {
	for _, tc := range []struct {
		specs []string
		want  string // IPSet.String()
		size  uint64
	}{
		{[]string{"1.2.3.4"}, "1.2.3.4", 1},
		{[]string{" 1.2.3.4 "}, "1.2.3.4", 1},
		{[]string{"198.18.0.0/16"}, "198.18.0.0-198.18.255.255", 65536},
		{[]string{"198.18.3.7/24"}, "198.18.3.0-198.18.3.255", 256}, // host bits ignored
		{[]string{"1.2.3.4-1.2.3.9"}, "1.2.3.4-1.2.3.9", 6},
		{[]string{"1.2.3.4 - 1.2.3.4"}, "1.2.3.4", 1},
		{[]string{"0.0.0.0/0"}, "0.0.0.0-255.255.255.255", 1 << 32},
		{[]string{"1.2.3.4/32", "1.2.3.5", "1.2.3.0/30"}, "1.2.3.0-1.2.3.5", 6}, // merged
		{[]string{"10.0.0.5", "10.0.0.1"}, "10.0.0.1,10.0.0.5", 2},
		{[]string{"::ffff:1.2.3.4"}, "1.2.3.4", 1},
		{[]string{"::ffff:1.2.3.0/120"}, "1.2.3.0-1.2.3.255", 256},
	} {
		set, err := ParseTargets(tc.specs)
		if err != nil {
			t.Errorf("ParseTargets(%q): %v", tc.specs, err)
			continue
		}
		if got := set.String(); got != tc.want || set.Size() != tc.size {
			t.Errorf("ParseTargets(%q) = %s (size %d), want %s (size %d)", tc.specs, got, set.Size(), tc.want, tc.size)
		}
	}
}

func TestParseTargetsErrors(t *testing.T) {
	for _, tc := range []struct {
		spec string
		want error
	}{
		{"", ErrTarget},
		{"   ", ErrTarget},
		{"example.com", ErrHostname},
		{"scanme.example.org.", ErrHostname},
		{"localhost", ErrHostname},
		{"::1", ErrIPv6},
		{"2001:db8::/32", ErrIPv6},
		{"fe80::1%eth0", ErrIPv6},
		{"1.2.3.4-2001:db8::1", ErrIPv6},
		{"1.2.3.9-1.2.3.4", ErrTarget},
		{"1.2.3.256", ErrTarget},
		{"1.2.3", ErrTarget},
		{"1.2.3.0/33", ErrTarget},
		{"1.2.3.0/", ErrTarget},
		{"foo bar", ErrTarget},
		{"1.2.3.4-", ErrTarget},
		{"-host.example", ErrTarget},
	} {
		_, err := ParseTargets([]string{"8.8.8.8", tc.spec})
		if !errors.Is(err, tc.want) {
			t.Errorf("ParseTargets(%q) error = %v, want %v", tc.spec, err, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), "targets[1]") || !strings.Contains(err.Error(), "\""+tc.spec+"\"") {
			t.Errorf("error %q does not name targets[1] %q", err, tc.spec)
		}
	}
	if _, err := ParseTargets(nil); !errors.Is(err, ErrEmptyTargets) {
		t.Errorf("ParseTargets(nil) error = %v, want ErrEmptyTargets", err)
	}
	// every bad spec is reported
	_, err := ParseTargets([]string{"a.example", "1.2.3.4", "::1"})
	if !errors.Is(err, ErrHostname) || !errors.Is(err, ErrIPv6) {
		t.Errorf("joined error = %v, want both ErrHostname and ErrIPv6", err)
	}
	if !strings.Contains(err.Error(), "targets[0]") || !strings.Contains(err.Error(), "targets[2]") {
		t.Errorf("joined error %q does not name both specs", err)
	}
}

// expand lists a set's addresses the slow way.
func expand(s IPSet) []uint32 {
	var out []uint32
	for _, r := range s.Ranges() {
		for a := uint64(r.First); a <= uint64(r.Last); a++ {
			out = append(out, uint32(a))
		}
	}
	return out
}

func TestIPSet(t *testing.T) {
	const max32 = ^uint32(0)
	s := NewIPSet(Range{10, 20}, Range{21, 25}, Range{5, 7}, Range{100, 90} /* empty */, Range{max32 - 2, max32}, Range{6, 12})
	if got, want := s.String(), "0.0.0.5-0.0.0.25,255.255.255.253-255.255.255.255"; got != want {
		t.Fatalf("NewIPSet = %s, want %s", got, want)
	}
	if s.Size() != 21+3 {
		t.Fatalf("Size = %d, want 24", s.Size())
	}
	all := expand(s)
	for i, a := range all {
		if got := s.At(uint64(i)); got != a {
			t.Fatalf("At(%d) = %d, want %d", i, got, a)
		}
	}
	for _, a := range []uint32{0, 4, 26, 1000, max32 - 3} {
		if s.Contains(a) {
			t.Errorf("Contains(%d) = true", a)
		}
	}
	for _, a := range all {
		if !s.Contains(a) {
			t.Errorf("Contains(%d) = false", a)
		}
	}
	if (IPSet{}).Contains(0) || (IPSet{}).Size() != 0 {
		t.Error("zero IPSet is not empty")
	}
	whole := NewIPSet(Range{0, max32})
	if whole.Size() != 1<<32 || whole.At(1<<32-1) != max32 {
		t.Error("whole space wrong")
	}
}

func TestIPSetSubtract(t *testing.T) {
	const max32 = ^uint32(0)
	for _, tc := range []struct {
		a, b []Range
		want string
	}{
		{[]Range{{10, 20}}, []Range{{12, 14}}, "0.0.0.10-0.0.0.11,0.0.0.15-0.0.0.20"},
		{[]Range{{10, 20}}, []Range{{0, 10}, {20, 30}}, "0.0.0.11-0.0.0.19"},
		{[]Range{{10, 20}}, []Range{{0, 30}}, ""},
		{[]Range{{10, 20}, {30, 40}}, []Range{{15, 35}}, "0.0.0.10-0.0.0.14,0.0.0.36-0.0.0.40"},
		{[]Range{{10, 20}}, nil, "0.0.0.10-0.0.0.20"},
		{[]Range{{0, max32}}, []Range{{0, 0}, {max32, max32}}, "0.0.0.1-255.255.255.254"},
		{[]Range{{0, max32}}, []Range{{5, max32}}, "0.0.0.0-0.0.0.4"},
		{[]Range{{1, 2}, {4, 5}, {7, 8}}, []Range{{2, 7}}, "0.0.0.1,0.0.0.8"},
	} {
		a, b := NewIPSet(tc.a...), NewIPSet(tc.b...)
		got := a.Subtract(b)
		if got.String() != tc.want {
			t.Errorf("%s minus %s = %s, want %s", a, b, got, tc.want)
		}
		if got.Intersects(b) {
			t.Errorf("%s minus %s still intersects it", a, b)
		}
		if got.Size()+countCommon(a, b) != a.Size() {
			t.Errorf("%s minus %s: sizes do not add up", a, b)
		}
	}
}

// countCommon sums the pairwise overlaps of two sets' ranges.
func countCommon(a, b IPSet) uint64 {
	var n uint64
	for _, x := range a.Ranges() {
		for _, y := range b.Ranges() {
			lo, hi := max(x.First, y.First), min(x.Last, y.Last)
			if lo <= hi {
				n += uint64(hi-lo) + 1
			}
		}
	}
	return n
}

type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(_ context.Context, network, host string) ([]netip.Addr, error) {
	if network != "ip4" {
		return nil, errors.New("want ip4 lookups")
	}
	addrs, ok := f[strings.TrimSuffix(strings.ToLower(host), ".")] // DNS names are case-insensitive
	if !ok {
		return nil, errors.New("no such host")
	}
	return addrs, nil
}

func TestResolveTargets(t *testing.T) {
	r := fakeResolver{
		"a.example":      {netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.1")},
		"v6.example":     {netip.MustParseAddr("2001:db8::1")},
		"mapped.example": {netip.MustParseAddr("::ffff:198.18.0.9")},
	}
	got, names, err := ResolveTargets(context.Background(), r, []string{"198.18.1.0/24", "a.example", "1.2.3.4-1.2.3.5", "Mapped.Example.", "a.example"})
	if err != nil {
		t.Fatal(err)
	}
	wantNames := map[string]string{"198.18.0.1": "a.example", "198.18.0.2": "a.example", "198.18.0.9": "mapped.example"}
	if !maps.Equal(names, wantNames) {
		t.Errorf("names = %v, want %v", names, wantNames)
	}
	want := []string{"198.18.1.0/24", "198.18.0.1", "198.18.0.2", "1.2.3.4-1.2.3.5", "198.18.0.9", "198.18.0.1", "198.18.0.2"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("ResolveTargets = %q, want %q", got, want)
	}
	if _, err := ParseTargets(got); err != nil {
		t.Errorf("resolved targets do not parse: %v", err)
	}

	_, _, err = ResolveTargets(context.Background(), r, []string{"v6.example", "missing.example", "1.2.3.4"})
	if !errors.Is(err, ErrNoIPv4) {
		t.Errorf("v6-only name: error = %v, want ErrNoIPv4", err)
	}
	if err == nil || !strings.Contains(err.Error(), `"v6.example"`) || !strings.Contains(err.Error(), `"missing.example"`) {
		t.Errorf("error %v does not name both failing hosts", err)
	}
}

func TestParsePorts(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want PortRange
	}{
		{"22", PortRange{22, 22}},
		{" 8000-8100 ", PortRange{8000, 8100}},
		{"1-65535", PortRange{1, 65535}},
		{"443 - 443", PortRange{443, 443}},
	} {
		got, err := ParsePorts(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParsePorts(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "0", "65536", "-1", "80-", "-80", "90-80", "a", "22,80", "1.5", "+22", "80-90-100"} {
		if _, err := ParsePorts(in); !errors.Is(err, ErrPort) || !strings.Contains(err.Error(), in) {
			t.Errorf("ParsePorts(%q) error = %v, want ErrPort naming the input", in, err)
		}
	}
	if r := (PortRange{80, 89}); r.Size() != 10 || !r.Contains(80) || !r.Contains(89) || r.Contains(90) || r.String() != "80-89" {
		t.Errorf("PortRange helpers wrong for %v", r)
	}
}

func BenchmarkIPSetAt(b *testing.B) {
	var rs []Range
	for i := range uint32(1000) {
		rs = append(rs, Range{i * 1000, i*1000 + 499})
	}
	s := NewIPSet(rs...)
	n := s.Size()
	b.ReportAllocs()
	var sink uint32
	for i := 0; b.Loop(); i++ {
		sink += s.At(uint64(i*7919) % n)
	}
	_ = sink
}
