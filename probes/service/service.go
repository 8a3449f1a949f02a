// Package service is the banner-grabbing module: it connects, waits for the
// service to greet, speaks first with a generic probe when it does not, and
// names the service from the reply nmap-style.
package service

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"trawl/probes"
)

// settleWait is how long to wait for more of a reply once some of it has
// arrived and it does not look complete yet.
const settleWait = 100 * time.Millisecond

// bannerLimit caps the banner field; the whole reply is in "raw".
const bannerLimit = 1 << 10

// Config configures the module.
type Config struct {
	// GreetingWait caps the wait for the service to speak first; a greeting
	// ends the wait as soon as it arrives.
	GreetingWait time.Duration
	// ReplyWait caps the wait for the reply to the probe sent when there is
	// no greeting (the caller's ctx may end it sooner).
	ReplyWait time.Duration
	// ReadLimit caps the bytes read from one service.
	ReadLimit int
}

// DefaultConfig returns the defaults RegisterFlags sets.
func DefaultConfig() Config {
	return Config{GreetingWait: 2 * time.Second, ReplyWait: 5 * time.Second, ReadLimit: 16 << 10}
}

// RegisterFlags registers the module's flags under prefix and sets defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet, prefix string) {
	d := DefaultConfig()
	fs.DurationVar(&c.GreetingWait, prefix+"greeting-wait", d.GreetingWait, "longest wait for a service to greet before probing it")
	fs.DurationVar(&c.ReplyWait, prefix+"reply-wait", d.ReplyWait, "longest wait for the reply to a probe")
	fs.IntVar(&c.ReadLimit, prefix+"read-limit", d.ReadLimit, "bytes read from one service at most")
}

// Validate reports every invalid setting.
func (c Config) Validate() error {
	var errs []error
	if c.GreetingWait <= 0 {
		errs = append(errs, errors.New("service greeting wait must be positive"))
	}
	if c.ReplyWait <= 0 {
		errs = append(errs, errors.New("service reply wait must be positive"))
	}
	if c.ReadLimit <= 0 {
		errs = append(errs, errors.New("service read limit must be positive"))
	}
	return errors.Join(errs...)
}

// Module is the "service" probe module.
type Module struct {
	cfg    Config
	dialer net.Dialer
	bufs   sync.Pool
}

// New returns the module; zero or negative settings take their defaults.
func New(cfg Config) *Module {
	d := DefaultConfig()
	if cfg.GreetingWait <= 0 {
		cfg.GreetingWait = d.GreetingWait
	}
	if cfg.ReplyWait <= 0 {
		cfg.ReplyWait = d.ReplyWait
	}
	if cfg.ReadLimit <= 0 {
		cfg.ReadLimit = d.ReadLimit
	}
	m := &Module{cfg: cfg}
	m.bufs.New = func() any {
		b := make([]byte, cfg.ReadLimit)
		return &b
	}
	return m
}

// Name implements probes.Module.
func (m *Module) Name() string { return "service" }

// Probe grabs t's banner. The status is success when any bytes came back,
// otherwise what ended the attempt (refused, reset, timeout, …).
func (m *Module) Probe(ctx context.Context, t probes.Target) (probes.Result, error) {
	res := probes.Result{Started: time.Now()}
	probeName := "NULL"
	reply, err := m.grab(ctx, t, &probeName)
	res.Duration = time.Since(res.Started)

	id := identify(reply, t.Port)
	data := map[string]any{
		"name":   id.name,
		"banner": banner(reply),
		"probe":  probeName,
		"method": "table_default",
		"port":   t.Port,
		"tunnel": "",
	}
	if id.matched {
		data["method"] = "probe_matching"
	}
	if id.product != "" {
		data["product"] = id.product
	}
	if id.version != "" {
		data["version"] = id.version
	}
	res.Data = data
	res.Raw = reply

	switch {
	case len(reply) > 0:
		res.Status = probes.StatusSuccess
	case ctx.Err() != nil:
		// our deadline-on-cancel surfaces as a read timeout: report the cause
		res.Status, res.Error = probes.Classify(ctx.Err()), ctx.Err().Error()
	default:
		res.Status, res.Error = probes.Classify(err), errText(err)
	}
	return res, nil
}

