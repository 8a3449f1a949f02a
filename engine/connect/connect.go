// Package connect is the unprivileged engine.Transport: one TCP connect per
// probe, through a bounded pool of dialers. Connected means open (the
// connection is reset at once), refused means closed, anything else
// (timeout, unreachable) means filtered and gets no reply. It needs no
// privileges and sees no packets, so replies carry no TTL or window.
package connect

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"trawl/engine"
)

// Config configures the connect transport.
type Config struct {
	Timeout     time.Duration // per connect
	Concurrency int           // connects in flight at most
}

// DefaultConfig returns the defaults RegisterFlags sets.
func DefaultConfig() Config { return Config{Timeout: 2 * time.Second, Concurrency: 512} }

// RegisterFlags registers prefix+"timeout" and prefix+"concurrency".
func (c *Config) RegisterFlags(fs *flag.FlagSet, prefix string) {
	*c = DefaultConfig()
	fs.DurationVar(&c.Timeout, prefix+"timeout", c.Timeout, "connect transport: timeout of one connect (no answer = filtered)")
	fs.IntVar(&c.Concurrency, prefix+"concurrency", c.Concurrency, "connect transport: connects in flight at most")
}

// Validate checks the config.
func (c *Config) Validate() error {
	var errs []error
	if c.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("connect timeout must be positive, got %s", c.Timeout))
	}
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("connect concurrency must be at least 1, got %d", c.Concurrency))
	}
	return errors.Join(errs...)
}

// Transport is the connect transport. Use it for one scan: Start, Send…, Close.
type Transport struct {
	cfg    Config
	dialer net.Dialer
	jobs   chan engine.Probe // unbuffered: a probe is handed straight to an idle dialer
	stop   chan struct{}     // closed by Close: no more sends

	mu      sync.Mutex // guards started, closed and worker spawning vs Close
	started bool
	closed  bool
	workers atomic.Int32
	wg      sync.WaitGroup

	dialCtx context.Context // ends with Start's ctx, or when Close gives up waiting
	abort   context.CancelFunc
	onReply func(engine.Reply)
}

// New returns a transport; invalid config values fall back to the defaults.
func New(cfg Config) *Transport {
	def := DefaultConfig()
	if cfg.Timeout <= 0 {
		cfg.Timeout = def.Timeout
	}
	if cfg.Concurrency < 1 {
		cfg.Concurrency = def.Concurrency
	}
	return &Transport{
		cfg:    cfg,
		dialer: net.Dialer{Timeout: cfg.Timeout},
		jobs:   make(chan engine.Probe),
		stop:   make(chan struct{}),
	}
}

// Start implements engine.Transport.
func (t *Transport) Start(ctx context.Context, onReply func(engine.Reply)) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.started || t.closed {
		return errors.New("cannot start connect transport: already used")
	}
	t.started = true
	t.onReply = onReply
	t.dialCtx, t.abort = context.WithCancel(ctx)
	return nil
}

// Send implements engine.Transport: it hands each probe to an idle dialer,
// starting dialers up to Concurrency, and blocks while all are busy.
func (t *Transport) Send(ctx context.Context, batch []engine.Probe) error {
	if !t.usable() {
		return fmt.Errorf("cannot send: %w", engine.ErrTransportClosed)
	}
	for _, p := range batch {
		select {
		case t.jobs <- p:
			continue
		default:
		}
		if t.spawn(p) {
			continue
		}
		select {
		case t.jobs <- p:
		case <-ctx.Done():
			return ctx.Err()
		case <-t.stop:
			return fmt.Errorf("cannot send: %w", engine.ErrTransportClosed)
		case <-t.dialCtx.Done():
			return fmt.Errorf("cannot send: %w", t.dialCtx.Err())
		}
	}
	return nil
}

// usable reports whether the transport is started and not closed.
func (t *Transport) usable() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.started && !t.closed
}

// spawn starts a dialer for p unless the pool is full or closed.
func (t *Transport) spawn(p engine.Probe) bool {
	if int(t.workers.Load()) >= t.cfg.Concurrency {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || int(t.workers.Load()) >= t.cfg.Concurrency {
		return false
	}
	t.workers.Add(1)
	t.wg.Add(1)
	go t.work(p)
	return true
}

func (t *Transport) work(p engine.Probe) {
	defer t.wg.Done()
	for {
		t.probe(p)
		select {
		case p = <-t.jobs:
		case <-t.stop:
			return
		case <-t.dialCtx.Done():
			return
		}
	}
}

func (t *Transport) probe(p engine.Probe) {
	addr := netip.AddrPortFrom(engine.Addr(p.IP), p.Port)
	conn, err := t.dialer.DialContext(t.dialCtx, "tcp4", addr.String())
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			t.onReply(engine.Reply{IP: p.IP, Port: p.Port})
		}
		return // timeout, unreachable, aborted: filtered
	}
	r := engine.Reply{IP: p.IP, Port: p.Port, Open: true}
	if tcp, ok := conn.(*net.TCPConn); ok {
		if local, ok := tcp.LocalAddr().(*net.TCPAddr); ok {
			if ip, ok := engine.IPv4(local.AddrPort().Addr()); ok {
				r.SrcIP, r.SrcPort = ip, local.AddrPort().Port()
			}
		}
		// reset instead of a FIN handshake: the target sees the probe end at
		// once and no TIME_WAIT socket is left behind per open port.
		_ = tcp.SetLinger(0)
	}
	_ = conn.Close()
	t.onReply(r)
}

// Close implements engine.Transport: no more sends; connects in flight get
// up to cooldown to finish, then are aborted. onReply is not called after
// Close returns.
func (t *Transport) Close(cooldown time.Duration) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	close(t.stop)
	started := t.started
	t.mu.Unlock()
	if !started {
		return nil
	}
	done := make(chan struct{})
	go func() {
		t.wg.Wait()
		close(done)
	}()
	timer := time.NewTimer(cooldown)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		t.abort()
		<-done
	}
	t.abort()
	return nil
}

// Dialers is the number of dialer goroutines started (at most Concurrency).
func (t *Transport) Dialers() int { return int(t.workers.Load()) }
