package probetest

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestStartApache(t *testing.T) {
	Require(t, ApacheBin)
	h := New(t)
	a := h.StartApache(80, 443)
	if a.Version == "" || !strings.HasPrefix(a.Debian, a.Version) {
		t.Fatalf("apache2 version %q of %q", a.Version, a.Debian)
	}
	roots := x509.NewCertPool()
	roots.AddCert(a.TLS.CA)
	for _, c := range []struct {
		version uint16
		ok      bool
	}{{tls.VersionTLS10, true}, {tls.VersionTLS11, true}, {tls.VersionTLS12, true}, {tls.VersionTLS13, false}} {
		cfg := &tls.Config{RootCAs: roots, ServerName: a.TLS.LeafHostname, MinVersion: c.version, MaxVersion: c.version}
		if c.version < tls.VersionTLS12 {
			cfg.CipherSuites = []uint16{tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA}
		}
		d := &tls.Dialer{Config: cfg}
		ctx := t.Context()
		conn, err := d.DialContext(ctx, "tcp", h.DaemonAddr(a.Daemon, "https"))
		if c.ok != (err == nil) {
			t.Fatalf("TLS %x: handshake err %v, want ok=%v", c.version, err, c.ok)
		}
		if err != nil {
			continue
		}
		st := conn.(*tls.Conn).ConnectionState()
		if len(st.PeerCertificates) != 2 || !st.PeerCertificates[0].Equal(a.TLS.Leaf) || !st.PeerCertificates[1].Equal(a.TLS.CA) {
			t.Fatalf("TLS %x: chain of %d certificates is not leaf+CA", c.version, len(st.PeerCertificates))
		}
		conn.Close()
	}
	cl := http.Client{Timeout: 3 * time.Second}
	resp, err := cl.Get("http://" + h.DaemonAddr(a.Daemon, "http") + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := bufio.NewReader(resp.Body).ReadString('\n')
	if resp.StatusCode != 200 || body != "trawl\n" || !strings.HasPrefix(resp.Header.Get("Server"), "Apache/"+a.Version+" (Debian)") {
		t.Fatalf("GET /: %d %q Server %q", resp.StatusCode, body, resp.Header.Get("Server"))
	}
}

func TestStartRabbitMQ(t *testing.T) {
	Require(t, RabbitMQBin)
	h := New(t)
	start := time.Now()
	r := h.StartRabbitMQ(5672)
	t.Logf("rabbitmq %s ready in %v", r.Version, time.Since(start))
	conn, err := net.DialTimeout("tcp", h.DaemonAddr(r, "amqp"), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Write([]byte("AMQP\x00\x00\x09\x01")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := io.ReadAtLeast(conn, buf, 7)
	if err != nil || buf[0] != 1 || !strings.Contains(string(buf[:n]), r.Version) {
		t.Fatalf("Connection.Start: %q, %v; want version %s", buf[:n], err, r.Version)
	}
}
