// Package bustest is the conformance suite every ingest.Bus runs: the
// in-process membus now, Kafka later. Each implementation's test calls Run
// with a constructor; the suite checks the semantics the roles rely on
// (ordering per key, consumer groups, at-least-once redelivery, ephemeral
// subscribers, context handling, backpressure where promised).
//
// Every subtest uses its own topic and group names, so a suite may run against
// one long-lived broker, and every wait is bounded: a hung bus fails a subtest
// within seconds.
package bustest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"trawl/ingest"
)

// Capabilities are the optional behaviours a bus promises.
type Capabilities struct {
	// Backpressure: Publish blocks while a durable group is QueueSize
	// messages behind (membus). Kafka buffers on disk instead.
	Backpressure bool
	// QueueSize is the bus's configured bound; used only with Backpressure.
	// Keep it small so the suite stays fast, but at least 16: some subtests
	// publish a few messages before anyone consumes.
	QueueSize int
}

const (
	// opTimeout bounds every operation that should succeed.
	opTimeout = 10 * time.Second
	// quietPeriod is how long a subscription must stay silent to count as
	// having nothing more to deliver.
	quietPeriod = 300 * time.Millisecond
)

// Run runs the suite as parallel subtests of t. newBus returns a fresh bus (or
// a handle on a shared broker) and registers its own cleanup; the suite may
// Close it, so Close must tolerate being called twice.
func Run(t *testing.T, newBus func(t *testing.T) ingest.Bus, caps Capabilities) {
	t.Helper()
	tests := []struct {
		name string
		run  func(t *testing.T, e *env)
	}{
		{"RoundTrip", testRoundTrip},
		{"OrderPerKey", testOrderPerKey},
		{"GroupsEachGetEverything", testGroupsEachGetEverything},
		{"MembersSplitMessages", testMembersSplitMessages},
		{"UnackedRedeliveredAfterClose", testUnackedRedeliveredAfterClose},
		{"AckedNotRedelivered", testAckedNotRedelivered},
		{"LateGroupStartsAtEarliest", testLateGroupStartsAtEarliest},
		{"EphemeralSeesOnlyLater", testEphemeralSeesOnlyLater},
		{"cursors follow topic order", testCursorsFollowTopicOrder},
		{"FetchHonoursContext", testFetchHonoursContext},
		{"PublishHonoursContext", testPublishHonoursContext},
		{"FetchAfterSubscriptionClose", testFetchAfterSubscriptionClose},
		{"CloseWakesBlockedCalls", testCloseWakesBlockedCalls},
		{"Backpressure", func(t *testing.T, e *env) {
			if !caps.Backpressure {
				t.Skip("bus does not promise backpressure")
			}
			testBackpressure(t, e, caps.QueueSize)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, newEnv(t, newBus(t)))
		})
	}
}

// env is one subtest's bus and name space.
type env struct {
	bus    ingest.Bus
	prefix string
}

func newEnv(t *testing.T, bus ingest.Bus) *env {
	t.Helper()
	var r [4]byte
	if _, err := rand.Read(r[:]); err != nil {
		t.Fatalf("cannot read random bytes: %v", err)
	}
	// Topic names stay within Kafka's alphabet: [a-zA-Z0-9._-].
	name := strings.Map(func(c rune) rune {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
			return c
		}
		return '-'
	}, t.Name())
	return &env{bus: bus, prefix: "bustest." + name + "." + hex.EncodeToString(r[:])}
}

func (e *env) topic() string            { return e.prefix + ".topic" }
func (e *env) group(name string) string { return e.prefix + "." + name }

func opContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	t.Cleanup(cancel)
	return ctx
}

func msg(key, value string) ingest.Message {
	return ingest.Message{Key: []byte(key), Value: []byte(value)}
}

// values returns n messages with key and values prefix-0 … prefix-(n-1).
func values(key, prefix string, n int) []ingest.Message {
	msgs := make([]ingest.Message, n)
	for i := range msgs {
		msgs[i] = msg(key, fmt.Sprintf("%s-%d", prefix, i))
	}
	return msgs
}

func publish(t *testing.T, bus ingest.Bus, topic string, msgs ...ingest.Message) {
	t.Helper()
	if err := bus.Publish(opContext(t), topic, msgs...); err != nil {
		t.Fatalf("Publish(%s, %d messages): %v", topic, len(msgs), err)
	}
}

