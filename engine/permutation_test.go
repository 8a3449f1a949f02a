package engine

import (
	"errors"
	"slices"
	"testing"
)

// walkShards runs every shard of perm and checks that together they yield
// each of 0..n-1 exactly once.
func walkShards(t *testing.T, perm *Permutation, n uint64, shards int) {
	t.Helper()
	seen := make([]uint8, n)
	for i := range shards {
		c := perm.Shard(i, shards)
		for {
			x, ok := c.Next()
			if !ok {
				break
			}
			if x >= n {
				t.Fatalf("n=%d shards=%d: index %d out of range", n, shards, x)
			}
			seen[x]++
		}
	}
	for x, k := range seen {
		if k != 1 {
			t.Fatalf("n=%d shards=%d: index %d yielded %d times", n, shards, x, k)
		}
	}
}

func TestPermutationExhaustive(t *testing.T) {
	sizes := []uint64{1, 2, 3, 4, 5, 6, 7, 8, 11, 13, 16, 17, 97, 100, 255, 256, 257, 1000, 1024, 4099, 65535, 65536, 65537, 99991, 100000}
	for n := uint64(9); n < 600; n += 7 {
		sizes = append(sizes, n)
	}
	for _, n := range sizes {
		perm, err := NewPermutation(n, n*7919+1)
		if err != nil {
			t.Fatal(err)
		}
		for _, shards := range []int{1, 2, 3, 5, 16} {
			walkShards(t, perm, n, shards)
		}
	}
	// more shards than cycle positions: the extra shards are empty
	perm, _ := NewPermutation(3, 1)
	walkShards(t, perm, 3, 7)
}

