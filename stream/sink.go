package stream

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/websocket"
)

// Websocket close codes of the stream (4000-4999 are for applications).
const (
	// CloseSlowConsumer: the subscriber's queue overflowed; the reason text
	// carries "resume_since=<id>".
	CloseSlowConsumer = 4008
	// CloseStreamReset: the server's own bus subscription overflowed; the
	// reason text carries "resume_since=<id>".
	CloseStreamReset = 4009
)

// Codes of the final NDJSON line, in the API's error object.
const (
	CodeSlowConsumer = "slow_consumer"
	CodeStreamReset  = "stream_reset"
	CodeShuttingDown = "shutting_down"
	CodeInternal     = "internal"
)

// ndjsonFlushAt is how much a batch may buffer before it is written out.
const ndjsonFlushAt = 32 << 10

// ending is how a stream tells its client why it ends.
type ending struct {
	code    string // NDJSON error code; "" = end without a final line
	message string
	wsCode  int
}

func endingFor(r endReason) ending {
	const resume = "; reconnect with since=resume_since to resume"
	switch r {
	case endJobFinished:
		return ending{wsCode: websocket.CloseNormalClosure, message: "job finished"}
	case endSlow:
		return ending{CodeSlowConsumer, "the subscriber fell behind and its queue overflowed" + resume, CloseSlowConsumer}
	case endReset:
		return ending{CodeStreamReset, "the stream server fell behind the bus" + resume, CloseStreamReset}
	case endShutdown:
		return ending{CodeShuttingDown, "the stream server is shutting down" + resume, websocket.CloseGoingAway}
	case endReplayFailed:
		return ending{CodeInternal, "cannot read stored events" + resume, websocket.CloseInternalServerErr}
	}
	return ending{}
}

// appendHeartbeat appends {"type":"heartbeat","ts":<unix ms>}.
func appendHeartbeat(dst []byte, unixMillis int64) []byte {
	dst = append(dst, `{"type":"heartbeat","ts":`...)
	dst = strconv.AppendInt(dst, unixMillis, 10)
	return append(dst, '}')
}

// ndjsonSink writes one JSON event per line on a chunked response.
type ndjsonSink struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	buf     []byte
}

func newNDJSONSink(w http.ResponseWriter, timeout time.Duration) *ndjsonSink {
	return &ndjsonSink{w: w, rc: http.NewResponseController(w), timeout: timeout}
}

// start sends the response header at once, so the client knows it is
// subscribed before the first event.
func (s *ndjsonSink) start() error {
	h := s.w.Header()
	h.Set("Content-Type", "application/x-ndjson")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Accel-Buffering", "no") // proxies must not hold lines back
	s.w.WriteHeader(http.StatusOK)
	return s.flush()
}

func (s *ndjsonSink) event(line []byte) error {
	s.buf = append(s.buf, line...)
	s.buf = append(s.buf, '\n')
	if len(s.buf) >= ndjsonFlushAt {
		return s.write()
	}
	return nil
}

func (s *ndjsonSink) heartbeat(unixMillis int64) error {
	s.buf = append(appendHeartbeat(s.buf, unixMillis), '\n')
	return nil
}

func (s *ndjsonSink) write() error {
	if err := s.rc.SetWriteDeadline(time.Now().Add(s.timeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	if len(s.buf) > 0 {
		_, err := s.w.Write(s.buf)
		if cap(s.buf) > 4*ndjsonFlushAt {
			s.buf = nil // one huge event must not pin its buffer for the connection's life
		} else {
			s.buf = s.buf[:0]
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *ndjsonSink) flush() error {
	if err := s.write(); err != nil {
		return err
	}
	return s.rc.Flush()
}

func (s *ndjsonSink) ping() error           { return nil }
func (s *ndjsonSink) pings() bool           { return false }
func (s *ndjsonSink) gone() <-chan struct{} { return nil }

// finish writes the final error line, if the reason has one; returning from
// the handler then ends the chunked response.
func (s *ndjsonSink) finish(reason endReason, resumeSince string) {
	e := endingFor(reason)
	if e.code == "" {
		return
	}
	b, err := json.Marshal(apiError{Error: errorBody{
		Code: e.code, Message: e.message, Details: map[string]string{"resume_since": resumeSince},
	}})
	if err != nil {
		return
	}
	s.buf = append(append(s.buf[:0], b...), '\n')
	_ = s.flush() // best effort: the client may be gone
}

// wsSink sends each event as one text frame. Its reader goroutine answers
// control frames and notices the client leaving.
type wsSink struct {
	conn    *websocket.Conn
	timeout time.Duration
	armed   bool // write deadline set for the current batch
	done    chan struct{}
	hb      []byte
}

// wsReadLimit bounds client frames: clients have nothing to send but pongs
// and close frames.
const wsReadLimit = 4096

func newWSSink(conn *websocket.Conn, timeout time.Duration) *wsSink {
	return &wsSink{conn: conn, timeout: timeout, done: make(chan struct{})}
}

// read runs until the connection fails or the client closes it; a client
// that answers no ping for pongWait is dropped.
func (s *wsSink) read(pongWait time.Duration) {
	defer close(s.done)
	s.conn.SetReadLimit(wsReadLimit)
	extend := func(string) error { return s.conn.SetReadDeadline(time.Now().Add(pongWait)) }
	_ = extend("")
	s.conn.SetPongHandler(extend)
	for {
		if _, _, err := s.conn.NextReader(); err != nil {
			return
		}
		_ = extend("")
	}
}

func (s *wsSink) arm() error {
	if s.armed {
		return nil
	}
	s.armed = true
	return s.conn.SetWriteDeadline(time.Now().Add(s.timeout))
}

func (s *wsSink) event(line []byte) error {
	if err := s.arm(); err != nil {
		return err
	}
	return s.conn.WriteMessage(websocket.TextMessage, line)
}

func (s *wsSink) heartbeat(unixMillis int64) error {
	s.hb = appendHeartbeat(s.hb[:0], unixMillis)
	return s.event(s.hb)
}

// flush ends the batch: every frame is already on the wire.
func (s *wsSink) flush() error {
	s.armed = false
	return nil
}

func (s *wsSink) ping() error {
	return s.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(s.timeout))
}

func (s *wsSink) pings() bool           { return true }
func (s *wsSink) gone() <-chan struct{} { return s.done }

// maxCloseReason is the room a close frame leaves for its reason text.
const maxCloseReason = 123

// finish sends a close frame with the reason, waits briefly for the client
// to answer it, and closes the connection.
func (s *wsSink) finish(reason endReason, resumeSince string) {
	if e := endingFor(reason); e.wsCode != 0 {
		text := e.message
		if e.code != "" {
			text = e.code + " resume_since=" + resumeSince
		}
		if len(text) > maxCloseReason {
			text = text[:maxCloseReason]
		}
		msg := websocket.FormatCloseMessage(e.wsCode, text)
		if s.conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(s.timeout)) == nil {
			t := time.NewTimer(min(s.timeout, time.Second))
			select {
			case <-s.done:
			case <-t.C:
			}
			t.Stop()
		}
	}
	_ = s.conn.Close()
	<-s.done
}
