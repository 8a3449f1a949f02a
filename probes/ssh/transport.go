package ssh

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"

	xssh "golang.org/x/crypto/ssh"

	"trawl/probes"
)

// The module speaks just enough SSH itself to read what x/crypto/ssh keeps
// private: the server's KEXINIT as sent, its RFC 8308 extensions and the
// auth methods it answers a "none" request with. One kex family (ECDH) and
// two cipher families (AES-GCM, AES-CTR + HMAC-SHA2) cover every current
// OpenSSH, Dropbear and x/crypto server; for others it stops after KEXINIT.

// maxPacket bounds a packet's length field (RFC 4253 §6.1 asks for 35000
// at least); anything larger is not a server worth parsing.
const maxPacket = 256 << 10

// ErrNoCommonAlgorithm is returned when the server offers nothing the
// module's own transport implements.
var ErrNoCommonAlgorithm = errors.New("no common algorithm")

// ErrDisconnected is returned when the server sends SSH_MSG_DISCONNECT.
var ErrDisconnected = errors.New("server disconnected")

// packetCipher frames packets in one direction.
type packetCipher interface {
	readPacket(seq uint32, r io.Reader) ([]byte, error)
	writePacket(seq uint32, w io.Writer, payload []byte) error
}

// transport is one SSH connection after the identification exchange.
type transport struct {
	r          *bufio.Reader
	w          io.Writer
	rseq, wseq uint32
	rc, wc     packetCipher
}

func newTransport(r *bufio.Reader, w io.Writer) *transport {
	return &transport{r: r, w: w, rc: plainCipher{}, wc: plainCipher{}}
}

func (t *transport) readPacket() ([]byte, error) {
	p, err := t.rc.readPacket(t.rseq, t.r)
	t.rseq++
	return p, err
}

func (t *transport) writePacket(payload []byte) error {
	err := t.wc.writePacket(t.wseq, t.w, payload)
	t.wseq++
	return err
}

// readMessage reads the next packet that is not IGNORE, DEBUG or
// UNIMPLEMENTED; DISCONNECT becomes ErrDisconnected with its reason.
func (t *transport) readMessage() ([]byte, error) {
	for {
		p, err := t.readPacket()
		if err != nil {
			return nil, err
		}
		if len(p) == 0 {
			return nil, fmt.Errorf("empty packet: %w", probes.ErrProtocol)
		}
		switch p[0] {
		case msgIgnore, msgDebug, msgUnimplemented:
			continue
		case msgDisconnect:
			r := wireReader{b: p[1:]}
			code := r.uint32()
			reason := r.string()
			return nil, fmt.Errorf("%w: code %d: %q", ErrDisconnected, code, reason)
		}
		return p, nil
	}
}

// padding returns the padding length for a packet whose padded part
// (length field included or not, as the cipher frames it) is n bytes.
func padding(n, block int) int {
	pad := block - n%block
	if pad < 4 {
		pad += block
	}
	return pad
}

// plainCipher is the framing before the first NEWKEYS.
type plainCipher struct{}

func (plainCipher) readPacket(_ uint32, r io.Reader) ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	length := binary.BigEndian.Uint32(hdr[:4])
	padLen := uint32(hdr[4])
	if length > maxPacket || length < padLen+1 {
		return nil, fmt.Errorf("bad packet length %d (padding %d): %w", length, padLen, probes.ErrProtocol)
	}
	body := make([]byte, length-1)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, unexpected(err)
	}
	return body[:length-1-padLen], nil
}

func (plainCipher) writePacket(_ uint32, w io.Writer, payload []byte) error {
	pad := padding(5+len(payload), 8)
	b := make([]byte, 0, 5+len(payload)+pad)
	b = appendUint32(b, uint32(1+len(payload)+pad))
	b = append(b, byte(pad))
	b = append(b, payload...)
	b = append(b, make([]byte, pad)...)
	_, err := w.Write(b)
	return err
}

