package ssl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Protocol versions as they travel on the wire.
const (
	versionSSL20 uint16 = 0x0002
	versionSSL30 uint16 = 0x0300
	versionTLS10 uint16 = 0x0301
	versionTLS11 uint16 = 0x0302
	versionTLS12 uint16 = 0x0303
	versionTLS13 uint16 = 0x0304
)

// Record content types.
const (
	recordAlert     byte = 21
	recordHandshake byte = 22
	recordHeartbeat byte = 24
)

// Handshake message types.
const (
	msgClientHello       byte = 1
	msgServerHello       byte = 2
	msgCertificate       byte = 11
	msgServerKeyExchange byte = 12
	msgServerHelloDone   byte = 14
)

// Extension codes.
const (
	extServerName          uint16 = 0
	extSupportedGroups     uint16 = 10
	extECPointFormats      uint16 = 11
	extSignatureAlgorithms uint16 = 13
	extHeartbeat           uint16 = 15
	extALPN                uint16 = 16
	extExtendedMasterSec   uint16 = 23
	extSupportedVersions   uint16 = 43
	extPSKModes            uint16 = 45
	extKeyShare            uint16 = 51
	extRenegotiationInfo   uint16 = 0xff01
)

// Alert descriptions the module branches on.
const alertInappropriateFallback byte = 86

// Named groups.
const (
	groupX25519 uint16 = 29
)

// offeredGroups is the supported_groups list of every crafted hello.
var offeredGroups = []uint16{29, 23, 24, 25, 30, 256, 257, 258, 259, 260}

// offeredSigAlgs covers TLS 1.2 and 1.3 servers, old SHA-1 ones included.
var offeredSigAlgs = []uint16{
	0x0403, 0x0503, 0x0603, 0x0807, 0x0808, 0x0804, 0x0805, 0x0806,
	0x0401, 0x0501, 0x0601, 0x0203, 0x0201, 0x0402, 0x0202,
}

// helloRetryRandom marks a TLS 1.3 HelloRetryRequest (RFC 8446 4.1.3).
var helloRetryRandom = [32]byte{
	0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
	0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
}

// maxRecord caps one record's payload (2^14 plus the expansion TLS allows).
const maxRecord = 1<<14 + 2048

// flightLimit caps the bytes read from one server flight.
const flightLimit = 96 << 10

var (
	// ErrNotTLS marks a peer whose reply is not TLS at all; the text keeps
	// crypto/tls's "tls: " prefix so probes.Classify calls it a tls-error.
	ErrNotTLS = errors.New("tls: reply does not look like TLS")
	// errMalformed marks a TLS reply the module could not parse.
	errMalformed = errors.New("tls: malformed server reply")
)

// AlertError is a TLS alert the server sent instead of a ServerHello.
type AlertError struct {
	Level       byte
	Description byte
}

func (e AlertError) Error() string {
	return "tls: server sent alert " + alertName(e.Description)
}

func alertName(d byte) string {
	switch d {
	case 0:
		return "close_notify"
	case 10:
		return "unexpected_message"
	case 20:
		return "bad_record_mac"
	case 40:
		return "handshake_failure"
	case 47:
		return "illegal_parameter"
	case 50:
		return "decode_error"
	case 70:
		return "protocol_version"
	case 71:
		return "insufficient_security"
	case 80:
		return "internal_error"
	case 86:
		return "inappropriate_fallback"
	case 109:
		return "missing_extension"
	case 112:
		return "unrecognized_name"
	case 120:
		return "no_application_protocol"
	}
	return "alert_" + strconv.Itoa(int(d))
}

// helloSpec describes one crafted ClientHello.
type helloSpec struct {
	// version is the highest version offered; TLS 1.3 is offered through
	// supported_versions with a TLS 1.2 legacy version.
	version     uint16
	suites      []uint16
	sni         string
	alpn        []string
	compression []byte // nil means {null}
	heartbeat   bool
	fallback    bool // append TLS_FALLBACK_SCSV
}

