package engine

import "testing"

// Batches hold about batchWindow of the rate, never fewer than
// DefaultBatch nor more than maxRateBatch; unlimited scans use DefaultBatch.
func TestBatchFor(t *testing.T) {
	for rate, want := range map[int]int{
		0: DefaultBatch, 1000: DefaultBatch, 6400: DefaultBatch, 10_000: 100, 50_000: 500,
		100_000: 1000, 300_000: maxRateBatch, 1_000_000_000: maxRateBatch,
	} {
		if got := batchFor(rate); got != want {
			t.Errorf("batchFor(%d) = %d, want %d", rate, got, want)
		}
	}
}
