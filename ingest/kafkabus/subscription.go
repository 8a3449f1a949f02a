package kafkabus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"trawl/ingest"
)

// maxFetchBytes bounds one fetch response per partition.
const maxFetchBytes = 10 << 20

// subscription is what the bus keeps of an open subscription.
type subscription interface {
	ingest.Subscription
	// closeWith closes the subscription when ctx ends.
	closeWith(ctx context.Context)
}

// lifecycle is the closing state every subscription shares.
type lifecycle struct {
	bus       *Bus
	done      chan struct{} // closed by Close
	closeOnce sync.Once

	stopMu sync.Mutex
	stop   func() bool // unregisters the ctx hook
}

func newLifecycle(b *Bus) lifecycle { return lifecycle{bus: b, done: make(chan struct{})} }

func (l *lifecycle) isClosed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

func (l *lifecycle) hook(ctx context.Context, closeFn func()) {
	l.stopMu.Lock()
	defer l.stopMu.Unlock()
	if l.isClosed() {
		return
	}
	l.stop = context.AfterFunc(ctx, closeFn)
}

// shut marks the subscription closed once; it reports whether this call did.
func (l *lifecycle) shut() bool {
	first := false
	l.closeOnce.Do(func() {
		first = true
		close(l.done)
		l.stopMu.Lock()
		if l.stop != nil {
			l.stop()
		}
		l.stopMu.Unlock()
	})
	return first
}

// groupSub is a member of a Kafka consumer group.
type groupSub struct {
	lifecycle
	topic, group string
	reader       *kafka.Reader

	mu    sync.Mutex
	parts map[int]*partitionAcks
	// commitMu serializes commits so positions only move forward; acks that
	// queue behind a commit usually find their offset committed by it.
	commitMu sync.Mutex
}

func (b *Bus) newGroupSub(topic, group string) *groupSub {
	logger, errLogger := readerLoggers(b.log.With().Str("topic", topic).Str("group", group).Logger())
	cfg := b.cfg
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:               cfg.Brokers,
		GroupID:               group,
		Topic:                 topic,
		Dialer:                b.dialer,
		MinBytes:              cfg.MinBytes,
		MaxBytes:              maxFetchBytes,
		MaxWait:               cfg.MaxWait,
		HeartbeatInterval:     cfg.HeartbeatInterval,
		SessionTimeout:        cfg.SessionTimeout,
		RebalanceTimeout:      cfg.RebalanceTimeout,
		JoinGroupBackoff:      cfg.HeartbeatInterval,
		WatchPartitionChanges: true,
		CommitInterval:        0, // synchronous: Ack returns once the commit is durable
		StartOffset:           kafka.FirstOffset,
		ReadLagInterval:       -1,
		Logger:                logger,
		ErrorLogger:           errLogger,
	})
	return &groupSub{
		lifecycle: newLifecycle(b),
		topic:     topic,
		group:     group,
		reader:    r,
		parts:     make(map[int]*partitionAcks),
	}
}

func (s *groupSub) closeWith(ctx context.Context) { s.hook(ctx, func() { _ = s.Close() }) }

// Fetch returns the next message of the partitions this member holds.
//
// It skips messages below the position this subscription committed itself:
// those were acked here, and come back only because kafka-go starts a new
// generation's readers from the offsets the group held when it rejoined,
// which an ack of a message buffered from the old generation may since have
// moved past.
func (s *groupSub) Fetch(ctx context.Context) (ingest.Delivery, error) {
	for {
		if err := ctx.Err(); err != nil {
			return ingest.Delivery{}, err
		}
		if s.isClosed() {
			return ingest.Delivery{}, fmt.Errorf("cannot fetch from %s: %w", s.topic, s.bus.closeErr())
		}
		m, err := s.reader.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ingest.Delivery{}, ctx.Err()
			}
			if s.isClosed() {
				return ingest.Delivery{}, fmt.Errorf("cannot fetch from %s: %w", s.topic, s.bus.closeErr())
			}
			return ingest.Delivery{}, fmt.Errorf("cannot fetch from %s as %s: %w", s.topic, s.group, err)
		}
		s.mu.Lock()
		p := s.parts[m.Partition]
		if p == nil {
			p = newPartitionAcks()
			s.parts[m.Partition] = p
		}
		acked := m.Offset < p.committed
		if !acked {
			p.fetched(m.Offset)
		}
		s.mu.Unlock()
		if !acked {
			return delivery(m), nil
		}
	}
}

