// Package stream serves each job's live feed: the events of the bus's events
// topic, as NDJSON for plain HTTP clients or as websocket text frames for
// clients that upgrade, on the same URL. A reconnecting client resumes with
// since=<event id> (or Last-Event-ID): what it missed is replayed from storage
// and from a ring of recent events, then it goes live. Every subscriber has a
// bounded queue; one that lets it overflow is disconnected, never slowing the
// fan-out, and told where to resume.
package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"trawl/ingest"
	"trawl/storage"
)

// EventSource reads stored events for replay: the embedded store now,
// ClickHouse at scale.
type EventSource interface {
	Events(ctx context.Context, q storage.EventQuery) ([]ingest.Event, error)
}

// Authenticator verifies a client token and returns its client (user) id.
type Authenticator func(token string) (clientID string, err error)

// Stats are the server's counters since it started.
type Stats struct {
	Subscribers  int    `json:"subscribers"`   // connected now
	Events       uint64 `json:"events"`        // visible events taken from the bus and fanned out
	Delivered    uint64 `json:"delivered"`     // events written to subscribers, live and replayed
	Replayed     uint64 `json:"replayed"`      // of those, replayed from storage or the ring
	DroppedSlow  uint64 `json:"dropped_slow"`  // subscribers disconnected because their queue overflowed
	PostTerminal uint64 `json:"post_terminal"` // events dropped because their job had ended
	BusResets    uint64 `json:"bus_resets"`    // failed bus subscriptions that were renewed
	DecodeErrors uint64 `json:"decode_errors"` // bus messages that were not events
}

// ErrAlreadyRunning is returned by a second call to Run.
var ErrAlreadyRunning = errors.New("stream server already running")

const (
	jobsPath   = "/v1/stream/jobs/"
	userPath   = "/v1/stream"
	healthPath = "/health"
	maxIDLen   = 128

	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
	minResubscribeGap = 50 * time.Millisecond
	maxResubscribeGap = 5 * time.Second
)

// Server is the stream server.
type Server struct {
	cfg      Config
	bus      ingest.Bus
	src      EventSource
	auth     Authenticator
	log      zerolog.Logger
	noisy    zerolog.Logger // sampled, for per-message warnings
	stats    counters
	hub      *hub
	upgrader websocket.Upgrader
	handler  http.Handler

	started atomic.Bool
	ready   chan struct{}
	addr    atomic.Pointer[string]

	connMu  sync.Mutex
	closing bool
	conns   sync.WaitGroup
}

// New returns a server; cfg must be valid (see Config.Validate). A nil src
// replays from the ring of recent events only.
func New(cfg Config, bus ingest.Bus, src EventSource, auth Authenticator, log zerolog.Logger) *Server {
	s := &Server{
		cfg:   cfg,
		bus:   bus,
		src:   src,
		auth:  auth,
		log:   log,
		noisy: log.Sample(&zerolog.BurstSampler{Burst: 5, Period: time.Minute}),
		ready: make(chan struct{}),
	}
	s.hub = newHub(max(cfg.QueueSize, 1), max(cfg.RingSize, 1), &s.stats)
	s.upgrader = websocket.Upgrader{
		HandshakeTimeout: cfg.WriteTimeout,
		ReadBufferSize:   1024,
		WriteBufferSize:  16 << 10,
		WriteBufferPool:  &sync.Pool{},
		// Streams authenticate by token, never by cookie, so a page on
		// another origin gains nothing it could not get with the token.
		CheckOrigin: func(*http.Request) bool { return true },
		Error: func(w http.ResponseWriter, _ *http.Request, status int, reason error) {
			writeError(w, status, "invalid_request", reason.Error(), nil)
		},
	}
	s.handler = http.HandlerFunc(s.route)
	return s
}

// UserStreamURL is the stream of all of a user's jobs.
func UserStreamURL(base string) string { return strings.TrimSuffix(base, "/") + userPath }

// JobStreamURL is the stream of one job.
func JobStreamURL(base, jobID string) string {
	return strings.TrimSuffix(base, "/") + jobsPath + url.PathEscape(jobID)
}

// Handler serves the stream routes; Run serves it too. Events flow only while
// Run consumes the bus.
func (s *Server) Handler() http.Handler { return s.handler }

// Ready is closed once Run listens and consumes the bus (never, if Run
// fails to start: watch its error too).
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr is the address Run listens on, "" before it does.
func (s *Server) Addr() string {
	if a := s.addr.Load(); a != nil {
		return *a
	}
	return ""
}

