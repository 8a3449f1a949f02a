package ssh

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	xssh "golang.org/x/crypto/ssh"

	"trawl/probes"
	"trawl/probes/probetest"
)

// hostSigners are made once: RSA key generation is slow under -race.
var hostSigners = sync.OnceValues(func() ([]xssh.Signer, error) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	ek, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, err
	}
	_, dk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	var out []xssh.Signer
	for _, k := range []any{rk, ek, dk} {
		s, err := xssh.NewSignerFromKey(k)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
})

// goServer is an x/crypto/ssh server on 127.0.0.1 that counts the
// connections it accepts.
type goServer struct {
	port     int
	accepted atomic.Int64
	signers  []xssh.Signer
}

func startGoServer(t testing.TB, tune func(*xssh.ServerConfig)) *goServer {
	t.Helper()
	signers, err := hostSigners()
	if err != nil {
		t.Fatal(err)
	}
	cfg := &xssh.ServerConfig{
		PasswordCallback: func(xssh.ConnMetadata, []byte) (*xssh.Permissions, error) {
			return nil, errors.New("no")
		},
		PublicKeyCallback: func(xssh.ConnMetadata, xssh.PublicKey) (*xssh.Permissions, error) {
			return nil, errors.New("no")
		},
		BannerCallback:          func(xssh.ConnMetadata) string { return "authorised use only\n" },
		PublicKeyAuthAlgorithms: []string{"ssh-ed25519", "rsa-sha2-512"},
	}
	for _, s := range signers {
		cfg.AddHostKey(s)
	}
	if tune != nil {
		tune(cfg)
	}
	srv := &goServer{signers: signers}
	srv.port = serve(t, func(c net.Conn) {
		srv.accepted.Add(1)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		sc, chans, reqs, err := xssh.NewServerConn(c, cfg)
		if err != nil {
			return
		}
		go xssh.DiscardRequests(reqs)
		for ch := range chans {
			_ = ch.Reject(xssh.Prohibited, "no")
		}
		sc.Close()
	})
	return srv
}

// serve runs a fake server on loopback (probetest.Serve).
func serve(t testing.TB, handle func(c net.Conn)) int { return probetest.Serve(t, handle) }

func probe(t testing.TB, m *Module, port int, timeout time.Duration) probes.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	res, err := m.Probe(ctx, probes.Target{IP: "127.0.0.1", Port: port, Protocol: "tcp"})
	if err != nil {
		t.Fatalf("Probe: %v", err)
	}
	if res.Started.IsZero() || res.Duration <= 0 {
		t.Fatalf("timing not set: %v %v", res.Started, res.Duration)
	}
	return res
}

