// Package kafkabus is the ingest.Bus on Kafka (segmentio/kafka-go), the bus
// of the scaled-out shape where every role runs as its own process.
//
// # Topics and keys
//
// Bus topic t is the Kafka topic Config.TopicPrefix+t: "trawl.tasks",
// "trawl.ports", "trawl.events", "trawl.blobs". Publish sends each message to the partition
// its key hashes to (murmur2, as Java clients do), so messages with equal
// keys keep their order and the rest spread: tasks and events are keyed by
// job id (a job's tasks, and its events up to the terminal job_status, stay
// in order for every consumer), open ports by ip (load spreads over
// partitions and so over workers). InitTopics (`trawl kafka init`) creates
// the four topics with the configured partitions and replication (blobs
// with room for messages of MaxBlobBytes);
// Config.CreateTopics also creates any topic on first use.
//
// # How each role subscribes
//
//   - Scanners: group "scanner-<i>-of-<n>" on tasks. Each shard is its own
//     group, so every shard sees every task; replicas of one shard share its
//     group, so a task whose scanner dies unacked goes to another replica.
//   - Probe workers: one shared group ("workers") on ports: Kafka splits the
//     partitions among them. They also read tasks ephemerally (group "") to
//     hear cancels.
//   - Ingesters: one shared group on events; the job tracker: its own group.
//   - Stream servers: ephemeral (group "") on events. Every stream server
//     must see every live event of the jobs its clients follow, so none may
//     share a group; an ephemeral subscriber reads every partition from its
//     end offset at Subscribe, commits nothing, and replays history from
//     storage instead.
//
// # Delivery
//
// At-least-once end to end: Publish returns once every message is acked by
// all in-sync replicas (RequiredAcks all), so a caller may then ack its own
// input; Ack commits only when every delivery of the partition before it is
// acked too (Kafka keeps one offset per partition and group, workers finish
// in any order). Closing a subscription leaves the group; whatever it had not
// acked is read again by the member the partition moves to. A delivery acked
// just as its partition moves may be read again by the new owner (kafka-go's
// Reader hands out messages it buffered before a rebalance, and their commit
// may land after the new owner read the group's offsets): consumers dedupe
// by record id, as everywhere. A member never gets back what it acked itself.
//
// # Cursors
//
// Delivery.Offset is the Kafka offset in Delivery.Partition and Epoch is 0
// (offsets are durable), so Delivery.Cursor is stable across consumers and
// restarts. Cursors order events per partition only; a job's events share
// one partition (keyed by job id), which is the order `since=` resumes in.
// Adding partitions to a topic moves keys, and so breaks that order for the
// jobs running while it happens.
package kafkabus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"trawl/ingest"
)

var (
	// ErrUnreachable: no broker answered within Config.DialTimeout.
	ErrUnreachable = errors.New("kafka brokers unreachable")
	// ErrUnknownDelivery and ErrSubscriptionClosed are the bus-wide errors,
	// so role code branches on them the same way on every bus.
	ErrUnknownDelivery    = ingest.ErrUnknownDelivery
	ErrSubscriptionClosed = ingest.ErrSubscriptionClosed
)

// metadataTTL is how long the producer's view of the cluster (topics,
// partition leaders) is trusted; short so a topic created by another process
// is found within a retry or two.
const metadataTTL = time.Second

// Bus is the Kafka bus. It is safe for concurrent use.
type Bus struct {
	cfg       Config
	log       zerolog.Logger
	transport *kafka.Transport
	client    *kafka.Client
	writer    *kafka.Writer
	dialer    *kafka.Dialer

	done      chan struct{} // closed by Close
	closeOnce sync.Once

	mu    sync.Mutex
	subs  map[subscription]struct{} // open subscriptions, closed with the bus
	known map[string]bool           // Kafka topics known to exist
}

var _ ingest.Bus = (*Bus)(nil)

