package ssl

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"trawl/probes"
)

// fakeLegacyServer answers crafted hellos the way an old OpenSSL would:
// SSLv2 with two ciphers, TLS 1.2 only with one suite, the heartbeat
// extension advertised, and (when bleeding) a heartbeat response longer
// than the request.
func fakeLegacyServer(t *testing.T, chain [][]byte, bleeding bool) *server {
	t.Helper()
	return startServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		first, err := br.Peek(2)
		if err != nil {
			return
		}
		if first[0]&0x80 != 0 {
			n := int(first[0]&0x7f)<<8 | int(first[1])
			if _, err := br.Discard(2 + n); err != nil {
				return
			}
			specs := []byte{0x01, 0x00, 0x80, 0x07, 0x00, 0xC0}
			body := []byte{sslv2ServerHello, 0, 1, 0, 2}
			body = binary.BigEndian.AppendUint16(body, uint16(len(chain[0])))
			body = binary.BigEndian.AppendUint16(body, uint16(len(specs)))
			body = binary.BigEndian.AppendUint16(body, 16)
			body = append(append(append(body, chain[0]...), specs...), make([]byte, 16)...)
			_, _ = c.Write(append([]byte{0x80 | byte(len(body)>>8), byte(len(body))}, body...))
			return
		}
		var hdr [5]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return
		}
		rec := make([]byte, binary.BigEndian.Uint16(hdr[3:]))
		if _, err := io.ReadFull(br, rec); err != nil {
			return
		}
		ch, ok := parseClientHelloBody(rec[4:])
		alert := func(d byte) { _, _ = c.Write([]byte{recordAlert, 3, 3, 0, 2, 2, d}) }
		switch {
		case !ok:
			alert(50)
			return
		case ch.version != versionTLS12:
			alert(70)
			return
		case !slices.Contains(ch.suites, 0xC02F):
			alert(40)
			return
		}
		var flight []byte
		hs := func(typ byte, body []byte) {
			flight = append(flight, typ, byte(len(body)>>16), byte(len(body)>>8), byte(len(body)))
			flight = append(flight, body...)
		}
		sh := append([]byte{3, 3}, make([]byte, 32)...)
		sh = append(sh, 0, 0xC0, 0x2F, 0)
		exts := []byte{0xff, 0x01, 0, 1, 0, 0, 15, 0, 1, 1}
		sh = binary.BigEndian.AppendUint16(sh, uint16(len(exts)))
		hs(msgServerHello, append(sh, exts...))
		var certs []byte
		for _, der := range chain {
			certs = append(certs, byte(len(der)>>16), byte(len(der)>>8), byte(len(der)))
			certs = append(certs, der...)
		}
		hs(msgCertificate, append([]byte{byte(len(certs) >> 16), byte(len(certs) >> 8), byte(len(certs))}, certs...))
		hs(msgServerKeyExchange, append([]byte{3, 0, 23, 65, 4}, make([]byte, 64+4)...))
		hs(msgServerHelloDone, nil)
		_, _ = c.Write(append([]byte{recordHandshake, 3, 3, byte(len(flight) >> 8), byte(len(flight))}, flight...))
		if _, err := io.ReadFull(br, hdr[:]); err != nil || hdr[0] != recordHeartbeat {
			return
		}
		if bleeding {
			leak := append([]byte{2, 0x40, 0}, []byte("secret memory of the server ............")...)
			_, _ = c.Write(append([]byte{recordHeartbeat, 3, 3, 0, byte(len(leak))}, leak...))
		}
		_, _ = io.Copy(io.Discard, br)
	})
}

