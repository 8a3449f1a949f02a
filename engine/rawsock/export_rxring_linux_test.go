package rawsock

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

// ForceRecvfrom makes the Transports created during t ask the kernel for
// an invalid TPACKET version, so the ring setup fails for real and New
// falls back to the recvfrom loop.
func ForceRecvfrom(t testing.TB) {
	t.Helper()
	old := ringVersion
	ringVersion = 99
	t.Cleanup(func() { ringVersion = old })
}

// UsesRxRing reports whether tr receives through the mapped ring.
func UsesRxRing(tr *Transport) bool { return tr.ring != nil }

// RingBlocks reports the ring's block count (0 without a ring).
func RingBlocks(tr *Transport) int {
	if tr.ring == nil {
		return 0
	}
	return tr.ring.blocks
}

// fakeBlock lays out a released TPACKET_V3 block holding frames, the way
// the kernel does: each frame after its tpacket3_hdr and sockaddr_ll.
func fakeBlock(t testing.TB, frames [][]byte, pkttypes []uint8) []byte {
	t.Helper()
	block := make([]byte, ringBlockSize)
	le := binary.LittleEndian
	le.PutUint32(block[blockStatusOff:], unix.TP_STATUS_USER)
	le.PutUint32(block[blockNumOff:], uint32(len(frames)))
	const first = 48
	le.PutUint32(block[blockFirstOff:], first)
	off := first
	for i, f := range frames {
		mac := frameSllOff + 32 // the kernel leaves room after the sockaddr_ll
		size := (mac + len(f) + unix.TPACKET_ALIGNMENT - 1) &^ (unix.TPACKET_ALIGNMENT - 1)
		next := uint32(size)
		if i == len(frames)-1 {
			next = 0
		}
		le.PutUint32(block[off:], next)              // tp_next_offset
		le.PutUint32(block[off+12:], uint32(len(f))) // tp_snaplen
		le.PutUint32(block[off+16:], uint32(len(f))) // tp_len
		le.PutUint16(block[off+24:], uint16(mac))    // tp_mac
		block[off+frameSllOff+sllPkttype] = pkttypes[i]
		copy(block[off+mac:], f)
		off += size
	}
	return block
}
