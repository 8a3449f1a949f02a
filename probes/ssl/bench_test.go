package ssl

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"trawl/probes"
)

func benchServer(b *testing.B) (*testPKI, *server) {
	b.Helper()
	p := newTestPKI(b)
	srv := startTLSServer(b, &tls.Config{Certificates: []tls.Certificate{p.leaf}, CurvePreferences: []tls.CurveID{tls.X25519}})
	return p, srv
}

// BenchmarkDefaultHandshake is one crypto/tls handshake with the chain
// kept and the ServerHello re-parsed, as every probe starts.
func BenchmarkDefaultHandshake(b *testing.B) {
	p, srv := benchServer(b)
	m := testModule(Config{}, p.roots)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		s := &scan{m: m, addr: srv.ln.Addr().String(), slots: make(chan struct{}, 1), hellos: map[uint16]*flight{}}
		s.left.Store(1)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := s.defaultHandshake(ctx)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}

// BenchmarkCraftedHello is one crafted TLS 1.2 hello and ServerHello.
func BenchmarkCraftedHello(b *testing.B) {
	p, srv := benchServer(b)
	m := testModule(Config{}, p.roots)
	suites := suitesFor(versionTLS12)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		s := &scan{m: m, addr: srv.ln.Addr().String(), slots: make(chan struct{}, 1), hellos: map[uint16]*flight{}}
		s.left.Store(1)
		if _, err := s.exchange(context.Background(), s.hello(versionTLS12, suites), true); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}

// BenchmarkProbe is a full module run (every version, suite enumeration,
// preference, behaviours) against a Go TLS server.
func BenchmarkProbe(b *testing.B) {
	p, srv := benchServer(b)
	m := testModule(Config{}, p.roots)
	var handshakes int
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		res, err := m.Probe(context.Background(), probes.Target{IP: "127.0.0.1", Port: srv.port})
		if err != nil || res.Status != probes.StatusSuccess {
			b.Fatalf("%v %s %s", err, res.Status, res.Error)
		}
		handshakes += res.Data["server_info"].(ServerInfo).Handshakes
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "probes/s")
	b.ReportMetric(float64(handshakes)/b.Elapsed().Seconds(), "handshakes/s")
}

// BenchmarkAppendClientHello is building a hello into a reused buffer.
func BenchmarkAppendClientHello(b *testing.B) {
	var random [32]byte
	h := helloSpec{version: versionTLS13, suites: suitesFor(versionTLS12), sni: "a.example", alpn: []string{"h2", "http/1.1"}, heartbeat: true}
	buf := make([]byte, 0, 2048)
	b.ReportAllocs()
	for b.Loop() {
		buf = appendClientHello(buf[:0], h, &random, x25519Base)
	}
}