func TestProbeLegacyFake(t *testing.T) {
	p := newTestPKI(t)
	for _, bleeding := range []bool{true, false} {
		t.Run(fmt.Sprintf("bleeding=%v", bleeding), func(t *testing.T) {
			srv := fakeLegacyServer(t, [][]byte{p.leafDER, p.caDER}, bleeding)
			res := probeOK(t, testModule(Config{Timeout: time.Second}, p.roots), srv.port)
			if res.Status != probes.StatusSuccess {
				t.Fatalf("status %s %s", res.Status, res.Error)
			}
			c := ciphersOf(t, res)
			if got := names(c["sslv2"].AcceptedCipherList); !slices.Equal(got, []string{"SSL_CK_RC4_128_WITH_MD5", "SSL_CK_DES_192_EDE3_CBC_WITH_MD5"}) {
				t.Errorf("sslv2 %v", got)
			}
			if got := names(c["tlsv1_2"].AcceptedCipherList); !slices.Equal(got, []string{"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"}) {
				t.Errorf("tlsv1_2 %v", got)
			}
			if kx := c["tlsv1_2"].AcceptedCipherList[0].KeyExchange; kx == nil || kx.Group != "secp256r1" {
				t.Errorf("kx %+v", kx)
			}
			for _, k := range []string{"sslv3", "tlsv1", "tlsv1_1", "tlsv1_3"} {
				if c[k].Supported || c[k].Error != "" {
					t.Errorf("%s %+v", k, c[k])
				}
			}
			v := res.Data["vulnerabilities"].(Vulnerabilities)
			if !v.Heartbleed.HeartbeatExtension || !isTrue(v.Renegotiation.SupportsSecureRenegotiation) {
				t.Errorf("heartbleed %+v renegotiation %+v", v.Heartbleed, v.Renegotiation)
			}
			if v.Heartbleed.VulnerableToHeartbleed == nil || *v.Heartbleed.VulnerableToHeartbleed != bleeding {
				t.Errorf("vulnerable %v, want %v", v.Heartbleed.VulnerableToHeartbleed, bleeding)
			}
			// the fallback hello offers TLS 1.1, which the server refuses with protocol_version: no verdict
			if v.Fallback.SupportsFallbackSCSV != nil {
				t.Errorf("fallback %v, want no verdict", *v.Fallback.SupportsFallbackSCSV)
			}
			if want := []string{"sslv2", "rc4", "sweet32"}; !slices.Equal(v.Weak.Flags, want) {
				t.Errorf("flags %v, want %v", v.Weak.Flags, want)
			}
			// crypto/tls rejects the fake's unsigned key exchange: the crafted flight supplies the chain
			ci := res.Data["cert_info"].(*CertInfo)
			if len(ci.CertificateChain) != 2 || ci.CertificateChain[0].SHA256Fingerprint != sha256Hex(p.leafDER) {
				t.Errorf("chain %d", len(ci.CertificateChain))
			}
			if info := res.Data["server_info"].(ServerInfo); info.Default.Error == "" || info.JA3SString != "771,49199,65281-15" {
				t.Errorf("server_info %+v", info)
			}
		})
	}
}

// startTLSServerFor runs proto's plain-text dialogue, then TLS.
func startTLSServerFor(t *testing.T, proto string, refuse bool, cfg *tls.Config) *server {
	t.Helper()
	return startServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		say := func(s string) { _, _ = io.WriteString(c, s) }
		read := func() string { l, _ := br.ReadString('\n'); return strings.TrimSpace(l) }
		goAhead := ""
		switch proto {
		case StartTLSSMTP:
			say("220-mail.trawl.test ESMTP\r\n220 ready\r\n")
			if !strings.HasPrefix(read(), "EHLO") {
				return
			}
			say("250-mail.trawl.test\r\n250 STARTTLS\r\n")
			if read() != "STARTTLS" {
				return
			}
			goAhead = "220 go ahead\r\n"
			if refuse {
				goAhead = "454 TLS not available\r\n"
			}
		case StartTLSIMAP:
			say("* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
			tag, _, _ := strings.Cut(read(), " ")
			say("* informational\r\n")
			goAhead = tag + " OK begin TLS\r\n"
			if refuse {
				goAhead = tag + " NO not now\r\n"
			}
		case StartTLSPOP3:
			say("+OK POP3 ready\r\n")
			if read() != "STLS" {
				return
			}
			goAhead = "+OK begin TLS\r\n"
			if refuse {
				goAhead = "-ERR no\r\n"
			}
		case StartTLSFTP:
			say("220 FTP ready\r\n")
			if read() != "AUTH TLS" {
				return
			}
			goAhead = "234 AUTH TLS ok\r\n"
			if refuse {
				goAhead = "502 no\r\n"
			}
		}
		say(goAhead)
		if !refuse {
			serveTLS(c, cfg)
		}
	})
}

