package rawsock

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The receive ring: a TPACKET_V3 PACKET_RX_RING shared with the kernel by
// mmap. The kernel fills whole blocks of replies and hands each one over by
// flipping its status, so the receiver pays one poll per block instead of
// one recvfrom per frame (on a dense scan that syscall and its copy were
// most of the receive core's time).
const (
	ringBlockSize = 1 << 18 // bytes per block: ~1,800 SYN-ACKs
	ringFrameSize = 1 << 11 // nominal; V3 packs frames by their real length
	ringMinBytes  = 4 * ringBlockSize
	// ringRetireMs is how long the kernel keeps a partly filled block before
	// handing it over, the ring's added latency at a low reply rate.
	ringRetireMs = 32
)

// ringVersion is the TPACKET version asked for; a test sets an invalid one
// to make the kernel refuse the ring and exercise the fallback.
var ringVersion = unix.TPACKET_V3

// Offsets inside a block and a frame (linux/if_packet.h).
const (
	blockStatusOff = 8  // tpacket_block_desc.hdr.bh1.block_status
	blockNumOff    = 12 // .num_pkts
	blockFirstOff  = 16 // .offset_to_first_pkt
	// The frame's sockaddr_ll follows its tpacket3_hdr, aligned.
	frameSllOff = (unix.SizeofTpacket3Hdr + unix.TPACKET_ALIGNMENT - 1) &^ (unix.TPACKET_ALIGNMENT - 1)
	sllPkttype  = 10 // sockaddr_ll.sll_pkttype
)

// rxRing is a mapped receive ring; only the receive goroutine walks it.
//
// It waits for blocks through Go's network poller (a non-blocking
// duplicate of the socket, whose readiness the kernel signals as it
// releases each block) rather than in poll(2): a goroutine blocked in a
// system call keeps Go's sysmon thread waking every 20 µs to take its P
// back, which was most of a slow scan's CPU.
type rxRing struct {
	fd      int
	mem     []byte
	blocks  int
	current int
	waiter  *os.File        // the non-blocking duplicate of fd
	conn    syscall.RawConn // waiter's, for readiness waits
}

// ringSize turns the configured receive buffer into a block count: the
// ring holds at least recvBuffer bytes (at least ringMinBytes).
func ringSize(recvBuffer int) (blocks int) {
	size := max(recvBuffer, ringMinBytes)
	return (size + ringBlockSize - 1) / ringBlockSize
}

// newRxRing sets up and maps a TPACKET_V3 receive ring on fd. On failure fd
// is left as it was (no ring), so recvfrom still reads it.
func newRxRing(fd, recvBuffer int) (*rxRing, error) {
	if os.Getpagesize() > ringBlockSize {
		return nil, fmt.Errorf("page size %d exceeds the ring block", os.Getpagesize())
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, ringVersion); err != nil {
		return nil, fmt.Errorf("cannot select TPACKET_V3: %w", err)
	}
	blocks := ringSize(recvBuffer)
	req := unix.TpacketReq3{
		Block_size:     ringBlockSize,
		Block_nr:       uint32(blocks),
		Frame_size:     ringFrameSize,
		Frame_nr:       uint32(blocks * (ringBlockSize / ringFrameSize)),
		Retire_blk_tov: ringRetireMs,
	}
	if err := unix.SetsockoptTpacketReq3(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return nil, fmt.Errorf("cannot set up a %d-block receive ring: %w", blocks, err)
	}
	mem, err := unix.Mmap(fd, 0, blocks*ringBlockSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		removeRing(fd)
		return nil, fmt.Errorf("cannot map the receive ring: %w", err)
	}
	r := &rxRing{fd: fd, mem: mem, blocks: blocks}
	if err := r.openWaiter(); err != nil {
		_ = unix.Munmap(mem)
		removeRing(fd)
		return nil, err
	}
	return r, nil
}

// removeRing takes a ring nobody walks off fd: it would swallow every frame.
func removeRing(fd int) {
	off := unix.TpacketReq3{}
	_ = unix.SetsockoptTpacketReq3(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &off)
}

// openWaiter registers a non-blocking duplicate of the socket with the
// network poller. The receive path never reads the socket itself, so the
// shared non-blocking flag changes nothing for it.
func (r *rxRing) openWaiter() error {
	dup, err := unix.FcntlInt(uintptr(r.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("cannot duplicate the receive socket: %w", err)
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return fmt.Errorf("cannot make the receive socket non-blocking: %w", err)
	}
	r.waiter = os.NewFile(uintptr(dup), "raw-receive-ring")
	if r.conn, err = r.waiter.SyscallConn(); err != nil {
		r.waiter.Close()
		return fmt.Errorf("cannot wait on the receive socket: %w", err)
	}
	return nil
}

// blockStatus is the current block's status word, shared with the kernel.
func (r *rxRing) blockStatus() *uint32 {
	return (*uint32)(unsafe.Pointer(&r.mem[r.current*ringBlockSize+blockStatusOff]))
}

// next hands back the current block's frames once the kernel has released
// it to user space; it returns nil when woken by wake before that. done
// must be called before the next call.
func (r *rxRing) next() ([]byte, error) {
	if !r.ready() {
		// Read calls the function, and waits for the socket to become
		// readable each time it says the block is not ready yet. No
		// deadline: a stop wakes it (wake), so an idle scan costs no
		// periodic wakeups.
		err := r.conn.Read(func(uintptr) bool { return r.ready() })
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("cannot wait on the receive ring: %w", err)
		}
		if !r.ready() {
			return nil, nil
		}
	}
	return r.mem[r.current*ringBlockSize : (r.current+1)*ringBlockSize], nil
}