// TestGoServer runs the module's own transport against x/crypto's server
// with each cipher family forced in turn: auth methods and server-sig-algs
// only arrive when kex, key derivation and packet crypto are all right.
func TestGoServer(t *testing.T) {
	cases := []struct {
		name           string
		kex, ciph, mac []string
	}{
		{"curve25519 aes128-gcm", []string{"curve25519-sha256"}, []string{"aes128-gcm@openssh.com"}, nil},
		{"nistp256 aes256-gcm", []string{"ecdh-sha2-nistp256"}, []string{"aes256-gcm@openssh.com"}, nil},
		{"nistp384 aes128-ctr hmac-sha2-256", []string{"ecdh-sha2-nistp384"}, []string{"aes128-ctr"}, []string{"hmac-sha2-256"}},
		{"nistp521 aes256-ctr hmac-sha2-512-etm", []string{"ecdh-sha2-nistp521"}, []string{"aes256-ctr"}, []string{"hmac-sha2-512-etm@openssh.com"}},
		{"libssh aes192-ctr hmac-sha2-512", []string{"curve25519-sha256@libssh.org"}, []string{"aes192-ctr"}, []string{"hmac-sha2-512"}},
		{"x/crypto defaults", nil, nil, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := startGoServer(t, func(cfg *xssh.ServerConfig) {
				cfg.KeyExchanges, cfg.Ciphers, cfg.MACs = c.kex, c.ciph, c.mac
			})
			res := probe(t, New(Config{}), srv.port, 10*time.Second)
			if res.Status != probes.StatusSuccess || res.Error != "" {
				t.Fatalf("status %q error %q", res.Status, res.Error)
			}
			if e, ok := res.Data["errors"]; ok {
				t.Fatalf("step errors %v", e)
			}
			if res.Data["banner"] != "SSH-2.0-Go" {
				t.Fatalf("banner %v", res.Data["banner"])
			}
			auth := res.Data["auth"].(Auth)
			if !reflect.DeepEqual(auth.Methods, []string{"password", "publickey"}) || auth.NoneAccepted ||
				auth.Banner != "authorised use only\n" {
				t.Fatalf("auth %+v", auth)
			}
			if got := res.Data["server_sig_algs"].([]string); !reflect.DeepEqual(got, []string{"ssh-ed25519", "rsa-sha2-512"}) {
				t.Fatalf("server-sig-algs %v", got)
			}
			ext := res.Data["extensions"].(map[string]string)
			if len(ext) != 2 || ext["ping@openssh.com"] != "0" {
				t.Fatalf("extensions %v", ext)
			}
			k := res.Data["kexinit"].(KexInit)
			if c.kex != nil && !reflect.DeepEqual(k.KexAlgorithms[:1], c.kex) {
				t.Fatalf("kex %v", k.KexAlgorithms)
			}
			checkCyphers(t, res.Data["cyphers"].([]Cypher), srv.signers)
			if f := res.Data["features"].(Features); !f.ExtInfo {
				t.Fatalf("features %+v: EXT_INFO arrived", f)
			}
			// one connection per key family, the first shared with the auth probe
			if n := srv.accepted.Load(); n != int64(len(srv.signers)) {
				t.Fatalf("%d connections for %d keys", n, len(srv.signers))
			}
		})
	}
}

// checkCyphers asserts the cyphers are exactly the signers' keys.
func checkCyphers(t *testing.T, got []Cypher, signers []xssh.Signer) {
	t.Helper()
	if len(got) != len(signers) {
		t.Fatalf("%d cyphers, want %d: %+v", len(got), len(signers), got)
	}
	bits := map[string]int{"ssh-rsa": 2048, "ecdsa-sha2-nistp384": 384, "ssh-ed25519": 256}
	for _, s := range signers {
		pub := s.PublicKey()
		i := slices.IndexFunc(got, func(c Cypher) bool { return c.Cypher == pub.Type() })
		if i < 0 {
			t.Fatalf("no %s key among %+v", pub.Type(), got)
		}
		c := got[i]
		if c.Key != base64.StdEncoding.EncodeToString(pub.Marshal()) || c.Length != bits[pub.Type()] ||
			c.Fingerprint != xssh.FingerprintLegacyMD5(pub) || c.FingerprintSHA256 != xssh.FingerprintSHA256(pub) ||
			!c.SignatureVerified || !slices.Contains(c.HostKeyAlgorithms, c.HostKeyAlgorithm) {
			t.Fatalf("cypher %+v for %s", c, pub.Type())
		}
	}
}

func TestNoneAccepted(t *testing.T) {
	srv := startGoServer(t, func(cfg *xssh.ServerConfig) { cfg.NoClientAuth = true })
	res := probe(t, New(Config{}), srv.port, 10*time.Second)
	auth := res.Data["auth"].(Auth)
	if res.Status != probes.StatusSuccess || !auth.NoneAccepted || !reflect.DeepEqual(auth.Methods, []string{"none"}) {
		t.Fatalf("status %q auth %+v", res.Status, auth)
	}
}

// TestUnsupportedTransport: a server with only a kex the module's own
// transport lacks still yields banner, KEXINIT and host keys (through
// x/crypto); the auth step reports why it was skipped.
func TestUnsupportedTransport(t *testing.T) {
	srv := startGoServer(t, func(cfg *xssh.ServerConfig) { cfg.KeyExchanges = []string{"diffie-hellman-group14-sha256"} })
	res := probe(t, New(Config{}), srv.port, 10*time.Second)
	if res.Status != probes.StatusSuccess {
		t.Fatalf("status %q %s", res.Status, res.Error)
	}
	errs := res.Data["errors"].(map[string]string)
	if !strings.Contains(errs["kex"], "no common algorithm") || len(errs) != 1 {
		t.Fatalf("errors %v", errs)
	}
	if _, ok := res.Data["auth"]; ok {
		t.Fatal("auth without a key exchange")
	}
	checkCyphers(t, res.Data["cyphers"].([]Cypher), srv.signers)
	if n := srv.accepted.Load(); n > int64(len(srv.signers))+2 {
		t.Fatalf("%d connections for %d key families", n, len(srv.signers))
	}
}

