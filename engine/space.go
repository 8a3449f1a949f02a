package engine

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"

	"trawl/ingest"
)

// ErrSample: a port entry's sample is negative.
var ErrSample = errors.New("invalid sample")

// ErrSpaceTooLarge: a job's ip×port space does not fit the permutation.
var ErrSpaceTooLarge = errors.New("target space too large")

// maxSpace bounds a job's space so that the permutation's prime fits 63 bits.
const maxSpace = 1 << 62

// Entry is one port entry of a job: options block Block, entry Index in its
// ports list. Its global number is its position in Space.Entries.
type Entry struct {
	Block   int
	Index   int
	Ports   PortRange
	Sample  int // stop after this many open ports; 0 = no limit
	Modules []string
}

// segment is one block's allowed targets × one port entry: a contiguous run
// of the space's indexes.
type segment struct {
	ips    *IPSet
	first  uint16
	nports uint64
	entry  int
}

// Space is a job's ip×port space: the concatenation, for each options block,
// of (allowed targets) × (each port entry's range). Index i in [0, Size())
// names one probe; the permutation walks the indexes in random order.
type Space struct {
	blocks   []IPSet // allowed targets of each options block
	entries  []Entry
	segments []segment
	offsets  []uint64 // offsets[k]: indexes before segments[k]
	size     uint64
	excluded uint64
	overlaps bool                // some ip:port lies in two entries
	names    []map[uint32]string // per block: hostnames the task gave for its addresses
}

