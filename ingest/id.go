package ingest

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"time"
)

// Crockford base32: ids sort lexically in time order.
const idAlphabet = "0123456789abcdefghjkmnpqrstvwxyz"

var idState struct {
	sync.Mutex
	lastMS uint64
	seq    uint64 // 80 bits of randomness are folded into seq+rnd below
	rnd    uint32
}

// NewID returns prefix + a 26-character, time-sortable id: 48 bits of unix
// milliseconds followed by 80 bits that are random per millisecond and
// incremented within one, so ids from one process are strictly increasing.
func NewID(prefix string) string {
	var b [16]byte
	idState.Lock()
	ms := uint64(time.Now().UnixMilli())
	if ms <= idState.lastMS {
		ms = idState.lastMS
		idState.seq++
	} else {
		var r [12]byte
		_, _ = rand.Read(r[:])
		idState.lastMS = ms
		// keep the top bit clear so seq never overflows within a millisecond
		idState.seq = binary.BigEndian.Uint64(r[:8]) >> 1
		idState.rnd = binary.BigEndian.Uint32(r[8:])
	}
	seq, rnd := idState.seq, idState.rnd
	idState.Unlock()
	binary.BigEndian.PutUint16(b[0:2], uint16(ms>>32))
	binary.BigEndian.PutUint32(b[2:6], uint32(ms))
	binary.BigEndian.PutUint64(b[6:14], seq)
	binary.BigEndian.PutUint16(b[14:16], uint16(rnd))
	out := make([]byte, len(prefix)+26)
	copy(out, prefix)
	encodeBase32(out[len(prefix):], b)
	return string(out)
}

// encodeBase32 writes 128 bits as 26 base32 digits (the first holds 3 bits).
func encodeBase32(dst []byte, b [16]byte) {
	hi := binary.BigEndian.Uint64(b[:8])
	lo := binary.BigEndian.Uint64(b[8:])
	for i := 25; i >= 0; i-- {
		dst[i] = idAlphabet[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
}

// IDTime returns the time embedded in an id made by NewID with the given prefix.
func IDTime(prefix, id string) (time.Time, bool) {
	if len(id) != len(prefix)+26 || id[:len(prefix)] != prefix {
		return time.Time{}, false
	}
	var ms uint64
	// the first 10 digits hold 3+45 = 48 bits... plus 2 bits of seq; decode 11
	// digits (53 bits) and shift away the 5 extra bits.
	for _, c := range []byte(id[len(prefix) : len(prefix)+11]) {
		v := indexByte(c)
		if v < 0 {
			return time.Time{}, false
		}
		ms = ms<<5 | uint64(v)
	}
	ms >>= 5
	return time.UnixMilli(int64(ms)), true
}

func indexByte(c byte) int {
	for i := 0; i < len(idAlphabet); i++ {
		if idAlphabet[i] == c {
			return i
		}
	}
	return -1
}