func TestFailures(t *testing.T) {
	silent := serve(t, func(c net.Conn) { drain(c) })
	httpLike := serve(t, func(c net.Conn) {
		_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"))
	})
	identOnly := serve(t, func(c net.Conn) { _, _ = c.Write([]byte("SSH-2.0-OpenSSH_9.2p1\r\n")) })
	garbage := serve(t, func(c net.Conn) {
		_, _ = c.Write([]byte("SSH-2.0-OpenSSH_9.2p1\r\n\xff\xff\xff\xff\x00garbage"))
		drain(c)
	})
	notKexInit := serve(t, func(c net.Conn) {
		_, _ = c.Write([]byte("SSH-2.0-x\r\n"))
		_ = plainCipher{}.writePacket(0, c, []byte{msgServiceAccept})
		drain(c)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).Port
	ln.Close()

	cases := []struct {
		name   string
		port   int
		status probes.Status
		errHas string
		banner string
	}{
		{"closed port", closed, probes.StatusRefused, "connection refused", ""},
		{"not ssh", httpLike, probes.StatusProtocolError, "not an SSH server", ""},
		{"silent", silent, probes.StatusTimeout, "", ""},
		{"closes after identification", identOnly, probes.StatusReset, "cannot read KEXINIT", "SSH-2.0-OpenSSH_9.2p1"},
		{"garbage packet", garbage, probes.StatusProtocolError, "bad packet length", "SSH-2.0-OpenSSH_9.2p1"},
		{"not a KEXINIT", notKexInit, probes.StatusProtocolError, "message type 6", "SSH-2.0-x"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			res := probe(t, New(Config{}), c.port, 500*time.Millisecond)
			if res.Status != c.status || !strings.Contains(res.Error, c.errHas) {
				t.Fatalf("status %q error %q; want %q containing %q", res.Status, res.Error, c.status, c.errHas)
			}
			if b, _ := res.Data["banner"].(string); b != c.banner {
				t.Fatalf("banner %q, want %q", b, c.banner)
			}
			if time.Since(start) > 2*time.Second {
				t.Fatalf("took %v: not bounded by ctx", time.Since(start))
			}
		})
	}
	t.Run("conn timeout shorter than ctx", func(t *testing.T) {
		res := probe(t, New(Config{ConnTimeout: 100 * time.Millisecond}), silent, 5*time.Second)
		if res.Status != probes.StatusTimeout || res.Duration > time.Second {
			t.Fatalf("status %q after %v (%s)", res.Status, res.Duration, res.Error)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		res, err := New(Config{}).Probe(ctx, probes.Target{IP: "127.0.0.1", Port: silent})
		if err != nil || res.Status != probes.StatusCanceled {
			t.Fatalf("status %q err %v", res.Status, err)
		}
	})
}

func drain(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(io.Discard, c)
}

// TestNoLeaks: probes in parallel leave no goroutines behind.
func TestNoLeaks(t *testing.T) {
	srv := startGoServer(t, nil)
	before := runtime.NumGoroutine()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, _ = New(Config{}).Probe(ctx, probes.Target{IP: "127.0.0.1", Port: srv.port})
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+2 {
		t.Fatalf("%d goroutines after the probes, %d before", n, before)
	}
}

// BenchmarkProbeGoServer measures whole probes (all host keys, auth) per
// second against x/crypto's server on loopback.
func BenchmarkProbeGoServer(b *testing.B) {
	srv := startGoServer(b, nil)
	m := New(Config{})
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		res := probe(b, m, srv.port, 10*time.Second)
		if res.Status != probes.StatusSuccess {
			b.Fatalf("status %q %s", res.Status, res.Error)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "probes/s")
}

// BenchmarkParseKexInit is the parse of a recorded OpenSSH KEXINIT.
func BenchmarkParseKexInit(b *testing.B) {
	_, payload := readFixture(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseKexInit(payload); err != nil {
			b.Fatal(err)
		}
	}
}
