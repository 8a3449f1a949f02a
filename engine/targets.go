// Package engine owns a scan's target space (addresses, ports, exclusions),
// the randomized order it is walked in (a seeded permutation split into
// shards), rate control, the Transport seam that sends probes and hands back
// replies, the scan loop, and the scanner role that runs jobs from the bus.
//
// IPv4 only for now. IPv6 targets are rejected with ErrIPv6; when they come,
// they get their own set type (128-bit ranges) and probe type next to these,
// because a uint32 address keeps the IPv4 hot path allocation-free.
package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

var (
	// ErrEmptyTargets: a job or options block has no targets.
	ErrEmptyTargets = errors.New("no targets")
	// ErrOutsidePolicy: every target of an options block is excluded.
	ErrOutsidePolicy = errors.New("targets excluded by policy")
	// ErrPort: a port or port range is malformed or out of 1..65535.
	ErrPort = errors.New("invalid port")
	// ErrHostname: a target is a hostname; resolve it (ResolveTargets) first.
	ErrHostname = errors.New("hostname target must be resolved first")
	// ErrIPv6: IPv6 targets are not supported yet.
	ErrIPv6 = errors.New("ipv6 targets are not supported yet")
	// ErrTarget: a target is neither an address, a range, a CIDR nor a hostname.
	ErrTarget = errors.New("invalid target")
	// ErrNoIPv4: a hostname resolved to no IPv4 address.
	ErrNoIPv4 = errors.New("no ipv4 address")
)

// Range is an inclusive range of IPv4 addresses (host byte order).
type Range struct{ First, Last uint32 }

// Size is the number of addresses in r.
func (r Range) Size() uint64 { return uint64(r.Last) - uint64(r.First) + 1 }

func (r Range) String() string {
	if r.First == r.Last {
		return FormatIP(r.First)
	}
	return FormatIP(r.First) + "-" + FormatIP(r.Last)
}

// IPSet is a set of IPv4 addresses held as sorted, merged, disjoint ranges
// with prefix sums, so the i-th address is a binary search away. The zero
// value is the empty set. IPSets are immutable.
type IPSet struct {
	ranges  []Range
	offsets []uint64 // offsets[k]: addresses in ranges[:k]
	size    uint64
}

// NewIPSet builds a set from ranges in any order, overlapping or not.
func NewIPSet(ranges ...Range) IPSet {
	rs := make([]Range, 0, len(ranges))
	for _, r := range ranges {
		if r.First <= r.Last {
			rs = append(rs, r)
		}
	}
	slices.SortFunc(rs, func(a, b Range) int {
		switch {
		case a.First < b.First:
			return -1
		case a.First > b.First:
			return 1
		}
		return 0
	})
	merged := rs[:0]
	for _, r := range rs {
		if n := len(merged); n > 0 && uint64(r.First) <= uint64(merged[n-1].Last)+1 {
			merged[n-1].Last = max(merged[n-1].Last, r.Last)
			continue
		}
		merged = append(merged, r)
	}
	return fromSorted(merged)
}

// fromSorted indexes ranges that are already sorted, merged and disjoint.
func fromSorted(rs []Range) IPSet {
	if len(rs) == 0 {
		return IPSet{}
	}
	s := IPSet{ranges: rs, offsets: make([]uint64, len(rs))}
	for k, r := range rs {
		s.offsets[k] = s.size
		s.size += r.Size()
	}
	return s
}

// Size is the number of addresses in s.
func (s IPSet) Size() uint64 { return s.size }

// Ranges returns the set's ranges, sorted and disjoint. Do not modify.
func (s IPSet) Ranges() []Range { return s.ranges }

// Contains reports whether ip is in s.
func (s IPSet) Contains(ip uint32) bool {
	_, ok := s.indexOf(ip)
	return ok
}

// indexOf returns ip's position in s (the inverse of At).
func (s IPSet) indexOf(ip uint32) (uint64, bool) {
	lo, hi := 0, len(s.ranges)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		switch r := s.ranges[m]; {
		case ip < r.First:
			hi = m
		case ip > r.Last:
			lo = m + 1
		default:
			return s.offsets[m] + uint64(ip-r.First), true
		}
	}
	return 0, false
}

// At returns the i-th address of s in ascending order; i must be < Size().
func (s IPSet) At(i uint64) uint32 {
	lo := lastAtMost(s.offsets, i)
	return s.ranges[lo].First + uint32(i-s.offsets[lo])
}

