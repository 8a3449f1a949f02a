package rawsock

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

func TestEachFrameWalksABlock(t *testing.T) {
	c := newCookie(5, 6, 40000, 40999)
	d := newDecoder(c, testSrc)
	var frames [][]byte
	for i := range 3 {
		seq, sport, _ := c.probe(testSrc, testDst+uint32(i), 443)
		frames = append(frames, replyFrame(t, testDst+uint32(i), testSrc, 443, sport, seq+1, true, false, true))
	}
	// the middle one is marked outgoing: skipped like recvfrom's loop does
	block := fakeBlock(t, frames, []uint8{unix.PACKET_HOST, unix.PACKET_OUTGOING, unix.PACKET_HOST})
	var got []uint32
	eachFrame(block, func(f []byte) {
		r := d.decode(f)
		if r.kind != replyOpen {
			t.Errorf("frame from the ring decoded as %d, want open", r.kind)
		}
		got = append(got, r.ip)
	})
	if len(got) != 2 || got[0] != testDst || got[1] != testDst+2 {
		t.Errorf("walked %x, want the first and third replies", got)
	}
}

func TestEachFrameStopsAtBadOffsets(t *testing.T) {
	frame := replyFrame(t, testDst, testSrc, 443, 40000, 1, true, false, true)
	cases := map[string]func(block []byte){
		"first offset past the block": func(b []byte) { binary.LittleEndian.PutUint32(b[blockFirstOff:], ringBlockSize) },
		"zero first offset":           func(b []byte) { binary.LittleEndian.PutUint32(b[blockFirstOff:], 0) },
		"snaplen past the block":      func(b []byte) { binary.LittleEndian.PutUint32(b[48+12:], ringBlockSize) },
		"more packets than frames":    func(b []byte) { binary.LittleEndian.PutUint32(b[blockNumOff:], 1000) },
	}
	for name, corrupt := range cases {
		t.Run(name, func(t *testing.T) {
			block := fakeBlock(t, [][]byte{frame}, []uint8{unix.PACKET_HOST})
			corrupt(block)
			n := 0
			eachFrame(block, func(f []byte) {
				n++
				if len(f) != len(frame) {
					t.Errorf("frame of %d bytes, want %d", len(f), len(frame))
				}
			})
			if n > 1 {
				t.Errorf("walked %d frames out of a one-frame block", n)
			}
		})
	}
}

func TestRingSizeFollowsRecvBuffer(t *testing.T) {
	for _, tc := range []struct{ buf, blocks int }{
		{0, 4}, {1, 4}, {64 << 20, 256}, {64<<20 + 1, 257},
	} {
		if got := ringSize(tc.buf); got != tc.blocks {
			t.Errorf("ringSize(%d) = %d blocks, want %d", tc.buf, got, tc.blocks)
		}
	}
}

// BenchmarkRingReceive is the receive hot path on the ring: walking a
// block and validating each reply, per frame.
func BenchmarkRingReceive(b *testing.B) {
	c := newCookie(5, 6, 40000, 40999)
	d := newDecoder(c, testSrc)
	var frames [][]byte
	var types []uint8
	for i := range 1000 {
		seq, sport, _ := c.probe(testSrc, testDst+uint32(i), 443)
		frames = append(frames, replyFrame(b, testDst+uint32(i), testSrc, 443, sport, seq+1, true, false, true))
		types = append(types, unix.PACKET_HOST)
	}
	block := fakeBlock(b, frames, types)
	open := 0
	handle := func(f []byte) {
		if d.decode(f).kind == replyOpen {
			open++
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += len(frames) {
		eachFrame(block, handle)
	}
	if open == 0 {
		b.Fatal("nothing decoded")
	}
}
