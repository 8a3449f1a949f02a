package ssl

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"trawl/probes"
)

// pkiFiles writes the test PKI as PEM files for openssl s_server: the RSA
// leaf (with the CA as its chain) and the self-signed ECDSA cert.
type pkiFiles struct {
	rsaCert, rsaKey, chain, ecCert, ecKey string
}

func writePKIFiles(t *testing.T) pkiFiles {
	t.Helper()
	p := newTestPKI(t)
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	rsaKey, err := x509MarshalPKCS8(p.leaf.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := x509MarshalPKCS8(p.self.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return pkiFiles{
		rsaCert: write("rsa.pem", "CERTIFICATE", p.leafDER), rsaKey: write("rsa.key", "PRIVATE KEY", rsaKey),
		chain:  write("ca.pem", "CERTIFICATE", p.caDER),
		ecCert: write("ec.pem", "CERTIFICATE", p.selfDER), ecKey: write("ec.key", "PRIVATE KEY", ecKey),
	}
}

// renegOnce dials port, completes the TLS 1.2 handshake offering suites
// and asks to renegotiate, everything bounded by a few seconds.
func renegOnce(t *testing.T, port int, suites []uint16) (*tls12Client, renegVerdict, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 3*time.Second)
	if err != nil {
		t.Fatalf("cannot dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	c := newTLS12Client(conn, "", suites)
	if err := c.handshake(); err != nil {
		return c, renegVerdict{}, err
	}
	_ = conn.SetReadDeadline(time.Now().Add(renegWait))
	return c, c.renegotiate(), nil
}

func TestRenegOpenSSLEverySuiteAndGroup(t *testing.T) {
	f := writePKIFiles(t)
	cases := []struct {
		cipher, group, cert, key string
		suite                    uint16
	}{
		{"ECDHE-RSA-AES128-GCM-SHA256", "X25519", f.rsaCert, f.rsaKey, suiteECDHERSAAES128GCM},
		{"ECDHE-RSA-AES256-GCM-SHA384", "P-256", f.rsaCert, f.rsaKey, suiteECDHERSAAES256GCM},
		{"ECDHE-ECDSA-AES128-GCM-SHA256", "P-256", f.ecCert, f.ecKey, suiteECDHEECDSAAES128GCM},
		{"ECDHE-ECDSA-AES256-GCM-SHA384", "X25519", f.ecCert, f.ecKey, suiteECDHEECDSAAES256GCM},
		{"ECDHE-RSA-AES128-GCM-SHA256", "P-384", f.rsaCert, f.rsaKey, suiteECDHERSAAES128GCM},
		{"ECDHE-ECDSA-AES256-GCM-SHA384", "P-521", f.ecCert, f.ecKey, suiteECDHEECDSAAES256GCM},
	}
	for _, tc := range cases {
		t.Run(tc.cipher+"/"+tc.group, func(t *testing.T) {
			port := startOpenSSL(t, "-cert", tc.cert, "-key", tc.key, "-tls1_2", "-cipher", tc.cipher,
				"-groups", tc.group, "-client_renegotiation")
			c, v, err := renegOnce(t, port, nil)
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if c.suite != tc.suite || !c.secure {
				t.Errorf("suite 0x%04X secure %v, want 0x%04X secure", c.suite, c.secure, tc.suite)
			}
			if !isTrue(v.accepted) || !v.secure || !strings.HasPrefix(v.reason, "accepted") {
				t.Errorf("verdict %+v, want accepted", v)
			}
		})
	}
}

func TestRenegOpenSSLRefusesByDefault(t *testing.T) {
	f := writePKIFiles(t)
	port := startOpenSSL(t, "-cert", f.rsaCert, "-key", f.rsaKey, "-tls1_2")
	_, v, err := renegOnce(t, port, nil)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if !isFalse(v.accepted) || !strings.HasPrefix(v.reason, "refused") {
		t.Errorf("verdict %+v, want refused", v)
	}
	t.Logf("OpenSSL 3 default: %s", v.reason)
}

// A server whose only group the client lacks: the handshake fails with
// the server's alert, and the module reports null with that reason.
func TestRenegOpenSSLNoCommonGroup(t *testing.T) {
	f := writePKIFiles(t)
	port := startOpenSSL(t, "-cert", f.rsaCert, "-key", f.rsaKey, "-tls1_2", "-groups", "X448", "-client_renegotiation")
	_, _, err := renegOnce(t, port, nil)
	var ae AlertError
	if !errors.As(err, &ae) {
		t.Fatalf("handshake error %v, want the server's alert", err)
	}
	p := newTestPKI(t)
	s := &scan{m: testModule(Config{}, p.roots), addr: "127.0.0.1:" + strconv.Itoa(port), slots: make(chan struct{}, 1)}
	s.left.Store(1)
	v := s.clientRenegotiation(context.Background(), &VersionResult{Supported: true, AcceptedCipherList: []Cipher{{ID: "0xC02F"}}})
	if v.accepted != nil || !strings.HasPrefix(v.reason, "not tested: cannot complete the TLS 1.2 handshake") {
		t.Errorf("verdict %+v", v)
	}
}

func TestRenegOpenSSLNoRenegotiationAtAll(t *testing.T) {
	f := writePKIFiles(t)
	port := startOpenSSL(t, "-cert", f.rsaCert, "-key", f.rsaKey, "-tls1_2", "-no_renegotiation", "-client_renegotiation")
	_, v, err := renegOnce(t, port, nil)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if !isFalse(v.accepted) {
		t.Errorf("verdict %+v, want refused", v)
	}
}

func TestProbeRenegOpenSSL(t *testing.T) {
	f := writePKIFiles(t)
	p := newTestPKI(t)
	for _, allow := range []bool{true, false} {
		t.Run("client_renegotiation="+map[bool]string{true: "on", false: "off"}[allow], func(t *testing.T) {
			args := []string{"-cert", f.rsaCert, "-cert_chain", f.chain, "-key", f.rsaKey}
			if allow {
				args = append(args, "-client_renegotiation")
			}
			port := startOpenSSL(t, args...)
			m := testModule(Config{}, p.roots)
			cc := countConns(m)
			res := probeOK(t, m, port)
			if res.Status != probes.StatusSuccess {
				t.Fatalf("status %s %s", res.Status, res.Error)
			}
			r := res.Data["vulnerabilities"].(Vulnerabilities).Renegotiation
			if !isTrue(r.SupportsSecureRenegotiation) || r.AcceptsClientRenegotiation == nil ||
				*r.AcceptsClientRenegotiation != allow || !isFalse(r.AcceptsInsecureRenegotiation) {
				t.Errorf("renegotiation %s, want accepts_client_renegotiation %v", mustJSON(t, r), allow)
			}
			if cc.max.Load() > MaxConcurrency {
				t.Errorf("%d connections at once", cc.max.Load())
			}
		})
	}
}

func TestProbeRenegGoServerRefuses(t *testing.T) {
	p := newTestPKI(t)
	srv := startTLSServer(t, &tls.Config{Certificates: []tls.Certificate{p.leaf}})
	m := testModule(Config{}, p.roots)
	cc := countConns(m)
	res := probeOK(t, m, srv.port)
	r := res.Data["vulnerabilities"].(Vulnerabilities).Renegotiation
	if !isFalse(r.AcceptsClientRenegotiation) || !isFalse(r.AcceptsInsecureRenegotiation) ||
		!strings.Contains(r.ClientRenegotiationReason, "unexpected_message") {
		t.Errorf("renegotiation %s, want refused with unexpected_message", mustJSON(t, r))
	}
	if cc.max.Load() > MaxConcurrency {
		t.Errorf("%d connections at once", cc.max.Load())
	}
}

func TestProbeRenegNotTested(t *testing.T) {
	p := newTestPKI(t)
	cases := []struct {
		name   string
		cfg    *tls.Config
		reason string
	}{
		{"tls13 only", &tls.Config{Certificates: []tls.Certificate{p.leaf}, MinVersion: tls.VersionTLS13},
			"no ECDHE AES-GCM suite"},
		{"cbc only", &tls.Config{Certificates: []tls.Certificate{p.leaf}, MaxVersion: tls.VersionTLS12,
			CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA}}, "no ECDHE AES-GCM suite"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := startTLSServer(t, tc.cfg)
			res := probeOK(t, testModule(Config{}, p.roots), srv.port)
			r := res.Data["vulnerabilities"].(Vulnerabilities).Renegotiation
			if r.AcceptsClientRenegotiation != nil || r.AcceptsInsecureRenegotiation != nil ||
				!strings.Contains(r.ClientRenegotiationReason, tc.reason) {
				t.Errorf("renegotiation %s, want null with %q", mustJSON(t, r), tc.reason)
			}
		})
	}
}

func TestProbeRenegBudget(t *testing.T) {
	p := newTestPKI(t)
	srv := startTLSServer(t, &tls.Config{Certificates: []tls.Certificate{p.leaf}, MaxVersion: tls.VersionTLS12})
	// enough handshakes to find a TLS 1.2 suite, too few for everything
	res := probeOK(t, testModule(Config{MaxHandshakes: 4}, p.roots), srv.port)
	info := res.Data["server_info"].(ServerInfo)
	if info.Handshakes > 4 {
		t.Errorf("%d handshakes, cap 4", info.Handshakes)
	}
	r := res.Data["vulnerabilities"].(Vulnerabilities).Renegotiation
	if r.AcceptsClientRenegotiation != nil && !isFalse(r.AcceptsClientRenegotiation) {
		t.Errorf("renegotiation %s", mustJSON(t, r))
	}
	if r.AcceptsClientRenegotiation == nil && !strings.HasPrefix(r.ClientRenegotiationReason, "not tested") {
		t.Errorf("renegotiation %s: null without a reason", mustJSON(t, r))
	}
}

// Failure paths against scripted servers, the client used directly.

func TestRenegGoServerSilentOrClosing(t *testing.T) {
	p := newTestPKI(t)
	cfg := &tls.Config{Certificates: []tls.Certificate{p.leaf}, MaxVersion: tls.VersionTLS12}
	cases := []struct {
		name  string
		after func(*tls.Conn, <-chan struct{})
		want  string
	}{
		// never reads after the handshake: the ClientHello goes unanswered
		{"silent", func(_ *tls.Conn, hold <-chan struct{}) { waitHold(hold) }, "no answer"},
		{"closes", func(tc *tls.Conn, _ <-chan struct{}) { _ = tc.NetConn().Close() }, "closed the connection"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hold, release := newHold()
			srv := startServer(t, func(c net.Conn) {
				s := tls.Server(c, cfg)
				if s.Handshake() == nil {
					tc.after(s, hold)
				}
			})
			release(t)
			start := time.Now()
			_, v, err := renegOnce(t, srv.port, nil)
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if !isFalse(v.accepted) || !strings.Contains(v.reason, tc.want) {
				t.Errorf("verdict %+v, want refused: %s", v, tc.want)
			}
			if d := time.Since(start); d > renegWait+2*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

// newHold returns a channel a silent server handler waits on; release,
// called after the server starts, closes it at cleanup, before the
// server's own cleanup waits for its handlers.
func newHold() (hold chan struct{}, release func(*testing.T)) {
	hold = make(chan struct{})
	return hold, func(t *testing.T) { t.Cleanup(func() { close(hold) }) }
}

func waitHold(hold <-chan struct{}) {
	select {
	case <-hold:
	case <-time.After(10 * time.Second):
	}
}

func TestTLS12HandshakeFailures(t *testing.T) {
	p := newTestPKI(t)
	goTLS := func(cfg *tls.Config) func(net.Conn, <-chan struct{}) {
		return func(c net.Conn, _ <-chan struct{}) { _ = tls.Server(c, cfg).Handshake() }
	}
	cases := []struct {
		name   string
		handle func(net.Conn, <-chan struct{})
		check  func(error) bool
	}{
		{"close after ClientHello", func(c net.Conn, _ <-chan struct{}) { _, _ = c.Read(make([]byte, 512)) },
			func(err error) bool { return errors.Is(err, io.EOF) || errors.Is(err, ErrNotTLS) }},
		{"close mid ServerHello", func(c net.Conn, _ <-chan struct{}) {
			_, _ = c.Read(make([]byte, 512))
			_, _ = c.Write([]byte{22, 3, 3, 0, 80, 2, 0, 0, 76, 3, 3})
		}, func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }},
		{"garbage", func(c net.Conn, _ <-chan struct{}) {
			_, _ = c.Read(make([]byte, 512))
			_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
		}, func(err error) bool { return errors.Is(err, ErrNotTLS) }},
		{"tls 1.1 only", goTLS(&tls.Config{Certificates: []tls.Certificate{p.leaf}, MaxVersion: tls.VersionTLS11}),
			func(err error) bool { var ae AlertError; return errors.As(err, &ae) }},
		{"alert", func(c net.Conn, _ <-chan struct{}) {
			_, _ = c.Read(make([]byte, 512))
			_, _ = c.Write([]byte{21, 3, 3, 0, 2, 2, 40})
		}, func(err error) bool { var ae AlertError; return errors.As(err, &ae) && ae.Description == 40 }},
		{"silence", func(c net.Conn, hold <-chan struct{}) { _, _ = c.Read(make([]byte, 512)); waitHold(hold) },
			func(err error) bool { var ne net.Error; return errors.As(err, &ne) && ne.Timeout() }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hold, release := newHold()
			srv := startServer(t, func(c net.Conn) { tc.handle(c, hold) })
			release(t)
			conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(srv.port), 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(time.Second))
			err = newTLS12Client(conn, "", nil).handshake()
			if err == nil || !tc.check(err) {
				t.Errorf("handshake error %v", err)
			}
		})
	}
}

// A server whose Finished is wrong must not pass: the client checks it.
func TestTLS12BadServerFinished(t *testing.T) {
	p := newTestPKI(t)
	srv := startTLSServer(t, &tls.Config{Certificates: []tls.Certificate{p.leaf}, MaxVersion: tls.VersionTLS12})
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(srv.port), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	c := newTLS12Client(conn, "", nil)
	// the encrypted Finished arrives with a flipped tag bit
	c.rw = &corruptAfterCCS{ReadWriter: conn}
	c.rr = recordReader{r: c.rw}
	err = c.handshake()
	if err == nil {
		t.Fatal("handshake passed with a corrupted server Finished")
	}
	if !errors.Is(err, errHandshake) {
		t.Errorf("error %v, want errHandshake", err)
	}
}

// corruptAfterCCS flips a ciphertext bit of the first record after the
// server's ChangeCipherSpec.
type corruptAfterCCS struct {
	io.ReadWriter
	buf     []byte
	seenCCS bool
	done    bool
}

func (c *corruptAfterCCS) Read(b []byte) (int, error) {
	if len(c.buf) == 0 {
		hdr := make([]byte, 5)
		if _, err := io.ReadFull(c.ReadWriter, hdr); err != nil {
			return 0, err
		}
		rec := make([]byte, 5+(int(hdr[3])<<8|int(hdr[4])))
		copy(rec, hdr)
		if _, err := io.ReadFull(c.ReadWriter, rec[5:]); err != nil {
			return 0, err
		}
		if rec[0] == recordChangeCipherSpec {
			c.seenCCS = true
		} else if c.seenCCS && !c.done {
			rec[len(rec)-1] ^= 1 // the GCM tag
			c.done = true
		}
		c.buf = rec
	}
	k := copy(b, c.buf)
	c.buf = c.buf[k:]
	return k, nil
}

func TestRenegClientHelloCarriesVerifyData(t *testing.T) {
	c := newTLS12Client(nil, "a.example", nil)
	var random [32]byte
	verify := []byte("0123456789ab")
	check := func(msg []byte, want []byte, present bool) {
		t.Helper()
		if msg[0] != msgClientHello || int(msg[1])<<16|int(msg[2])<<8|int(msg[3]) != len(msg)-4 {
			t.Fatalf("bad header % x", msg[:4])
		}
		// parse as a ServerHello-like vector walk: version, random, sid, suites, comp, exts
		r := reader(msg[4:])
		r.bytes(2 + 32)
		r.vec8()
		r.vec16()
		r.vec8()
		exts, ok := r.vec16()
		if !ok || len(r) != 0 {
			t.Fatal("bad ClientHello layout")
		}
		found := false
		for len(exts) > 0 {
			typ, _ := exts.u16()
			data, _ := exts.vec16()
			if typ == extRenegotiationInfo {
				found = true
				if len(data) != 1+len(want) || int(data[0]) != len(want) || string(data[1:]) != string(want) {
					t.Errorf("renegotiation_info % x, want %q", data, want)
				}
			}
		}
		if found != present {
			t.Errorf("renegotiation_info present %v, want %v", found, present)
		}
	}
	check(c.clientHello(&random, nil, false), nil, true)
	check(c.clientHello(&random, verify, false), verify, true)
	check(c.clientHello(&random, verify, true), nil, false)
}

func TestRenegSuites(t *testing.T) {
	r := &VersionResult{Supported: true, AcceptedCipherList: []Cipher{
		{ID: "0xC030"}, {ID: "0xC013"}, {ID: "0xC02B"},
	}}
	got := renegSuites(r)
	if len(got) != 2 || got[0] != suiteECDHEECDSAAES128GCM || got[1] != suiteECDHERSAAES256GCM {
		t.Errorf("renegSuites %x", got)
	}
	if renegSuites(nil) != nil || renegSuites(&VersionResult{AcceptedCipherList: r.AcceptedCipherList}) != nil {
		t.Error("suites from an unsupported version")
	}
}

func TestRenegCanceledWhileWaiting(t *testing.T) {
	p := newTestPKI(t)
	hold, release := newHold()
	srv := startServer(t, func(c net.Conn) {
		s := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{p.leaf}, MaxVersion: tls.VersionTLS12})
		if s.Handshake() == nil {
			waitHold(hold)
		}
	})
	release(t)
	m := testModule(Config{Timeout: 5 * time.Second}, p.roots)
	s := &scan{m: m, addr: "127.0.0.1:" + strconv.Itoa(srv.port), slots: make(chan struct{}, 1)}
	s.left.Store(1)
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	start := time.Now()
	v := s.clientRenegotiation(ctx, &VersionResult{Supported: true, AcceptedCipherList: []Cipher{{ID: "0xC02F"}}})
	if v.accepted != nil || !strings.Contains(v.reason, "not tested") || !strings.Contains(v.reason, "deadline") {
		t.Errorf("verdict %+v, want not tested after the deadline", v)
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("took %v after a 700ms context", d)
	}
	// the budget is spent: a second test does not connect
	if v := s.clientRenegotiation(context.Background(), &VersionResult{Supported: true, AcceptedCipherList: []Cipher{{ID: "0xC02F"}}}); v.accepted != nil || !strings.Contains(v.reason, errBudget.Error()) {
		t.Errorf("verdict %+v, want the handshake cap", v)
	}
}