// appendClientHello appends the record holding h's ClientHello to dst.
// random is the client random; keyShare the x25519 public key for TLS 1.3.
func appendClientHello(dst []byte, h helloSpec, random *[32]byte, keyShare []byte) []byte {
	legacy := h.version
	if legacy > versionTLS12 {
		legacy = versionTLS12
	}
	recVersion := legacy
	if recVersion > versionTLS10 {
		recVersion = versionTLS10
	}
	dst = append(dst, recordHandshake, byte(recVersion>>8), byte(recVersion), 0, 0)
	recStart := len(dst)
	dst = append(dst, msgClientHello, 0, 0, 0)
	msgStart := len(dst)
	dst = binary.BigEndian.AppendUint16(dst, legacy)
	dst = append(dst, random[:]...)
	dst = append(dst, 0) // no session id

	suites := h.suites
	n := len(suites)
	sslv3 := h.version == versionSSL30
	if sslv3 {
		n++ // renegotiation SCSV: SSLv3 hellos carry no extensions
	}
	if h.fallback {
		n++
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(2*n))
	for _, s := range suites {
		dst = binary.BigEndian.AppendUint16(dst, s)
	}
	if sslv3 {
		dst = binary.BigEndian.AppendUint16(dst, scsvRenegotiation)
	}
	if h.fallback {
		dst = binary.BigEndian.AppendUint16(dst, scsvFallback)
	}
	comp := h.compression
	if comp == nil {
		comp = []byte{0}
	}
	dst = append(dst, byte(len(comp)))
	dst = append(dst, comp...)

	if !sslv3 {
		dst = append(dst, 0, 0)
		extStart := len(dst)
		dst = appendExtensions(dst, h, keyShare)
		binary.BigEndian.PutUint16(dst[extStart-2:], uint16(len(dst)-extStart))
	}
	putUint24(dst[msgStart-3:], len(dst)-msgStart)
	binary.BigEndian.PutUint16(dst[recStart-2:], uint16(len(dst)-recStart))
	return dst
}

func appendExtensions(dst []byte, h helloSpec, keyShare []byte) []byte {
	dst = appendCommonExts(dst, h.sni, offeredGroups, h.version >= versionTLS12)
	if len(h.alpn) > 0 {
		dst = appendExt(dst, extALPN, func(b []byte) []byte {
			start := len(b)
			b = append(b, 0, 0)
			for _, p := range h.alpn {
				b = append(b, byte(len(p)))
				b = append(b, p...)
			}
			binary.BigEndian.PutUint16(b[start:], uint16(len(b)-start-2))
			return b
		})
	}
	if h.heartbeat {
		dst = appendExt(dst, extHeartbeat, func(b []byte) []byte { return append(b, 1) }) // peer_allowed_to_send
	}
	dst = appendExt(dst, extExtendedMasterSec, nil)
	dst = appendExt(dst, extRenegotiationInfo, func(b []byte) []byte { return append(b, 0) })
	if h.version >= versionTLS13 {
		dst = appendExt(dst, extSupportedVersions, func(b []byte) []byte {
			return binary.BigEndian.AppendUint16(append(b, 2), versionTLS13)
		})
		dst = appendExt(dst, extPSKModes, func(b []byte) []byte { return append(b, 1, 1) })
		dst = appendExt(dst, extKeyShare, func(b []byte) []byte {
			b = binary.BigEndian.AppendUint16(b, uint16(len(keyShare)+4))
			b = binary.BigEndian.AppendUint16(b, groupX25519)
			b = binary.BigEndian.AppendUint16(b, uint16(len(keyShare)))
			return append(b, keyShare...)
		})
	}
	return dst
}

