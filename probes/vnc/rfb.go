package vnc

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"

	"trawl/probes"
)

// RFB security type ids (RFC 6143 §7.2.1 and the IANA registry).
const (
	secInvalid  = 0
	secNone     = 1
	secVNCAuth  = 2
	secTight    = 16
	secVeNCrypt = 19
)

// VeNCrypt subtypes that reach the desktop without a password.
const (
	vencryptPlainNone = 1
	vencryptTLSNone   = 257
	vencryptX509None  = 260
)

// maxReason caps a failure reason or desktop name the module reads.
const maxReason = 64 << 10

// securityTypeName names an RFB security type id.
func securityTypeName(id int) string {
	switch id {
	case 0:
		return "Invalid"
	case 1:
		return "None"
	case 2:
		return "VNC Authentication"
	case 5:
		return "RA2"
	case 6:
		return "RA2ne"
	case 16:
		return "Tight"
	case 17:
		return "Ultra"
	case 18:
		return "TLS"
	case 19:
		return "VeNCrypt"
	case 20:
		return "SASL"
	case 21:
		return "MD5 hash authentication"
	case 22:
		return "xvp"
	case 23:
		return "Secure Tunnel"
	case 24:
		return "Integrated SSH"
	case 30:
		return "Apple Remote Desktop"
	case 113:
		return "UltraVNC MS-Logon II"
	}
	switch {
	case id >= 3 && id <= 15, id >= 128 && id <= 255:
		return "RealVNC"
	case id >= 31 && id <= 35:
		return "Apple"
	}
	return "Unknown"
}

// vencryptSubtypeName names a VeNCrypt subtype; plain RFB ids may appear
// among them (TigerVNC lists None and VncAuth there).
func vencryptSubtypeName(id int) string {
	switch id {
	case 256:
		return "Plain"
	case 257:
		return "TLSNone"
	case 258:
		return "TLSVnc"
	case 259:
		return "TLSPlain"
	case 260:
		return "X509None"
	case 261:
		return "X509Vnc"
	case 262:
		return "X509Plain"
	case 263:
		return "TLSSASL"
	case 264:
		return "X509SASL"
	}
	if id < 256 {
		return securityTypeName(id)
	}
	return "Unknown"
}

// Tight's authentication capabilities that reach the desktop without a
// password (TightVNC's "NOAUTH__").
const tightNoAuth = 1

// tightAuthName names a Tight authentication capability by its code.
func tightAuthName(code int) string {
	switch code {
	case 1:
		return "None"
	case 2:
		return "VNC Authentication"
	case 19:
		return "VeNCrypt"
	case 20:
		return "SASL"
	case 129:
		return "Unix Login"
	case 130:
		return "External"
	}
	return "Unknown"
}

// SecurityType is one security type a server offers.
type SecurityType struct {
	ID   int    `json:"id"`
	Name string `json:"name"`
	// Version and Subtypes are VeNCrypt's (the version the server agreed
	// to, its subtypes in its order); for Tight, Subtypes are its
	// authentication capabilities and Tunnels its tunnels.
	Version  string         `json:"version,omitempty"`
	Subtypes []SecurityType `json:"subtypes,omitempty"`
	Tunnels  []SecurityType `json:"tunnels,omitempty"`
	// Vendor and Signature are a Tight capability's ("STDV", "VNCAUTH_").
	Vendor    string `json:"vendor,omitempty"`
	Signature string `json:"signature,omitempty"`
	// NoAuthentication: Tight listed no authentication capability, its way
	// of saying none is needed.
	NoAuthentication bool `json:"no_authentication,omitempty"`
}

// PixelFormat is the server's native pixel format from ServerInit.
type PixelFormat struct {
	BitsPerPixel int  `json:"bits_per_pixel"`
	Depth        int  `json:"depth"`
	BigEndian    bool `json:"big_endian"`
	TrueColour   bool `json:"true_colour"`
	RedMax       int  `json:"red_max"`
	GreenMax     int  `json:"green_max"`
	BlueMax      int  `json:"blue_max"`
	RedShift     int  `json:"red_shift"`
	GreenShift   int  `json:"green_shift"`
	BlueShift    int  `json:"blue_shift"`
}