// PublicURL is the base of the stream URLs: Config.PublicURL, else
// "http://" + the listen address (the actual one once Run listens).
func (s *Server) PublicURL() string {
	if s.cfg.PublicURL != "" {
		return strings.TrimSuffix(s.cfg.PublicURL, "/")
	}
	if a := s.Addr(); a != "" {
		return "http://" + a
	}
	return "http://" + s.cfg.Listen
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{
		Subscribers:  s.hub.subscribers(),
		Events:       s.stats.events.Load(),
		Delivered:    s.stats.delivered.Load(),
		Replayed:     s.stats.replayed.Load(),
		DroppedSlow:  s.stats.droppedSlow.Load(),
		PostTerminal: s.stats.postTerminal.Load(),
		BusResets:    s.stats.busResets.Load(),
		DecodeErrors: s.stats.decodeErrors.Load(),
	}
}

// Run subscribes to the bus, listens and serves until ctx ends; then it
// disconnects every subscriber (telling each where to resume), waits for
// their connections to close, and returns nil.
func (s *Server) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	// Subscribe before listening: once Ready, every event published reaches
	// the ring and the subscribers.
	sub, err := s.bus.Subscribe(ctx, ingest.TopicEvents, "")
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("cannot subscribe to %s: %w", ingest.TopicEvents, err)
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		_ = sub.Close()
		return fmt.Errorf("cannot listen on %s: %w", s.cfg.Listen, err)
	}
	addr := ln.Addr().String()
	s.addr.Store(&addr)

	consumeCtx, stopConsuming := context.WithCancel(ctx)
	defer stopConsuming()
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		s.consume(consumeCtx, sub)
	}()

	// Requests get their own context, canceled only after every subscriber
	// has been told why it is disconnected.
	baseCtx, cancelRequests := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRequests()
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		ErrorLog:          stdlog.New(s.log.With().Str("source", "net/http").Logger(), "", 0),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	s.log.Info().Str("addr", addr).Msg("stream server listening")
	close(s.ready)

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-served:
		runErr = fmt.Errorf("cannot serve stream: %w", err)
	}

	s.connMu.Lock()
	s.closing = true
	s.connMu.Unlock()
	s.hub.close(endShutdown)
	cancelRequests()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), s.cfg.WriteTimeout+time.Second)
	if err := srv.Shutdown(shutdownCtx); err != nil {
		_ = srv.Close()
	}
	cancel()
	s.conns.Wait() // hijacked websocket connections are not tracked by srv
	stopConsuming()
	<-consumed
	s.log.Info().Msg("stream server stopped")
	return runErr
}

// consume feeds the hub from the bus. A failed subscription (an ephemeral
// subscriber that fell behind the bus is cut off) costs every subscriber
// its connection, with a resume cursor, and is renewed: the server lives on.
func (s *Server) consume(ctx context.Context, sub ingest.Subscription) {
	gap := minResubscribeGap
	quickFailures := 0
	dec := newDecoder()
	for {
		begun := time.Now()
		err := s.drain(ctx, sub, dec)
		_ = sub.Close()
		if ctx.Err() != nil {
			return
		}
		s.stats.busResets.Add(1)
		s.log.Warn().Err(err).Msg("bus subscription failed; disconnecting subscribers and resubscribing")
		if time.Since(begun) < time.Second {
			quickFailures++
		} else {
			quickFailures, gap = 0, minResubscribeGap
		}
		if sub = s.resubscribe(ctx, &gap, quickFailures > 1); sub == nil {
			return
		}
		s.hub.kickAll(endReset)
	}
}

// resubscribe renews the bus subscription, first waiting when wait is set
// (subscriptions keep failing quickly: a broken bus must not spin). It runs
// before the caller disconnects anyone, so the events the reconnecting
// clients need next are already being kept. It returns nil when ctx ends.
func (s *Server) resubscribe(ctx context.Context, gap *time.Duration, wait bool) ingest.Subscription {
	for {
		if wait {
			s.hub.kickAll(endReset) // nobody waits for events through the pause
			t := time.NewTimer(*gap)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
			*gap = min(2**gap, maxResubscribeGap)
		}
		sub, err := s.bus.Subscribe(ctx, ingest.TopicEvents, "")
		if err == nil {
			return sub
		}
		if ctx.Err() != nil {
			return nil
		}
		s.log.Warn().Err(err).Dur("retry_in", *gap).Msg("cannot resubscribe to the bus")
		wait = true
	}
}

// drain hands each delivery to the hub until the subscription fails.
func (s *Server) drain(ctx context.Context, sub ingest.Subscription, dec *decoder) error {
	for {
		d, err := sub.Fetch(ctx)
		if err != nil {
			return err
		}
		// the event's id is its position on the bus, the same one the
		// ingester stores, so a resume from storage lines up exactly
		s.handle(dec, ingest.WithCursor(make([]byte, 0, len(d.Value)+40), d.Value, d.Cursor()))
		if err := sub.Ack(ctx, d); err != nil && ctx.Err() == nil {
			s.noisy.Warn().Err(err).Msg("cannot ack event")
		}
	}
}

