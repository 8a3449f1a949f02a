package membus

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"trawl/ingest"
	"trawl/ingest/bustest"
)

const testTimeout = 10 * time.Second

func newTestBus(t *testing.T, queueSize int) *Bus {
	t.Helper()
	b := New(Config{QueueSize: queueSize}, zerolog.Nop())
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func TestConformance(t *testing.T) {
	// The smallest size the suite supports, where backpressure is felt by
	// most subtests, and a roomier one.
	for _, queueSize := range []int{16, 1024} {
		t.Run(fmt.Sprintf("QueueSize=%d", queueSize), func(t *testing.T) {
			bustest.Run(t, func(t *testing.T) ingest.Bus { return newTestBus(t, queueSize) },
				bustest.Capabilities{Backpressure: true, QueueSize: queueSize})
		})
	}
}

func TestConfig(t *testing.T) {
	if err := (&Config{}).Validate(); err == nil {
		t.Fatal("Validate accepted a zero QueueSize")
	}
	if err := (&Config{QueueSize: -1}).Validate(); err == nil {
		t.Fatal("Validate accepted a negative QueueSize")
	}
	def := DefaultConfig()
	if err := def.Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate(): %v", err)
	}

	var cfg Config
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	cfg.RegisterFlags(fs, "bus.")
	if cfg != def {
		t.Fatalf("RegisterFlags defaults = %+v, want %+v", cfg, def)
	}
	if err := fs.Parse([]string{"-bus.queue-size=128"}); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if cfg.QueueSize != 128 {
		t.Fatalf("QueueSize = %d after -bus.queue-size=128", cfg.QueueSize)
	}
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func mustSubscribe(t *testing.T, b *Bus, topic, group string) ingest.Subscription {
	t.Helper()
	s, err := b.Subscribe(context.Background(), topic, group)
	if err != nil {
		t.Fatalf("Subscribe(%s, %q): %v", topic, group, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func mustPublish(t *testing.T, b *Bus, topic string, values ...string) {
	t.Helper()
	msgs := make([]ingest.Message, len(values))
	for i, v := range values {
		msgs[i] = ingest.Message{Key: []byte("k"), Value: []byte(v)}
	}
	if err := b.Publish(ctxT(t), topic, msgs...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

func mustFetch(t *testing.T, s ingest.Subscription) ingest.Delivery {
	t.Helper()
	d, err := s.Fetch(ctxT(t))
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	return d
}

func seq(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

// retained reports how many messages topic keeps.
func retained(b *Bus, topic string) int {
	t := b.topic(topic)
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.log.len()
}

func TestAckRejectsUnknownDeliveries(t *testing.T) {
	b := newTestBus(t, 16)
	a := mustSubscribe(t, b, "t", "g")
	other := mustSubscribe(t, b, "t", "g")
	mustPublish(t, b, "t", "m0", "m1")
	d := mustFetch(t, a)

	cases := []struct {
		name string
		sub  ingest.Subscription
		d    ingest.Delivery
	}{
		{"zero token", a, ingest.Delivery{Offset: d.Offset}},
		{"token never handed out", a, ingest.Delivery{Offset: d.Offset, Token: d.Token + 5}},
		{"wrong offset", a, ingest.Delivery{Offset: d.Offset + 1, Token: d.Token}},
		{"other member", other, d},
	}
	for _, tc := range cases {
		if err := tc.sub.Ack(context.Background(), tc.d); !errors.Is(err, ErrUnknownDelivery) {
			t.Errorf("%s: Ack = %v, want ErrUnknownDelivery", tc.name, err)
		}
	}
	if err := a.Ack(context.Background(), d); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	if err := a.Ack(context.Background(), d); !errors.Is(err, ErrUnknownDelivery) {
		t.Fatalf("second Ack = %v, want ErrUnknownDelivery", err)
	}
	d2 := mustFetch(t, a)
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := a.Ack(context.Background(), d2); !errors.Is(err, ErrSubscriptionClosed) {
		t.Fatalf("Ack after Close = %v, want ErrSubscriptionClosed", err)
	}
}

func TestOutOfOrderAcksAndRedeliveryOrder(t *testing.T) {
	b := newTestBus(t, 16)
	a, err := b.Subscribe(context.Background(), "t", "g")
	if err != nil {
		t.Fatal(err)
	}
	mustPublish(t, b, "t", seq("m", 5)...)
	var ds []ingest.Delivery
	for range 5 {
		ds = append(ds, mustFetch(t, a))
	}
	// Ack 1 and 3 only: the group's low mark stays at 0, nothing is trimmed.
	for _, i := range []int{3, 1} {
		if err := a.Ack(context.Background(), ds[i]); err != nil {
			t.Fatalf("Ack(%d): %v", i, err)
		}
	}
	if n := retained(b, "t"); n != 5 {
		t.Fatalf("retained %d messages with offset 0 unacked, want 5", n)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	mustPublish(t, b, "t", "m5")
	c := mustSubscribe(t, b, "t", "g")
	var got []string
	for range 4 {
		d := mustFetch(t, c)
		got = append(got, string(d.Value))
		if err := c.Ack(context.Background(), d); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"m0", "m2", "m4", "m5"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after re-subscribe got %v, want %v (redeliveries in offset order, then new)", got, want)
	}
	if n := retained(b, "t"); n != 0 {
		t.Fatalf("retained %d messages after every group acked all, want 0", n)
	}
}

func TestSubscribeContextEndClosesAndReturnsDeliveries(t *testing.T) {
	b := newTestBus(t, 16)
	ctx, cancel := context.WithCancel(context.Background())
	a, err := b.Subscribe(ctx, "t", "g")
	if err != nil {
		t.Fatal(err)
	}
	mustPublish(t, b, "t", "m0", "m1")
	mustFetch(t, a)
	mustFetch(t, a)
	cancel()

	deadline := time.Now().Add(testTimeout)
	for {
		_, err := a.Fetch(context.Background())
		if errors.Is(err, ErrSubscriptionClosed) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Fetch after the Subscribe context ended: %v, want ErrSubscriptionClosed", err)
		}
		time.Sleep(time.Millisecond)
	}
	c := mustSubscribe(t, b, "t", "g")
	for _, want := range []string{"m0", "m1"} {
		if d := mustFetch(t, c); string(d.Value) != want {
			t.Fatalf("redelivered %q, want %q", d.Value, want)
		}
	}
}

func TestSubscribeWithEndedContext(t *testing.T) {
	b := newTestBus(t, 16)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.Subscribe(ctx, "t", "g"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe with a canceled context: %v, want context.Canceled", err)
	}
	if _, err := b.Subscribe(context.Background(), "", "g"); err == nil {
		t.Fatal("Subscribe accepted an empty topic")
	}
	if err := b.Publish(context.Background(), "", ingest.Message{}); err == nil {
		t.Fatal("Publish accepted an empty topic")
	}
}

func TestEphemeralOverflowNeverBlocksPublishers(t *testing.T) {
	const q = 8
	b := newTestBus(t, q)
	slow := mustSubscribe(t, b, "t", "")
	durable := mustSubscribe(t, b, "t", "g")

	// A durable consumer keeps up; the ephemeral one never reads.
	const n = 5 * q
	consumed := make(chan error, 1)
	go func() {
		for range n {
			d, err := durable.Fetch(ctxT(t))
			if err == nil {
				err = durable.Ack(context.Background(), d)
			}
			if err != nil {
				consumed <- err
				return
			}
		}
		consumed <- nil
	}()
	for i := range n {
		mustPublish(t, b, "t", fmt.Sprint(i))
	}
	if err := <-consumed; err != nil {
		t.Fatalf("durable consumer: %v", err)
	}
	if _, err := slow.Fetch(ctxT(t)); !errors.Is(err, ErrOverflow) {
		t.Fatalf("Fetch of an overflowed ephemeral subscriber: %v, want ErrOverflow", err)
	}
	// It stays cut off, and is no longer fed.
	mustPublish(t, b, "t", "more")
	if _, err := slow.Fetch(ctxT(t)); !errors.Is(err, ErrOverflow) {
		t.Fatalf("second Fetch: %v, want ErrOverflow", err)
	}
	if n := len(b.topic("t").ephemerals); n != 0 {
		t.Fatalf("%d ephemeral subscribers still registered after overflow", n)
	}
}

func TestEphemeralKeepsUpToQueueSize(t *testing.T) {
	const q = 8
	b := newTestBus(t, q)
	e := mustSubscribe(t, b, "t", "")
	mustPublish(t, b, "t", seq("m", q)...)
	for i := range q {
		d := mustFetch(t, e)
		if string(d.Value) != fmt.Sprintf("m%d", i) || d.Offset != int64(i) {
			t.Fatalf("delivery %d = %q at offset %d", i, d.Value, d.Offset)
		}
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(b.topic("t").ephemerals); n != 0 {
		t.Fatalf("%d ephemeral subscribers registered after Close", n)
	}
}

func TestDeliveriesCarryTheBusEpoch(t *testing.T) {
	before := time.Now().UnixMilli()
	b := newTestBus(t, 16)
	after := time.Now().UnixMilli()

	group := mustSubscribe(t, b, "t", "g")
	eph := mustSubscribe(t, b, "t", "")
	other := mustSubscribe(t, b, "u", "g")
	mustPublish(t, b, "t", seq("m", 4)...)
	mustPublish(t, b, "u", "x")
	var ds []ingest.Delivery
	for range 4 {
		ds = append(ds, mustFetch(t, group), mustFetch(t, eph))
	}
	ds = append(ds, mustFetch(t, other))
	// A redelivery to another member carries the epoch too.
	if err := group.Close(); err != nil {
		t.Fatal(err)
	}
	ds = append(ds, mustFetch(t, mustSubscribe(t, b, "t", "g")))

	epoch := ds[0].Epoch
	if epoch == 0 {
		t.Fatal("delivery without an epoch: ids would collide with an earlier run's")
	}
	if epoch < before || epoch > after {
		t.Fatalf("epoch %d, want the bus's start in unix ms, within [%d, %d]", epoch, before, after)
	}
	for i, d := range ds {
		if d.Epoch != epoch {
			t.Fatalf("delivery %d (%q at offset %d) has epoch %d, want the bus's %d", i, d.Value, d.Offset, d.Epoch, epoch)
		}
	}

	// A later bus (a restart) starts no earlier, so its ids do not sort
	// before the last run's.
	b2 := newTestBus(t, 16)
	s2 := mustSubscribe(t, b2, "t", "g")
	mustPublish(t, b2, "t", "m")
	if d := mustFetch(t, s2); d.Epoch < epoch || d.Epoch == 0 {
		t.Fatalf("second bus epoch %d, want >= the first's %d", d.Epoch, epoch)
	}
}

func TestTopicWithoutGroupsKeepsNewest(t *testing.T) {
	const q = 8
	b := newTestBus(t, q)
	// Nobody to deliver to: Publish must not block, the oldest messages go.
	mustPublish(t, b, "t", seq("m", 20)...)
	if n := retained(b, "t"); n != q {
		t.Fatalf("retained %d, want %d", n, q)
	}
	s := mustSubscribe(t, b, "t", "late")
	d := mustFetch(t, s)
	if string(d.Value) != "m12" || d.Offset != 12 {
		t.Fatalf("late group starts at %q offset %d, want m12 offset 12", d.Value, d.Offset)
	}
}

func TestPublishBatchLargerThanQueue(t *testing.T) {
	const q = 16
	b := newTestBus(t, q)
	s := mustSubscribe(t, b, "t", "g")
	want := seq("m", 5*q)
	got := make(chan []string, 1)
	go func() {
		var vs []string
		for range want {
			d, err := s.Fetch(ctxT(t))
			if err != nil {
				t.Errorf("Fetch: %v", err)
				break
			}
			vs = append(vs, string(d.Value))
			if err := s.Ack(context.Background(), d); err != nil {
				t.Errorf("Ack: %v", err)
				break
			}
		}
		got <- vs
	}()
	mustPublish(t, b, "t", want...) // blocks in chunks as the consumer acks
	if vs := <-got; fmt.Sprint(vs) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", vs, want)
	}
}

func TestPublishCopiesMessages(t *testing.T) {
	b := newTestBus(t, 16)
	s := mustSubscribe(t, b, "t", "g")
	buf := []byte("key-value")
	if err := b.Publish(ctxT(t), "t", ingest.Message{Key: buf[:3], Value: buf[4:]}); err != nil {
		t.Fatal(err)
	}
	copy(buf, "XXXXXXXXX")
	d := mustFetch(t, s)
	if string(d.Key) != "key" || string(d.Value) != "value" {
		t.Fatalf("delivery = %q/%q after the publisher reused its buffer, want key/value", d.Key, d.Value)
	}
	// Appending to a delivered key must not overwrite its value.
	_ = append(d.Key, '!')
	if string(d.Value) != "value" {
		t.Fatalf("value = %q after appending to the key", d.Value)
	}
}

func TestCloseWakesBlockedPublisher(t *testing.T) {
	b := New(Config{QueueSize: 2}, zerolog.Nop())
	mustSubscribe(t, b, "t", "g")
	mustPublish(t, b, "t", "m0", "m1")
	errc := make(chan error, 1)
	go func() { errc <- b.Publish(context.Background(), "t", ingest.Message{Value: []byte("m2")}) }()
	time.Sleep(20 * time.Millisecond)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ingest.ErrClosed) {
			t.Fatalf("blocked Publish after Close: %v, want ErrClosed", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("blocked Publish not woken by Close")
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestConcurrentGroupsAndMembers runs publishers, two groups of three members
// and churning members under the race detector: every group gets every
// message at least once and nothing is left unacked.
func TestConcurrentGroupsAndMembers(t *testing.T) {
	const (
		q          = 32
		publishers = 3
		perPub     = 500
		total      = publishers * perPub
	)
	b := newTestBus(t, q)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	var wg sync.WaitGroup
	for _, g := range []string{"a", "b"} {
		// Create the group before anything is published; it persists.
		if err := mustSubscribe(t, b, "t", g).Close(); err != nil {
			t.Fatal(err)
		}
		var (
			mu   sync.Mutex
			seen = make(map[string]bool, total)
		)
		groupCtx, groupDone := context.WithCancel(ctx)
		for m := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for round := 0; groupCtx.Err() == nil; round++ {
					s, err := b.Subscribe(groupCtx, "t", g)
					if err != nil {
						return
					}
					// Member 0 leaves after every 50 deliveries without acking
					// the last one, so redelivery is exercised concurrently.
					for i := 0; m != 0 || i < 50; i++ {
						d, err := s.Fetch(groupCtx)
						if err != nil {
							break
						}
						if m == 0 && i == 49 {
							break
						}
						if err := s.Ack(groupCtx, d); err != nil {
							t.Errorf("group %s Ack: %v", g, err)
							break
						}
						mu.Lock()
						seen[string(d.Value)] = true
						if len(seen) == total {
							groupDone()
						}
						mu.Unlock()
					}
					_ = s.Close()
				}
			}()
		}
		t.Cleanup(groupDone)
	}
	var pubs sync.WaitGroup
	for p := range publishers {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			for i := 0; i < perPub; i += 10 {
				msgs := make([]ingest.Message, 10)
				for j := range msgs {
					msgs[j] = ingest.Message{Key: []byte{byte(p)}, Value: fmt.Appendf(nil, "p%d-%d", p, i+j)}
				}
				if err := b.Publish(ctx, "t", msgs...); err != nil {
					t.Errorf("Publish: %v", err)
					return
				}
			}
		}()
	}
	pubs.Wait()
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatal("groups did not consume every message in time")
	}
	if n := retained(b, "t"); n != 0 {
		t.Fatalf("retained %d messages after both groups acked everything", n)
	}
}

func TestDeque(t *testing.T) {
	var d deque[int]
	next, front := 0, 0
	// Interleave pushes and pops so the ring wraps and grows while wrapped.
	for round := range 50 {
		for range round % 7 * 5 {
			d.push(next)
			next++
		}
		for range round % 5 * 4 {
			if d.len() == 0 {
				break
			}
			if v := d.popFront(); v != front {
				t.Fatalf("popFront = %d, want %d", v, front)
			}
			front++
		}
		for i := 0; i < d.len(); i++ {
			if v := *d.at(i); v != front+i {
				t.Fatalf("at(%d) = %d, want %d", i, v, front+i)
			}
		}
	}
	d.reset()
	if d.len() != 0 {
		t.Fatalf("len after reset = %d", d.len())
	}
}

func BenchmarkPublishFetchAck(b *testing.B) {
	for _, consumers := range []int{1, 4} {
		b.Run(fmt.Sprintf("consumers=%d", consumers), func(b *testing.B) {
			benchmarkPipeline(b, consumers)
		})
	}
}

// benchmarkPipeline publishes b.N 200-byte messages in batches of 64 while
// consumers of one group fetch and ack them.
func benchmarkPipeline(b *testing.B, consumers int) {
	bus := New(DefaultConfig(), zerolog.Nop())
	defer bus.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	subs := make([]ingest.Subscription, consumers)
	for i := range subs {
		s, err := bus.Subscribe(ctx, "bench", "g")
		if err != nil {
			b.Fatal(err)
		}
		subs[i] = s
	}
	batch := make([]ingest.Message, 64)
	value := make([]byte, 200)
	for i := range batch {
		batch[i] = ingest.Message{Key: []byte("job_bench"), Value: value}
	}
	var consumed atomic.Int64
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	for _, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				d, err := s.Fetch(ctx)
				if err != nil {
					return
				}
				if err := s.Ack(ctx, d); err != nil {
					return
				}
				if consumed.Add(1) == int64(b.N) {
					cancel()
				}
			}
		}()
	}
	for left := b.N; left > 0; left -= len(batch) {
		if err := bus.Publish(ctx, "bench", batch[:min(left, len(batch))]...); err != nil {
			b.Fatal(err)
		}
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