// publishAsync publishes each batch in turn from another goroutine, so that
// a bus with backpressure may block until the test consumes. The returned
// func waits for the last Publish and fails the test on any error.
func publishAsync(t *testing.T, bus ingest.Bus, topic string, batches ...[]ingest.Message) (wait func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		for _, b := range batches {
			if err := bus.Publish(ctx, topic, b...); err != nil {
				errc <- fmt.Errorf("Publish(%s, %d messages): %w", topic, len(b), err)
				return
			}
		}
		errc <- nil
	}()
	return func() {
		t.Helper()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

func subscribe(t *testing.T, bus ingest.Bus, topic, group string) ingest.Subscription {
	t.Helper()
	sub, err := bus.Subscribe(context.Background(), topic, group)
	if err != nil {
		t.Fatalf("Subscribe(%s, %q): %v", topic, group, err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	return sub
}

func fetch(t *testing.T, sub ingest.Subscription) ingest.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	d, err := sub.Fetch(ctx)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	return d
}

func ack(t *testing.T, sub ingest.Subscription, d ingest.Delivery) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := sub.Ack(ctx, d); err != nil {
		t.Fatalf("Ack(offset %d): %v", d.Offset, err)
	}
}

// fetchValues fetches n deliveries, acking each if doAck, and returns their values.
func fetchValues(t *testing.T, sub ingest.Subscription, n int, doAck bool) []string {
	t.Helper()
	got := make([]string, 0, n)
	for range n {
		d := fetch(t, sub)
		got = append(got, string(d.Value))
		if doAck {
			ack(t, sub, d)
		}
	}
	return got
}

// expectQuiet fails if sub delivers anything within quietPeriod.
func expectQuiet(t *testing.T, sub ingest.Subscription) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), quietPeriod)
	defer cancel()
	d, err := sub.Fetch(ctx)
	if err == nil {
		t.Fatalf("Fetch delivered %q (offset %d), want nothing", d.Value, d.Offset)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Fetch on an idle subscription: %v, want context.DeadlineExceeded", err)
	}
}

func wantValues(t *testing.T, got []string, want []ingest.Message) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d values %q, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != string(want[i].Value) {
			t.Fatalf("value %d = %q, want %q (all: %q)", i, got[i], want[i].Value, got)
		}
	}
}

func testRoundTrip(t *testing.T, e *env) {
	sub := subscribe(t, e.bus, e.topic(), e.group("g"))
	first := ingest.Message{Key: []byte("job_1"), Value: []byte(`{"v":1,"id":"a"}`)}
	publish(t, e.bus, e.topic(), first)
	batch := []ingest.Message{msg("job_1", "b"), msg("job_1", "c"), {Key: []byte("job_1"), Value: []byte{0, 1, 2, 255}}}
	publish(t, e.bus, e.topic(), batch...)

	want := append([]ingest.Message{first}, batch...)
	lastOffset := int64(-1)
	for i, w := range want {
		d := fetch(t, sub)
		if string(d.Key) != string(w.Key) || string(d.Value) != string(w.Value) {
			t.Fatalf("delivery %d = key %q value %q, want key %q value %q", i, d.Key, d.Value, w.Key, w.Value)
		}
		if d.Offset <= lastOffset {
			t.Fatalf("delivery %d offset %d, want > %d", i, d.Offset, lastOffset)
		}
		lastOffset = d.Offset
		ack(t, sub, d)
	}
	expectQuiet(t, sub)
}

func testOrderPerKey(t *testing.T, e *env) {
	sub := subscribe(t, e.bus, e.topic(), e.group("g"))
	want := values("job_order", "m", 300)
	// Uneven batches: single messages and larger ones must stay in order.
	var batches [][]ingest.Message
	for i, size := 0, 1; i < len(want); size = size*3 + 1 {
		j := min(i+size, len(want))
		batches = append(batches, want[i:j])
		i = j
	}
	wait := publishAsync(t, e.bus, e.topic(), batches...)
	wantValues(t, fetchValues(t, sub, len(want), true), want)
	wait()
}