// New connects to the cluster: it returns ErrUnreachable when no broker
// answers within cfg.DialTimeout, so a misconfigured role fails at start.
func New(cfg Config, log zerolog.Logger) (*Bus, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cannot start kafka bus: %w", err)
	}
	transport := newTransport(cfg)
	b := &Bus{
		cfg:       cfg,
		log:       log,
		transport: transport,
		client:    &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Transport: transport},
		dialer:    &kafka.Dialer{ClientID: cfg.ClientID, Timeout: cfg.DialTimeout, DualStack: true},
		done:      make(chan struct{}),
		subs:      make(map[subscription]struct{}),
		known:     make(map[string]bool),
	}
	b.writer = &kafka.Writer{
		Addr:         kafka.TCP(cfg.Brokers...),
		Balancer:     &kafka.Murmur2Balancer{Consistent: true},
		BatchSize:    cfg.BatchSize,
		BatchBytes:   16 << 20,
		BatchTimeout: cfg.BatchTimeout,
		RequiredAcks: kafka.RequireAll,
		Transport:    transport,
		ErrorLogger:  kafka.LoggerFunc(func(msg string, args ...any) { log.Warn().Msgf(msg, args...) }),
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.DialTimeout)
	defer cancel()
	if _, err := b.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{}}); err != nil {
		transport.CloseIdleConnections()
		return nil, fmt.Errorf("cannot reach %v: %w: %w", cfg.Brokers, ErrUnreachable, err)
	}
	return b, nil
}

func newTransport(cfg Config) *kafka.Transport {
	return &kafka.Transport{
		ClientID:    cfg.ClientID,
		DialTimeout: cfg.DialTimeout,
		MetadataTTL: metadataTTL,
	}
}

// Close closes every open subscription (blocked calls return
// ingest.ErrClosed), flushes the producer and drops the connections. Later
// calls fail with ingest.ErrClosed; closing twice is harmless.
func (b *Bus) Close() error {
	var err error
	b.closeOnce.Do(func() {
		close(b.done)
		b.mu.Lock()
		subs := make([]subscription, 0, len(b.subs))
		for s := range b.subs {
			subs = append(subs, s)
		}
		b.mu.Unlock()
		var errs []error
		for _, s := range subs {
			errs = append(errs, s.Close())
		}
		errs = append(errs, b.writer.Close())
		b.transport.CloseIdleConnections()
		err = errors.Join(errs...)
		b.log.Debug().Msg("kafka bus closed")
	})
	return err
}

func (b *Bus) closed() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// kafkaTopic is the Kafka topic behind bus topic t.
func (b *Bus) kafkaTopic(t string) string { return b.cfg.TopicPrefix + t }

// Publish appends msgs to topic and returns once the brokers acked every one
// (all in-sync replicas). Messages with equal keys keep their order. When ctx
// ends first, ctx.Err() is returned and some messages may be published.
func (b *Bus) Publish(ctx context.Context, topic string, msgs ...ingest.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if b.closed() {
		return fmt.Errorf("cannot publish to %s: %w", topic, ingest.ErrClosed)
	}
	if topic == "" {
		return errors.New("cannot publish: empty topic name")
	}
	if len(msgs) == 0 {
		return nil
	}
	name := b.kafkaTopic(topic)
	if err := b.ensureTopic(ctx, name); err != nil {
		return err
	}
	kmsgs := make([]kafka.Message, len(msgs))
	for i, m := range msgs {
		kmsgs[i] = kafka.Message{Topic: name, Key: m.Key, Value: m.Value}
	}
	if err := b.writer.WriteMessages(ctx, kmsgs...); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if b.closed() {
			return fmt.Errorf("cannot publish to %s: %w", topic, ingest.ErrClosed)
		}
		return fmt.Errorf("cannot publish %d messages to %s: %w", len(msgs), name, err)
	}
	return nil
}