func delivery(m kafka.Message) ingest.Delivery {
	return ingest.Delivery{
		Message:   ingest.Message{Key: m.Key, Value: m.Value},
		Offset:    m.Offset,
		Partition: m.Partition,
		// Token is informative here: the (partition, offset) pair names a
		// delivery within one subscription.
		Token: uint64(m.Partition)<<48 | uint64(m.Offset)&(1<<48-1),
	}
}

// Ack marks d handled and commits the partition's position once every
// delivery before d is acked too; it returns once that commit is durable
// (or, when an earlier delivery is still out, at once: its Ack commits both).
func (s *groupSub) Ack(ctx context.Context, d ingest.Delivery) error {
	if s.isClosed() {
		return fmt.Errorf("cannot ack %s[%d]@%d: %w", s.topic, d.Partition, d.Offset, s.bus.closeErr())
	}
	s.mu.Lock()
	p := s.parts[d.Partition]
	ok := p != nil && p.ack(d.Offset)
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("cannot ack %s[%d]@%d: %w", s.topic, d.Partition, d.Offset, ErrUnknownDelivery)
	}
	return s.commit(ctx, d.Partition, p)
}

// rebalanceErrors are the commit failures of a group in the middle of a
// rebalance: the commit is retried in the next generation.
var rebalanceErrors = []error{
	kafka.RebalanceInProgress, kafka.IllegalGeneration, kafka.UnknownMemberId,
	kafka.NotCoordinatorForGroup, kafka.GroupCoordinatorNotAvailable,
}

func retriableCommit(err error) bool {
	for _, e := range rebalanceErrors {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func (s *groupSub) commit(ctx context.Context, partition int, p *partitionAcks) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	backoff := 20 * time.Millisecond
	for {
		s.mu.Lock()
		pos, committed := p.position(), p.committed
		s.mu.Unlock()
		if pos <= committed {
			return nil // nothing new, or an ack queued before us committed it
		}
		// kafka-go commits a message's offset + 1, the next one to read.
		err := s.reader.CommitMessages(ctx, kafka.Message{Topic: s.topic, Partition: partition, Offset: pos - 1})
		if err == nil {
			s.mu.Lock()
			p.committed = max(p.committed, pos)
			s.mu.Unlock()
			return nil
		}
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case s.isClosed():
			return fmt.Errorf("cannot commit %s[%d]@%d: %w", s.topic, partition, pos, s.bus.closeErr())
		case !retriableCommit(err):
			return fmt.Errorf("cannot commit %s[%d]@%d as %s: %w", s.topic, partition, pos, s.group, err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-s.done:
			t.Stop()
			return fmt.Errorf("cannot commit %s[%d]@%d: %w", s.topic, partition, pos, s.bus.closeErr())
		}
		backoff = min(2*backoff, time.Second)
	}
}

// Close leaves the group; Kafka's rebalance hands this member's partitions,
// from their committed offsets, to the others.
func (s *groupSub) Close() error {
	if !s.shut() {
		return nil
	}
	err := s.reader.Close()
	s.bus.forget(s)
	if err != nil {
		return fmt.Errorf("cannot close reader of %s as %s: %w", s.topic, s.group, err)
	}
	return nil
}

// ephemeralSub reads every partition of a topic from where it ended at
// Subscribe, with one partition reader each, merged into one Fetch.
type ephemeralSub struct {
	lifecycle
	topic   string
	readers []*kafka.Reader
	out     chan fetched
	cancel  context.CancelFunc // stops the pumps
	pumps   sync.WaitGroup
}

type fetched struct {
	msg kafka.Message
	err error
}

func (b *Bus) newEphemeral(ctx context.Context, topic string) (*ephemeralSub, error) {
	ends, err := b.endOffsets(ctx, topic)
	if err != nil {
		return nil, err
	}
	logger, errLogger := readerLoggers(b.log.With().Str("topic", topic).Logger())
	pumpCtx, cancel := context.WithCancel(context.Background())
	s := &ephemeralSub{lifecycle: newLifecycle(b), topic: topic, out: make(chan fetched), cancel: cancel}
	for partition, end := range ends {
		r := kafka.NewReader(kafka.ReaderConfig{
			Brokers:         b.cfg.Brokers,
			Topic:           topic,
			Partition:       partition,
			Dialer:          b.dialer,
			MinBytes:        b.cfg.MinBytes,
			MaxBytes:        maxFetchBytes,
			MaxWait:         b.cfg.MaxWait,
			ReadLagInterval: -1,
			Logger:          logger,
			ErrorLogger:     errLogger,
		})
		if err := r.SetOffset(end); err != nil {
			_ = r.Close()
			_ = s.Close()
			return nil, fmt.Errorf("cannot start reading %s[%d] at %d: %w", topic, partition, end, err)
		}
		s.readers = append(s.readers, r)
		s.pumps.Add(1)
		go s.pump(pumpCtx, r)
	}
	return s, nil
}

// endOffsets returns, per partition of topic, the offset the next message
// will get. A topic this process has not seen yet may take a metadata
// refresh to appear (created elsewhere since): it is retried for as long.
func (b *Bus) endOffsets(ctx context.Context, topic string) (map[int]int64, error) {
	deadline := time.Now().Add(2 * metadataTTL)
	for {
		ends, err := b.readEndOffsets(ctx, topic)
		if err == nil || !errors.Is(err, kafka.UnknownTopicOrPartition) || time.Now().After(deadline) {
			return ends, err
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
	}
}

func (b *Bus) readEndOffsets(ctx context.Context, topic string) (map[int]int64, error) {
	meta, err := b.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("cannot read partitions of %s: %w", topic, err)
	}
	var reqs []kafka.OffsetRequest
	for _, t := range meta.Topics {
		if t.Name != topic {
			continue
		}
		if t.Error != nil {
			return nil, fmt.Errorf("cannot read partitions of %s: %w", topic, t.Error)
		}
		for _, p := range t.Partitions {
			reqs = append(reqs, kafka.LastOffsetOf(p.ID))
		}
	}
	if len(reqs) == 0 {
		return nil, fmt.Errorf("cannot read partitions of %s: %w", topic, kafka.UnknownTopicOrPartition)
	}
	resp, err := b.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("cannot read end offsets of %s: %w", topic, err)
	}
	ends := make(map[int]int64, len(reqs))
	for _, po := range resp.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("cannot read end offset of %s[%d]: %w", topic, po.Partition, po.Error)
		}
		ends[po.Partition] = po.LastOffset
	}
	if len(ends) != len(reqs) {
		return nil, fmt.Errorf("cannot read end offsets of %s: got %d of %d partitions", topic, len(ends), len(reqs))
	}
	return ends, nil
}

