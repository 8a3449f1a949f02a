package rawsock

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"trawl/engine"
)

// sender owns one send socket and maxBatch frames with their iovecs and
// messages, laid out once: a send only patches frames and passes a prefix
// of msgs to sendmmsg.
type sender struct {
	fd     int
	frames []byte
	iovs   []unix.Iovec
	msgs   []unix.Mmsghdr
	sll    unix.RawSockaddrLinklayer
}

// newSender opens a send socket: protocol 0 and never bound, so it
// receives nothing; each message names the interface.
func (t *Transport) newSender(qdiscBypass bool) (*sender, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("cannot open a send socket: %w", err)
	}
	s := &sender{fd: fd}
	if err := attachFilter(fd, dropAll()); err != nil {
		return s, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sendBuffer)
	if qdiscBypass {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			return s, fmt.Errorf("cannot bypass the qdisc: %w", err)
		}
	}
	s.sll = unix.RawSockaddrLinklayer{
		Family: unix.AF_PACKET, Protocol: htons(unix.ETH_P_IP), Ifindex: int32(t.res.ifi.Index), Halen: 6,
	}
	copy(s.sll.Addr[:], t.res.dstMAC)
	s.frames = make([]byte, maxBatch*frameLen)
	s.iovs = make([]unix.Iovec, maxBatch)
	s.msgs = make([]unix.Mmsghdr, maxBatch)
	for i := range s.msgs {
		s.iovs[i].Base = &s.frames[i*frameLen]
		s.iovs[i].SetLen(frameLen)
		s.msgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&s.sll))
		s.msgs[i].Hdr.Namelen = unix.SizeofSockaddrLinklayer
		s.msgs[i].Hdr.Iov = &s.iovs[i]
		s.msgs[i].Hdr.SetIovlen(1)
	}
	return s, nil
}

// send patches the probes into frames and sends them, maxBatch per
// sendmmsg.
func (s *sender) send(ctx context.Context, t *Transport, batch []engine.Probe) error {
	for len(batch) > 0 {
		n := min(len(batch), maxBatch)
		for i, p := range batch[:n] {
			seq, sport, id := t.cookie.probe(t.src, p.IP, p.Port)
			t.tmpl.patch(s.frames[i*frameLen:(i+1)*frameLen], p.IP, p.Port, sport, seq, id)
		}
		if err := s.sendFrames(ctx, t, n); err != nil {
			return err
		}
		batch = batch[n:]
	}
	return nil
}

// sendFrames sends the first n prepared frames, resuming after partial
// sends; a full socket or device queue is retried after a short pause.
//
// On a veth or a fast NIC, sendmmsg is CPU work, not waiting: the kernel
// hands every frame on at once, and on a veth it also runs the receiving
// side's stack on this core. A plain Syscall lets Go's sysmon take this
// goroutine's P during it — waking every 20 µs to do so — and on return
// the sender queues for a P behind the receive path while the machine has
// work for it. RawSyscall holds the P as a busy thread would; MSG_DONTWAIT
// keeps it from ever holding it while blocked (EAGAIN is retried after a
// pause, outside the syscall).
func (s *sender) sendFrames(ctx context.Context, t *Transport, n int) error {
	busy := 0
	for off := 0; off < n; {
		r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&s.msgs[off])), uintptr(n-off),
			unix.MSG_DONTWAIT, 0, 0)
		switch {
		case e == 0:
			off += int(r)
			t.sent.Add(uint64(r))
			busy = 0
		case e == unix.EINTR:
		case (e == unix.ENOBUFS || e == unix.EAGAIN) && busy < 1000:
			busy++
			if err := ctx.Err(); err != nil {
				return err
			}
			time.Sleep(50 * time.Microsecond)
		default:
			t.sendErrors.Add(uint64(n - off))
			return fmt.Errorf("cannot send probes: %w", e)
		}
	}
	return nil
}

// lanes run one goroutine per sender so that several cores send at once:
// on a dense scan each probe's reply is processed by the kernel on the core
// that sent the probe, which caps one send thread well below the link.
// Send copies a batch into a free buffer and queues it to the next lane.
// A lane sends with RawSyscall, holding its P through each sendmmsg (see
// sendFrames). (Raising GOMAXPROCS by one per lane, so that the receive path
// never waits for a lane's P, measured no better on two cores.)
type lanes struct {
	t      *Transport
	ctx    context.Context // ends with Start's context or drain: a lane's busy retries stop
	cancel context.CancelFunc
	in     []chan []engine.Probe
	free   chan []engine.Probe
	next   int
	wg     sync.WaitGroup
	err    atomic.Pointer[error] // a lane's failure, reported by the next queue
	done   bool
}

// buffersPerLane bounds how far Send runs ahead of the lanes.
const buffersPerLane = 4

func startLanes(t *Transport, senders []*sender) *lanes {
	l := &lanes{t: t, free: make(chan []engine.Probe, buffersPerLane*len(senders))}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	for range cap(l.free) {
		l.free <- make([]engine.Probe, 0, maxBatch)
	}
	for _, sd := range senders {
		in := make(chan []engine.Probe, buffersPerLane)
		l.in = append(l.in, in)
		l.wg.Add(1)
		go l.run(sd, in)
	}
	return l
}

func (l *lanes) run(sd *sender, in <-chan []engine.Probe) {
	defer l.wg.Done()
	for batch := range in {
		if l.ctx.Err() == nil { // after a stop, what is queued is dropped
			if err := sd.send(l.ctx, l.t, batch); err != nil {
				l.err.Store(&err)
			}
		}
		l.free <- batch[:0]
	}
}

// queue hands batch to the lanes, maxBatch probes per buffer; it waits
// for a free buffer while every lane is behind. Called under sendMu.
func (l *lanes) queue(ctx context.Context, batch []engine.Probe) error {
	if e := l.err.Swap(nil); e != nil {
		return *e
	}
	for len(batch) > 0 {
		var buf []engine.Probe
		select {
		case buf = <-l.free:
		case <-ctx.Done():
			return ctx.Err()
		}
		n := min(len(batch), maxBatch)
		buf = append(buf, batch[:n]...)
		batch = batch[n:]
		select {
		case l.in[l.next] <- buf:
		case <-ctx.Done():
			l.free <- buf[:0]
			return ctx.Err()
		}
		l.next = (l.next + 1) % len(l.in)
	}
	return nil
}

// drain stops the lanes once everything queued is sent. Called under sendMu.
func (l *lanes) drain() {
	if l.done {
		return
	}
	l.done = true
	for _, in := range l.in {
		close(in)
	}
	l.wg.Wait()
	l.cancel()
}
