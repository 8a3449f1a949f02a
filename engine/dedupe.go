package engine

import "sync/atomic"

// DefaultBitmapBytes caps the memory a scan spends on its per-index bitmaps
// (reported-open, and answered when it retries). A /8 × 1 port space needs
// 2 MiB per bitmap; the default admits spaces up to 2^28 pairs with retries
// (2^29 without), e.g. a /8 × 16 ports.
const DefaultBitmapBytes = 64 << 20

// DefaultDedupeWindow is how many distinct open ports a scan whose space
// exceeds the bitmap cap remembers for deduplication (about 20 MiB at most).
const DefaultDedupeWindow = 1 << 20

// bitmap is one bit per space index, safe for concurrent use: the reply
// handler sets bits while the send loop reads them.
type bitmap []atomic.Uint64

func newBitmap(n uint64) bitmap { return make(bitmap, (n+63)/64) }

// bitmapBytes is the memory of a bitmap over n indexes.
func bitmapBytes(n uint64) uint64 { return (n + 63) / 64 * 8 }

// set sets bit i and reports whether it was set before.
func (b bitmap) set(i uint64) bool {
	mask := uint64(1) << (i & 63)
	return b[i>>6].Or(mask)&mask != 0
}

func (b bitmap) has(i uint64) bool { return b[i>>6].Load()&(1<<(i&63)) != 0 }

// recentKeys remembers the last limit distinct keys (ip<<16|port) added:
// the bounded dedupe for spaces too large for a bitmap, as masscan and
// zmap's window do for multi-port scans. Its memory grows with the keys
// added, up to limit (about 20 bytes a key). It is not safe for concurrent
// use.
type recentKeys struct {
	limit int
	set   map[uint64]struct{}
	ring  []uint64 // insertion order; next overwrites the oldest once full
	next  int
}

func newRecentKeys(limit int) *recentKeys {
	return &recentKeys{limit: max(limit, 1), set: make(map[uint64]struct{})}
}

// add records k and reports whether it was new (not among the last limit).
func (r *recentKeys) add(k uint64) bool {
	if _, ok := r.set[k]; ok {
		return false
	}
	if len(r.ring) < r.limit {
		r.ring = append(r.ring, k)
	} else {
		delete(r.set, r.ring[r.next])
		r.ring[r.next] = k
		r.next = (r.next + 1) % r.limit
	}
	r.set[k] = struct{}{}
	return true
}

// openSet is the set of open ports a scan has reported. Exact (a bitmap
// over the space's indexes) when the space fits the memory cap; otherwise
// it remembers the last window distinct open ports, and an open port whose
// duplicate reply arrives after window newer ones (a retry pass over a huge
// space, a very late retransmission) is reported again. Downstream dedupes
// that too: a port event's record id is derived from job, ip and port.
type openSet struct {
	bits   bitmap
	window *recentKeys
}

func newOpenSet(size uint64, exact bool, window int) *openSet {
	if exact {
		return &openSet{bits: newBitmap(size)}
	}
	return &openSet{window: newRecentKeys(window)}
}

// add records the open port at space index idx (key ip<<16|port) and
// reports whether it is new.
func (o *openSet) add(idx, key uint64) bool {
	if o.bits != nil {
		return !o.bits.set(idx)
	}
	return o.window.add(key)
}

// indexIn returns the space index of ip:port within entry e (the inverse
// of At for that entry's segment), false if e does not hold ip:port.
func (s *Space) indexIn(e int, ip uint32, port uint16) (uint64, bool) {
	seg := &s.segments[e]
	if port < seg.first || uint64(port-seg.first) >= seg.nports {
		return 0, false
	}
	j, ok := seg.ips.indexOf(ip)
	if !ok {
		return 0, false
	}
	return s.offsets[e] + j*seg.nports + uint64(port-seg.first), true
}
