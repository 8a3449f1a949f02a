package kafkabus

import "slices"

// partitionAcks tracks one partition's deliveries between fetch and commit.
// Kafka keeps one committed offset per partition and group, meaning
// "everything below was handled", while workers ack in any order: so the
// commit position is the lowest offset handed out and not yet acked, and an
// ack above a gap waits in pending until the gap is acked.
type partitionAcks struct {
	// pending holds the handed-out offsets not yet below the commit
	// position, ascending; the first one is never acked.
	pending []pendingOffset
	// done is one past the highest offset dropped from the front of
	// pending (acked with everything before it); -1 before any.
	done int64
	// committed is the last position the broker acknowledged; -1 before any.
	committed int64
}

type pendingOffset struct {
	offset int64
	acked  bool
}

func newPartitionAcks() *partitionAcks { return &partitionAcks{done: -1, committed: -1} }

func (p *partitionAcks) search(off int64) (int, bool) {
	return slices.BinarySearchFunc(p.pending, off, func(e pendingOffset, t int64) int {
		switch {
		case e.offset < t:
			return -1
		case e.offset > t:
			return 1
		}
		return 0
	})
}

// fetched records that off was handed out. Kafka hands a partition's
// offsets out in ascending order, so this is an append except after a
// rebalance gives back a partition from its committed offset: then an offset
// may be handed out again and is pending again.
func (p *partitionAcks) fetched(off int64) {
	if n := len(p.pending); n == 0 || p.pending[n-1].offset < off {
		p.pending = append(p.pending, pendingOffset{offset: off})
		return
	}
	i, found := p.search(off)
	if found {
		p.pending[i].acked = false
		return
	}
	p.pending = slices.Insert(p.pending, i, pendingOffset{offset: off})
}

// ack marks off handled; false if off is not pending (never handed out, or
// acked already).
func (p *partitionAcks) ack(off int64) bool {
	i, found := p.search(off)
	if !found || p.pending[i].acked {
		return false
	}
	p.pending[i].acked = true
	n := 0
	for n < len(p.pending) && p.pending[n].acked {
		p.done = max(p.done, p.pending[n].offset+1)
		n++
	}
	if n > 0 {
		// Shift rather than reslice so the array does not creep forward
		// and grow without bound on a long-lived subscription.
		p.pending = p.pending[:copy(p.pending, p.pending[n:])]
	}
	return true
}

// position is the offset to commit: the lowest pending one, or one past
// everything acked; -1 when nothing was acked yet.
func (p *partitionAcks) position() int64 {
	if len(p.pending) > 0 {
		if p.done < 0 {
			return -1
		}
		return min(p.pending[0].offset, p.done)
	}
	return p.done
}
