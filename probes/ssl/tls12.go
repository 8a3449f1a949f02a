package ssl

// A minimal TLS 1.2 client: just enough (ECDHE over x25519 or a NIST curve,
// AES-GCM, no certificate or signature checks) to complete a handshake and
// then start a renegotiation, which crypto/tls cannot do as a client. It
// authenticates nothing and sends no application data: it is a probe, not a
// transport.

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
)

// More record and handshake types than the crafted hellos need.
const (
	recordChangeCipherSpec byte = 20
	recordApplicationData  byte = 23

	msgHelloRequest       byte = 0
	msgCertificateRequest byte = 13
	msgClientKeyExchange  byte = 16
	msgFinished           byte = 20
)

// alertNoRenegotiation is the warning a server sends to decline a
// renegotiation (RFC 5246 7.2.2).
const alertNoRenegotiation byte = 100

// The suites the TLS 1.2 client implements.
const (
	suiteECDHERSAAES128GCM   uint16 = 0xC02F
	suiteECDHERSAAES256GCM   uint16 = 0xC030
	suiteECDHEECDSAAES128GCM uint16 = 0xC02B
	suiteECDHEECDSAAES256GCM uint16 = 0xC02C
)

// tls12Suites lists them in the order they are offered.
var tls12Suites = []uint16{suiteECDHEECDSAAES128GCM, suiteECDHERSAAES128GCM, suiteECDHEECDSAAES256GCM, suiteECDHERSAAES256GCM}

// NIST curves' named-group codes.
const (
	groupSecp256r1 uint16 = 23
	groupSecp384r1 uint16 = 24
	groupSecp521r1 uint16 = 25
)

// tls12Groups are the groups the client offers, in order: every curve
// crypto/ecdh has, since OpenSSL refuses ECDSA suites in TLS 1.2 unless
// the certificate's curve is among them.
var tls12Groups = []uint16{groupX25519, groupSecp256r1, groupSecp384r1, groupSecp521r1}

// tls12Curve is the crypto/ecdh curve of a group in tls12Groups.
func tls12Curve(group uint16) ecdh.Curve {
	switch group {
	case groupSecp256r1:
		return ecdh.P256()
	case groupSecp384r1:
		return ecdh.P384()
	case groupSecp521r1:
		return ecdh.P521()
	}
	return ecdh.X25519()
}

// errHandshake marks a TLS 1.2 handshake the server's messages broke.
var errHandshake = errors.New("tls: handshake failed")

// suiteParams are the key sizes and PRF hash of an AES-GCM suite.
type suiteParams struct {
	keyLen int
	hash   func() hash.Hash
}

func tls12Params(id uint16) (suiteParams, bool) {
	switch id {
	case suiteECDHERSAAES128GCM, suiteECDHEECDSAAES128GCM:
		return suiteParams{keyLen: 16, hash: sha256.New}, true
	case suiteECDHERSAAES256GCM, suiteECDHEECDSAAES256GCM:
		return suiteParams{keyLen: 32, hash: sha512.New384}, true
	}
	return suiteParams{}, false
}

// prf12 is the TLS 1.2 PRF (RFC 5246 section 5): P_hash over label+seed,
// filling out.
func prf12(h func() hash.Hash, secret []byte, label string, seed []byte, out []byte) {
	labelSeed := append([]byte(label), seed...)
	mac := hmac.New(h, secret)
	mac.Write(labelSeed)
	a := mac.Sum(nil) // A(1)
	for len(out) > 0 {
		mac.Reset()
		mac.Write(a)
		mac.Write(labelSeed)
		out = out[copy(out, mac.Sum(nil)):]
		mac.Reset()
		mac.Write(a)
		a = mac.Sum(a[:0])
	}
}

// gcmRecord protects the records of one direction: AES-GCM with a 4-byte
// implicit salt and the sequence number as the 8-byte explicit nonce
// (RFC 5288).
type gcmRecord struct {
	aead cipher.AEAD
	salt [4]byte
	seq  uint64
}

func newGCMRecord(key, salt []byte) (*gcmRecord, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("cannot create the record cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("cannot create the record cipher: %w", err)
	}
	g := &gcmRecord{aead: aead}
	copy(g.salt[:], salt)
	return g, nil
}