// NewSpace validates a job's options blocks against the policy and builds
// its space. It reports every problem at once (errors.Join), each naming its
// place: options[i].targets[j], options[i].ports[k]. A block whose targets are
// all excluded fails with ErrOutsidePolicy naming the exclusions that apply.
func NewSpace(opts []ingest.TaskOptions, p Policy) (*Space, error) {
	if len(opts) == 0 {
		return nil, fmt.Errorf("options: %w", ErrEmptyTargets)
	}
	s := &Space{}
	var errs []error
	for i, o := range opts {
		allowed, blockErrs := buildBlock(i, o, p, &s.excluded)
		errs = append(errs, blockErrs...)
		if len(o.Ports) == 0 {
			errs = append(errs, fmt.Errorf("options[%d].ports: none given: %w", i, ErrPort))
		}
		for k, ps := range o.Ports {
			pr, err := ParsePorts(ps.Ports)
			if err != nil {
				errs = append(errs, fmt.Errorf("options[%d].ports[%d]: %w", i, k, err))
				continue
			}
			if ps.Sample < 0 {
				errs = append(errs, fmt.Errorf("options[%d].ports[%d]: sample %d is negative: %w", i, k, ps.Sample, ErrSample))
				continue
			}
			s.entries = append(s.entries, Entry{
				Block: i, Index: k, Ports: pr, Sample: ps.Sample,
				Modules: append([]string(nil), ps.Modules...),
			})
		}
		s.blocks = append(s.blocks, allowed)
		names, nameErrs := blockNames(i, o.Hostnames)
		errs = append(errs, nameErrs...)
		s.names = append(s.names, names)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for e, en := range s.entries {
		n := s.blocks[en.Block].Size() * en.Ports.Size()
		if s.size+n > maxSpace {
			return nil, fmt.Errorf("options: more than %d ip:port pairs: %w", uint64(maxSpace), ErrSpaceTooLarge)
		}
		s.segments = append(s.segments, segment{
			ips: &s.blocks[en.Block], first: en.Ports.First, nports: en.Ports.Size(), entry: e,
		})
		s.offsets = append(s.offsets, s.size)
		s.size += n
	}
	s.overlaps = s.findOverlaps()
	return s, nil
}

// blockNames parses a block's address → hostname map.
func blockNames(i int, hostnames map[string]string) (map[uint32]string, []error) {
	if len(hostnames) == 0 {
		return nil, nil
	}
	names := make(map[uint32]string, len(hostnames))
	var errs []error
	for addr, name := range hostnames {
		a, err := netip.ParseAddr(addr)
		ip, ok := IPv4(a)
		if err != nil || !ok || name == "" {
			errs = append(errs, fmt.Errorf("options[%d].hostnames: %q → %q is not an IPv4 address and a name: %w", i, addr, name, ErrTarget))
			continue
		}
		names[ip] = name
	}
	return names, errs
}

// Hostname is the name the task gave for ip in the blocks of entries, or "".
func (s *Space) Hostname(ip uint32, entries []int) string {
	for _, e := range entries {
		if name, ok := s.names[s.entries[e].Block][ip]; ok {
			return name
		}
	}
	return ""
}

// buildBlock parses one block's targets and applies the policy.
func buildBlock(i int, o ingest.TaskOptions, p Policy, excluded *uint64) (IPSet, []error) {
	if len(o.Targets) == 0 {
		return IPSet{}, []error{fmt.Errorf("options[%d].targets: %w", i, ErrEmptyTargets)}
	}
	var errs []error
	ranges := make([]Range, 0, len(o.Targets))
	for j, spec := range o.Targets {
		r, err := ParseTarget(spec)
		if err != nil {
			errs = append(errs, fmt.Errorf("options[%d].targets[%d]: %w", i, j, err))
			continue
		}
		ranges = append(ranges, r)
	}
	if len(errs) > 0 {
		return IPSet{}, errs
	}
	allowed, n := p.Apply(NewIPSet(ranges...))
	*excluded += n
	if allowed.Size() > 0 {
		return allowed, nil
	}
	why := make([]string, len(ranges))
	for j, r := range ranges {
		why[j] = fmt.Sprintf("targets[%d] %q by %s", j, o.Targets[j], strings.Join(p.Reasons(NewIPSet(r)), ", "))
	}
	return IPSet{}, []error{fmt.Errorf("options[%d].targets: all excluded (%s): %w", i, strings.Join(why, "; "), ErrOutsidePolicy)}
}

func (s *Space) findOverlaps() bool {
	for a := range s.entries {
		for b := a + 1; b < len(s.entries); b++ {
			ea, eb := s.entries[a], s.entries[b]
			if ea.Ports.First > eb.Ports.Last || eb.Ports.First > ea.Ports.Last {
				continue
			}
			if ea.Block == eb.Block || s.blocks[ea.Block].Intersects(s.blocks[eb.Block]) {
				return true
			}
		}
	}
	return false
}

// Size is the number of ip:port pairs (counted once per entry they are in).
func (s *Space) Size() uint64 { return s.size }

// Excluded is the number of target addresses the policy removed.
func (s *Space) Excluded() uint64 { return s.excluded }

// Entries returns the job's port entries in order. Do not modify.
func (s *Space) Entries() []Entry { return s.entries }

// Targets returns options block b's allowed targets.
func (s *Space) Targets(b int) IPSet { return s.blocks[b] }

// At maps index i (< Size()) to its probe and the global index of its entry.
func (s *Space) At(i uint64) (ip uint32, port uint16, entry int) {
	lo := lastAtMost(s.offsets, i)
	seg := &s.segments[lo]
	j := i - s.offsets[lo]
	return seg.ips.At(j / seg.nports), seg.first + uint16(j%seg.nports), seg.entry
}

// Match returns the entries containing ip:port, for attributing a reply.
func (s *Space) Match(ip uint32, port uint16) []int { return s.AppendMatch(nil, ip, port) }

// AppendMatch appends the entries containing ip:port to dst.
func (s *Space) AppendMatch(dst []int, ip uint32, port uint16) []int {
	for e := range s.entries {
		if s.contains(e, ip, port) {
			dst = append(dst, e)
		}
	}
	return dst
}

func (s *Space) contains(e int, ip uint32, port uint16) bool {
	en := &s.entries[e]
	return en.Ports.Contains(port) && s.blocks[en.Block].Contains(ip)
}

// skip reports whether the probe at an index of entry is not needed: a
// pair lying in several entries is considered once, at its first entry's
// index, and probed unless every entry holding it is full (its sample
// reached).
func (s *Space) skip(ip uint32, port uint16, entry int, full []atomic.Bool) bool {
	if !s.overlaps {
		return full[entry].Load()
	}
	for e := 0; e < entry; e++ {
		if s.contains(e, ip, port) {
			return true
		}
	}
	if !full[entry].Load() {
		return false
	}
	for e := entry + 1; e < len(s.entries); e++ {
		if !full[e].Load() && s.contains(e, ip, port) {
			return false
		}
	}
	return true
}