// Subscribe joins group on topic; group "" is an ephemeral subscriber that
// sees what is published after Subscribe returns. The subscription closes
// when ctx ends.
func (b *Bus) Subscribe(ctx context.Context, topic, group string) (ingest.Subscription, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if b.closed() {
		return nil, fmt.Errorf("cannot subscribe to %s: %w", topic, ingest.ErrClosed)
	}
	if topic == "" {
		return nil, errors.New("cannot subscribe: empty topic name")
	}
	name := b.kafkaTopic(topic)
	if err := b.ensureTopic(ctx, name); err != nil {
		return nil, err
	}
	var (
		sub subscription
		err error
	)
	if group == "" {
		sub, err = b.newEphemeral(ctx, name)
	} else {
		sub = b.newGroupSub(name, group)
	}
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	if b.closed() {
		b.mu.Unlock()
		_ = sub.Close()
		return nil, fmt.Errorf("cannot subscribe to %s: %w", topic, ingest.ErrClosed)
	}
	b.subs[sub] = struct{}{}
	b.mu.Unlock()
	sub.closeWith(ctx)
	b.log.Debug().Str("topic", name).Str("group", group).Msg("subscribed")
	return sub, nil
}

// forget drops a closed subscription from the bus's set.
func (b *Bus) forget(sub subscription) {
	b.mu.Lock()
	delete(b.subs, sub)
	b.mu.Unlock()
}

// closeErr is the error a call on a closed subscription returns.
func (b *Bus) closeErr() error {
	if b.closed() {
		return ingest.ErrClosed
	}
	return ErrSubscriptionClosed
}

// ensureTopic creates topic unless it is known to exist (or creating is off).
func (b *Bus) ensureTopic(ctx context.Context, topic string) error {
	if !b.cfg.CreateTopics {
		return nil
	}
	b.mu.Lock()
	known := b.known[topic]
	b.mu.Unlock()
	if known {
		return nil
	}
	if err := createTopics(ctx, b.client, b.cfg, topic); err != nil {
		return err
	}
	b.mu.Lock()
	b.known[topic] = true
	b.mu.Unlock()
	return nil
}

// InitTopics creates the bus's topics (tasks, ports, events under
// cfg.TopicPrefix) with cfg's partitions and replication. Topics that exist
// already are left as they are, so running it again is harmless.
func InitTopics(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("cannot create topics: %w", err)
	}
	transport := newTransport(cfg)
	defer transport.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Transport: transport}
	names := []string{ingest.TopicTasks, ingest.TopicPorts, ingest.TopicEvents, ingest.TopicBlobs}
	for i, n := range names {
		names[i] = cfg.TopicPrefix + n
	}
	return createTopics(ctx, client, cfg, names...)
}

// MaxBlobBytes is the largest blob (a screenshot PNG) the blobs topic is
// created to hold; publishers refuse larger ones.
const MaxBlobBytes = 8 << 20

func createTopics(ctx context.Context, client *kafka.Client, cfg Config, names ...string) error {
	req := &kafka.CreateTopicsRequest{Topics: make([]kafka.TopicConfig, len(names))}
	for i, n := range names {
		req.Topics[i] = kafka.TopicConfig{Topic: n, NumPartitions: cfg.Partitions, ReplicationFactor: cfg.Replication}
		if n == cfg.TopicPrefix+ingest.TopicBlobs { // a screenshot outgrows the broker's 1 MB default
			req.Topics[i].ConfigEntries = []kafka.ConfigEntry{{ConfigName: "max.message.bytes", ConfigValue: strconv.Itoa(MaxBlobBytes + 64<<10)}}
		}
	}
	resp, err := client.CreateTopics(ctx, req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("cannot create topics %v: %w", names, ctx.Err())
		}
		return fmt.Errorf("cannot create topics %v: %w", names, err)
	}
	var errs []error
	for _, n := range names {
		if err := resp.Errors[n]; err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			errs = append(errs, fmt.Errorf("cannot create topic %s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

// readerLoggers routes kafka-go's reader logs to log: its chatter at trace,
// its errors at debug (they are retried, and Fetch reports what is not).
func readerLoggers(log zerolog.Logger) (kafka.Logger, kafka.Logger) {
	return kafka.LoggerFunc(func(msg string, args ...any) { log.Trace().Msgf(msg, args...) }),
		kafka.LoggerFunc(func(msg string, args ...any) { log.Debug().Msgf(msg, args...) })
}