// wake ends next's wait now and every later one at once (a deadline in the
// past), so a receiver that sees a stop flag set before wake never sleeps
// through it. Safe to call from any goroutine, more than once.
func (r *rxRing) wake() {
	_ = r.waiter.SetReadDeadline(time.Unix(1, 0))
}

// ready reports whether the kernel has released the current block.
func (r *rxRing) ready() bool {
	return atomic.LoadUint32(r.blockStatus())&unix.TP_STATUS_USER != 0
}

// done returns the current block to the kernel and moves to the next.
func (r *rxRing) done() {
	atomic.StoreUint32(r.blockStatus(), unix.TP_STATUS_KERNEL)
	r.current = (r.current + 1) % r.blocks
}

// eachFrame calls fn with every incoming frame of a released block; frames
// are views into the ring, valid until done. Malformed offsets end the walk
// rather than read outside the block.
func eachFrame(block []byte, fn func(frame []byte)) {
	le := func(off int) int {
		return int(uint32(block[off]) | uint32(block[off+1])<<8 | uint32(block[off+2])<<16 | uint32(block[off+3])<<24)
	}
	n := le(blockNumOff)
	off := le(blockFirstOff)
	for range n {
		if off <= 0 || off+frameSllOff+sllPkttype >= len(block) {
			return
		}
		h := (*unix.Tpacket3Hdr)(unsafe.Pointer(&block[off]))
		start, end := off+int(h.Mac), off+int(h.Mac)+int(h.Snaplen)
		if start < off || end > len(block) {
			return
		}
		if block[off+frameSllOff+sllPkttype] != unix.PACKET_OUTGOING {
			fn(block[start:end])
		}
		if h.Next_offset == 0 {
			return
		}
		off += int(h.Next_offset)
	}
}

// stats reads (and resets) the kernel's counters of the ring: frames
// queued and frames dropped because no block was free.
func (r *rxRing) stats() (packets, drops uint32, err error) {
	s, err := unix.GetsockoptTpacketStatsV3(r.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err != nil {
		return 0, 0, fmt.Errorf("cannot read the receive ring's statistics: %w", err)
	}
	return s.Packets, s.Drops, nil
}

// unmap releases the mapping; the ring itself goes with the socket.
func (r *rxRing) unmap() error {
	if r.mem == nil {
		return nil
	}
	var errs []error
	if err := r.waiter.Close(); err != nil {
		errs = append(errs, fmt.Errorf("cannot close the receive ring's waiter: %w", err))
	}
	if err := unix.Munmap(r.mem); err != nil {
		errs = append(errs, fmt.Errorf("cannot unmap the receive ring: %w", err))
	}
	r.mem = nil
	return errors.Join(errs...)
}

// setupRing gives the receive socket a ring, or logs why it reads with
// recvfrom instead.
func (t *Transport) setupRing(recvBuffer int) {
	r, err := newRxRing(t.rxFd, recvBuffer)
	if err != nil {
		t.log.Warn().Err(err).Msg("raw transport: no receive ring, reading with recvfrom (slower on dense scans)")
		return
	}
	t.ring = r
	t.log.Debug().Int("blocks", r.blocks).Int("block_bytes", ringBlockSize).Msg("raw transport: receive ring mapped")
}

// receiveRing is the receive loop on the ring: block by block until
// stopped, each frame through the same validation as recvfrom's.
func (t *Transport) receiveRing() {
	for !t.stop.Load() {
		block, err := t.ring.next()
		if err != nil {
			t.log.Error().Err(err).Msg("raw transport: receive failed, stopping")
			return
		}
		if block == nil {
			continue
		}
		eachFrame(block, t.handle)
		t.ring.done()
	}
}

// releaseRing logs the ring's losses and unmaps it; called once the
// receive loop is over.
func (t *Transport) releaseRing() error {
	if t.ring == nil {
		return nil
	}
	if packets, drops, err := t.ring.stats(); err == nil {
		ev := t.log.Debug()
		if drops > 0 {
			ev = t.log.Warn()
		}
		ev.Uint32("queued", packets).Uint32("dropped", drops).Msg("raw transport: receive ring statistics")
	}
	err := t.ring.unmap()
	t.ring = nil
	return err
}