// appendCommonExts appends the extensions every crafted hello opens with:
// server_name (when sni is set), ec_point_formats (uncompressed),
// supported_groups and, for TLS 1.2 and later, signature_algorithms.
func appendCommonExts(dst []byte, sni string, groups []uint16, sigAlgs bool) []byte {
	if sni != "" {
		dst = appendExt(dst, extServerName, func(b []byte) []byte {
			b = binary.BigEndian.AppendUint16(b, uint16(len(sni)+3))
			b = append(b, 0) // host_name
			b = binary.BigEndian.AppendUint16(b, uint16(len(sni)))
			return append(b, sni...)
		})
	}
	dst = appendExt(dst, extECPointFormats, func(b []byte) []byte { return append(b, 1, 0) })
	dst = appendExt(dst, extSupportedGroups, func(b []byte) []byte { return appendUint16List(b, groups) })
	if sigAlgs {
		dst = appendExt(dst, extSignatureAlgorithms, func(b []byte) []byte { return appendUint16List(b, offeredSigAlgs) })
	}
	return dst
}

// appendUint16List appends a list of uint16 with its two-byte length.
func appendUint16List(b []byte, list []uint16) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(2*len(list)))
	for _, v := range list {
		b = binary.BigEndian.AppendUint16(b, v)
	}
	return b
}

// appendExt appends one extension whose body body appends (nil: empty).
func appendExt(dst []byte, typ uint16, body func([]byte) []byte) []byte {
	dst = binary.BigEndian.AppendUint16(dst, typ)
	dst = append(dst, 0, 0)
	start := len(dst)
	if body != nil {
		dst = body(dst)
	}
	binary.BigEndian.PutUint16(dst[start-2:], uint16(len(dst)-start))
	return dst
}

func putUint24(b []byte, v int) {
	b[0], b[1], b[2] = byte(v>>16), byte(v>>8), byte(v)
}

// serverHello is the parsed ServerHello.
type serverHello struct {
	legacyVersion uint16
	// version is the negotiated one: supported_versions when present.
	version     uint16
	suite       uint16
	compression byte
	// extensions in the order the server sent them, for JA3S.
	extensions []uint16
	extData    map[uint16][]byte
	retry      bool // a TLS 1.3 HelloRetryRequest
}

func (h *serverHello) has(ext uint16) bool {
	_, ok := h.extData[ext]
	return ok
}

// group is the key-share group a TLS 1.3 ServerHello (or retry) names.
func (h *serverHello) group() (uint16, bool) {
	d, ok := h.extData[extKeyShare]
	if !ok || len(d) < 2 {
		return 0, false
	}
	return binary.BigEndian.Uint16(d), true
}

func parseServerHello(b []byte) (*serverHello, error) {
	r := reader(b)
	var h serverHello
	var random, sid []byte
	var ok bool
	if h.legacyVersion, ok = r.u16(); !ok {
		return nil, errMalformed
	}
	if random, ok = r.bytes(32); !ok {
		return nil, errMalformed
	}
	if sid, ok = r.vec8(); !ok || len(sid) > 32 {
		return nil, errMalformed
	}
	if h.suite, ok = r.u16(); !ok {
		return nil, errMalformed
	}
	if h.compression, ok = r.u8(); !ok {
		return nil, errMalformed
	}
	h.version = h.legacyVersion
	h.retry = [32]byte(random) == helloRetryRandom
	h.extData = map[uint16][]byte{}
	if len(r) == 0 {
		return &h, nil
	}
	exts, ok := r.vec16()
	if !ok || len(r) != 0 {
		return nil, errMalformed
	}
	for len(exts) > 0 {
		typ, ok1 := exts.u16()
		data, ok2 := exts.vec16()
		if !ok1 || !ok2 {
			return nil, errMalformed
		}
		h.extensions = append(h.extensions, typ)
		h.extData[typ] = data
	}
	if d, ok := h.extData[extSupportedVersions]; ok {
		if len(d) != 2 {
			return nil, errMalformed
		}
		h.version = binary.BigEndian.Uint16(d)
	}
	return &h, nil
}

