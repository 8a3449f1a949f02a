package ssl

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"time"

	"trawl/probes"
)

// renegWait bounds the wait for the answer to a renegotiation: a server
// that ignores it is counted as refusing.
const renegWait = 2 * time.Second

// renegVerdict is what the client-initiated renegotiation test found;
// accepted is nil when it could not tell.
type renegVerdict struct {
	accepted *bool
	// secure reports the first handshake negotiated RFC 5746.
	secure bool
	reason string
}

// renegotiate asks for a new handshake inside the established session:
// an encrypted ClientHello carrying the client's verify_data (RFC 5746),
// or none when the server did not negotiate RFC 5746 (a legacy, insecure
// renegotiation). The caller bounds the wait with a read deadline. A
// ServerHello means the server renegotiates; a no_renegotiation warning,
// a fatal alert, a close or silence mean it refuses.
func (c *tls12Client) renegotiate() renegVerdict {
	v := renegVerdict{secure: c.secure}
	var random [32]byte
	_, _ = rand.Read(random[:])
	if err := c.writeRecord(recordHandshake, c.clientHello(&random, c.clientVerify, !c.secure), versionTLS12); err != nil {
		v.reason = "not tested: " + err.Error()
		return v
	}
	refused := func(why string) renegVerdict {
		no := false
		v.accepted, v.reason = &no, why
		return v
	}
	for {
		typ, payload, err := c.readRecord()
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			return refused("refused: no answer to the renegotiation in time")
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || probes.Classify(err) == probes.StatusReset:
			return refused("refused: the server closed the connection")
		case err != nil:
			v.reason = "not tested: cannot read the answer to the renegotiation: " + err.Error()
			return v
		}
		switch typ {
		case recordAlert:
			if len(payload) < 2 {
				v.reason = "not tested: malformed alert"
				return v
			}
			if payload[1] == alertNoRenegotiation {
				return refused("refused: no_renegotiation alert")
			}
			level := "warning"
			if payload[0] == 2 {
				level = "fatal"
			}
			return refused("refused: " + level + " alert " + alertName(payload[1]))
		case recordHandshake:
			if len(payload) >= 4 && payload[0] == msgHelloRequest {
				continue // a server-initiated request crossing ours
			}
			if len(payload) < 4 || payload[0] != msgServerHello {
				v.reason = fmt.Sprintf("not tested: handshake message %d answered the renegotiation", payload[0])
				return v
			}
			yes := true
			v.accepted = &yes
			v.reason = "accepted: the server answered the renegotiation with a ServerHello"
			if !c.secure {
				v.reason = "accepted: the server renegotiated without RFC 5746 (insecure renegotiation)"
			}
			return v
		case recordApplicationData:
			continue // data the server had queued; the answer follows
		default:
			v.reason = "not tested: record type " + strconv.Itoa(int(typ)) + " answered the renegotiation"
			return v
		}
	}
}

// renegSuites are the suites of tls12Suites the server accepted in TLS
// 1.2, in the client's order.
func renegSuites(r *VersionResult) []uint16 {
	if r == nil || !r.Supported {
		return nil
	}
	var out []uint16
	for _, id := range tls12Suites {
		if slices.ContainsFunc(r.AcceptedCipherList, func(c Cipher) bool { return c.ID == "0x"+hex4(id) }) {
			out = append(out, id)
		}
	}
	return out
}

// clientRenegotiation completes a TLS 1.2 handshake with the minimal
// client and asks to renegotiate, on one connection of the budget.
func (s *scan) clientRenegotiation(ctx context.Context, tls12 *VersionResult) renegVerdict {
	suites := renegSuites(tls12)
	if len(suites) == 0 {
		return renegVerdict{reason: "not tested: the server negotiates no ECDHE AES-GCM suite in TLS 1.2"}
	}
	conn, release, err := s.open(ctx)
	if err != nil {
		return renegVerdict{reason: "not tested: " + err.Error()}
	}
	defer release()
	c := newTLS12Client(conn, s.sni, suites)
	if err := c.handshake(); err != nil {
		return renegVerdict{reason: "not tested: cannot complete the TLS 1.2 handshake: " + err.Error()}
	}
	_ = conn.SetReadDeadline(time.Now().Add(min(renegWait, s.m.cfg.Timeout)))
	v := c.renegotiate()
	if ctx.Err() != nil {
		// the probe's end, not the server, cut the wait short
		return renegVerdict{secure: v.secure, reason: "not tested: " + ctx.Err().Error()}
	}
	return v
}