// gcmCipher is aes128/256-gcm@openssh.com (RFC 5647 with OpenSSH's
// naming): the length is associated data, the nonce a fixed part and a
// 64-bit invocation counter.
type gcmCipher struct {
	aead  cipher.AEAD
	nonce [12]byte
}

func newGCM(key, iv []byte) (packetCipher, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	c := &gcmCipher{aead: aead}
	copy(c.nonce[:], iv)
	return c, nil
}

func (c *gcmCipher) next() {
	binary.BigEndian.PutUint64(c.nonce[4:], binary.BigEndian.Uint64(c.nonce[4:])+1)
}

func (c *gcmCipher) readPacket(_ uint32, r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	length := binary.BigEndian.Uint32(hdr[:])
	if length > maxPacket || length%aes.BlockSize != 0 || length < aes.BlockSize {
		return nil, fmt.Errorf("bad packet length %d: %w", length, probes.ErrProtocol)
	}
	buf := make([]byte, int(length)+c.aead.Overhead())
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, unexpected(err)
	}
	plain, err := c.aead.Open(buf[:0], c.nonce[:], buf, hdr[:])
	c.next()
	if err != nil {
		return nil, fmt.Errorf("cannot decrypt packet: %w: %w", err, probes.ErrProtocol)
	}
	return unpad(plain)
}

func (c *gcmCipher) writePacket(_ uint32, w io.Writer, payload []byte) error {
	pad := padding(1+len(payload), aes.BlockSize)
	length := 1 + len(payload) + pad
	b := make([]byte, 4, 4+length+c.aead.Overhead())
	binary.BigEndian.PutUint32(b, uint32(length))
	plain := append([]byte{byte(pad)}, payload...)
	plain = append(plain, randomBytes(pad)...)
	b = c.aead.Seal(b, c.nonce[:], plain, b[:4])
	c.next()
	_, err := w.Write(b)
	return err
}

// ctrCipher is aesN-ctr with hmac-sha2-256/512, either MAC-then-encrypt
// (RFC 4253 §6.4) or OpenSSH's encrypt-then-MAC (-etm@openssh.com), where
// the length stays in the clear.
type ctrCipher struct {
	stream cipher.Stream
	mac    hash.Hash
	etm    bool
}

func newCTR(key, iv []byte, newHash func() hash.Hash, macKey []byte, etm bool) (packetCipher, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return &ctrCipher{stream: cipher.NewCTR(block, iv), mac: hmac.New(newHash, macKey), etm: etm}, nil
}

func (c *ctrCipher) sum(seq uint32, parts ...[]byte) []byte {
	c.mac.Reset()
	var s [4]byte
	binary.BigEndian.PutUint32(s[:], seq)
	c.mac.Write(s[:])
	for _, p := range parts {
		c.mac.Write(p)
	}
	return c.mac.Sum(nil)
}

func (c *ctrCipher) readPacket(seq uint32, r io.Reader) ([]byte, error) {
	macSize := c.mac.Size()
	if c.etm {
		var hdr [4]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil, err
		}
		length := binary.BigEndian.Uint32(hdr[:])
		if length > maxPacket || length%aes.BlockSize != 0 || length < aes.BlockSize {
			return nil, fmt.Errorf("bad packet length %d: %w", length, probes.ErrProtocol)
		}
		buf := make([]byte, int(length)+macSize)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, unexpected(err)
		}
		body, tag := buf[:length], buf[length:]
		if subtle.ConstantTimeCompare(c.sum(seq, hdr[:], body), tag) != 1 {
			return nil, fmt.Errorf("bad packet MAC: %w", probes.ErrProtocol)
		}
		c.stream.XORKeyStream(body, body)
		return unpad(body)
	}
	first := make([]byte, aes.BlockSize)
	if _, err := io.ReadFull(r, first); err != nil {
		return nil, err
	}
	c.stream.XORKeyStream(first, first)
	length := binary.BigEndian.Uint32(first[:4])
	if length > maxPacket || (length+4)%aes.BlockSize != 0 || length+4 < aes.BlockSize {
		return nil, fmt.Errorf("bad packet length %d: %w", length, probes.ErrProtocol)
	}
	buf := make([]byte, 4+int(length)+macSize)
	copy(buf, first)
	if _, err := io.ReadFull(r, buf[aes.BlockSize:]); err != nil {
		return nil, unexpected(err)
	}
	packet, tag := buf[:4+length], buf[4+length:]
	c.stream.XORKeyStream(packet[aes.BlockSize:], packet[aes.BlockSize:])
	if subtle.ConstantTimeCompare(c.sum(seq, packet), tag) != 1 {
		return nil, fmt.Errorf("bad packet MAC: %w", probes.ErrProtocol)
	}
	return unpad(packet[4:])
}