func TestPermutationEmptyAndInvalid(t *testing.T) {
	perm, err := NewPermutation(0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := perm.Shard(0, 1).Next(); ok {
		t.Error("empty permutation yielded an index")
	}
	perm, _ = NewPermutation(10, 1)
	for _, c := range []*Cursor{perm.Shard(1, 1), perm.Shard(-1, 2), perm.Shard(0, 0)} {
		if _, ok := c.Next(); ok {
			t.Error("invalid shard yielded an index")
		}
	}
	if _, err := NewPermutation(1<<62+1, 1); !errors.Is(err, ErrPermutationSize) {
		t.Errorf("oversized permutation error = %v", err)
	}
}

func TestPermutationDeterministicAndSeeded(t *testing.T) {
	order := func(n, seed uint64) []uint64 {
		perm, err := NewPermutation(n, seed)
		if err != nil {
			t.Fatal(err)
		}
		var out []uint64
		c := perm.Shard(0, 1)
		for x, ok := c.Next(); ok; x, ok = c.Next() {
			out = append(out, x)
		}
		return out
	}
	a, b, c := order(5000, 42), order(5000, 42), order(5000, 43)
	if !slices.Equal(a, b) {
		t.Error("same seed gave different orders")
	}
	if slices.Equal(a, c) {
		t.Error("different seeds gave the same order")
	}
}

func TestPermutationResume(t *testing.T) {
	const n = 20000
	perm, err := NewPermutation(n, 99)
	if err != nil {
		t.Fatal(err)
	}
	for _, shards := range []int{1, 3} {
		for shard := range shards {
			var full []uint64
			c := perm.Shard(shard, shards)
			for x, ok := c.Next(); ok; x, ok = c.Next() {
				full = append(full, x)
			}
			// stop after k yields, checkpoint, resume: the rest must match
			for _, k := range []int{0, 1, 17, len(full) / 2, len(full) - 1, len(full)} {
				c := perm.Shard(shard, shards)
				for range k {
					c.Next()
				}
				r := perm.Resume(shard, shards, c.Position())
				var rest []uint64
				for x, ok := r.Next(); ok; x, ok = r.Next() {
					rest = append(rest, x)
				}
				if !slices.Equal(rest, full[k:]) {
					t.Fatalf("shard %d/%d resumed after %d: %d indexes, want %d", shard, shards, k, len(rest), len(full)-k)
				}
			}
		}
	}
	// a position past the end resumes exhausted
	if _, ok := perm.Resume(0, 1, 1<<40).Next(); ok {
		t.Error("resume past the end yielded an index")
	}
}

func TestPermutationDistribution(t *testing.T) {
	const n = 1 << 16
	for seed := range uint64(5) {
		perm, err := NewPermutation(n, seed)
		if err != nil {
			t.Fatal(err)
		}
		c := perm.Shard(0, 1)
		prev, _ := c.Next()
		adjacent, total := 0, 0
		var firstHalf int // of the first 1000 indexes, how many are < n/2
		for x, ok := c.Next(); ok; x, ok = c.Next() {
			if x == prev+1 || prev == x+1 {
				adjacent++
			}
			if total < 1000 && x < n/2 {
				firstHalf++
			}
			total++
			prev = x
		}
		// a random order has about 2 adjacent steps; a sequential one n
		if adjacent > 20 {
			t.Errorf("seed %d: %d of %d consecutive indexes adjacent", seed, adjacent, total)
		}
		if firstHalf < 400 || firstHalf > 600 {
			t.Errorf("seed %d: %d of the first 1000 indexes in the lower half", seed, firstHalf)
		}
	}
}

func TestPermutationLarge(t *testing.T) {
	// beyond 2^32 elements the 128-bit multiply path runs
	for _, n := range []uint64{1<<32 + 5, 1 << 48, 1 << 62} {
		perm, err := NewPermutation(n, 7)
		if err != nil {
			t.Fatal(err)
		}
		if perm.p <= n || !isPrime(perm.p) {
			t.Fatalf("n=%d: modulus %d is not a prime above n", n, perm.p)
		}
		if !isPrimitiveRoot(perm.g, perm.p, primeFactors(perm.p-1)) {
			t.Fatalf("n=%d: %d is not a primitive root", n, perm.g)
		}
		c := perm.Shard(1, 4)
		seen := map[uint64]bool{}
		for range 10000 {
			x, ok := c.Next()
			if !ok || x >= n || seen[x] {
				t.Fatalf("n=%d: bad index %d (ok=%v)", n, x, ok)
			}
			seen[x] = true
		}
		// resuming in the middle agrees with walking
		r := perm.Resume(1, 4, c.Position())
		a, _ := c.Next()
		b, _ := r.Next()
		if a != b {
			t.Errorf("n=%d: resume gave %d, walk gave %d", n, b, a)
		}
	}
}

func TestPrimes(t *testing.T) {
	const limit = 20000
	composite := make([]bool, limit)
	for i := 2; i < limit; i++ {
		if !composite[i] {
			for j := i * i; j < limit; j += i {
				composite[j] = true
			}
		}
		if isPrime(uint64(i)) == composite[i] {
			t.Fatalf("isPrime(%d) = %v", i, !composite[i])
		}
	}
	for _, tc := range []struct {
		n    uint64
		want bool
	}{
		{0, false}, {1, false}, {4294967291, true}, {4294967297, false}, // 641 × 6700417
		{18446744073709551557, true}, {3215031751, false}, // a strong pseudoprime to bases 2,3,5,7
		{1<<61 - 1, true},
	} {
		if isPrime(tc.n) != tc.want {
			t.Errorf("isPrime(%d) != %v", tc.n, tc.want)
		}
	}
	for _, tc := range []struct {
		m    uint64
		want []uint64
	}{
		{2, []uint64{2}},
		{360, []uint64{2, 3, 5}},
		{4294967297, []uint64{641, 6700417}},
		{(1<<31 - 1) * (1<<31 - 1), []uint64{1<<31 - 1}},
		{1000003 * 1000033 * 6, []uint64{2, 3, 1000003, 1000033}},
		{(1<<61 - 1) * 2, []uint64{2, 1<<61 - 1}},
	} {
		got := primeFactors(tc.m)
		slices.Sort(got)
		if !slices.Equal(got, tc.want) {
			t.Errorf("primeFactors(%d) = %v, want %v", tc.m, got, tc.want)
		}
	}
}

func BenchmarkPermutationNext(b *testing.B) {
	for _, bc := range []struct {
		name string
		n    uint64
	}{{"small", 1 << 24}, {"large", 1 << 40}} {
		b.Run(bc.name, func(b *testing.B) {
			perm, err := NewPermutation(bc.n, 1)
			if err != nil {
				b.Fatal(err)
			}
			c := perm.Shard(0, 1)
			b.ReportAllocs()
			var sink uint64
			for b.Loop() {
				x, ok := c.Next()
				if !ok {
					c = perm.Shard(0, 1)
				}
				sink += x
			}
			_ = sink
		})
	}
}

func BenchmarkNewPermutation(b *testing.B) {
	b.ReportAllocs()
	for i := uint64(0); b.Loop(); i++ {
		if _, err := NewPermutation(1<<40+i*1000, i); err != nil {
			b.Fatal(err)
		}
	}
}