func testGroupsEachGetEverything(t *testing.T, e *env) {
	g1 := subscribe(t, e.bus, e.topic(), e.group("one"))
	g2 := subscribe(t, e.bus, e.topic(), e.group("two"))
	var all []ingest.Message
	for k := range 5 {
		all = append(all, values(fmt.Sprintf("key%d", k), fmt.Sprintf("k%d", k), 10)...)
	}
	wait := publishAsync(t, e.bus, e.topic(), all)
	// The groups consume concurrently: with backpressure, the publisher
	// waits for the slower one.
	var wg sync.WaitGroup
	got := make(map[string][]string)
	var mu sync.Mutex
	for name, sub := range map[string]ingest.Subscription{"one": g1, "two": g2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			defer cancel()
			var vs []string
			for range all {
				d, err := sub.Fetch(ctx)
				if err == nil {
					err = sub.Ack(ctx, d)
				}
				if err != nil {
					t.Errorf("group %s: %v", name, err)
					break
				}
				vs = append(vs, string(d.Value))
			}
			mu.Lock()
			got[name] = vs
			mu.Unlock()
		}()
	}
	wg.Wait()
	wait()
	if t.Failed() {
		return
	}
	for name, sub := range map[string]ingest.Subscription{"one": g1, "two": g2} {
		got := got[name]
		seen := make(map[string]bool, len(got))
		for _, v := range got {
			if seen[v] {
				t.Fatalf("group %s got %q twice", name, v)
			}
			seen[v] = true
		}
		for _, m := range all {
			if !seen[string(m.Value)] {
				t.Fatalf("group %s never got %q", name, m.Value)
			}
		}
		expectQuiet(t, sub)
	}
}

func testMembersSplitMessages(t *testing.T, e *env) {
	const n = 400
	group := e.group("g")
	members := []ingest.Subscription{
		subscribe(t, e.bus, e.topic(), group),
		subscribe(t, e.bus, e.topic(), group),
	}
	var all []ingest.Message
	for k := range 8 {
		all = append(all, values(fmt.Sprintf("key%d", k), fmt.Sprintf("k%d", k), n/8)...)
	}

	// clock orders fetch starts against ack completions: a value fetched by a
	// call that began after the value's ack returned is a duplicate delivery
	// of an acked message, which the bus must never make.
	var (
		clock   atomic.Int64
		mu      sync.Mutex
		ackedAt = make(map[string]int64, n)
		perSub  = make([]int, len(members))
	)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for i, sub := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				start := clock.Add(1)
				d, err := sub.Fetch(ctx)
				if err != nil {
					if ctx.Err() == nil {
						t.Errorf("member %d Fetch: %v", i, err)
					}
					return
				}
				v := string(d.Value)
				mu.Lock()
				at, acked := ackedAt[v]
				mu.Unlock()
				if acked && at < start {
					t.Errorf("member %d got %q after it was acked", i, v)
				}
				if err := sub.Ack(ctx, d); err != nil {
					t.Errorf("member %d Ack(%q): %v", i, v, err)
					return
				}
				mu.Lock()
				if !acked {
					ackedAt[v] = clock.Add(1)
				}
				perSub[i]++
				done := len(ackedAt) == n
				mu.Unlock()
				if done {
					cancel()
				}
			}
		}()
	}
	wait := publishAsync(t, e.bus, e.topic(), all)
	wg.Wait()
	wait()
	if len(ackedAt) != n {
		t.Fatalf("members acked %d of %d messages within %v", len(ackedAt), n, opTimeout)
	}
	for _, m := range all {
		if _, ok := ackedAt[string(m.Value)]; !ok {
			t.Fatalf("message %q lost", m.Value)
		}
	}
	t.Logf("deliveries per member: %v", perSub)
	for _, sub := range members {
		expectQuiet(t, sub)
	}
}

func testUnackedRedeliveredAfterClose(t *testing.T, e *env) {
	group := e.group("g")
	want := values("job_r", "m", 5)
	publish(t, e.bus, e.topic(), want...)
	first, err := e.bus.Subscribe(context.Background(), e.topic(), group)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	wantValues(t, fetchValues(t, first, 3, false), want[:3])
	second := subscribe(t, e.bus, e.topic(), group)
	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// The three unacked messages come back first, then the rest, in order.
	wantValues(t, fetchValues(t, second, 5, true), want)
	expectQuiet(t, second)
}