// additionalData is seq_num + type + version + plaintext length.
func (g *gcmRecord) additionalData(typ byte, n int) [13]byte {
	var ad [13]byte
	binary.BigEndian.PutUint64(ad[:], g.seq)
	ad[8] = typ
	binary.BigEndian.PutUint16(ad[9:], versionTLS12)
	binary.BigEndian.PutUint16(ad[11:], uint16(n))
	return ad
}

// seal appends the record carrying plaintext to dst.
func (g *gcmRecord) seal(dst []byte, typ byte, plaintext []byte) []byte {
	var nonce [12]byte
	copy(nonce[:], g.salt[:])
	binary.BigEndian.PutUint64(nonce[4:], g.seq)
	ad := g.additionalData(typ, len(plaintext))
	n := 8 + len(plaintext) + g.aead.Overhead()
	dst = append(dst, typ, 3, 3, byte(n>>8), byte(n)) // TLS 1.2
	dst = append(dst, nonce[4:]...)
	dst = g.aead.Seal(dst, nonce[:], plaintext, ad[:])
	g.seq++
	return dst
}

// open decrypts the payload of a record of type typ in place.
func (g *gcmRecord) open(typ byte, payload []byte) ([]byte, error) {
	if len(payload) < 8+g.aead.Overhead() {
		return nil, fmt.Errorf("%w: encrypted record of %d bytes", errMalformed, len(payload))
	}
	var nonce [12]byte
	copy(nonce[:], g.salt[:])
	copy(nonce[4:], payload[:8])
	ad := g.additionalData(typ, len(payload)-8-g.aead.Overhead())
	out, err := g.aead.Open(payload[8:8], nonce[:], payload[8:], ad[:])
	if err != nil {
		return nil, fmt.Errorf("%w: bad_record_mac", errHandshake)
	}
	g.seq++
	return out, nil
}

// tls12Client is one connection of the minimal client.
type tls12Client struct {
	rw  io.ReadWriter
	rr  recordReader
	sni string
	// suites offered; nil offers tls12Suites.
	suites []uint16

	clientRandom, serverRandom [32]byte
	suite                      uint16
	params                     suiteParams
	transcript                 hash.Hash
	master                     [48]byte
	// secure reports the server answered renegotiation_info (RFC 5746).
	secure                     bool
	clientVerify, serverVerify []byte
	// in and out protect records once each side's ChangeCipherSpec is
	// through; the pending ones wait for it.
	in, out, pendingIn, pendingOut *gcmRecord
	// hs holds handshake bytes read but not yet split into messages.
	hs []byte
}

func newTLS12Client(rw io.ReadWriter, sni string, suites []uint16) *tls12Client {
	return &tls12Client{rw: rw, rr: recordReader{r: rw}, sni: sni, suites: suites}
}

// clientHello returns the ClientHello message (no record header) of a
// first handshake (reneg nil: empty renegotiation_info) or a secure
// renegotiation (reneg: the client's last verify_data). insecure leaves
// renegotiation_info out, as a pre-RFC 5746 client renegotiates.
func (c *tls12Client) clientHello(random *[32]byte, reneg []byte, insecure bool) []byte {
	suites := c.suites
	if suites == nil {
		suites = tls12Suites
	}
	b := []byte{msgClientHello, 0, 0, 0}
	b = binary.BigEndian.AppendUint16(b, versionTLS12)
	b = append(b, random[:]...)
	b = append(b, 0) // no session id: nothing to resume
	b = appendUint16List(b, suites)
	b = append(b, 1, 0) // null compression
	b = append(b, 0, 0)
	extStart := len(b)
	b = appendCommonExts(b, c.sni, tls12Groups, true)
	if !insecure {
		b = appendExt(b, extRenegotiationInfo, func(e []byte) []byte {
			return append(append(e, byte(len(reneg))), reneg...)
		})
	}
	binary.BigEndian.PutUint16(b[extStart-2:], uint16(len(b)-extStart))
	putUint24(b[1:], len(b)-4)
	return b
}

// writeRecord writes one record, encrypted once the client's
// ChangeCipherSpec is sent.
func (c *tls12Client) writeRecord(typ byte, payload []byte, recVersion uint16) error {
	var b []byte
	if c.out != nil {
		b = c.out.seal(nil, typ, payload)
	} else {
		b = append([]byte{typ, byte(recVersion >> 8), byte(recVersion)}, byte(len(payload)>>8), byte(len(payload)))
		b = append(b, payload...)
	}
	if _, err := c.rw.Write(b); err != nil {
		return fmt.Errorf("cannot send a TLS record: %w", err)
	}
	return nil
}

