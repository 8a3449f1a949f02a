// Package ingest owns the bus every role talks through, the versioned wire
// records that travel on it, and the ingester that batches events into storage.
package ingest

import (
	"context"
	"encoding/binary"
	"errors"
)

// Topics. Every per-job event (open ports, module results, job status, scanner
// statistics) shares one topic keyed by job id, so each consumer sees a job's
// events in the order they were published: the terminal job_status, which the
// tracker publishes only after it has seen every result, is therefore last for
// every consumer (stream, ingest) without cross-topic coordination.
const (
	TopicTasks  = "tasks"  // Task records (start, cancel); key: job id
	TopicPorts  = "ports"  // OpenPort records for probe workers; key: ip
	TopicEvents = "events" // Event records; key: job id
	// TopicBlobs carries probe artifacts (VNC screenshots) from workers that
	// run apart from the API to the API node, which stores and serves them.
	TopicBlobs = "blobs" // Blob records; key: job id
)

// Message is one record on the bus. Key chooses the partition where the bus
// has partitions: messages with equal keys keep their order.
type Message struct {
	Key   []byte
	Value []byte
}

// Delivery is a message handed to a subscriber; it must be acked once its
// effect is durable. Unacked deliveries are redelivered to another member of
// the group when the subscription that received them closes.
type Delivery struct {
	Message
	// Offset is the message's position in its topic (per partition where the
	// bus has partitions); informative only.
	Offset int64
	// Partition is 0 for buses without partitions.
	Partition int
	// Epoch tells runs of a bus whose offsets restart apart (membus: the
	// unix milliseconds it started); 0 where offsets are durable (Kafka).
	Epoch int64
	// Token identifies the delivery to the subscription that handed it out.
	Token uint64
}

// Cursor is the event id of a delivery: its position in the topic, as
// "ev_" + 26 base32 digits of (epoch, partition, offset), so ids sort in the
// order the topic holds the events. Every consumer of a message derives the
// same id from it — the ingester stores it, the stream servers send it —
// which makes `since=<id>` resume exactly where a client stopped, whatever
// order the producers generated their events in. (Across the partitions of
// a partitioned bus the ids order per partition; a job's events share one.)
func (d Delivery) Cursor() string {
	var b [cursorLen]byte
	return string(d.AppendCursor(b[:0]))
}

// cursorLen is the length of an event id: "ev_" and 26 base32 digits.
const cursorLen = 3 + 26

// AppendCursor appends the event id Cursor returns to dst.
func (d Delivery) AppendCursor(dst []byte) []byte {
	var b [16]byte
	binary.BigEndian.PutUint16(b[0:2], uint16(uint64(d.Epoch)>>32))
	binary.BigEndian.PutUint32(b[2:6], uint32(d.Epoch))
	binary.BigEndian.PutUint16(b[6:8], uint16(d.Partition))
	binary.BigEndian.PutUint64(b[8:16], uint64(d.Offset))
	dst = append(dst, "ev_"...)
	n := len(dst)
	dst = append(dst, make([]byte, 26)...)
	encodeBase32(dst[n:], b)
	return dst
}

// Bus is the message bus between roles: in-process (membus) on one machine,
// Kafka at scale. Delivery is at-least-once.
type Bus interface {
	// Publish appends msgs to topic. It may block while consumers are behind
	// (backpressure) and returns when ctx ends.
	Publish(ctx context.Context, topic string, msgs ...Message) error
	// Subscribe joins group on topic. Members of one group share the topic's
	// messages; every group sees every message. An empty group is an
	// ephemeral subscriber that sees only messages published after Subscribe
	// returns and whose acks are no-ops.
	Subscribe(ctx context.Context, topic, group string) (Subscription, error)
	Close() error
}

// Subscription is one member of a consumer group.
type Subscription interface {
	// Fetch blocks for the next delivery or until ctx ends.
	Fetch(ctx context.Context) (Delivery, error)
	// Ack marks a delivery handled; it is not delivered to the group again.
	Ack(ctx context.Context, d Delivery) error
	// Close leaves the group; unacked deliveries go back to the group.
	Close() error
}

var (
	// ErrClosed is returned by bus operations after Close.
	ErrClosed = errors.New("bus closed")
	// ErrUnknownDelivery: Ack of a delivery the subscription does not hold
	// (never handed out, already acked, or another subscription's).
	ErrUnknownDelivery = errors.New("unknown delivery")
	// ErrSubscriptionClosed: the subscription was closed, directly or by the
	// end of its Subscribe context.
	ErrSubscriptionClosed = errors.New("subscription closed")
)
