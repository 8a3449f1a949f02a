package ssl

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"trawl/probes"
)

// testPKI is a CA, an RSA leaf it signed and a self-signed ECDSA cert,
// generated per test run so fingerprints are computed, never typed.
type testPKI struct {
	caDER, leafDER, selfDER []byte
	leaf, self              tls.Certificate // leaf carries the chain leaf+CA
	roots                   *x509.CertPool
	leafCert, caCert        *x509.Certificate
}

var (
	pkiOnce sync.Once
	pki     *testPKI
	pkiErr  error
)

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	pkiOnce.Do(func() { pki, pkiErr = generatePKI() })
	if pkiErr != nil {
		t.Fatalf("cannot generate test PKI: %v", pkiErr)
	}
	return pki
}

func generatePKI() (*testPKI, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1001), Subject: pkix.Name{CommonName: "trawl test CA", Organization: []string{"trawl"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	leafKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(424242), Subject: pkix.Name{CommonName: "a.trawl.test"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		DNSNames: []string{"a.trawl.test"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	leafCert, err := x509.ParseCertificate(leafDER)
	if err != nil {
		return nil, err
	}
	selfKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, err
	}
	selfTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "self.trawl.test"},
		NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour), // expired
		DNSNames: []string{"self.trawl.test"}, BasicConstraintsValid: true,
	}
	selfDER, err := x509.CreateCertificate(rand.Reader, selfTmpl, selfTmpl, &selfKey.PublicKey, selfKey)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	return &testPKI{
		caDER: caDER, leafDER: leafDER, selfDER: selfDER,
		leaf:  tls.Certificate{Certificate: [][]byte{leafDER, caDER}, PrivateKey: leafKey},
		self:  tls.Certificate{Certificate: [][]byte{selfDER}, PrivateKey: selfKey},
		roots: roots, leafCert: leafCert, caCert: caCert,
	}, nil
}

// server is a local TCP server that counts connections open at once.
type server struct {
	ln      net.Listener
	port    int
	open    atomic.Int64
	maxOpen atomic.Int64
	total   atomic.Int64
	wg      sync.WaitGroup
}

// startServer serves every connection with handle on 127.0.0.1; cleanup
// closes the listener and waits for the handlers.
func startServer(t testing.TB, handle func(net.Conn)) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("cannot listen: %v", err)
	}
	s := &server{ln: ln, port: ln.Addr().(*net.TCPAddr).Port}
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			s.total.Add(1)
			n := s.open.Add(1)
			for m := s.maxOpen.Load(); n > m && !s.maxOpen.CompareAndSwap(m, n); m = s.maxOpen.Load() {
			}
			s.wg.Go(func() {
				defer func() {
					s.open.Add(-1)
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					_ = c.Close()
				}()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				handle(c)
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		s.wg.Wait()
	})
	return s
}

// startTLSServer serves TLS with cfg; each connection handshakes, reads
// until the client goes away.
func startTLSServer(t testing.TB, cfg *tls.Config) *server {
	t.Helper()
	return startServer(t, func(c net.Conn) { serveTLS(c, cfg) })
}

func serveTLS(c net.Conn, cfg *tls.Config) {
	tc := tls.Server(c, cfg)
	if tc.Handshake() != nil {
		return
	}
	_, _ = bufio.NewReader(tc).ReadByte()
}

func probeOK(t *testing.T, m *Module, port int) probes.Result {
	t.Helper()
	return probeTargetOK(t, m, probes.Target{IP: "127.0.0.1", Port: port, Protocol: "tcp"})
}

// probeTargetOK probes target and fails the test if Probe errs.
func probeTargetOK(t *testing.T, m *Module, target probes.Target) probes.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := m.Probe(ctx, target)
	if err != nil {
		t.Fatalf("Probe returned an error: %v", err)
	}
	return res
}

func testModule(cfg Config, roots *x509.CertPool) *Module {
	if cfg.Timeout == 0 {
		cfg.Timeout = 3 * time.Second
	}
	if cfg.StartTLS == "" {
		cfg.StartTLS = StartTLSNone
	}
	m := New(cfg)
	m.roots = roots
	return m
}

// connCounter wraps a module's dialing to count its connections open at
// once: the cap is the client's promise, whatever the server notices.
type connCounter struct {
	open, max atomic.Int64
}

func countConns(m *Module) *connCounter {
	cc := &connCounter{}
	dial := m.dial
	m.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		n := cc.open.Add(1)
		for m := cc.max.Load(); n > m && !cc.max.CompareAndSwap(m, n); m = cc.max.Load() {
		}
		return &countedConn{Conn: c, cc: cc}, nil
	}
	return cc
}

type countedConn struct {
	net.Conn
	cc   *connCounter
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.cc.open.Add(-1) })
	return c.Conn.Close()
}

func ciphersOf(t *testing.T, res probes.Result) map[string]*VersionResult {
	t.Helper()
	c, ok := res.Data["ciphers"].(map[string]*VersionResult)
	if !ok {
		t.Fatalf("ciphers missing: %#v (status %s, %s)", res.Data, res.Status, res.Error)
	}
	return c
}

func names(list []Cipher) []string {
	out := make([]string, 0, len(list))
	for _, c := range list {
		out = append(out, c.Name)
	}
	return out
}

func x509MarshalPKCS8(key any) ([]byte, error) { return x509.MarshalPKCS8PrivateKey(key) }