func (c *ctrCipher) writePacket(seq uint32, w io.Writer, payload []byte) error {
	n := 5 + len(payload)
	if c.etm {
		n = 1 + len(payload) // the length field is not encrypted
	}
	pad := padding(n, aes.BlockSize)
	packet := appendUint32(nil, uint32(1+len(payload)+pad))
	packet = append(packet, byte(pad))
	packet = append(packet, payload...)
	packet = append(packet, randomBytes(pad)...)
	var tag []byte
	if c.etm {
		c.stream.XORKeyStream(packet[4:], packet[4:])
		tag = c.sum(seq, packet)
	} else {
		tag = c.sum(seq, packet)
		c.stream.XORKeyStream(packet, packet)
	}
	_, err := w.Write(append(packet, tag...))
	return err
}

// unpad strips "padding_length || payload || padding" to the payload.
func unpad(b []byte) ([]byte, error) {
	if len(b) < 1 || int(b[0])+1 > len(b) {
		return nil, fmt.Errorf("bad padding: %w", probes.ErrProtocol)
	}
	return b[1 : len(b)-int(b[0])], nil
}

// unexpected turns an EOF in the middle of a packet into ErrUnexpectedEOF.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// kexMethod is an ECDH key exchange (RFC 5656, RFC 8731).
type kexMethod struct {
	name  string
	curve ecdh.Curve
	hash  crypto.Hash
}

var kexMethods = []kexMethod{
	{"curve25519-sha256", ecdh.X25519(), crypto.SHA256},
	{"curve25519-sha256@libssh.org", ecdh.X25519(), crypto.SHA256},
	{"ecdh-sha2-nistp256", ecdh.P256(), crypto.SHA256},
	{"ecdh-sha2-nistp384", ecdh.P384(), crypto.SHA384},
	{"ecdh-sha2-nistp521", ecdh.P521(), crypto.SHA512},
}

// cipherMethod is a cipher the transport implements.
type cipherMethod struct {
	name    string
	keySize int
	ivSize  int
	aead    bool
}

var cipherMethods = []cipherMethod{
	{"aes128-gcm@openssh.com", 16, 12, true},
	{"aes256-gcm@openssh.com", 32, 12, true},
	{"aes128-ctr", 16, 16, false},
	{"aes192-ctr", 24, 16, false},
	{"aes256-ctr", 32, 16, false},
}

type macMethod struct {
	name    string
	newHash func() hash.Hash
	keySize int
	etm     bool
}

var macMethods = []macMethod{
	{"hmac-sha2-256-etm@openssh.com", sha256.New, 32, true},
	{"hmac-sha2-512-etm@openssh.com", sha512.New, 64, true},
	{"hmac-sha2-256", sha256.New, 32, false},
	{"hmac-sha2-512", sha512.New, 64, false},
}

func names[T any](list []T, name func(T) string) []string {
	out := make([]string, len(list))
	for i, v := range list {
		out[i] = name(v)
	}
	return out
}