func (s *Server) handle(dec *decoder, b []byte) {
	it, err := dec.decode(b)
	if err != nil {
		if !errors.Is(err, errInternal) {
			s.stats.decodeErrors.Add(1)
			s.noisy.Warn().Err(err).Msg("skipping bus message")
		}
		return
	}
	s.hub.publish(it)
}

// enter counts a stream connection, unless the server is stopping.
func (s *Server) enter() bool {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if s.closing {
		return false
	}
	s.conns.Add(1)
	return true
}

func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	var jobID string
	switch {
	case path == healthPath:
	case path == userPath:
	case strings.HasPrefix(path, jobsPath) && validID(path[len(jobsPath):]):
		jobID = path[len(jobsPath):]
	default:
		writeError(w, http.StatusNotFound, "not_found", "no such route: "+path, nil)
		return
	}
	if r.Method != http.MethodGet && !(path == healthPath && r.Method == http.MethodHead) {
		w.Header().Set("Allow", http.MethodGet)
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "use GET", nil)
		return
	}
	if path == healthPath {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}`))
		return
	}
	s.serveStream(w, r, jobID)
}

// tokenOf takes the token from X-Token, Authorization: Bearer, or ?token=
// (browsers cannot set headers on a websocket).
func tokenOf(r *http.Request) string {
	if t := r.Header.Get("X-Token"); t != "" {
		return t
	}
	if a := r.Header.Get("Authorization"); len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
		return strings.TrimSpace(a[7:])
	}
	return r.URL.Query().Get("token")
}

// validID accepts what ids look like (prefix_ and base32), nothing that could
// smuggle anything into a query or a log line.
func validID(id string) bool {
	if id == "" || len(id) > maxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func (s *Server) serveStream(w http.ResponseWriter, r *http.Request, jobID string) {
	token := tokenOf(r)
	if token == "" {
		writeError(w, http.StatusUnauthorized, "unauthorized",
			"missing token: send X-Token, Authorization: Bearer, or ?token=", nil)
		return
	}
	clientID, err := s.auth(token)
	if err != nil || clientID == "" {
		if err != nil {
			s.log.Debug().Err(err).Msg("stream token rejected")
		}
		writeError(w, http.StatusUnauthorized, "unauthorized", "invalid token", nil)
		return
	}
	since := r.URL.Query().Get("since")
	if since == "" {
		since = r.Header.Get("Last-Event-ID")
	}
	if since != "" && !validID(since) {
		writeError(w, http.StatusBadRequest, "invalid_request", "malformed since: want an event id",
			map[string]string{"param": "since"})
		return
	}
	if !s.enter() {
		writeError(w, http.StatusServiceUnavailable, "unavailable", "the stream server is shutting down", nil)
		return
	}
	defer s.conns.Done()

	// A job stream replays the job from its start, so a client connecting
	// right after submitting misses nothing; the user stream is live unless
	// it resumes.
	replay := jobID != "" || since != ""
	sub := s.hub.subscribe(clientID, jobID, since, replay)
	defer s.hub.unsubscribe(sub)

	log := s.log.With().Str("client_id", clientID).Str("job_id", jobID).Str("since", since).Logger()
	var ss *session
	if websocket.IsWebSocketUpgrade(r) {
		conn, err := s.upgrader.Upgrade(w, r, nil)
		if err != nil {
			log.Debug().Err(err).Msg("websocket upgrade failed")
			return
		}
		out := newWSSink(conn, s.cfg.WriteTimeout)
		go out.read(s.cfg.Heartbeat + s.cfg.WriteTimeout)
		ss = s.newSession(sub, out, since, replay)
		log.Debug().Str("proto", "websocket").Msg("subscriber connected")
		reason := ss.run(r.Context())
		out.finish(reason, ss.last)
		log.Debug().Stringer("reason", reason).Str("last", ss.last).Msg("subscriber disconnected")
		return
	}
	out := newNDJSONSink(w, s.cfg.WriteTimeout)
	if err := out.start(); err != nil {
		return
	}
	ss = s.newSession(sub, out, since, replay)
	log.Debug().Str("proto", "ndjson").Msg("subscriber connected")
	reason := ss.run(r.Context())
	out.finish(reason, ss.last)
	log.Debug().Stringer("reason", reason).Str("last", ss.last).Msg("subscriber disconnected")
}

// apiError is the API's error object.
type apiError struct {
	Error errorBody `json:"error"`
}

type errorBody struct {
	Code    string            `json:"code"`
	Message string            `json:"message"`
	Details map[string]string `json:"details,omitempty"`
}

func writeError(w http.ResponseWriter, status int, code, message string, details map[string]string) {
	b, err := json.Marshal(apiError{Error: errorBody{Code: code, Message: message, Details: details}})
	if err != nil {
		http.Error(w, message, status)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	if status == http.StatusUnauthorized {
		h.Set("WWW-Authenticate", `Bearer realm="trawl"`)
	}
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
