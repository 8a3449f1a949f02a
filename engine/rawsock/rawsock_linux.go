package rawsock

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"trawl/engine"
)

const (
	maxBatch    = 256                   // frames per sendmmsg
	recvTimeout = 20 * time.Millisecond // how soon the receiver notices a stop
	sendBuffer  = 4 << 20
)

// Stats counts what the transport did; Forged counts replies aimed at our
// address and ports whose cookie did not match (dropped).
type Stats struct {
	Sent, SendErrors, Received, Open, Closed, Forged, Ignored uint64
}

// Transport is the raw SYN transport: one use (Start, Send…, Close).
type Transport struct {
	log    zerolog.Logger
	res    resolved
	src    uint32
	cookie cookie
	tmpl   *template
	dec    *decoder
	rxFd   int
	ring   *rxRing    // nil: the receive loop reads with recvfrom
	guard  *hostGuard // nil: the host's stack sees the replies

	sendMu  sync.Mutex // guards senders and lanes
	senders []*sender  // one per send thread
	lanes   *lanes     // nil: one sender, used by Send itself

	mu      sync.Mutex // guards started, closed
	started bool
	closed  bool
	stop    atomic.Bool
	stopRx  func() // ends the receive loop (set by Start)
	ctxDone <-chan struct{}
	rxDone  chan struct{}
	onReply func(engine.Reply)

	sent, sendErrors, received, open, closedPorts, forged, ignored atomic.Uint64
}

// New resolves the interface, source address and gateway MAC, and opens
// the send and receive sockets (CAP_NET_RAW needed). The sockets belong to
// the calling thread's network namespace.
func New(cfg Config, log zerolog.Logger) (*Transport, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cannot create raw transport: %w", err)
	}
	res, err := resolve(cfg)
	if err != nil {
		return nil, fmt.Errorf("cannot create raw transport: %w", err)
	}
	lo, hi, _ := parsePortRange(cfg.SourcePorts)
	var key [16]byte
	if _, err := rand.Read(key[:]); err != nil {
		return nil, fmt.Errorf("cannot create raw transport: cookie key: %w", err)
	}
	t := &Transport{
		log:    log,
		res:    res,
		src:    binary.BigEndian.Uint32(res.src.AsSlice()),
		cookie: newCookie(binary.LittleEndian.Uint64(key[:8]), binary.LittleEndian.Uint64(key[8:]), lo, hi),
		rxFd:   -1,
		rxDone: make(chan struct{}),
	}
	if t.tmpl, err = newTemplate(res.ifi.HardwareAddr, res.dstMAC, t.src, uint8(cfg.TTL), uint16(cfg.Window)); err != nil {
		return nil, err
	}
	t.dec = newDecoder(t.cookie, t.src)
	if err := t.openSockets(cfg, lo, hi); err != nil {
		t.closeFds()
		return nil, fmt.Errorf("cannot create raw transport: %w", err)
	}
	if cfg.GuardHostStack {
		if t.guard, err = guardHostStack(res.ifi.Index, res.src, lo, hi); err != nil {
			log.Warn().Err(err).Msg("raw transport: the host's TCP stack will answer each SYN-ACK with a RST")
		}
	}
	if len(t.senders) > 1 {
		t.lanes = startLanes(t, t.senders)
	}
	log.Info().Int("send_threads", len(t.senders)).Bool("host_stack_guard", t.guard != nil).Str("interface", res.ifi.Name).Str("source_ip", res.src.String()).
		Str("gateway_mac", res.dstMAC.String()).Str("source_ports", cfg.SourcePorts).Msg("raw transport ready")
	return t, nil
}

func (t *Transport) openSockets(cfg Config, lo, hi uint16) error {
	var err error
	// The receive socket: protocol 0 until bound, so nothing is queued
	// before the filter is in place.
	if t.rxFd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0); err != nil {
		return fmt.Errorf("cannot open the receive socket: %w", err)
	}
	if err := attachFilter(t.rxFd, replyFilter(t.src, lo, hi)); err != nil {
		return err
	}
	// Our own SYNs also pass the interface; the kernel skips them here.
	// The decoder would reject them anyway (older kernels lack the option).
	_ = unix.SetsockoptInt(t.rxFd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
	if cfg.RecvBuffer > 0 {
		if unix.SetsockoptInt(t.rxFd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, cfg.RecvBuffer) != nil {
			_ = unix.SetsockoptInt(t.rxFd, unix.SOL_SOCKET, unix.SO_RCVBUF, cfg.RecvBuffer)
		}
	}
	tv := unix.NsecToTimeval(recvTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(t.rxFd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("cannot set the receive timeout: %w", err)
	}
	t.setupRing(cfg.RecvBuffer)
	if err := unix.Bind(t.rxFd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: t.res.ifi.Index}); err != nil {
		return fmt.Errorf("cannot bind the receive socket to %s: %w", t.res.ifi.Name, err)
	}
	for range cfg.SendThreads {
		sd, err := t.newSender(cfg.QdiscBypass)
		if sd != nil {
			t.senders = append(t.senders, sd)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func attachFilter(fd int, prog []unix.SockFilter) error {
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		return fmt.Errorf("cannot attach the packet filter: %w", err)
	}
	return nil
}

// Start implements engine.Transport.
func (t *Transport) Start(ctx context.Context, onReply func(engine.Reply)) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.started || t.closed {
		return errors.New("cannot start raw transport: already used")
	}
	t.started = true
	t.onReply = onReply
	t.ctxDone = ctx.Done()
	if t.lanes != nil {
		context.AfterFunc(ctx, t.lanes.cancel)
	}
	t.stopRx = t.stopReceiving(t.ring)
	context.AfterFunc(ctx, t.stopRx)
	go t.receive()
	return nil
}

// Send implements engine.Transport. With one send thread the caller
// patches and sends the batch itself; with more, the batch is queued to
// the next thread and a failed send is reported by a later Send.
func (t *Transport) Send(ctx context.Context, batch []engine.Probe) error {
	t.sendMu.Lock()
	defer t.sendMu.Unlock()
	if len(t.senders) == 0 || t.isClosed() {
		return fmt.Errorf("cannot send: %w", engine.ErrTransportClosed)
	}
	if t.lanes != nil {
		return t.lanes.queue(ctx, batch)
	}
	return t.senders[0].send(ctx, t, batch)
}

func (t *Transport) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed
}