// clientKexInit is the module's KEXINIT for hostKeyAlgos.
func clientKexInit(hostKeyAlgos []string) KexInit {
	ciphers := names(cipherMethods, func(c cipherMethod) string { return c.name })
	macs := names(macMethods, func(m macMethod) string { return m.name })
	none := []string{"none"}
	return KexInit{
		// ext-info-c asks for the server's SSH_MSG_EXT_INFO (RFC 8308)
		KexAlgorithms:                       append(names(kexMethods, func(k kexMethod) string { return k.name }), "ext-info-c"),
		ServerHostKeyAlgorithms:             hostKeyAlgos,
		EncryptionAlgorithmsClientToServer:  ciphers,
		EncryptionAlgorithmsServerToClient:  ciphers,
		MACAlgorithmsClientToServer:         macs,
		MACAlgorithmsServerToClient:         macs,
		CompressionAlgorithmsClientToServer: none,
		CompressionAlgorithmsServerToClient: none,
		LanguagesClientToServer:             []string{},
		LanguagesServerToClient:             []string{},
	}
}

// firstCommon is RFC 4253 §7.1's choice: the client's first algorithm the
// server also lists.
func firstCommon(client, server []string) (string, bool) {
	for _, c := range client {
		if slices.Contains(server, c) {
			return c, true
		}
	}
	return "", false
}

func lookup[T any](list []T, name string, nameOf func(T) string) (T, bool) {
	for _, v := range list {
		if nameOf(v) == name {
			return v, true
		}
	}
	var zero T
	return zero, false
}

// direction is the negotiated cipher and MAC of one direction.
type direction struct {
	cipher cipherMethod
	mac    macMethod
}

func negotiateDirection(ciphers, macs []string, server KexInit, s2c bool) (direction, error) {
	srvCiphers, srvMACs := server.EncryptionAlgorithmsClientToServer, server.MACAlgorithmsClientToServer
	srvComp := server.CompressionAlgorithmsClientToServer
	if s2c {
		srvCiphers, srvMACs = server.EncryptionAlgorithmsServerToClient, server.MACAlgorithmsServerToClient
		srvComp = server.CompressionAlgorithmsServerToClient
	}
	var d direction
	name, ok := firstCommon(ciphers, srvCiphers)
	if !ok {
		return d, fmt.Errorf("cipher: %w", ErrNoCommonAlgorithm)
	}
	d.cipher, _ = lookup(cipherMethods, name, func(c cipherMethod) string { return c.name })
	if !d.cipher.aead {
		name, ok := firstCommon(macs, srvMACs)
		if !ok {
			return d, fmt.Errorf("mac: %w", ErrNoCommonAlgorithm)
		}
		d.mac, _ = lookup(macMethods, name, func(m macMethod) string { return m.name })
	}
	if !slices.Contains(srvComp, "none") {
		return d, fmt.Errorf("compression: %w", ErrNoCommonAlgorithm)
	}
	return d, nil
}

// kexResult is what a completed key exchange tells.
type kexResult struct {
	kex, hostKeyAlgo string
	hostKey          []byte // K_S, the server's public host key blob
	signatureOK      bool
}