// flight is what the module read of a server's first flight.
type flight struct {
	hello *serverHello
	// helloRaw is the ServerHello message (header included).
	helloRaw []byte
	// certs are the DER certificates of a TLS ≤1.2 Certificate message.
	certs [][]byte
	// kx is the ephemeral key exchange a ServerKeyExchange revealed.
	kx *KeyExchange
	// done reports a ServerHelloDone: the server waits for the client.
	done bool
}

// recordReader reads TLS records from r.
type recordReader struct {
	r    io.Reader
	hdr  [5]byte
	buf  []byte
	read int
}

// next returns the next record's type and payload (valid until the next
// call). A first record that is not TLS gives ErrNotTLS.
func (rr *recordReader) next() (byte, []byte, error) {
	if _, err := io.ReadFull(rr.r, rr.hdr[:]); err != nil {
		if rr.read > 0 && errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		if rr.read == 0 && errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, ErrNotTLS
		}
		return 0, nil, err
	}
	typ, n := rr.hdr[0], int(binary.BigEndian.Uint16(rr.hdr[3:]))
	if typ < 20 || typ > 24 || rr.hdr[1] != 3 || n > maxRecord {
		return 0, nil, ErrNotTLS
	}
	if rr.read+n > flightLimit {
		return 0, nil, fmt.Errorf("%w: server flight over %d bytes", errMalformed, flightLimit)
	}
	if cap(rr.buf) < n {
		rr.buf = make([]byte, n)
	}
	rr.buf = rr.buf[:n]
	if _, err := io.ReadFull(rr.r, rr.buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	rr.read += 5 + n
	return typ, rr.buf, nil
}

// readFlight reads the server's answer to a ClientHello: an alert (as an
// AlertError), or a ServerHello and, when more is true and the version is
// below TLS 1.3, the rest of the flight up to ServerHelloDone. A failure
// after the ServerHello still returns the flight read so far.
func readFlight(r io.Reader, more bool) (*flight, error) {
	rr := recordReader{r: r}
	var fl flight
	var hs []byte // handshake bytes not yet parsed into messages
	for {
		typ, payload, err := rr.next()
		if err != nil {
			if fl.hello != nil {
				return &fl, nil
			}
			return nil, err
		}
		switch typ {
		case recordAlert:
			if len(payload) < 2 {
				return nil, errMalformed
			}
			if fl.hello != nil {
				return &fl, nil
			}
			return nil, AlertError{Level: payload[0], Description: payload[1]}
		case recordHandshake:
		default:
			if fl.hello != nil {
				return &fl, nil // encrypted TLS 1.3 records or the like
			}
			return nil, fmt.Errorf("%w: record type %d before ServerHello", errMalformed, typ)
		}
		hs = append(hs, payload...)
		for len(hs) >= 4 {
			n := int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])
			if n > flightLimit {
				return nil, errMalformed
			}
			if len(hs) < 4+n {
				break
			}
			msg, body := hs[:4+n], hs[4:4+n]
			hs = hs[4+n:]
			switch {
			case fl.hello == nil && msg[0] != msgServerHello:
				return nil, fmt.Errorf("%w: handshake message %d before ServerHello", errMalformed, msg[0])
			case msg[0] == msgServerHello:
				if fl.hello, err = parseServerHello(body); err != nil {
					return nil, err
				}
				fl.helloRaw = append([]byte(nil), msg...)
				if !more || fl.hello.version >= versionTLS13 || fl.hello.retry {
					return &fl, nil
				}
			case msg[0] == msgCertificate:
				fl.certs = parseCertificateMsg(body)
			case msg[0] == msgServerKeyExchange:
				fl.kx = parseServerKeyExchange(body, fl.hello.suite)
			case msg[0] == msgServerHelloDone:
				fl.done = true
				return &fl, nil
			}
		}
	}
}

func parseCertificateMsg(b []byte) [][]byte {
	r := reader(b)
	list, ok := r.vec24()
	if !ok {
		return nil
	}
	var certs [][]byte
	for len(list) > 0 {
		c, ok := list.vec24()
		if !ok {
			return certs
		}
		certs = append(certs, append([]byte(nil), c...))
	}
	return certs
}