// pump moves one partition's messages to out until ctx ends.
func (s *ephemeralSub) pump(ctx context.Context, r *kafka.Reader) {
	defer s.pumps.Done()
	for {
		m, err := r.FetchMessage(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			err = fmt.Errorf("cannot fetch from %s[%d]: %w", s.topic, r.Config().Partition, err)
		}
		select {
		case s.out <- fetched{msg: m, err: err}:
		case <-ctx.Done():
			return
		}
		if err != nil {
			// kafka-go retries most failures inside FetchMessage; pace
			// the rest rather than spin.
			t := time.NewTimer(100 * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
		}
	}
}

func (s *ephemeralSub) closeWith(ctx context.Context) { s.hook(ctx, func() { _ = s.Close() }) }

// Fetch returns the next message of any partition, in order per partition.
func (s *ephemeralSub) Fetch(ctx context.Context) (ingest.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return ingest.Delivery{}, err
	}
	if s.isClosed() {
		return ingest.Delivery{}, fmt.Errorf("cannot fetch from %s: %w", s.topic, s.bus.closeErr())
	}
	select {
	case f := <-s.out:
		if f.err != nil {
			return ingest.Delivery{}, f.err
		}
		return delivery(f.msg), nil
	case <-ctx.Done():
		return ingest.Delivery{}, ctx.Err()
	case <-s.done:
		return ingest.Delivery{}, fmt.Errorf("cannot fetch from %s: %w", s.topic, s.bus.closeErr())
	}
}

// Ack is a no-op: an ephemeral subscriber commits nothing.
func (s *ephemeralSub) Ack(context.Context, ingest.Delivery) error { return nil }

// Close stops the partition readers.
func (s *ephemeralSub) Close() error {
	if !s.shut() {
		return nil
	}
	s.cancel()
	var errs []error
	for _, r := range s.readers {
		errs = append(errs, r.Close())
	}
	s.pumps.Wait()
	s.bus.forget(s)
	return errors.Join(errs...)
}