// lastAtMost returns the index of the last of the ascending offsets that is
// <= i (offsets[0] is 0). The binary search is branch-free: offsets stay
// below 2^63, so offsets[m]-i-1 wraps to a set top bit exactly when
// offsets[m] <= i, and a random index costs no mispredicted branches.
func lastAtMost(offsets []uint64, i uint64) int {
	lo, n := 0, len(offsets)
	for n > 1 {
		half := n >> 1
		le := int((offsets[lo+half] - i - 1) >> 63)
		lo += half & -le
		n -= half
	}
	return lo
}

// Union returns the addresses in s or o.
func (s IPSet) Union(o IPSet) IPSet {
	return NewIPSet(append(slices.Clip(s.ranges), o.ranges...)...)
}

// Subtract returns the addresses of s that are not in o.
func (s IPSet) Subtract(o IPSet) IPSet {
	var out []Range
	k := 0
	for _, r := range s.ranges {
		first := uint64(r.First)
		last := uint64(r.Last)
		for k < len(o.ranges) && uint64(o.ranges[k].Last) < first {
			k++
		}
		for j := k; j < len(o.ranges) && uint64(o.ranges[j].First) <= last; j++ {
			x := o.ranges[j]
			if uint64(x.First) > first {
				out = append(out, Range{uint32(first), x.First - 1})
			}
			first = uint64(x.Last) + 1
			if first > last {
				break
			}
		}
		if first <= last {
			out = append(out, Range{uint32(first), uint32(last)})
		}
	}
	return fromSorted(out)
}

// Intersects reports whether s and o share an address.
func (s IPSet) Intersects(o IPSet) bool {
	i, j := 0, 0
	for i < len(s.ranges) && j < len(o.ranges) {
		a, b := s.ranges[i], o.ranges[j]
		switch {
		case a.Last < b.First:
			i++
		case b.Last < a.First:
			j++
		default:
			return true
		}
	}
	return false
}

func (s IPSet) String() string {
	parts := make([]string, len(s.ranges))
	for i, r := range s.ranges {
		parts[i] = r.String()
	}
	return strings.Join(parts, ",")
}

// IPv4 converts between netip and the uint32 form used by the hot path.
func IPv4(a netip.Addr) (uint32, bool) {
	a = a.Unmap()
	if !a.Is4() {
		return 0, false
	}
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]), true
}

// Addr returns ip as a netip.Addr.
func Addr(ip uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(ip >> 24), byte(ip >> 16), byte(ip >> 8), byte(ip)})
}

// FormatIP returns ip in dotted-quad form.
func FormatIP(ip uint32) string { return Addr(ip).String() }

// ParseTargets parses IPv4 literals ("1.2.3.4"), inclusive ranges
// ("1.2.3.4-1.2.3.9") and CIDRs ("198.18.0.0/16", host bits ignored) into
// one set. Hostnames fail with ErrHostname (resolve them once with
// ResolveTargets), IPv6 with ErrIPv6, anything else with ErrTarget; every
// bad spec is reported, each by its position and text.
func ParseTargets(specs []string) (IPSet, error) {
	if len(specs) == 0 {
		return IPSet{}, ErrEmptyTargets
	}
	ranges := make([]Range, 0, len(specs))
	var errs []error
	for i, spec := range specs {
		r, err := ParseTarget(spec)
		if err != nil {
			errs = append(errs, fmt.Errorf("targets[%d]: %w", i, err))
			continue
		}
		ranges = append(ranges, r)
	}
	if len(errs) > 0 {
		return IPSet{}, errors.Join(errs...)
	}
	return NewIPSet(ranges...), nil
}