func testAckedNotRedelivered(t *testing.T, e *env) {
	group := e.group("g")
	want := values("job_a", "m", 6)
	publish(t, e.bus, e.topic(), want...)
	first, err := e.bus.Subscribe(context.Background(), e.topic(), group)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	wantValues(t, fetchValues(t, first, 3, true), want[:3])
	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	again := subscribe(t, e.bus, e.topic(), group)
	wantValues(t, fetchValues(t, again, 3, true), want[3:])
	expectQuiet(t, again)
}

func testLateGroupStartsAtEarliest(t *testing.T, e *env) {
	want := values("job_l", "m", 10)
	publish(t, e.bus, e.topic(), want...)
	late := subscribe(t, e.bus, e.topic(), e.group("late"))
	wantValues(t, fetchValues(t, late, len(want), true), want)
	expectQuiet(t, late)
}

func testEphemeralSeesOnlyLater(t *testing.T, e *env) {
	publish(t, e.bus, e.topic(), values("job_e", "before", 5)...)
	sub := subscribe(t, e.bus, e.topic(), "")
	after := values("job_e", "after", 5)
	publish(t, e.bus, e.topic(), after...)
	wantValues(t, fetchValues(t, sub, len(after), true), after)
	expectQuiet(t, sub)
}

// testCursorsFollowTopicOrder checks what event ids rely on: every consumer
// derives the same Cursor from a message, and cursors increase in topic order
// (one key, so one partition), across Publish calls too.
func testCursorsFollowTopicOrder(t *testing.T, e *env) {
	const rounds, perRound = 3, 8 // each round stays within a QueueSize of 16
	subs := map[string]ingest.Subscription{
		"group":     subscribe(t, e.bus, e.topic(), e.group("g")),
		"ephemeral": subscribe(t, e.bus, e.topic(), ""),
		"group two": subscribe(t, e.bus, e.topic(), e.group("g2")),
	}
	var want []ingest.Message
	var cursors []string
	for r := range rounds {
		msgs := values("job_c", fmt.Sprintf("r%d", r), perRound)
		// One message alone, the rest in a batch.
		publish(t, e.bus, e.topic(), msgs[0])
		publish(t, e.bus, e.topic(), msgs[1:]...)
		seen := make(map[string][]string, len(subs)) // cursors per subscriber
		for name, sub := range subs {
			for _, m := range msgs {
				d := fetch(t, sub)
				if string(d.Value) != string(m.Value) {
					t.Fatalf("%s got %q, want %q", name, d.Value, m.Value)
				}
				ack(t, sub, d)
				seen[name] = append(seen[name], d.Cursor())
			}
		}
		for name, cs := range seen {
			if !slices.Equal(cs, seen["group"]) {
				t.Fatalf("round %d: %s saw cursors %q, group saw %q, want the same per message", r, name, cs, seen["group"])
			}
		}
		want = append(want, msgs...)
		cursors = append(cursors, seen["group"]...)
	}
	for i, c := range cursors {
		if !strings.HasPrefix(c, "ev_") || len(c) != len("ev_")+26 {
			t.Fatalf("cursor %d = %q, want ev_ and 26 digits", i, c)
		}
		if i > 0 && c <= cursors[i-1] {
			t.Fatalf("cursor of %q = %q after %q, want strictly increasing in topic order",
				want[i].Value, c, cursors[i-1])
		}
	}
	for _, sub := range subs {
		expectQuiet(t, sub)
	}
}

func testFetchHonoursContext(t *testing.T, e *env) {
	for _, group := range []string{e.group("g"), ""} {
		sub := subscribe(t, e.bus, e.topic(), group)

		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := sub.Fetch(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("group %q: Fetch with a canceled context: %v, want context.Canceled", group, err)
		}

		ctx, cancel = context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		start := time.Now()
		if _, err := sub.Fetch(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("group %q: Fetch canceled while blocked: %v, want context.Canceled", group, err)
		}
		if waited := time.Since(start); waited > opTimeout/2 {
			t.Fatalf("group %q: Fetch returned %v after cancel", group, waited)
		}

		ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
		_, err := sub.Fetch(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("group %q: Fetch past its deadline: %v, want context.DeadlineExceeded", group, err)
		}
	}
	// A canceled Fetch loses nothing: the next message still arrives.
	sub := subscribe(t, e.bus, e.topic(), e.group("g2"))
	publish(t, e.bus, e.topic(), msg("k", "after-cancel"))
	if d := fetch(t, sub); string(d.Value) != "after-cancel" {
		t.Fatalf("Fetch = %q, want %q", d.Value, "after-cancel")
	}
}