func TestProbeStartTLS(t *testing.T) {
	p := newTestPKI(t)
	cfg := &tls.Config{Certificates: []tls.Certificate{p.leaf}, MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384}}
	greetings := map[string]string{
		StartTLSSMTP: "220-mail.trawl.test ESMTP", StartTLSIMAP: "* OK [CAPABILITY IMAP4rev1 STARTTLS] ready",
		StartTLSPOP3: "+OK POP3 ready", StartTLSFTP: "220 FTP ready",
	}
	for _, proto := range []string{StartTLSSMTP, StartTLSIMAP, StartTLSPOP3, StartTLSFTP} {
		t.Run(proto, func(t *testing.T) {
			srv := startTLSServerFor(t, proto, false, cfg)
			res := probeOK(t, testModule(Config{StartTLS: proto}, p.roots), srv.port)
			if res.Status != probes.StatusSuccess {
				t.Fatalf("status %s %s", res.Status, res.Error)
			}
			info := res.Data["server_info"].(ServerInfo)
			if info.TLSWrappedProtocol != "starttls_"+proto || info.StartTLSGreeting != greetings[proto] || info.ALPNOffered != nil {
				t.Errorf("server_info %+v", info)
			}
			if got := names(ciphersOf(t, res)["tlsv1_2"].AcceptedCipherList); !slices.Equal(got, []string{"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"}) {
				t.Errorf("tlsv1_2 %v", got)
			}
		})
		t.Run(proto+"-refused", func(t *testing.T) {
			srv := startTLSServerFor(t, proto, true, cfg)
			res := probeOK(t, testModule(Config{StartTLS: proto}, p.roots), srv.port)
			if res.Status != probes.StatusProtocolError {
				t.Errorf("status %s %q, want protocol-error", res.Status, res.Error)
			}
		})
	}
	if startTLSFor(StartTLSAuto, 587) != StartTLSSMTP || startTLSFor(StartTLSAuto, 465) != "" || startTLSFor(StartTLSNone, 25) != "" ||
		startTLSFor(StartTLSIMAP, 8443) != StartTLSIMAP {
		t.Error("starttls port mapping")
	}
}

func TestConfig(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.RegisterFlags(fs, "ssl.")
	if err := fs.Parse([]string{"-ssl.concurrency=1", "-ssl.alpn=h2, http/1.1", "-ssl.starttls=imap", "-ssl.sni=a.example"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Concurrency != 1 || !slices.Equal(c.ALPN, []string{"h2", "http/1.1"}) || c.StartTLS != "imap" || c.SNI != "a.example" || c.Timeout != 5*time.Second {
		t.Errorf("config %+v", c)
	}
	bad := Config{Timeout: 0, Concurrency: 3, MaxHandshakes: 0, StartTLS: "ldap", SNI: "a b", ALPN: []string{""}}
	err := bad.Validate()
	for _, want := range []string{"timeout", "concurrency", "max handshakes", "starttls", "sni", "alpn"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to mention %q", err, want)
		}
	}
	m := New(bad)
	if m.cfg.Concurrency != MaxConcurrency || m.cfg.Timeout <= 0 || m.cfg.MaxHandshakes <= 0 || m.cfg.StartTLS != StartTLSAuto || m.Name() != "ssl" {
		t.Errorf("New did not default invalid settings: %+v", m.cfg)
	}
}

// TestSuiteTableMatchesOpenSSL checks every suite OpenSSL knows by both
// names against the table (PSK and SRP suites are left out on purpose:
// they need credentials to negotiate).
func TestSuiteTableMatchesOpenSSL(t *testing.T) {
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed (Debian package openssl)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "ciphers", "-V", "-stdname", "ALL:COMPLEMENTOFALL:@SECLEVEL=0").Output()
	if err != nil {
		t.Fatalf("openssl ciphers: %v", err)
	}
	checked := 0
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) < 5 || strings.Contains(f[2], "PSK") || strings.Contains(f[2], "SRP") {
			continue
		}
		var hi, lo byte
		if _, err := fmt.Sscanf(f[0], "0x%x,0x%x", &hi, &lo); err != nil {
			t.Fatalf("cannot read %q", f[0])
		}
		s, ok := suiteByID[uint16(hi)<<8|uint16(lo)]
		if !ok || s.iana != f[2] || s.openssl != f[4] {
			t.Errorf("%s %s %s: table has %+v", f[0], f[2], f[4], s)
		}
		checked++
	}
	if checked < 50 {
		t.Errorf("only %d suites checked", checked)
	}
}
