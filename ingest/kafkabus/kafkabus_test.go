package kafkabus

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"trawl/ingest"
	"trawl/ingest/bustest"
)

const testTimeout = 10 * time.Second

// startCluster starts an in-memory Kafka (kfake) listening on 127.0.0.1 and
// returns its addresses; the bus talks to it over TCP like to any broker.
func startCluster(t testing.TB, brokers int) []string {
	t.Helper()
	c, err := kfake.NewCluster(
		kfake.NumBrokers(brokers),
		// Members notice a rebalance within a heartbeat; let them use short
		// sessions so tests do not wait on Kafka's 6s minimum.
		kfake.GroupMinSessionTimeout(100*time.Millisecond),
	)
	if err != nil {
		t.Fatalf("cannot start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

// testConfig is a config for tests: few partitions, quick group timings.
func testConfig(brokers []string) Config {
	cfg := DefaultConfig()
	cfg.Brokers = brokers
	cfg.Partitions = 4
	cfg.DialTimeout = 2 * time.Second
	cfg.MaxWait = 200 * time.Millisecond
	cfg.HeartbeatInterval = 100 * time.Millisecond
	cfg.SessionTimeout = 2 * time.Second
	cfg.RebalanceTimeout = 2 * time.Second
	return cfg
}

func testLogger(t testing.TB) zerolog.Logger {
	if os.Getenv("KAFKABUS_LOG") == "" {
		return zerolog.Nop()
	}
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel).With().Str("test", t.Name()).Logger()
}

func newTestBus(t testing.TB, cfg Config) *Bus {
	t.Helper()
	b, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func ctxT(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func TestConformance(t *testing.T) {
	brokers := startCluster(t, 1)
	bustest.Run(t, func(t *testing.T) ingest.Bus { return newTestBus(t, testConfig(brokers)) },
		bustest.Capabilities{Backpressure: false})
}

func TestConformanceThreeBrokers(t *testing.T) {
	if testing.Short() {
		t.Skip("one broker is enough in -short")
	}
	brokers := startCluster(t, 3)
	bustest.Run(t, func(t *testing.T) ingest.Bus { return newTestBus(t, testConfig(brokers)) },
		bustest.Capabilities{Backpressure: false})
}

func TestConfig(t *testing.T) {
	def := DefaultConfig()
	if err := def.Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate(): %v", err)
	}

	var cfg Config
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	cfg.RegisterFlags(fs, "kafka.")
	if fmt.Sprint(cfg) != fmt.Sprint(def) {
		t.Fatalf("RegisterFlags defaults = %+v, want %+v", cfg, def)
	}
	err := fs.Parse([]string{"-kafka.brokers= k1:9092, k2:9093 ,", "-kafka.partitions=3",
		"-kafka.topic-prefix=prod.", "-kafka.batch-timeout=1ms", "-kafka.create-topics=false"})
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if !slices.Equal(cfg.Brokers, []string{"k1:9092", "k2:9093"}) || cfg.Partitions != 3 ||
		cfg.TopicPrefix != "prod." || cfg.BatchTimeout != time.Millisecond || cfg.CreateTopics {
		t.Fatalf("parsed config = %+v", cfg)
	}
	if got := fs.Lookup("kafka.brokers").Value.String(); got != "k1:9092,k2:9093" {
		t.Fatalf("brokers flag prints %q", got)
	}

	bad := Config{Brokers: []string{"nohost"}, Replication: 0, TopicPrefix: "bad/prefix",
		HeartbeatInterval: 2 * time.Second, SessionTimeout: time.Second}
	err = bad.Validate()
	if err == nil {
		t.Fatal("Validate accepted an invalid config")
	}
	// Every problem is reported at once.
	for _, want := range []string{"broker \"nohost\"", "partitions", "replication", "topic-prefix",
		"batch-size", "batch-timeout", "max-wait", "dial-timeout", "min-bytes", "heartbeat-interval 2s: must be shorter"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error lacks %q: %v", want, err)
		}
	}
	if err := (&Config{}).Validate(); err == nil || !strings.Contains(err.Error(), "at least one") {
		t.Fatalf("Validate of an empty config: %v, want a missing-brokers error", err)
	}
	if _, err := New(bad, zerolog.Nop()); err == nil {
		t.Fatal("New accepted an invalid config")
	}
}

// TestOutOfOrderAcks: acks in any order commit only the contiguous prefix,
// so a member that takes over after Close gets exactly the unacked ones.
func TestOutOfOrderAcks(t *testing.T) {
	b := newTestBus(t, testConfig(startCluster(t, 1)))
	ctx := ctxT(t)
	const topic, group = "ooo", "g"
	var msgs []ingest.Message
	for i := range 10 {
		msgs = append(msgs, ingest.Message{Key: []byte("one-key"), Value: fmt.Appendf(nil, "m%d", i)})
	}
	if err := b.Publish(ctx, topic, msgs...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	first, err := b.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	var ds []ingest.Delivery
	for range msgs {
		d, err := first.Fetch(ctx)
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		ds = append(ds, d)
	}
	// Acked: 0, 1, 2, 5, 6, 9; unacked: 3, 4, 7, 8. The commit stops at 3.
	for _, i := range []int{9, 1, 6, 0, 5, 2} {
		if err := first.Ack(ctx, ds[i]); err != nil {
			t.Fatalf("Ack(m%d): %v", i, err)
		}
	}
	if err := first.Ack(ctx, ds[9]); !errors.Is(err, ErrUnknownDelivery) {
		t.Fatalf("second Ack of m9: %v, want ErrUnknownDelivery", err)
	}
	if err := first.Ack(ctx, ingest.Delivery{Partition: ds[0].Partition, Offset: 1 << 40}); !errors.Is(err, ErrUnknownDelivery) {
		t.Fatalf("Ack of an offset never fetched: %v, want ErrUnknownDelivery", err)
	}
	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := first.Ack(ctx, ds[3]); !errors.Is(err, ErrSubscriptionClosed) {
		t.Fatalf("Ack after Close: %v, want ErrSubscriptionClosed", err)
	}

	second, err := b.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	t.Cleanup(func() { _ = second.Close() })
	// Redelivered from the committed offset: m3..m9 (m5, m6, m9 were acked
	// above the gap, so Kafka cannot know; at-least-once).
	for i := 3; i < 10; i++ {
		d, err := second.Fetch(ctx)
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		if want := fmt.Sprintf("m%d", i); string(d.Value) != want {
			t.Fatalf("redelivered %q, want %q", d.Value, want)
		}
		if err := second.Ack(ctx, d); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
	quiet, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if d, err := second.Fetch(quiet); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Fetch after all redelivered = %q, %v; want nothing", d.Value, err)
	}
}

// TestInitTopicsIdempotent: InitTopics creates the four topics with the
// configured partitions (blobs with room for a screenshot) and succeeds
// again when they exist.
func TestInitTopicsIdempotent(t *testing.T) {
	brokers := startCluster(t, 1)
	cfg := testConfig(brokers)
	cfg.Partitions = 5
	cfg.TopicPrefix = "init-test."
	ctx := ctxT(t)
	for round := range 2 {
		if err := InitTopics(ctx, cfg); err != nil {
			t.Fatalf("InitTopics round %d: %v", round, err)
		}
	}
	conn, err := kafka.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer conn.Close()
	for _, topic := range []string{ingest.TopicTasks, ingest.TopicPorts, ingest.TopicEvents, ingest.TopicBlobs} {
		parts, err := conn.ReadPartitions("init-test." + topic)
		if err != nil {
			t.Fatalf("ReadPartitions(%s): %v", topic, err)
		}
		if len(parts) != 5 {
			t.Fatalf("topic %s has %d partitions, want 5", topic, len(parts))
		}
	}

	client := &kafka.Client{Addr: kafka.TCP(brokers...)}
	described, err := client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: "init-test." + ingest.TopicBlobs, ConfigNames: []string{"max.message.bytes"},
	}}})
	if err != nil || len(described.Resources) != 1 || len(described.Resources[0].ConfigEntries) != 1 {
		t.Fatalf("DescribeConfigs(blobs): %+v %v", described, err)
	}
	if got, want := described.Resources[0].ConfigEntries[0].ConfigValue, strconv.Itoa(MaxBlobBytes+64<<10); got != want {
		t.Errorf("blobs max.message.bytes = %s, want %s", got, want)
	}

	bad := cfg
	bad.Replication = 3 // one broker cannot hold three replicas
	bad.TopicPrefix = "init-bad."
	if err := InitTopics(ctx, bad); err == nil || !strings.Contains(err.Error(), "init-bad.tasks") {
		t.Fatalf("InitTopics with replication 3 on one broker: %v, want an error naming the topic", err)
	}
	if err := InitTopics(ctx, Config{}); err == nil {
		t.Fatal("InitTopics accepted an invalid config")
	}
}

