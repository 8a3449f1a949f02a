// Package probes turns an open port into what is there: the Module interface
// that protocol modules (ssh, ssl, vnc, service, …) implement, the registry
// that lists them, the status taxonomy every result carries, the pool that
// bounds how hard the workers hit the targets, and the worker role that
// consumes open ports from the bus and publishes one event per module.
package probes

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Target is one open port to probe.
type Target struct {
	IP       string
	Port     int
	Protocol string
	JobID    string
	// Hostname is the name the task gave for IP ("" for address targets):
	// modules that can name the server (TLS SNI) send it.
	Hostname string
}

// Status is the outcome class of a probe, result.data.status of its event.
type Status string

// Statuses.
const (
	StatusSuccess       Status = "success"
	StatusTimeout       Status = "timeout"
	StatusRefused       Status = "refused"
	StatusReset         Status = "reset"
	StatusUnreachable   Status = "unreachable"
	StatusProtocolError Status = "protocol-error"
	StatusTLSError      Status = "tls-error"
	StatusAuthRequired  Status = "auth-required"
	StatusCanceled      Status = "canceled"
	StatusError         Status = "error"
)

var (
	// ErrProtocol marks a reply the module could not parse; modules wrap
	// their parse failures with it.
	ErrProtocol = errors.New("protocol error")
	// ErrAuthRequired marks a service that answered but wants credentials
	// before it tells more.
	ErrAuthRequired = errors.New("authentication required")
)

// Classify maps an error from dialing, reading, a TLS handshake or a module's
// parser to a Status. The module's own sentinels win over the transport
// errors they may wrap (a truncated reply is a protocol error, not a reset).
func Classify(err error) Status {
	switch {
	case err == nil:
		return StatusSuccess
	case errors.Is(err, ErrAuthRequired):
		return StatusAuthRequired
	case errors.Is(err, ErrProtocol):
		return StatusProtocolError
	case errors.Is(err, context.Canceled):
		return StatusCanceled
	case errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, syscall.ETIMEDOUT):
		return StatusTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		return StatusRefused
	case errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ECONNABORTED),
		errors.Is(err, syscall.EPIPE),
		// the peer closed before answering: as good as a reset to a prober
		errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF):
		return StatusReset
	case errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, syscall.EHOSTDOWN),
		errors.Is(err, syscall.ENETDOWN):
		return StatusUnreachable
	case isTLSError(err):
		return StatusTLSError
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return StatusTimeout
	}
	return StatusError
}

func isTLSError(err error) bool {
	var (
		recordErr tls.RecordHeaderError
		alertErr  tls.AlertError
		verifyErr *tls.CertificateVerificationError
		authErr   x509.UnknownAuthorityError
		hostErr   x509.HostnameError
		certErr   x509.CertificateInvalidError
	)
	if errors.As(err, &recordErr) || errors.As(err, &alertErr) || errors.As(err, &verifyErr) ||
		errors.As(err, &authErr) || errors.As(err, &hostErr) || errors.As(err, &certErr) {
		return true
	}
	// crypto/tls reports most handshake failures as plain errors whose text
	// starts with "tls: "; there is no type to match them by.
	return anyInChain(err, func(e error) bool { return strings.HasPrefix(e.Error(), "tls: ") })
}

func anyInChain(err error, match func(error) bool) bool {
	if err == nil {
		return false
	}
	if match(err) {
		return true
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return anyInChain(u.Unwrap(), match)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if anyInChain(e, match) {
				return true
			}
		}
	}
	return false
}

// RawLimit caps the raw bytes a result carries in its event.
const RawLimit = 4 << 10

// Result is what a module found on one port.
type Result struct {
	Status Status
	// Error explains a non-success status.
	Error string
	// Data holds the module's fields (result.data of the event).
	Data map[string]any
	// Raw is the reply the module parsed.
	Raw      []byte
	Started  time.Time
	Duration time.Duration
}

// reserved keys of result.data; a module's fields of the same name are
// replaced so the envelope stays uniform across modules.
const (
	keyStatus       = "status"
	keyError        = "error"
	keyTiming       = "timing"
	keyRaw          = "raw"
	keyRawTruncated = "raw_truncated"
)

type timing struct {
	StartedMS  int64   `json:"started_ms"`
	DurationMS float64 `json:"duration_ms"`
}

// MarshalJSON gives result.data of the event: the module's fields merged with
// "status", "error" (when set), "timing" and "raw" (when any bytes came
// back: Go-quoted without the surrounding quotes, at most RawLimit bytes of
// input, with "raw_truncated": true when cut).
func (r Result) MarshalJSON() ([]byte, error) {
	out := make(map[string]any, len(r.Data)+5)
	for k, v := range r.Data {
		out[k] = v
	}
	delete(out, keyError)
	delete(out, keyRaw)
	delete(out, keyRawTruncated)
	out[keyStatus] = r.Status
	if r.Error != "" {
		out[keyError] = r.Error
	}
	var started int64
	if !r.Started.IsZero() {
		started = r.Started.UnixMilli()
	}
	out[keyTiming] = timing{StartedMS: started, DurationMS: float64(r.Duration.Microseconds()) / 1000}
	if len(r.Raw) > 0 {
		raw := r.Raw
		if len(raw) > RawLimit {
			raw = raw[:RawLimit]
			out[keyRawTruncated] = true
		}
		out[keyRaw] = Printable(raw)
	}
	return json.Marshal(out)
}

// Printable escapes b the way Go quotes a string (\r, \n, \x00, invalid
// UTF-8 as \xNN, …) without the surrounding quotes, so binary replies
// travel as readable text; strconv.Unquote(`"`+s+`"`) gives b back.
func Printable(b []byte) string {
	q := strconv.AppendQuote(make([]byte, 0, len(b)+2), string(b))
	return string(q[1 : len(q)-1])
}

// Module is one protocol module.
type Module interface {
	// Name is the module's name in tasks and events ("ssh", "service").
	Name() string
	// Probe examines one open port, bounded by ctx. It returns a Result
	// with a Status for every outcome it can classify (refused, timeout,
	// parse failure, …) and an error only for bugs or a dead ctx.
	Probe(ctx context.Context, t Target) (Result, error)
}

// ContextDialer opens a module's connections: a *net.Dialer, or a test's
// wrapper that counts them.
type ContextDialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// Dial connects to addr over TCP within timeout and arms the connection's
// deadline: the earlier of timeout and ctx's end, and reads and writes fail
// the moment ctx is canceled. done stops that and closes the connection.
// A connect that runs out of time wraps context.DeadlineExceeded, so
// Classify reports a timeout.
func Dial(ctx context.Context, d ContextDialer, addr string, timeout time.Duration) (conn net.Conn, done func(), err error) {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	conn, err = d.DialContext(cctx, "tcp", addr)
	if err != nil {
		if ctx.Err() == nil && cctx.Err() != nil {
			err = fmt.Errorf("cannot connect: %w", context.DeadlineExceeded)
		}
		cancel()
		return nil, nil, err
	}
	if dl, ok := cctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(cctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	return conn, func() {
		stop()
		cancel()
		_ = conn.Close()
	}, nil
}