// keyExchange runs ECDH after both KEXINITs were exchanged, checks the
// server's signature over the exchange hash and switches both directions to
// the negotiated ciphers. vc, vs are the identification lines without CR
// LF; ic, is the KEXINIT payloads.
func (t *transport) keyExchange(vc, vs string, ic, is []byte, client, server KexInit) (kexResult, error) {
	var res kexResult
	kexName, ok := firstCommon(client.KexAlgorithms, server.KexAlgorithms)
	if !ok || kexName == "ext-info-c" {
		return res, fmt.Errorf("kex: %w", ErrNoCommonAlgorithm)
	}
	method, _ := lookup(kexMethods, kexName, func(k kexMethod) string { return k.name })
	hostKeyAlgo, ok := firstCommon(client.ServerHostKeyAlgorithms, server.ServerHostKeyAlgorithms)
	if !ok {
		return res, fmt.Errorf("host key: %w", ErrNoCommonAlgorithm)
	}
	c2s, err := negotiateDirection(client.EncryptionAlgorithmsClientToServer, client.MACAlgorithmsClientToServer, server, false)
	if err != nil {
		return res, err
	}
	s2c, err := negotiateDirection(client.EncryptionAlgorithmsServerToClient, client.MACAlgorithmsServerToClient, server, true)
	if err != nil {
		return res, err
	}
	res.kex, res.hostKeyAlgo = kexName, hostKeyAlgo
	// A server that guessed wrong sends a kex packet we must ignore.
	wrongGuess := server.FirstKexPacketFollows && (len(server.KexAlgorithms) == 0 || server.KexAlgorithms[0] != kexName ||
		len(server.ServerHostKeyAlgorithms) == 0 || server.ServerHostKeyAlgorithms[0] != hostKeyAlgo)

	priv, err := method.curve.GenerateKey(rand.Reader)
	if err != nil {
		return res, fmt.Errorf("cannot generate kex key: %w", err)
	}
	qc := priv.PublicKey().Bytes()
	if err := t.writePacket(appendString([]byte{msgKexECDHInit}, qc)); err != nil {
		return res, err
	}
	if wrongGuess {
		if _, err := t.readMessage(); err != nil {
			return res, err
		}
	}
	reply, err := t.readMessage()
	if err != nil {
		return res, err
	}
	if reply[0] != msgKexECDHReply {
		return res, fmt.Errorf("kex reply: message type %d: %w", reply[0], probes.ErrProtocol)
	}
	r := wireReader{b: reply[1:]}
	res.hostKey = bytes.Clone(r.string())
	qs := r.string()
	sig := r.string()
	if r.err != nil {
		return res, fmt.Errorf("kex reply: %w", r.err)
	}
	peer, err := method.curve.NewPublicKey(qs)
	if err != nil {
		return res, fmt.Errorf("kex reply: server key: %v: %w", err, probes.ErrProtocol)
	}
	secret, err := priv.ECDH(peer)
	if err != nil {
		return res, fmt.Errorf("kex reply: %v: %w", err, probes.ErrProtocol)
	}
	k := appendMpint(nil, secret)

	h := method.hash.New()
	for _, s := range [][]byte{[]byte(vc), []byte(vs), ic, is, res.hostKey, qc, qs} {
		h.Write(appendString(nil, s))
	}
	h.Write(k)
	exchangeHash := h.Sum(nil)
	res.signatureOK = verifyHostSignature(res.hostKey, exchangeHash, sig)

	if err := t.writePacket([]byte{msgNewKeys}); err != nil {
		return res, err
	}
	p, err := t.readMessage()
	if err != nil {
		return res, err
	}
	if p[0] != msgNewKeys {
		return res, fmt.Errorf("expected NEWKEYS, got message type %d: %w", p[0], probes.ErrProtocol)
	}
	derive := func(letter byte, n int) []byte {
		return deriveKey(method.hash, k, exchangeHash, letter, exchangeHash, n)
	}
	if t.wc, err = newDirectionCipher(c2s, derive, 'A', 'C', 'E'); err != nil {
		return res, err
	}
	if t.rc, err = newDirectionCipher(s2c, derive, 'B', 'D', 'F'); err != nil {
		return res, err
	}
	return res, nil
}

func newDirectionCipher(d direction, derive func(byte, int) []byte, ivLetter, keyLetter, macLetter byte) (packetCipher, error) {
	iv, key := derive(ivLetter, d.cipher.ivSize), derive(keyLetter, d.cipher.keySize)
	if d.cipher.aead {
		return newGCM(key, iv)
	}
	return newCTR(key, iv, d.mac.newHash, derive(macLetter, d.mac.keySize), d.mac.etm)
}

