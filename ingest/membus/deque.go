package membus

// deque is a growable ring buffer: push at the back, pop at the front, index
// from the front. The topic log, a group's ack window and a subscription's
// outstanding deliveries are all windows that slide forward like this, so one
// ring serves them all without reallocating in steady state. The capacity is
// a power of two so that indexing is a mask.
type deque[T any] struct {
	buf  []T
	head int
	n    int
}

func (d *deque[T]) len() int { return d.n }

// at returns the i-th element from the front; 0 <= i < len().
func (d *deque[T]) at(i int) *T { return &d.buf[(d.head+i)&(len(d.buf)-1)] }

func (d *deque[T]) push(v T) {
	if d.n == len(d.buf) {
		d.grow()
	}
	d.buf[(d.head+d.n)&(len(d.buf)-1)] = v
	d.n++
}

// popFront removes the front element; the slot is zeroed so the ring does not
// keep message bytes alive for the garbage collector.
func (d *deque[T]) popFront() T {
	var zero T
	v := d.buf[d.head]
	d.buf[d.head] = zero
	d.head = (d.head + 1) & (len(d.buf) - 1)
	d.n--
	return v
}

func (d *deque[T]) grow() {
	buf := make([]T, max(16, 2*len(d.buf)))
	for i := 0; i < d.n; i++ {
		buf[i] = *d.at(i)
	}
	d.buf = buf
	d.head = 0
}

// reset drops every element and the backing array.
func (d *deque[T]) reset() { *d = deque[T]{} }
