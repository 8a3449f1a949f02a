package kafkabus

import (
	"math/rand/v2"
	"testing"
)

func TestPartitionAcks(t *testing.T) {
	type step struct {
		fetch  []int64
		ack    int64
		ok     bool
		wantAt int64 // position after the step
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"nothing acked", []step{{fetch: []int64{0, 1, 2}, ack: -1, wantAt: -1}}},
		{"in order", []step{
			{fetch: []int64{0, 1, 2}, ack: 0, ok: true, wantAt: 1},
			{ack: 1, ok: true, wantAt: 2},
			{ack: 2, ok: true, wantAt: 3},
		}},
		{"gap holds the position", []step{
			{fetch: []int64{10, 11, 12, 13}, ack: 12, ok: true, wantAt: -1},
			{ack: 10, ok: true, wantAt: 11},
			{ack: 13, ok: true, wantAt: 11},
			{ack: 11, ok: true, wantAt: 14},
		}},
		{"offsets with holes (compaction, txn markers)", []step{
			{fetch: []int64{3, 7, 20}, ack: 7, ok: true, wantAt: -1},
			{ack: 3, ok: true, wantAt: 8},
			{ack: 20, ok: true, wantAt: 21},
		}},
		{"double and unknown acks", []step{
			{fetch: []int64{0, 1}, ack: 1, ok: true, wantAt: -1},
			{ack: 1, ok: false, wantAt: -1},
			{ack: 5, ok: false, wantAt: -1},
			{ack: 0, ok: true, wantAt: 2},
			{ack: 0, ok: false, wantAt: 2},
		}},
		{"redelivered after a rebalance", []step{
			{fetch: []int64{0, 1, 2}, ack: 2, ok: true, wantAt: -1},
			// The partition comes back from committed offset 0: 0..2 again;
			// 2 was acked but is pending again, as it was handed out again.
			{fetch: []int64{0, 1, 2}, ack: 0, ok: true, wantAt: 1},
			{ack: 1, ok: true, wantAt: 2},
			{ack: 2, ok: true, wantAt: 3},
		}},
		{"redelivered below the position", []step{
			{fetch: []int64{5, 6}, ack: 5, ok: true, wantAt: 6},
			{ack: 6, ok: true, wantAt: 7},
			{fetch: []int64{4}, ack: -1, wantAt: 4},
			{ack: 4, ok: true, wantAt: 7},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPartitionAcks()
			for i, s := range tc.steps {
				for _, off := range s.fetch {
					p.fetched(off)
				}
				if s.ack >= 0 {
					if ok := p.ack(s.ack); ok != s.ok {
						t.Fatalf("step %d: ack(%d) = %v, want %v", i, s.ack, ok, s.ok)
					}
				}
				if got := p.position(); got != s.wantAt {
					t.Fatalf("step %d: position = %d, want %d (pending %v)", i, got, s.wantAt, p.pending)
				}
			}
		})
	}
}

// TestPartitionAcksRandomOrder checks the invariant against a model: after
// any sequence of acks, the position is the lowest unacked offset.
func TestPartitionAcksRandomOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		n := 1 + r.IntN(64)
		p := newPartitionAcks()
		for off := range n {
			p.fetched(int64(off))
		}
		acked := make([]bool, n)
		for _, i := range r.Perm(n) {
			if !p.ack(int64(i)) {
				t.Fatalf("round %d: ack(%d) refused", round, i)
			}
			acked[i] = true
			want := int64(0)
			for want < int64(n) && acked[want] {
				want++
			}
			if want == 0 {
				want = -1
			}
			if got := p.position(); got != want {
				t.Fatalf("round %d: position %d, want %d", round, got, want)
			}
		}
		if len(p.pending) != 0 {
			t.Fatalf("round %d: %d offsets still pending after every ack", round, len(p.pending))
		}
	}
}

func BenchmarkPartitionAcks(b *testing.B) {
	b.ReportAllocs()
	p := newPartitionAcks()
	const window = 64 // deliveries in flight, acked out of order
	for off := range int64(window) {
		p.fetched(off)
	}
	next := int64(window)
	for i := 0; b.Loop(); i++ {
		// Ack the second oldest, then the oldest: out of order by one.
		a, c := p.pending[1].offset, p.pending[0].offset
		p.ack(a)
		p.ack(c)
		p.fetched(next)
		p.fetched(next + 1)
		next += 2
		_ = p.position()
	}
}