func testPublishHonoursContext(t *testing.T, e *env) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.bus.Publish(ctx, e.topic(), msg("k", "v")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish with a canceled context: %v, want context.Canceled", err)
	}
}

func testFetchAfterSubscriptionClose(t *testing.T, e *env) {
	for _, group := range []string{e.group("g"), ""} {
		sub, err := e.bus.Subscribe(context.Background(), e.topic(), group)
		if err != nil {
			t.Fatalf("Subscribe(%q): %v", group, err)
		}
		// A Fetch blocked when the subscription closes returns too.
		blocked := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			defer cancel()
			_, err := sub.Fetch(ctx)
			blocked <- err
		}()
		time.Sleep(20 * time.Millisecond)
		if err := sub.Close(); err != nil {
			t.Fatalf("group %q: Close: %v", group, err)
		}
		if err := <-blocked; err == nil || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("group %q: Fetch blocked across Close returned %v, want a prompt error", group, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		_, err = sub.Fetch(ctx)
		cancel()
		if err == nil || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("group %q: Fetch after Close returned %v, want a prompt error", group, err)
		}
		_ = sub.Close() // a second Close must not panic
	}
}

func testCloseWakesBlockedCalls(t *testing.T, e *env) {
	sub := subscribe(t, e.bus, e.topic(), e.group("g"))
	blocked := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		_, err := sub.Fetch(ctx)
		blocked <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := e.bus.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-blocked; !errors.Is(err, ingest.ErrClosed) {
		t.Fatalf("Fetch blocked across bus Close: %v, want ingest.ErrClosed", err)
	}
	if err := e.bus.Publish(opContext(t), e.topic(), msg("k", "v")); !errors.Is(err, ingest.ErrClosed) {
		t.Fatalf("Publish after Close: %v, want ingest.ErrClosed", err)
	}
	if _, err := e.bus.Subscribe(opContext(t), e.topic(), e.group("g")); !errors.Is(err, ingest.ErrClosed) {
		t.Fatalf("Subscribe after Close: %v, want ingest.ErrClosed", err)
	}
}

func testBackpressure(t *testing.T, e *env, queueSize int) {
	if queueSize <= 0 {
		t.Fatalf("Capabilities.QueueSize = %d, want the bus's positive queue size", queueSize)
	}
	sub := subscribe(t, e.bus, e.topic(), e.group("slow"))
	fill := values("job_b", "m", queueSize)
	publish(t, e.bus, e.topic(), fill...)

	// The group is QueueSize behind: the next Publish blocks until its ctx ends.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	start := time.Now()
	err := e.bus.Publish(ctx, e.topic(), msg("job_b", "timed-out"))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish to a full topic: %v, want context.DeadlineExceeded", err)
	}
	if waited := time.Since(start); waited < 90*time.Millisecond {
		t.Fatalf("Publish to a full topic returned after %v, want it to block until its deadline", waited)
	}

	// It unblocks once the group acks.
	published := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		published <- e.bus.Publish(ctx, e.topic(), msg("job_b", "last"))
	}()
	select {
	case err := <-published:
		t.Fatalf("Publish to a full topic returned %v before any ack", err)
	case <-time.After(50 * time.Millisecond):
	}
	ack(t, sub, fetch(t, sub))
	select {
	case err := <-published:
		if err != nil {
			t.Fatalf("Publish after an ack: %v", err)
		}
	case <-time.After(opTimeout):
		t.Fatalf("Publish still blocked %v after an ack made room", opTimeout)
	}
	want := slices.Concat(fill[1:], []ingest.Message{msg("job_b", "last")})
	wantValues(t, fetchValues(t, sub, len(want), true), want)
	expectQuiet(t, sub)
}