// ParseTarget parses one target spec (see ParseTargets); the error names it.
func ParseTarget(spec string) (Range, error) {
	s := strings.TrimSpace(spec)
	if s == "" {
		return Range{}, fmt.Errorf("target %q: empty: %w", spec, ErrTarget)
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return Range{}, fmt.Errorf("target %q: %w", spec, ErrTarget)
		}
		if p.Addr().Is4In6() {
			bits := p.Bits() - 96
			if bits < 0 {
				return Range{}, fmt.Errorf("target %q: %w", spec, ErrIPv6)
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), bits)
		}
		first, ok := IPv4(p.Masked().Addr())
		if !ok {
			return Range{}, fmt.Errorf("target %q: %w", spec, ErrIPv6)
		}
		hostBits := 32 - p.Bits()
		return Range{first, first | uint32(uint64(1)<<hostBits-1)}, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		ip, ok := IPv4(a)
		if !ok {
			return Range{}, fmt.Errorf("target %q: %w", spec, ErrIPv6)
		}
		return Range{ip, ip}, nil
	}
	if lo, hi, ok := strings.Cut(s, "-"); ok {
		a, errA := netip.ParseAddr(strings.TrimSpace(lo))
		b, errB := netip.ParseAddr(strings.TrimSpace(hi))
		if errA == nil && errB == nil {
			first, okA := IPv4(a)
			last, okB := IPv4(b)
			if !okA || !okB {
				return Range{}, fmt.Errorf("target %q: %w", spec, ErrIPv6)
			}
			if first > last {
				return Range{}, fmt.Errorf("target %q: range ends before it starts: %w", spec, ErrTarget)
			}
			return Range{first, last}, nil
		}
	}
	if IsHostname(s) {
		return Range{}, fmt.Errorf("target %q: %w", spec, ErrHostname)
	}
	return Range{}, fmt.Errorf("target %q: %w", spec, ErrTarget)
}

// IsHostname reports whether s is a DNS name (letters, digits, '-', '_' in
// dot-separated labels, an optional trailing dot) with a non-numeric last
// label, so malformed addresses such as "1.2.3.256" are not taken for names.
func IsHostname(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	last := labels[len(labels)-1]
	_, err := strconv.ParseUint(last, 10, 64)
	return err != nil
}

// Resolver looks names up; *net.Resolver satisfies it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// ResolveTargets replaces every hostname in specs by its IPv4 addresses,
// resolved once here so that every scanner shard sees the same targets.
// Literals, ranges and CIDRs are kept as they are (and not validated: that
// is ParseTargets' job). A name without an IPv4 address is an error; all
// failures are reported, each naming its spec. names maps each address a
// hostname resolved to back to that name (the first, when several share
// it), so that probes can name the server (TLS SNI, certificate checks).
func ResolveTargets(ctx context.Context, r Resolver, specs []string) (targets []string, names map[string]string, err error) {
	out := make([]string, 0, len(specs))
	var errs []error
	for i, spec := range specs {
		host := strings.TrimSpace(spec)
		if _, err := ParseTarget(host); !errors.Is(err, ErrHostname) {
			out = append(out, spec)
			continue
		}
		addrs, err := r.LookupNetIP(ctx, "ip4", host)
		if err != nil {
			errs = append(errs, fmt.Errorf("targets[%d]: cannot resolve %q: %w", i, host, err))
			continue
		}
		n := len(out)
		for _, a := range addrs {
			if ip, ok := IPv4(a); ok {
				s := FormatIP(ip)
				if !slices.Contains(out[n:], s) {
					out = append(out, s)
				}
				if _, seen := names[s]; !seen {
					if names == nil {
						names = map[string]string{}
					}
					names[s] = strings.TrimSuffix(strings.ToLower(host), ".")
				}
			}
		}
		if len(out) == n {
			errs = append(errs, fmt.Errorf("targets[%d]: cannot resolve %q: %w", i, host, ErrNoIPv4))
		}
	}
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	return out, names, nil
}

// PortRange is an inclusive range of ports.
type PortRange struct{ First, Last uint16 }

// Size is the number of ports in r.
func (r PortRange) Size() uint64 { return uint64(r.Last) - uint64(r.First) + 1 }

// Contains reports whether port is in r.
func (r PortRange) Contains(port uint16) bool { return port >= r.First && port <= r.Last }

func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return strconv.Itoa(int(r.First)) + "-" + strconv.Itoa(int(r.Last))
}

// ParsePorts parses "22" or "8000-8100" (1..65535, first <= last).
func ParsePorts(s string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(strings.TrimSpace(s), "-")
	first, err := parsePort(lo)
	if err != nil {
		return PortRange{}, fmt.Errorf("ports %q: %w", s, err)
	}
	last := first
	if isRange {
		if last, err = parsePort(hi); err != nil {
			return PortRange{}, fmt.Errorf("ports %q: %w", s, err)
		}
		if first > last {
			return PortRange{}, fmt.Errorf("ports %q: range ends before it starts: %w", s, ErrPort)
		}
	}
	return PortRange{first, last}, nil
}

func parsePort(s string) (uint16, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty: %w", ErrPort)
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not in 1..65535: %w", s, ErrPort)
	}
	return uint16(n), nil
}