// parseServerKeyExchange reads the group of an ECDHE exchange or the prime
// size of a DHE one.
func parseServerKeyExchange(b []byte, suiteID uint16) *KeyExchange {
	s := lookupSuite(suiteID)
	r := reader(b)
	switch {
	case s.ephemeralEC():
		curveType, ok1 := r.u8()
		id, ok2 := r.u16()
		if !ok1 || !ok2 || curveType != 3 { // named_curve
			return nil
		}
		return groupKeyExchange(s.keyExchange(), id)
	case s.ephemeralDH():
		p, ok := r.vec16()
		for len(p) > 0 && p[0] == 0 {
			p = p[1:]
		}
		if !ok || len(p) == 0 {
			return nil
		}
		bits := 8*len(p) - leadingZeros8(p[0])
		return &KeyExchange{Type: s.keyExchange(), Group: "ffdhe_" + strconv.Itoa(bits), Bits: bits}
	}
	return nil
}

func leadingZeros8(b byte) int {
	n := 0
	for mask := byte(0x80); mask != 0 && b&mask == 0; mask >>= 1 {
		n++
	}
	return n
}

// groupKeyExchange describes named group id used by key exchange kx.
func groupKeyExchange(kx string, id uint16) *KeyExchange {
	name, bits := groupName(id)
	return &KeyExchange{Type: kx, Group: name, Bits: bits}
}

func groupName(id uint16) (string, int) {
	switch id {
	case 23:
		return "secp256r1", 256
	case 24:
		return "secp384r1", 384
	case 25:
		return "secp521r1", 521
	case 29:
		return "x25519", 253
	case 30:
		return "x448", 448
	case 256:
		return "ffdhe2048", 2048
	case 257:
		return "ffdhe3072", 3072
	case 258:
		return "ffdhe4096", 4096
	case 259:
		return "ffdhe6144", 6144
	case 260:
		return "ffdhe8192", 8192
	case 0x11EC:
		return "X25519MLKEM768", 0
	}
	return "group_" + strconv.Itoa(int(id)), 0
}

// ja3s is the JA3S string and its md5 of a ServerHello:
// "version,cipher,ext-ext-…" in decimal.
func ja3sString(h *serverHello) string {
	b := strconv.AppendUint(nil, uint64(h.legacyVersion), 10)
	b = append(b, ',')
	b = strconv.AppendUint(b, uint64(h.suite), 10)
	b = append(b, ',')
	for i, e := range h.extensions {
		if i > 0 {
			b = append(b, '-')
		}
		b = strconv.AppendUint(b, uint64(e), 10)
	}
	return string(b)
}

// reader is a cursor over a byte slice; every accessor reports whether
// enough bytes were left.
type reader []byte

func (r *reader) u8() (byte, bool) {
	if len(*r) < 1 {
		return 0, false
	}
	v := (*r)[0]
	*r = (*r)[1:]
	return v, true
}

func (r *reader) u16() (uint16, bool) {
	if len(*r) < 2 {
		return 0, false
	}
	v := binary.BigEndian.Uint16(*r)
	*r = (*r)[2:]
	return v, true
}

func (r *reader) bytes(n int) ([]byte, bool) {
	if len(*r) < n {
		return nil, false
	}
	v := (*r)[:n]
	*r = (*r)[n:]
	return v, true
}

func (r *reader) vec8() ([]byte, bool) {
	n, ok := r.u8()
	if !ok {
		return nil, false
	}
	return r.bytes(int(n))
}

func (r *reader) vec16() (reader, bool) {
	n, ok := r.u16()
	if !ok {
		return nil, false
	}
	return r.bytes(int(n))
}

func (r *reader) vec24() (reader, bool) {
	if len(*r) < 3 {
		return nil, false
	}
	n := int((*r)[0])<<16 | int((*r)[1])<<8 | int((*r)[2])
	*r = (*r)[3:]
	return r.bytes(n)
}
