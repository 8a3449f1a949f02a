package ssh

import (
	"crypto/md5"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"trawl/probes"
)

// SSH message numbers the module handles (RFC 4250 §4.1.2, RFC 8308).
const (
	msgDisconnect      = 1
	msgIgnore          = 2
	msgUnimplemented   = 3
	msgDebug           = 4
	msgServiceRequest  = 5
	msgServiceAccept   = 6
	msgExtInfo         = 7
	msgKexInit         = 20
	msgNewKeys         = 21
	msgKexECDHInit     = 30
	msgKexECDHReply    = 31
	msgUserAuthRequest = 50
	msgUserAuthFailure = 51
	msgUserAuthSuccess = 52
	msgUserAuthBanner  = 53
)

// KexInit is an SSH_MSG_KEXINIT (RFC 4253 §7.1) with its fields named as
// in the RFC.
type KexInit struct {
	Cookie                              string   `json:"cookie"`
	KexAlgorithms                       []string `json:"kex_algorithms"`
	ServerHostKeyAlgorithms             []string `json:"server_host_key_algorithms"`
	EncryptionAlgorithmsClientToServer  []string `json:"encryption_algorithms_client_to_server"`
	EncryptionAlgorithmsServerToClient  []string `json:"encryption_algorithms_server_to_client"`
	MACAlgorithmsClientToServer         []string `json:"mac_algorithms_client_to_server"`
	MACAlgorithmsServerToClient         []string `json:"mac_algorithms_server_to_client"`
	CompressionAlgorithmsClientToServer []string `json:"compression_algorithms_client_to_server"`
	CompressionAlgorithmsServerToClient []string `json:"compression_algorithms_server_to_client"`
	LanguagesClientToServer             []string `json:"languages_client_to_server"`
	LanguagesServerToClient             []string `json:"languages_server_to_client"`
	FirstKexPacketFollows               bool     `json:"first_kex_packet_follows"`
	Reserved                            uint32   `json:"reserved"`
}

// parseKexInit parses a KEXINIT payload (starting with its message number).
func parseKexInit(payload []byte) (KexInit, error) {
	var k KexInit
	r := wireReader{b: payload}
	if t := r.byte(); t != msgKexInit {
		return k, fmt.Errorf("cannot parse KEXINIT: message type %d: %w", t, probes.ErrProtocol)
	}
	k.Cookie = hex.EncodeToString(r.bytes(16))
	for _, list := range []*[]string{
		&k.KexAlgorithms, &k.ServerHostKeyAlgorithms,
		&k.EncryptionAlgorithmsClientToServer, &k.EncryptionAlgorithmsServerToClient,
		&k.MACAlgorithmsClientToServer, &k.MACAlgorithmsServerToClient,
		&k.CompressionAlgorithmsClientToServer, &k.CompressionAlgorithmsServerToClient,
		&k.LanguagesClientToServer, &k.LanguagesServerToClient,
	} {
		*list = r.nameList()
	}
	k.FirstKexPacketFollows = r.bool()
	k.Reserved = r.uint32()
	if r.err != nil {
		return KexInit{}, fmt.Errorf("cannot parse KEXINIT: %w", r.err)
	}
	return k, nil
}

// Algorithms is BinaryEdge's algorithms object: the server's lists, the
// directional ones server to client (what HASSH-server hashes).
type Algorithms struct {
	Kex           []string `json:"kex"`
	ServerHostKey []string `json:"server_host_key"`
	Encryption    []string `json:"encryption"`
	MAC           []string `json:"mac"`
	Compression   []string `json:"compression"`
}

func (k KexInit) algorithms() Algorithms {
	return Algorithms{
		Kex:           k.KexAlgorithms,
		ServerHostKey: k.ServerHostKeyAlgorithms,
		Encryption:    k.EncryptionAlgorithmsServerToClient,
		MAC:           k.MACAlgorithmsServerToClient,
		Compression:   k.CompressionAlgorithmsServerToClient,
	}
}

// HASSH is the HASSH-server fingerprint of a KEXINIT.
type HASSH struct {
	HASSH           string `json:"hassh"`
	HASSHAlgorithms string `json:"hassh_algorithms"`
}

// hassh is md5("kex;enc_s2c;mac_s2c;cmp_s2c") of the server's KEXINIT.
func (k KexInit) hassh() HASSH {
	s := strings.Join([]string{
		strings.Join(k.KexAlgorithms, ","),
		strings.Join(k.EncryptionAlgorithmsServerToClient, ","),
		strings.Join(k.MACAlgorithmsServerToClient, ","),
		strings.Join(k.CompressionAlgorithmsServerToClient, ","),
	}, ";")
	sum := md5.Sum([]byte(s))
	return HASSH{HASSH: hex.EncodeToString(sum[:]), HASSHAlgorithms: s}
}

