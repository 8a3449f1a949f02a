// Package membus is the in-process ingest.Bus that `trawl all` runs on. It
// keeps Kafka's semantics so roles behave the same on both buses: a topic is
// an append-only log with offsets, a consumer group has a cursor and a set of
// unacked deliveries, a new group starts at the oldest retained message, and
// unacked deliveries go back to the group when their subscription closes.
//
// Retention doubles as backpressure: a message is trimmed once every durable
// group has acked it, and Publish blocks while the slowest durable group is
// Config.QueueSize messages behind. Ephemeral subscribers (group "") never
// hold anything back: they are cut off with ErrOverflow instead.
package membus

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"trawl/ingest"
)

var (
	// ErrOverflow: an ephemeral subscriber fell QueueSize messages behind and
	// was cut off; its Fetch returns this from then on.
	ErrOverflow = errors.New("subscriber overflow")
	// ErrUnknownDelivery and ErrSubscriptionClosed are the bus-wide errors,
	// so role code branches on them the same way on every bus.
	ErrUnknownDelivery    = ingest.ErrUnknownDelivery
	ErrSubscriptionClosed = ingest.ErrSubscriptionClosed
)

// Config sizes the bus.
type Config struct {
	// QueueSize bounds each topic: how far the slowest durable group may fall
	// behind before Publish blocks, how many messages a topic without durable
	// groups keeps, and each ephemeral subscriber's buffer.
	QueueSize int
}

const defaultQueueSize = 65536

// DefaultConfig returns the defaults RegisterFlags sets.
func DefaultConfig() Config { return Config{QueueSize: defaultQueueSize} }

// RegisterFlags registers the bus flags under prefix and sets their defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet, prefix string) {
	fs.IntVar(&c.QueueSize, prefix+"queue-size", defaultQueueSize,
		"messages per topic the slowest consumer group may fall behind before publishers block")
}

// Validate reports every invalid setting.
func (c *Config) Validate() error {
	if c.QueueSize <= 0 {
		return fmt.Errorf("invalid queue-size %d: must be positive", c.QueueSize)
	}
	return nil
}

// Bus is the in-process bus. It is safe for concurrent use.
type Bus struct {
	queueSize int
	log       zerolog.Logger
	// epoch (unix ms at New) tells this bus's offsets from an earlier
	// run's: event ids derive from (epoch, offset).
	epoch int64

	done      chan struct{} // closed by Close; wakes every blocked call
	closeOnce sync.Once

	mu     sync.Mutex
	topics map[string]*topic
}

var _ ingest.Bus = (*Bus)(nil)

// New returns an empty bus. cfg must be valid; a non-positive QueueSize is
// replaced by the default.
func New(cfg Config, log zerolog.Logger) *Bus {
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = defaultQueueSize
	}
	return &Bus{
		queueSize: cfg.QueueSize,
		log:       log,
		epoch:     time.Now().UnixMilli(),
		done:      make(chan struct{}),
		topics:    make(map[string]*topic),
	}
}

// Close wakes every blocked call with ingest.ErrClosed; later calls fail with
// it too. Closing twice is harmless.
func (b *Bus) Close() error {
	b.closeOnce.Do(func() {
		close(b.done)
		b.log.Debug().Msg("bus closed")
	})
	return nil
}

func (b *Bus) closed() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

func (b *Bus) topic(name string) *topic {
	b.mu.Lock()
	defer b.mu.Unlock()
	t, ok := b.topics[name]
	if !ok {
		t = &topic{bus: b, name: name, groups: make(map[string]*group)}
		b.topics[name] = t
	}
	return t
}

// Publish appends msgs to topic, in order. It copies the messages, so the
// caller may reuse its buffers once Publish returns. While the slowest
// durable group is QueueSize messages behind it blocks until there is room,
// ctx ends (ctx.Err() is returned; messages before the blocked one are
// published) or the bus closes.
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
	// One allocation holds every byte of the batch, copied before taking the
	// lock so publishers contend only for the appends.
	total := 0
	for i := range msgs {
		total += len(msgs[i].Key) + len(msgs[i].Value)
	}
	arena := make([]byte, 0, total)
	for i := range msgs {
		arena = append(arena, msgs[i].Key...)
		arena = append(arena, msgs[i].Value...)
	}
	return b.topic(topic).publish(ctx, msgs, arena)
}

// Subscribe joins group on topic. A group that does not exist yet starts at
// the oldest message the topic still retains. Group "" is an ephemeral
// subscriber: it sees only messages published after Subscribe returns, its
// acks are no-ops, and if it falls QueueSize messages behind it is cut off
// (Fetch returns ErrOverflow) rather than slowing publishers. The
// subscription closes when ctx ends.
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
	t := b.topic(topic)
	if group == "" {
		return t.subscribeEphemeral(ctx), nil
	}
	return t.subscribeMember(ctx, group), nil
}
