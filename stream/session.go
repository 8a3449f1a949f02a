package stream

import (
	"context"
	"time"

	"trawl/ingest"
	"trawl/storage"
)

const (
	// replayPage is how many stored events one replay query asks for.
	replayPage = 1000
	// maxBatch bounds how many queued events are written between flushes,
	// so heartbeats and kicks are noticed under a steady flow.
	maxBatch = 256
)

// sink writes one connection's stream: NDJSON lines or websocket frames.
// Only the connection's own goroutine calls it.
type sink interface {
	event(line []byte) error
	heartbeat(unixMillis int64) error
	// flush ends a batch of writes and pushes it to the client.
	flush() error
	// ping sends a keep-alive the client must answer, where the protocol
	// has one; pings reports whether it does.
	ping() error
	pings() bool
	// gone is closed when the client went away (nil when only the request
	// context tells).
	gone() <-chan struct{}
	// finish ends the stream, telling the client why and where to resume.
	finish(reason endReason, resumeSince string)
}

// session runs one subscription: replay, then live events, heartbeats, and
// the end of the stream.
type session struct {
	srv    *Server
	sub    *subscriber
	out    sink
	since  string // the client's cursor; "" when it gave none
	replay bool

	// last is where the client resumes from: the last event id written,
	// else the cursor it came with, else (live-only) the newest id the hub
	// had seen when it registered.
	last string
	// seen holds the most recently replayed ids: an event the ingester
	// stored before the bus handed it to this server is replayed from
	// storage and later arrives live too.
	seen        *ingest.RecentSet
	maxReplayed string
	batch       int // events written since the last flush
}

func (s *Server) newSession(sub *subscriber, out sink, since string, replay bool) *session {
	ss := &session{srv: s, sub: sub, out: out, since: since, replay: replay, last: since}
	if !replay {
		ss.last = sub.liveCursor
	}
	return ss
}

// run streams until the subscription ends and returns why.
func (ss *session) run(ctx context.Context) endReason {
	if ss.replay {
		if r := ss.replayStored(ctx); r != endNone {
			return r
		}
	}
	return ss.live(ctx)
}

// kickedReason returns why the hub dropped the subscriber, or endNone.
func (ss *session) kickedReason() endReason {
	select {
	case <-ss.sub.kicked:
		return ss.sub.reason
	default:
		return endNone
	}
}

// canceled maps the end of the request context: the server cancels it only
// after kicking every subscriber, so an unkicked subscriber's client left.
func (ss *session) canceled() endReason {
	if r := ss.kickedReason(); r != endNone {
		return r
	}
	return endClientGone
}

// write sends one event; it reports endJobFinished after a job stream's
// terminal event and endClientGone when the write failed.
func (ss *session) write(it *item) endReason {
	if err := ss.out.event(it.line); err != nil {
		return endClientGone
	}
	ss.last = it.id
	ss.batch++
	if ss.sub.jobID != "" && it.terminal {
		if ss.flush() != nil {
			return endClientGone
		}
		return endJobFinished
	}
	return endNone
}

func (ss *session) flush() error {
	ss.srv.stats.delivered.Add(uint64(ss.batch))
	ss.batch = 0
	return ss.out.flush()
}

func (ss *session) writeReplayed(it *item) endReason {
	ss.seen.Add(it.id)
	if it.id > ss.maxReplayed {
		ss.maxReplayed = it.id
	}
	ss.srv.stats.replayed.Add(1)
	return ss.write(it)
}

