package ssl

import (
	"encoding/binary"
	"fmt"
	"io"
)

const (
	sslv2ClientHello byte = 1
	sslv2ServerHello byte = 4
)

// appendSSLv2Hello appends an SSLv2 CLIENT-HELLO offering every SSLv2
// cipher kind to dst.
func appendSSLv2Hello(dst []byte, challenge *[16]byte) []byte {
	bodyLen := 9 + 3*len(sslv2Ciphers) + len(challenge)
	dst = append(dst, 0x80|byte(bodyLen>>8), byte(bodyLen))
	dst = append(dst, sslv2ClientHello)
	dst = binary.BigEndian.AppendUint16(dst, versionSSL20)
	dst = binary.BigEndian.AppendUint16(dst, uint16(3*len(sslv2Ciphers)))
	dst = binary.BigEndian.AppendUint16(dst, 0) // session id
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(challenge)))
	for _, c := range sslv2Ciphers {
		dst = append(dst, byte(c.code>>16), byte(c.code>>8), byte(c.code))
	}
	return append(dst, challenge[:]...)
}

// sslv2Reply is what an SSLv2 SERVER-HELLO said.
type sslv2Reply struct {
	ciphers []uint32
	cert    []byte
	raw     []byte
}

// readSSLv2Hello reads an SSLv2 SERVER-HELLO. Anything else (a TLS alert,
// an SSLv2 ERROR) is an error: the server does not speak SSLv2.
func readSSLv2Hello(r io.Reader) (*sslv2Reply, error) {
	var hdr [3]byte
	if _, err := io.ReadFull(r, hdr[:2]); err != nil {
		return nil, err
	}
	var n int
	if hdr[0]&0x80 != 0 {
		n = int(hdr[0]&0x7f)<<8 | int(hdr[1])
	} else {
		if hdr[0] == recordAlert || hdr[0] == recordHandshake {
			return nil, fmt.Errorf("%w: TLS record in reply to an SSLv2 hello", errNoSSLv2)
		}
		// 3-byte header: the third byte is the padding length
		if _, err := io.ReadFull(r, hdr[2:]); err != nil {
			return nil, err
		}
		n = int(hdr[0]&0x3f)<<8 | int(hdr[1])
	}
	if n < 11 || n > maxRecord {
		return nil, fmt.Errorf("%w: SSLv2 record of %d bytes", errNoSSLv2, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	if body[0] != sslv2ServerHello {
		return nil, fmt.Errorf("%w: SSLv2 message %d", errNoSSLv2, body[0])
	}
	certLen := int(binary.BigEndian.Uint16(body[5:]))
	specLen := int(binary.BigEndian.Uint16(body[7:]))
	connLen := int(binary.BigEndian.Uint16(body[9:]))
	if 11+certLen+specLen+connLen > n || specLen%3 != 0 {
		return nil, fmt.Errorf("%w: SSLv2 SERVER-HELLO lengths", errMalformed)
	}
	rep := &sslv2Reply{cert: body[11 : 11+certLen], raw: body}
	specs := body[11+certLen : 11+certLen+specLen]
	for i := 0; i < len(specs); i += 3 {
		rep.ciphers = append(rep.ciphers, uint32(specs[i])<<16|uint32(specs[i+1])<<8|uint32(specs[i+2]))
	}
	return rep, nil
}

// heartbeatProbe is a heartbeat request record claiming a 16 KiB payload
// and carrying none: a patched server drops it, a vulnerable one echoes
// its memory.
func appendHeartbeatProbe(dst []byte, version uint16) []byte {
	return append(dst, recordHeartbeat, byte(version>>8), byte(version), 0, 3, 1, 0x40, 0x00)
}

// readHeartbeatReply reads records until a heartbeat response, an alert or
// the end; it reports whether a response longer than the request came back.
func readHeartbeatReply(r io.Reader) (bool, error) {
	rr := recordReader{r: r, read: 1} // mid-stream: a bad header is an error, not "not TLS"
	for {
		typ, payload, err := rr.next()
		if err != nil {
			return false, err
		}
		switch typ {
		case recordHeartbeat:
			return len(payload) > 3, nil
		case recordAlert:
			return false, nil
		}
	}
}
