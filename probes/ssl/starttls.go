package ssl

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"

	"trawl/probes"
)

// STARTTLS protocols.
const (
	StartTLSAuto = "auto"
	StartTLSNone = "none"
	StartTLSSMTP = "smtp"
	StartTLSIMAP = "imap"
	StartTLSPOP3 = "pop3"
	StartTLSFTP  = "ftp"
)

// startTLSByPort is what "auto" chooses; other ports speak TLS at once.
var startTLSByPort = map[int]string{25: StartTLSSMTP, 587: StartTLSSMTP, 143: StartTLSIMAP, 110: StartTLSPOP3, 21: StartTLSFTP}

func validStartTLS(s string) bool {
	switch s {
	case StartTLSAuto, StartTLSNone, StartTLSSMTP, StartTLSIMAP, StartTLSPOP3, StartTLSFTP:
		return true
	}
	return false
}

// startTLSFor resolves mode for a port: "" means plain TLS.
func startTLSFor(mode string, port int) string {
	switch mode {
	case StartTLSAuto:
		return startTLSByPort[port]
	case StartTLSNone:
		return ""
	}
	return mode
}

// lineLimit caps one line of a STARTTLS dialogue and lineCount the lines
// of one reply, so a chatty or hostile server cannot keep us reading.
const (
	lineLimit = 1024
	lineCount = 64
)

// startTLS speaks proto on conn until the server is ready for a
// ClientHello. It returns the server's greeting line. The caller bounds it
// with the connection's deadline.
func startTLS(conn net.Conn, proto string) (string, error) {
	br := bufio.NewReaderSize(conn, lineLimit)
	var greeting string
	var err error
	switch proto {
	case StartTLSSMTP:
		if greeting, err = expectReply(br, "220"); err != nil {
			return greeting, err
		}
		if err = command(conn, br, "EHLO trawl.invalid\r\n", "250"); err != nil {
			return greeting, err
		}
		err = command(conn, br, "STARTTLS\r\n", "220")
	case StartTLSFTP:
		if greeting, err = expectReply(br, "220"); err != nil {
			return greeting, err
		}
		err = command(conn, br, "AUTH TLS\r\n", "234")
	case StartTLSPOP3:
		if greeting, err = readLine(br); err != nil {
			return "", err
		}
		if !strings.HasPrefix(greeting, "+OK") {
			return greeting, fmt.Errorf("cannot start pop3 tls: greeting %q: %w", greeting, probes.ErrProtocol)
		}
		if _, err = io.WriteString(conn, "STLS\r\n"); err != nil {
			return greeting, err
		}
		var line string
		if line, err = readLine(br); err == nil && !strings.HasPrefix(line, "+OK") {
			err = fmt.Errorf("cannot start pop3 tls: STLS answered %q: %w", line, probes.ErrProtocol)
		}
	case StartTLSIMAP:
		if greeting, err = readLine(br); err != nil {
			return "", err
		}
		if !strings.HasPrefix(greeting, "* OK") {
			return greeting, fmt.Errorf("cannot start imap tls: greeting %q: %w", greeting, probes.ErrProtocol)
		}
		if _, err = io.WriteString(conn, "t1 STARTTLS\r\n"); err != nil {
			return greeting, err
		}
		err = fmt.Errorf("cannot start imap tls: no tagged reply: %w", probes.ErrProtocol)
		for range lineCount {
			line, rerr := readLine(br)
			if rerr != nil {
				err = rerr
				break
			}
			if strings.HasPrefix(line, "t1 ") {
				err = nil
				if !strings.HasPrefix(line, "t1 OK") {
					err = fmt.Errorf("cannot start imap tls: STARTTLS answered %q: %w", line, probes.ErrProtocol)
				}
				break
			}
		}
	default:
		return "", fmt.Errorf("cannot start tls: unknown protocol %q", proto)
	}
	if err == nil && br.Buffered() > 0 {
		// bytes after the go-ahead would be taken for the TLS reply
		err = fmt.Errorf("cannot start %s tls: data after the go-ahead: %w", proto, probes.ErrProtocol)
	}
	return greeting, err
}

// command sends cmd and expects a reply with code.
func command(conn net.Conn, br *bufio.Reader, cmd, code string) error {
	if _, err := io.WriteString(conn, cmd); err != nil {
		return err
	}
	_, err := expectReply(br, code)
	return err
}

// expectReply reads an SMTP/FTP-style reply ("code-…" lines then
// "code …") and checks its code; it returns the first line.
func expectReply(br *bufio.Reader, code string) (string, error) {
	var first string
	for i := range lineCount {
		line, err := readLine(br)
		if err != nil {
			return first, err
		}
		if i == 0 {
			first = line
		}
		if len(line) < 3 || line[:3] != code {
			return first, fmt.Errorf("cannot start tls: expected %s, got %q: %w", code, line, probes.ErrProtocol)
		}
		if len(line) == 3 || line[3] != '-' {
			return first, nil
		}
	}
	return first, fmt.Errorf("cannot start tls: reply over %d lines: %w", lineCount, probes.ErrProtocol)
}

func readLine(br *bufio.Reader) (string, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return "", fmt.Errorf("cannot start tls: line over %d bytes: %w", lineLimit, probes.ErrProtocol)
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}