// deriveKey is RFC 4253 §7.2: HASH(K || H || letter || session_id),
// extended by HASH(K || H || K1 || …) until n bytes.
func deriveKey(hf crypto.Hash, k, h []byte, letter byte, sessionID []byte, n int) []byte {
	d := hf.New()
	d.Write(k)
	d.Write(h)
	d.Write([]byte{letter})
	d.Write(sessionID)
	out := d.Sum(nil)
	for len(out) < n {
		d.Reset()
		d.Write(k)
		d.Write(h)
		d.Write(out)
		out = d.Sum(out)
	}
	return out[:n]
}

// verifyHostSignature reports whether sig (an SSH signature blob) is the
// host key's signature of the exchange hash: the server proved it holds
// the key it showed.
func verifyHostSignature(hostKey, exchangeHash, sig []byte) bool {
	pub, err := xssh.ParsePublicKey(hostKey)
	if err != nil {
		return false
	}
	r := wireReader{b: sig}
	format := r.string()
	blob := r.string()
	if r.err != nil {
		return false
	}
	return pub.Verify(exchangeHash, &xssh.Signature{Format: string(format), Blob: blob, Rest: r.b}) == nil
}

// authInfo is what the server tells an unauthenticated client.
type authInfo struct {
	extensions   map[string][]byte
	methods      []string
	partial      bool
	noneAccepted bool
	banner       string
}

// probeAuth requests the ssh-userauth service, collecting EXT_INFO, and
// sends one "none" authentication request for user: no credentials.
func (t *transport) probeAuth(user string) (authInfo, error) {
	var info authInfo
	req := appendString([]byte{msgServiceRequest}, []byte("ssh-userauth"))
	if err := t.writePacket(req); err != nil {
		return info, err
	}
	for accepted := false; !accepted; {
		p, err := t.readMessage()
		if err != nil {
			return info, err
		}
		switch p[0] {
		case msgExtInfo:
			if info.extensions, err = parseExtInfo(p); err != nil {
				return info, err
			}
		case msgServiceAccept:
			accepted = true
		default:
			return info, fmt.Errorf("service request: message type %d: %w", p[0], probes.ErrProtocol)
		}
	}
	req = appendString([]byte{msgUserAuthRequest}, []byte(user))
	req = appendString(req, []byte("ssh-connection"))
	req = appendString(req, []byte("none"))
	if err := t.writePacket(req); err != nil {
		return info, err
	}
	for {
		p, err := t.readMessage()
		if err != nil {
			return info, err
		}
		switch p[0] {
		case msgUserAuthBanner:
			r := wireReader{b: p[1:]}
			info.banner += string(r.string())
		case msgExtInfo: // RFC 8308 §2.4 allows a second one
		case msgUserAuthFailure:
			r := wireReader{b: p[1:]}
			info.methods = r.nameList()
			info.partial = r.bool()
			if r.err != nil {
				return info, fmt.Errorf("auth failure: %w", r.err)
			}
			return info, nil
		case msgUserAuthSuccess:
			info.noneAccepted = true
			info.methods = []string{"none"}
			return info, nil
		default:
			return info, fmt.Errorf("auth reply: message type %d: %w", p[0], probes.ErrProtocol)
		}
	}
}

func parseExtInfo(p []byte) (map[string][]byte, error) {
	r := wireReader{b: p[1:]}
	n := r.uint32()
	ext := make(map[string][]byte)
	for i := uint32(0); i < n && r.err == nil; i++ {
		name := r.string()
		ext[string(name)] = bytes.Clone(r.string())
	}
	if r.err != nil {
		return nil, fmt.Errorf("ext info: %w", r.err)
	}
	return ext, nil
}

// disconnect says goodbye politely (reason 11: by application).
func (t *transport) disconnect() {
	msg := appendUint32([]byte{msgDisconnect}, 11)
	msg = appendString(msg, []byte("probe done"))
	msg = appendString(msg, nil)
	_ = t.writePacket(msg)
}