// TestOrderPerKeyAcrossPartitions: many keys spread over the partitions and
// each key's messages arrive in publish order, from concurrent publishers.
func TestOrderPerKeyAcrossPartitions(t *testing.T) {
	cfg := testConfig(startCluster(t, 1))
	cfg.Partitions = 8
	b := newTestBus(t, cfg)
	ctx := ctxT(t)
	const topic, keys, perKey = "order", 32, 50
	sub, err := b.Subscribe(ctx, topic, "g")
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	eph, err := b.Subscribe(ctx, topic, "")
	if err != nil {
		t.Fatalf("Subscribe ephemeral: %v", err)
	}
	var wg sync.WaitGroup
	errc := make(chan error, keys)
	for k := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perKey; i += 5 { // batches of five
				var batch []ingest.Message
				for j := i; j < i+5; j++ {
					batch = append(batch, ingest.Message{Key: fmt.Appendf(nil, "ip-%d", k), Value: fmt.Appendf(nil, "%d/%d", k, j)})
				}
				if err := b.Publish(ctx, topic, batch...); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatalf("Publish: %v", err)
	}
	for name, s := range map[string]ingest.Subscription{"group": sub, "ephemeral": eph} {
		next := make(map[int]int)
		partOf := make(map[int]int)
		parts := make(map[int]bool)
		for range keys * perKey {
			d, err := s.Fetch(ctx)
			if err != nil {
				t.Fatalf("%s Fetch: %v", name, err)
			}
			var k, j int
			if _, err := fmt.Sscanf(string(d.Value), "%d/%d", &k, &j); err != nil {
				t.Fatalf("%s: bad value %q", name, d.Value)
			}
			if j != next[k] {
				t.Fatalf("%s: key %d delivered %d, want %d (order lost)", name, k, j, next[k])
			}
			if p, ok := partOf[k]; ok && p != d.Partition {
				t.Fatalf("%s: key %d on partitions %d and %d", name, k, p, d.Partition)
			}
			partOf[k] = d.Partition
			parts[d.Partition] = true
			next[k]++
			if err := s.Ack(ctx, d); err != nil {
				t.Fatalf("%s Ack: %v", name, err)
			}
		}
		if len(parts) < 4 {
			t.Fatalf("%s: %d keys landed on %d of 8 partitions, want them spread", name, keys, len(parts))
		}
	}
}