func parsePixelFormat(b []byte) PixelFormat {
	return PixelFormat{
		BitsPerPixel: int(b[0]), Depth: int(b[1]), BigEndian: b[2] != 0, TrueColour: b[3] != 0,
		RedMax: int(binary.BigEndian.Uint16(b[4:])), GreenMax: int(binary.BigEndian.Uint16(b[6:])),
		BlueMax: int(binary.BigEndian.Uint16(b[8:])), RedShift: int(b[10]), GreenShift: int(b[11]), BlueShift: int(b[12]),
	}
}

// protocolVersion is a parsed "RFB xxx.yyy\n" line.
type protocolVersion struct {
	major, minor int
}

// parseVersion parses the 12-byte ProtocolVersion message.
func parseVersion(b []byte) (protocolVersion, error) {
	if len(b) != 12 || string(b[:4]) != "RFB " || b[7] != '.' || b[11] != '\n' {
		return protocolVersion{}, fmt.Errorf("not an RFB server (%q): %w", b, probes.ErrProtocol)
	}
	major, err1 := strconv.Atoi(string(b[4:7]))
	minor, err2 := strconv.Atoi(string(b[8:11]))
	if err1 != nil || err2 != nil {
		return protocolVersion{}, fmt.Errorf("bad RFB version %q: %w", b, probes.ErrProtocol)
	}
	return protocolVersion{major, minor}, nil
}

// negotiate picks the version the client answers with: the highest of
// 3.3, 3.7 and 3.8 the server allows. Servers announcing odd minors (3.5,
// Apple's 3.889, 4.x) speak one of the three.
func (v protocolVersion) negotiate() protocolVersion {
	switch {
	case v.major > 3 || (v.major == 3 && v.minor >= 8):
		return protocolVersion{3, 8}
	case v.major == 3 && v.minor == 7:
		return protocolVersion{3, 7}
	}
	return protocolVersion{3, 3}
}

func (v protocolVersion) String() string { return fmt.Sprintf("%d.%d", v.major, v.minor) }

func (v protocolVersion) line() []byte { return fmt.Appendf(nil, "RFB %03d.%03d\n", v.major, v.minor) }

// wire reads big-endian RFB fields; the first error sticks and turns
// premature ends into protocol errors (the server sent half a message).
type wire struct {
	r   *bufio.Reader
	buf [16]byte
	err error
}

func (w *wire) full(b []byte) {
	if w.err != nil {
		return
	}
	if _, err := io.ReadFull(w.r, b); err != nil {
		w.err = truncated(err)
	}
}

// first reads the first bytes of a message: a clean close there is a
// close, not a truncation.
func (w *wire) first(b []byte) {
	if w.err != nil {
		return
	}
	if _, err := io.ReadFull(w.r, b); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = truncated(err)
		}
		w.err = err
	}
}

func (w *wire) u8() int {
	w.full(w.buf[:1])
	return int(w.buf[0])
}

func (w *wire) u16() int {
	w.full(w.buf[:2])
	return int(binary.BigEndian.Uint16(w.buf[:2]))
}

func (w *wire) u32() uint32 {
	w.full(w.buf[:4])
	return binary.BigEndian.Uint32(w.buf[:4])
}

func (w *wire) skip(n int) {
	if w.err != nil {
		return
	}
	if _, err := w.r.Discard(n); err != nil {
		w.err = truncated(err)
	}
}

// text reads a u32-length-prefixed string of at most maxReason bytes.
func (w *wire) text() string {
	n := w.u32()
	if w.err != nil {
		return ""
	}
	if n > maxReason {
		w.err = fmt.Errorf("string of %d bytes: %w", n, probes.ErrProtocol)
		return ""
	}
	b := make([]byte, n)
	w.full(b)
	return string(b)
}

// truncated marks a read that ended inside a message as a protocol error,
// keeping the transport error in the chain for its text.
func truncated(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("truncated message: %w: %w", io.ErrUnexpectedEOF, probes.ErrProtocol)
	}
	return err
}

// ServerRefusedError is the failure reason a server sent instead of
// security types or as a failed SecurityResult.
type ServerRefusedError struct {
	Reason string
}

func (e *ServerRefusedError) Error() string { return "server refused the connection: " + e.Reason }