func errText(err error) string {
	if err == nil {
		return "no reply"
	}
	return err.Error()
}

// grab connects, reads the greeting or sends a probe and reads its reply.
// It returns the bytes read (a copy) and the error that ended reading.
func (m *Module) grab(ctx context.Context, t probes.Target, probeName *string) ([]byte, error) {
	conn, err := m.dialer.DialContext(ctx, "tcp", net.JoinHostPort(t.IP, strconv.Itoa(t.Port)))
	if err != nil {
		return nil, err
	}
	defer closeAbruptly(conn)
	// Unblock reads and writes the moment ctx ends.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	bp := m.bufs.Get().(*[]byte)
	defer m.bufs.Put(bp)
	buf := *bp

	n, err := readReply(ctx, conn, buf, m.cfg.GreetingWait, true)
	if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil && !pastDeadline(ctx) {
		p := probeFor(t.Port)
		*probeName = p.name
		_ = conn.SetWriteDeadline(waitUntil(ctx, m.cfg.ReplyWait))
		if _, err = conn.Write(p.payload); err == nil {
			n, err = readReply(ctx, conn, buf, m.cfg.ReplyWait, false)
		}
	}
	if n == 0 {
		return nil, err
	}
	return bytes.Clone(buf[:n]), nil
}

// readReply reads into buf until it is full, the peer closes, the reply
// looks complete (a greeting ending a line) or goes quiet for settleWait,
// or wait (capped by ctx's deadline) passes with nothing read.
func readReply(ctx context.Context, conn net.Conn, buf []byte, wait time.Duration, greeting bool) (int, error) {
	deadline := waitUntil(ctx, wait)
	if err := setReadDeadline(ctx, conn, deadline); err != nil {
		return 0, err
	}
	n := 0
	for n < len(buf) {
		k, err := conn.Read(buf[n:])
		n += k
		if err != nil {
			if n > 0 && (errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded)) {
				return n, nil
			}
			return n, err
		}
		if greeting && buf[n-1] == '\n' {
			return n, nil
		}
		if err := setReadDeadline(ctx, conn, minTime(time.Now().Add(settleWait), deadline)); err != nil {
			return n, nil
		}
	}
	return n, nil
}

// setReadDeadline sets t unless ctx has ended: the deadline set when ctx
// ended must not be overwritten by a later one.
func setReadDeadline(ctx context.Context, conn net.Conn, t time.Time) error {
	if err := conn.SetReadDeadline(t); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		_ = conn.SetReadDeadline(time.Unix(1, 0))
		return err
	}
	return nil
}

func waitUntil(ctx context.Context, wait time.Duration) time.Time {
	d := time.Now().Add(wait)
	if cd, ok := ctx.Deadline(); ok {
		return minTime(d, cd)
	}
	return d
}

func pastDeadline(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// closeAbruptly closes with a reset instead of a FIN: a scanner opens
// connections by the million, and TIME_WAIT on each would exhaust its
// ephemeral ports.
func closeAbruptly(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// banner is the head of the reply (up to the first blank line, as an HTTP
// or SMTP header block ends), without its final line break, escaped.
func banner(reply []byte) string {
	head := reply
	if i := bytes.Index(head, []byte("\n\r\n")); i >= 0 {
		head = head[:i+1]
	} else if i := bytes.Index(head, []byte("\n\n")); i >= 0 {
		head = head[:i+1]
	}
	if len(head) > bannerLimit {
		head = head[:bannerLimit]
	}
	head = bytes.TrimSuffix(head, []byte("\n"))
	head = bytes.TrimSuffix(head, []byte("\r"))
	return probes.Printable(head)
}