// stopReceiving returns what tells the receive loop to end: it also wakes
// the loop if it waits on ring (recvfrom notices within recvTimeout). It
// holds ring itself, since t.ring is cleared when the ring is released, and
// waking a released ring does nothing.
func (t *Transport) stopReceiving(ring *rxRing) func() {
	return func() {
		t.stop.Store(true)
		if ring != nil {
			ring.wake()
		}
	}
}

// receive reads replies until stopped; the socket's timeout bounds how
// long a stop goes unnoticed.
func (t *Transport) receive() {
	defer close(t.rxDone)
	if t.ring != nil {
		t.receiveRing()
		return
	}
	buf := make([]byte, maxReplyLen)
	var sa unix.RawSockaddrLinklayer
	for !t.stop.Load() {
		salen := uint32(unix.SizeofSockaddrLinklayer)
		r, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(t.rxFd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)),
			0, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&salen)))
		if e != 0 {
			if e == unix.EAGAIN || e == unix.EINTR {
				continue
			}
			t.log.Error().Err(e).Msg("raw transport: receive failed, stopping")
			return
		}
		if sa.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		t.handle(buf[:r])
	}
}

// handle validates one frame and reports it.
func (t *Transport) handle(frame []byte) {
	t.received.Add(1)
	rep := t.dec.decode(frame)
	switch rep.kind {
	case replyNone:
		t.ignored.Add(1)
		return
	case replyForged:
		t.forged.Add(1)
		return
	case replyOpen:
		t.open.Add(1)
	case replyClosed:
		t.closedPorts.Add(1)
	}
	t.onReply(engine.Reply{
		IP: rep.ip, Port: rep.port, Open: rep.kind == replyOpen, TTL: rep.ttl, Window: rep.window,
		SrcIP: rep.local, SrcPort: rep.lport,
	})
}

// Close implements engine.Transport: no more sends; replies are read for
// cooldown (less if Start's ctx ends), then the sockets are closed.
func (t *Transport) Close(cooldown time.Duration) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	started := t.started
	t.mu.Unlock()
	t.sendMu.Lock()
	if t.lanes != nil {
		t.lanes.drain() // the cooldown counts from the last probe sent
	}
	t.sendMu.Unlock()
	if started {
		timer := time.NewTimer(cooldown)
		select {
		case <-timer.C:
		case <-t.ctxDone:
		}
		timer.Stop()
		t.stopRx()
		<-t.rxDone
	}
	t.sendMu.Lock()
	defer t.sendMu.Unlock()
	return t.closeFds()
}

func (t *Transport) closeFds() error {
	var errs []error
	if err := t.releaseRing(); err != nil {
		errs = append(errs, err)
	}
	if err := t.guard.release(); err != nil {
		errs = append(errs, err)
	}
	t.guard = nil
	fds := []*int{&t.rxFd}
	for _, sd := range t.senders {
		fds = append(fds, &sd.fd)
	}
	for _, fd := range fds {
		if *fd >= 0 {
			if err := unix.Close(*fd); err != nil {
				errs = append(errs, fmt.Errorf("cannot close raw socket: %w", err))
			}
			*fd = -1
		}
	}
	t.senders = nil
	return errors.Join(errs...)
}

// Stats returns the transport's counters.
func (t *Transport) Stats() Stats {
	return Stats{
		Sent: t.sent.Load(), SendErrors: t.sendErrors.Load(), Received: t.received.Load(),
		Open: t.open.Load(), Closed: t.closedPorts.Load(), Forged: t.forged.Load(), Ignored: t.ignored.Load(),
	}
}

// Rejected implements engine.RejectCounter: replies aimed at our address
// and source ports whose cookie did not match, so the scan's stats show
// them beside the replies it accepted.
func (t *Transport) Rejected() uint64 { return t.forged.Load() }

// Interface, SourceIP and GatewayMAC report what New resolved.
func (t *Transport) Interface() string  { return t.res.ifi.Name }
func (t *Transport) SourceIP() string   { return t.res.src.String() }
func (t *Transport) GatewayMAC() string { return t.res.dstMAC.String() }

var (
	_ engine.Transport     = (*Transport)(nil)
	_ engine.RejectCounter = (*Transport)(nil)
)