// replayStored sends the events after since: storage merged with the ring's
// snapshot in id order, each once. The ring holds what storage may not have
// ingested yet; both are sorted by id, so one pass merges them.
func (ss *session) replayStored(ctx context.Context) endReason {
	ring := ss.sub.replay
	ss.sub.replay = nil
	ss.seen = ingest.NewRecentSet(ss.srv.cfg.QueueSize)
	j := 0
	q := storage.EventQuery{ClientID: ss.sub.clientID, JobID: ss.sub.jobID, After: ss.since, Limit: replayPage}
	for {
		if r := ss.kickedReason(); r != endNone {
			return r
		}
		page, err := ss.events(ctx, q)
		if err != nil {
			if ctx.Err() != nil {
				return ss.canceled()
			}
			ss.srv.log.Error().Err(err).Str("client_id", q.ClientID).Str("job_id", q.JobID).Msg("cannot replay events")
			return endReplayFailed
		}
		after := q.After
		for i := range page {
			e := &page[i]
			if e.ID <= after {
				continue // a store must page forward; never loop on one that does not
			}
			after = e.ID
			for ; j < len(ring) && ring[j].id < e.ID; j++ {
				if r := ss.writeReplayed(ring[j]); r != endNone {
					return r
				}
			}
			var it *item
			if j < len(ring) && ring[j].id == e.ID {
				it = ring[j] // the bus bytes, no re-encoding
				j++
			} else {
				// Ownership is the store's job too; check again, it is cheap.
				if e.Origin.ClientID != ss.sub.clientID || (ss.sub.jobID != "" && e.Origin.JobID != ss.sub.jobID) || e.Internal() {
					continue
				}
				if it, err = itemFromEvent(e); err != nil {
					ss.srv.log.Error().Err(err).Msg("cannot replay event")
					return endReplayFailed
				}
			}
			if r := ss.writeReplayed(it); r != endNone {
				return r
			}
		}
		if after == q.After {
			break // exhausted
		}
		q.After = after
		if ss.flush() != nil {
			return endClientGone
		}
	}
	for ; j < len(ring); j++ {
		if r := ss.writeReplayed(ring[j]); r != endNone {
			return r
		}
	}
	if ss.flush() != nil {
		return endClientGone
	}
	return endNone
}

// events reads a page of stored events; without a store the ring is all
// there is to replay.
func (ss *session) events(ctx context.Context, q storage.EventQuery) ([]ingest.Event, error) {
	if ss.srv.src == nil {
		return nil, nil
	}
	return ss.srv.src.Events(ctx, q)
}

// writeLive sends a queued event unless the client has it already.
func (ss *session) writeLive(it *item) endReason {
	if ss.since != "" && it.id <= ss.since {
		return endNone
	}
	if ss.seen != nil && it.id <= ss.maxReplayed && ss.seen.Has(it.id) {
		return endNone
	}
	return ss.write(it)
}

// live writes queued events in batches, with heartbeats when idle.
func (ss *session) live(ctx context.Context) endReason {
	every := ss.srv.cfg.Heartbeat
	idle := time.NewTimer(every)
	defer idle.Stop()
	var pings <-chan time.Time
	if ss.out.pings() {
		t := time.NewTicker(every)
		defer t.Stop()
		pings = t.C
	}
	for {
		// A kicked subscriber stops now rather than after its queue drains.
		if r := ss.kickedReason(); r != endNone {
			return r
		}
		select {
		case <-ctx.Done():
			return ss.canceled()
		case <-ss.out.gone():
			return endClientGone
		case <-ss.sub.kicked:
			return ss.sub.reason
		case it := <-ss.sub.queue:
			if r := ss.writeBatch(it); r != endNone {
				return r
			}
			if ss.flush() != nil {
				return endClientGone
			}
			idle.Reset(every)
		case now := <-idle.C:
			if ss.out.heartbeat(now.UnixMilli()) != nil || ss.flush() != nil {
				return endClientGone
			}
			idle.Reset(every)
		case <-pings:
			if ss.out.ping() != nil {
				return endClientGone
			}
		}
	}
}

// writeBatch writes it and whatever else is queued, up to maxBatch events.
func (ss *session) writeBatch(it *item) endReason {
	for n := 1; ; n++ {
		if r := ss.writeLive(it); r != endNone {
			return r
		}
		if n == maxBatch {
			return endNone
		}
		select {
		case it = <-ss.sub.queue:
		default:
			return endNone
		}
	}
}
