package engine

import (
	"errors"
	"fmt"
	"math/bits"
)

// ErrPermutationSize: a permutation of more than 2^62 elements was asked for.
var ErrPermutationSize = errors.New("permutation too large")

// Permutation is a seeded pseudo-random ordering of 0..n-1, zmap style: the
// multiplicative group modulo a prime p > n is cyclic, so for a generator g
// the sequence start·g^k (k = 0..p-2) visits every element 1..p-1 exactly
// once. Element x stands for index x-1; the few elements ≥ n+1 are skipped.
// Walking it needs no memory beyond the current element, any position can
// be jumped to with one modular exponentiation, and shard i of n takes the
// positions k ≡ i (mod n): disjoint and together complete.
type Permutation struct {
	n, p  uint64
	g     uint64 // primitive root modulo p, chosen from the seed
	start uint64 // the element at position 0, chosen from the seed
}

// NewPermutation returns the permutation of 0..n-1 for seed; equal (n, seed)
// give equal permutations, on every machine.
func NewPermutation(n uint64, seed uint64) (*Permutation, error) {
	if n > maxSpace {
		return nil, fmt.Errorf("cannot permute %d elements: %w", n, ErrPermutationSize)
	}
	p := nextPrime(n + 1)
	perm := &Permutation{n: n, p: p, g: 1, start: 1}
	if p == 2 {
		return perm, nil // the group {1}
	}
	rng := splitmix64{state: seed}
	factors := primeFactors(p - 1)
	for {
		g := 2 + rng.next()%(p-2) // 2..p-1
		if isPrimitiveRoot(g, p, factors) {
			perm.g = g
			break
		}
	}
	perm.start = 1 + rng.next()%(p-1)
	return perm, nil
}

// Size is n.
func (p *Permutation) Size() uint64 { return p.n }

// Shard returns a cursor over shard i of n. Shards partition the
// permutation's cycle by position, so they are disjoint and together cover
// every index. An invalid (i, n) gives an exhausted cursor.
func (p *Permutation) Shard(i, n int) *Cursor { return p.Resume(i, n, 0) }

// Resume returns shard i of n's cursor at position pos (a Cursor.Position
// saved earlier): the cursor yields what the original would have yielded
// after that point.
func (p *Permutation) Resume(i, n int, pos uint64) *Cursor {
	c := &Cursor{n: p.n, p: p.p, pos: pos}
	cycle := p.p - 1
	if n < 1 || i < 0 || i >= n || uint64(i) >= cycle {
		return c
	}
	count := (cycle - uint64(i) + uint64(n) - 1) / uint64(n)
	if pos >= count {
		c.pos = count
		return c
	}
	c.remaining = count - pos
	c.step = powMod(p.g, uint64(n), p.p)
	c.cur = mulMod(p.start, powMod(p.g, uint64(i), p.p), p.p)
	c.cur = mulMod(c.cur, powMod(c.step, pos, p.p), p.p)
	return c
}

// Cursor walks one shard of a permutation. It is not safe for concurrent use.
type Cursor struct {
	n, p      uint64
	cur, step uint64
	remaining uint64 // cycle positions left in this shard
	pos       uint64 // cycle positions consumed
}

// Next returns the next index of the shard, or false when it is exhausted.
func (c *Cursor) Next() (uint64, bool) {
	for c.remaining > 0 {
		x := c.cur
		c.remaining--
		c.pos++
		if c.p <= 1<<32 {
			c.cur = c.cur * c.step % c.p
		} else {
			hi, lo := bits.Mul64(c.cur, c.step)
			c.cur = bits.Rem64(hi, lo, c.p)
		}
		if x-1 < c.n {
			return x - 1, true
		}
	}
	return 0, false
}

// Position is how far the cursor has walked; Resume continues from it.
func (c *Cursor) Position() uint64 { return c.pos }

// Remaining bounds the indexes still to come (exact but for the few
// skipped elements ≥ n).
func (c *Cursor) Remaining() uint64 { return c.remaining }

func mulMod(a, b, m uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return bits.Rem64(hi, lo, m)
}

func powMod(b, e, m uint64) uint64 {
	r := uint64(1) % m
	b %= m
	for e > 0 {
		if e&1 == 1 {
			r = mulMod(r, b, m)
		}
		b = mulMod(b, b, m)
		e >>= 1
	}
	return r
}

func isPrimitiveRoot(g, p uint64, factors []uint64) bool {
	for _, q := range factors {
		if powMod(g, (p-1)/q, p) == 1 {
			return false
		}
	}
	return true
}

// nextPrime returns the smallest prime ≥ n (n ≤ 2^62, so it fits 63 bits).
func nextPrime(n uint64) uint64 {
	if n <= 2 {
		return 2
	}
	if n%2 == 0 {
		n++
	}
	for !isPrime(n) {
		n += 2
	}
	return n
}

var smallPrimes = [...]uint64{2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37}

// isPrime is Miller–Rabin with the first twelve primes as bases, which is
// deterministic for every n < 2^64.
func isPrime(n uint64) bool {
	if n < 2 {
		return false
	}
	for _, q := range smallPrimes {
		if n%q == 0 {
			return n == q
		}
	}
	d, r := n-1, 0
	for d%2 == 0 {
		d /= 2
		r++
	}
	for _, a := range smallPrimes {
		x := powMod(a, d, n)
		if x == 1 || x == n-1 {
			continue
		}
		composite := true
		for range r - 1 {
			x = mulMod(x, x, n)
			if x == n-1 {
				composite = false
				break
			}
		}
		if composite {
			return false
		}
	}
	return true
}

// primeFactors returns the distinct prime factors of m: trial division by
// small numbers, then Pollard's rho (Brent's variant) for what remains.
func primeFactors(m uint64) []uint64 {
	var out []uint64
	add := func(q uint64) {
		for _, f := range out {
			if f == q {
				return
			}
		}
		out = append(out, q)
	}
	for q := uint64(2); q < 1000 && q*q <= m; q++ {
		if m%q == 0 {
			add(q)
			for m%q == 0 {
				m /= q
			}
		}
	}
	var split func(m uint64)
	split = func(m uint64) {
		if m == 1 {
			return
		}
		if isPrime(m) {
			add(m)
			return
		}
		d := pollardRho(m)
		split(d)
		split(m / d)
	}
	split(m)
	return out
}

// pollardRho returns a non-trivial factor of the odd composite m.
func pollardRho(m uint64) uint64 {
	for c := uint64(1); ; c++ {
		f := func(x uint64) uint64 { return (mulMod(x, x, m) + c) % m }
		y, r, q := uint64(2), uint64(1), uint64(1)
		var x, ys, g uint64
		const batch = 128
		for g = 1; g == 1; r *= 2 {
			x = y
			for range r {
				y = f(y)
			}
			for k := uint64(0); k < r && g == 1; k += batch {
				ys = y
				for range min(batch, r-k) {
					y = f(y)
					q = mulMod(q, absDiff(x, y), m)
				}
				g = gcd(q, m)
			}
		}
		if g == m { // the batch overshot: step one at a time
			for g = 1; g == 1; {
				ys = f(ys)
				g = gcd(absDiff(x, ys), m)
			}
		}
		if g != m {
			return g
		}
	}
}

func absDiff(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return b - a
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// splitmix64 is a tiny seeded generator: the permutation must be the same
// for a seed on every shard and every machine, whatever math/rand does.
type splitmix64 struct{ state uint64 }

func (s *splitmix64) next() uint64 {
	s.state += 0x9e3779b97f4a7c15
	z := s.state
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}