// readRecord reads the next record, decrypted once the server's
// ChangeCipherSpec arrived. The payload is valid until the next read.
func (c *tls12Client) readRecord() (byte, []byte, error) {
	typ, payload, err := c.rr.next()
	if err != nil {
		return 0, nil, err
	}
	if c.in != nil && typ != recordChangeCipherSpec {
		if payload, err = c.in.open(typ, payload); err != nil {
			return 0, nil, err
		}
	}
	return typ, payload, nil
}

// readMessage returns the next handshake message (header included) and
// fails on an alert or any other record. Messages are copied, so they
// stay valid.
func (c *tls12Client) readMessage() ([]byte, error) {
	for {
		if len(c.hs) >= 4 {
			n := int(c.hs[1])<<16 | int(c.hs[2])<<8 | int(c.hs[3])
			if n > flightLimit {
				return nil, fmt.Errorf("%w: handshake message of %d bytes", errMalformed, n)
			}
			if len(c.hs) >= 4+n {
				msg := slices.Clone(c.hs[:4+n])
				c.hs = c.hs[4+n:]
				return msg, nil
			}
		}
		typ, payload, err := c.readRecord()
		if err != nil {
			return nil, err
		}
		switch typ {
		case recordHandshake:
			c.hs = append(c.hs, payload...)
		case recordAlert:
			if len(payload) < 2 {
				return nil, errMalformed
			}
			return nil, AlertError{Level: payload[0], Description: payload[1]}
		default:
			return nil, fmt.Errorf("%w: record type %d during the handshake", errMalformed, typ)
		}
	}
}

// handshake runs a full TLS 1.2 handshake. The server's certificate and
// key-exchange signature are read but not checked: only the server's
// willingness to renegotiate is of interest.
func (c *tls12Client) handshake() error {
	if _, err := rand.Read(c.clientRandom[:]); err != nil {
		return fmt.Errorf("cannot draw the client random: %w", err)
	}
	hello := c.clientHello(&c.clientRandom, nil, false)
	if err := c.writeRecord(recordHandshake, hello, versionTLS10); err != nil {
		return err
	}
	msg, err := c.readMessage()
	if err != nil {
		return err
	}
	if msg[0] != msgServerHello {
		return fmt.Errorf("%w: handshake message %d instead of ServerHello", errMalformed, msg[0])
	}
	if err := c.acceptServerHello(msg); err != nil {
		return err
	}
	c.transcript = c.params.hash()
	c.transcript.Write(hello)
	c.transcript.Write(msg)

	var group uint16
	var serverKey []byte
	certRequested := false
	for done := false; !done; {
		msg, err := c.readMessage()
		if err != nil {
			return err
		}
		c.transcript.Write(msg)
		switch msg[0] {
		case msgCertificate:
		case msgServerKeyExchange:
			if group, serverKey, err = parseECDHEParams(msg[4:]); err != nil {
				return err
			}
		case msgCertificateRequest:
			certRequested = true
		case msgServerHelloDone:
			done = true
		default:
			return fmt.Errorf("%w: unexpected handshake message %d", errHandshake, msg[0])
		}
	}
	if serverKey == nil {
		return fmt.Errorf("%w: no ServerKeyExchange", errHandshake)
	}
	curve := tls12Curve(group)
	peer, err := curve.NewPublicKey(serverKey)
	if err != nil {
		return fmt.Errorf("%w: bad ECDHE share: %v", errHandshake, err)
	}
	priv, err := curve.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("cannot generate the ECDHE key: %w", err)
	}
	pre, err := priv.ECDH(peer)
	if err != nil {
		return fmt.Errorf("%w: ECDHE failed: %v", errHandshake, err)
	}

	var flight []byte
	if certRequested {
		// an empty Certificate: the server decides whether that suffices
		flight = append(flight, msgCertificate, 0, 0, 3, 0, 0, 0)
	}
	pub := priv.PublicKey().Bytes()
	flight = append(flight, msgClientKeyExchange, 0, 0, byte(len(pub)+1), byte(len(pub)))
	flight = append(flight, pub...)
	c.transcript.Write(flight)
	if err := c.writeRecord(recordHandshake, flight, versionTLS12); err != nil {
		return err
	}
	if err := c.deriveKeys(pre); err != nil {
		return err
	}
	if err := c.writeRecord(recordChangeCipherSpec, []byte{1}, versionTLS12); err != nil {
		return err
	}
	c.out = c.pendingOut
	c.clientVerify = c.finished("client finished")
	fin := append([]byte{msgFinished, 0, 0, 12}, c.clientVerify...)
	c.transcript.Write(fin)
	if err := c.writeRecord(recordHandshake, fin, versionTLS12); err != nil {
		return err
	}
	return c.readServerFinished()
}