// Pseudo-algorithms and families the flags look for.
const (
	kexStrictServer = "kex-strict-s-v00@openssh.com"
	extInfoServer   = "ext-info-s"
)

// postQuantumKex are the hybrid post-quantum key exchanges in use.
var postQuantumKex = []string{
	"sntrup761x25519-sha512@openssh.com",
	"sntrup761x25519-sha512",
	"mlkem768x25519-sha256",
	"mlkem768nistp256-sha256",
	"mlkem1024nistp384-sha384",
}

// Features are flags derived from the KEXINIT.
type Features struct {
	// StrictKex: the server offers strict key exchange, the Terrapin
	// (CVE-2023-48795) mitigation.
	StrictKex bool `json:"strict_kex"`
	// ExtInfo: the server announces RFC 8308 extension negotiation or
	// sent SSH_MSG_EXT_INFO.
	ExtInfo bool `json:"ext_info"`
	// PostQuantumKex: the server offers a hybrid post-quantum exchange,
	// listed in PostQuantumKexAlgorithms.
	PostQuantumKex           bool     `json:"post_quantum_kex"`
	PostQuantumKexAlgorithms []string `json:"post_quantum_kex_algorithms,omitempty"`
}

func (k KexInit) features() Features {
	f := Features{
		StrictKex: slices.Contains(k.KexAlgorithms, kexStrictServer),
		ExtInfo:   slices.Contains(k.KexAlgorithms, extInfoServer),
	}
	for _, a := range k.KexAlgorithms {
		if slices.Contains(postQuantumKex, a) {
			f.PostQuantumKexAlgorithms = append(f.PostQuantumKexAlgorithms, a)
		}
	}
	f.PostQuantumKex = len(f.PostQuantumKexAlgorithms) > 0
	return f
}

// wireReader reads SSH wire types (RFC 4251 §5); the first failure sticks
// in err and later reads return zero values.
type wireReader struct {
	b   []byte
	err error
}

func (r *wireReader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("truncated %s: %w", what, probes.ErrProtocol)
	}
	r.b = nil
}

func (r *wireReader) bytes(n int) []byte {
	if r.err != nil || n < 0 || len(r.b) < n {
		r.fail("field")
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *wireReader) byte() byte {
	if b := r.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *wireReader) bool() bool { return r.byte() != 0 }

func (r *wireReader) uint32() uint32 {
	if b := r.bytes(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *wireReader) string() []byte {
	n := r.uint32()
	if r.err != nil {
		return nil
	}
	if int64(n) > int64(len(r.b)) {
		r.fail("string")
		return nil
	}
	return r.bytes(int(n))
}

// nameList returns a comma-separated list; an empty list is an empty
// (non-nil) slice so JSON shows [].
func (r *wireReader) nameList() []string {
	s := r.string()
	if r.err != nil || len(s) == 0 {
		return []string{}
	}
	return strings.Split(string(s), ",")
}

// wire builders, appending to a caller's buffer

func appendUint32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }

func appendString(b []byte, s []byte) []byte {
	return append(appendUint32(b, uint32(len(s))), s...)
}

func appendNameList(b []byte, l []string) []byte {
	return appendString(b, []byte(strings.Join(l, ",")))
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// appendMpint appends a non-negative big-endian integer as an mpint.
func appendMpint(b []byte, n []byte) []byte {
	for len(n) > 0 && n[0] == 0 {
		n = n[1:]
	}
	if len(n) > 0 && n[0]&0x80 != 0 {
		b = appendUint32(b, uint32(len(n)+1))
		b = append(b, 0)
		return append(b, n...)
	}
	return appendString(b, n)
}

// marshalKexInit encodes k as a KEXINIT payload; cookie must be 16 bytes.
func marshalKexInit(cookie []byte, k KexInit) []byte {
	b := []byte{msgKexInit}
	b = append(b, cookie...)
	for _, l := range [][]string{
		k.KexAlgorithms, k.ServerHostKeyAlgorithms,
		k.EncryptionAlgorithmsClientToServer, k.EncryptionAlgorithmsServerToClient,
		k.MACAlgorithmsClientToServer, k.MACAlgorithmsServerToClient,
		k.CompressionAlgorithmsClientToServer, k.CompressionAlgorithmsServerToClient,
		k.LanguagesClientToServer, k.LanguagesServerToClient,
	} {
		b = appendNameList(b, l)
	}
	b = appendBool(b, k.FirstKexPacketFollows)
	return appendUint32(b, 0)
}