// TestUnreachable: New fails with ErrUnreachable, promptly when the port is
// closed and within the dial timeout when the broker never answers.
func TestUnreachable(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	// A broker that accepts connections and never answers.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() { silent.Close() })
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})

	for name, addr := range map[string]string{"refused": closedAddr, "silent": silent.Addr().String()} {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig([]string{addr})
			cfg.DialTimeout = 500 * time.Millisecond
			start := time.Now()
			b, err := New(cfg, zerolog.Nop())
			took := time.Since(start)
			if err == nil {
				b.Close()
				t.Fatal("New succeeded without a broker")
			}
			if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), addr) {
				t.Fatalf("New: %v, want ErrUnreachable naming %s", err, addr)
			}
			if took > cfg.DialTimeout+500*time.Millisecond {
				t.Fatalf("New took %v, want within the dial timeout %v", took, cfg.DialTimeout)
			}
			t.Logf("New failed after %v: %v", took, err)
		})
	}
}

// TestSubscribeContextCloses: ending the Subscribe context closes the
// subscription, like membus.
func TestSubscribeContextCloses(t *testing.T) {
	b := newTestBus(t, testConfig(startCluster(t, 1)))
	for _, group := range []string{"g", ""} {
		ctx, cancel := context.WithCancel(context.Background())
		sub, err := b.Subscribe(ctx, "ctx", group)
		if err != nil {
			t.Fatalf("Subscribe(%q): %v", group, err)
		}
		cancel()
		deadline := time.Now().Add(testTimeout)
		for {
			fctx, fcancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			_, err := sub.Fetch(fctx)
			fcancel()
			if errors.Is(err, ErrSubscriptionClosed) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("group %q: Fetch after the Subscribe context ended: %v, want ErrSubscriptionClosed", group, err)
			}
		}
	}
}

// TestTopicPrefix: bus topics live under the prefix, and without
// CreateTopics a missing topic is an error, not a silent hang.
func TestTopicPrefix(t *testing.T) {
	brokers := startCluster(t, 1)
	cfg := testConfig(brokers)
	cfg.TopicPrefix = "pfx."
	b := newTestBus(t, cfg)
	ctx := ctxT(t)
	if err := b.Publish(ctx, ingest.TopicPorts, ingest.Message{Key: []byte("10.0.0.1"), Value: []byte("x")}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	conn, err := kafka.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions("pfx.ports")
	if err != nil || len(parts) != cfg.Partitions {
		t.Fatalf("ReadPartitions(pfx.ports) = %d partitions, %v; want %d", len(parts), err, cfg.Partitions)
	}

	noCreate := cfg
	noCreate.CreateTopics = false
	nb := newTestBus(t, noCreate)
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := nb.Subscribe(short, "missing", ""); err == nil {
		t.Fatal("ephemeral Subscribe to a missing topic without CreateTopics succeeded")
	}
}

// TestEphemeralOnTopicCreatedElsewhere: a topic another process created
// after this bus started is found (its metadata is refreshed), and an
// ephemeral subscriber sees what is published right after Subscribe.
func TestEphemeralOnTopicCreatedElsewhere(t *testing.T) {
	brokers := startCluster(t, 1)
	cfg := testConfig(brokers)
	cfg.CreateTopics = false
	reader := newTestBus(t, cfg)
	ctx := ctxT(t)
	other := cfg
	other.CreateTopics = true
	writer := newTestBus(t, other)
	if err := writer.Publish(ctx, "elsewhere", ingest.Message{Key: []byte("k"), Value: []byte("before")}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	sub, err := reader.Subscribe(ctx, "elsewhere", "")
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	if err := writer.Publish(ctx, "elsewhere", ingest.Message{Key: []byte("k"), Value: []byte("after")}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	d, err := sub.Fetch(ctx)
	if err != nil || string(d.Value) != "after" {
		t.Fatalf("Fetch = %q, %v; want \"after\"", d.Value, err)
	}
	if err := sub.Ack(ctx, d); err != nil {
		t.Fatalf("ephemeral Ack: %v, want a no-op", err)
	}
}