// acceptServerHello checks the server chose what was offered.
func (c *tls12Client) acceptServerHello(msg []byte) error {
	h, err := parseServerHello(msg[4:])
	if err != nil {
		return err
	}
	if h.version != versionTLS12 {
		return fmt.Errorf("%w: server chose %s", errHandshake, versionName(h.version))
	}
	offered := c.suites
	if offered == nil {
		offered = tls12Suites
	}
	params, ok := tls12Params(h.suite)
	if !ok || !slices.Contains(offered, h.suite) {
		return fmt.Errorf("%w: server chose suite 0x%04X", errHandshake, h.suite)
	}
	if h.compression != 0 {
		return fmt.Errorf("%w: server chose compression %d", errHandshake, h.compression)
	}
	copy(c.serverRandom[:], msg[4+2:4+2+32])
	c.suite, c.params = h.suite, params
	ri, ok := h.extData[extRenegotiationInfo]
	c.secure = ok && len(ri) == 1 && ri[0] == 0
	if ok && !c.secure {
		return fmt.Errorf("%w: bad initial renegotiation_info", errHandshake)
	}
	if h.has(extExtendedMasterSec) {
		return fmt.Errorf("%w: extended master secret not offered but negotiated", errHandshake)
	}
	return nil
}

// parseECDHEParams reads a named-curve ServerKeyExchange.
func parseECDHEParams(b []byte) (uint16, []byte, error) {
	r := reader(b)
	curveType, ok1 := r.u8()
	group, ok2 := r.u16()
	key, ok3 := r.vec8()
	if !ok1 || !ok2 || !ok3 || curveType != 3 {
		return 0, nil, fmt.Errorf("%w: ServerKeyExchange is not a named-curve ECDHE one", errHandshake)
	}
	if !slices.Contains(tls12Groups, group) {
		return 0, nil, fmt.Errorf("%w: server chose group %d", errHandshake, group)
	}
	return group, slices.Clone(key), nil
}

// deriveKeys computes the master secret and the record keys (RFC 5246
// 8.1 and 6.3); AES-GCM needs no MAC keys, 4-byte implicit IVs.
func (c *tls12Client) deriveKeys(pre []byte) error {
	prf12(c.params.hash, pre, "master secret", append(c.clientRandom[:], c.serverRandom[:]...), c.master[:])
	kl := c.params.keyLen
	kb := make([]byte, 2*kl+8)
	prf12(c.params.hash, c.master[:], "key expansion", append(c.serverRandom[:], c.clientRandom[:]...), kb)
	var err error
	if c.pendingOut, err = newGCMRecord(kb[:kl], kb[2*kl:2*kl+4]); err != nil {
		return err
	}
	c.pendingIn, err = newGCMRecord(kb[kl:2*kl], kb[2*kl+4:])
	return err
}

// finished is the verify_data over the transcript so far.
func (c *tls12Client) finished(label string) []byte {
	out := make([]byte, 12)
	prf12(c.params.hash, c.master[:], label, c.transcript.Sum(nil), out)
	return out
}

// readServerFinished waits for the server's ChangeCipherSpec and
// Finished and checks its verify_data.
func (c *tls12Client) readServerFinished() error {
	for c.in == nil {
		typ, payload, err := c.readRecord()
		if err != nil {
			return err
		}
		switch {
		case typ == recordChangeCipherSpec && len(payload) == 1 && payload[0] == 1 && len(c.hs) == 0:
			c.in = c.pendingIn
		case typ == recordAlert && len(payload) >= 2:
			return AlertError{Level: payload[0], Description: payload[1]}
		default:
			return fmt.Errorf("%w: record type %d instead of ChangeCipherSpec", errHandshake, typ)
		}
	}
	want := c.finished("server finished")
	msg, err := c.readMessage()
	if err != nil {
		return err
	}
	if msg[0] != msgFinished || !hmac.Equal(msg[4:], want) {
		return fmt.Errorf("%w: server Finished does not verify", errHandshake)
	}
	c.serverVerify = want
	return nil
}
