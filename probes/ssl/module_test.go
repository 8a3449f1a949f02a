package ssl

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"trawl/probes"
)

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestProbeModernGoServer(t *testing.T) {
	p := newTestPKI(t)
	configured := []uint16{
		tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	}
	srv := startTLSServer(t, &tls.Config{
		Certificates: []tls.Certificate{p.leaf}, MinVersion: tls.VersionTLS12,
		CipherSuites: configured, CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256},
		NextProtos: []string{"http/1.1"},
	})
	m := testModule(Config{SNI: "a.trawl.test"}, p.roots)
	cc := countConns(m)
	res := probeOK(t, m, srv.port)
	if res.Status != probes.StatusSuccess {
		t.Fatalf("status %s (%s), want success", res.Status, res.Error)
	}
	c := ciphersOf(t, res)
	for _, k := range []string{"sslv2", "sslv3", "tlsv1", "tlsv1_1"} {
		if c[k].Supported || len(c[k].AcceptedCipherList) != 0 {
			t.Errorf("%s supported = %v %v, want not", k, c[k].Supported, names(c[k].AcceptedCipherList))
		}
	}
	var want []string
	for _, id := range configured {
		want = append(want, tls.CipherSuiteName(id))
	}
	got := names(c["tlsv1_2"].AcceptedCipherList)
	if !slices.Equal(sortedCopy(got), sortedCopy(want)) {
		t.Errorf("tlsv1_2 accepted %v, want %v", got, want)
	}
	// crypto/tls prefers AES-128-GCM over the rest whatever the client's order
	if c["tlsv1_2"].Preference != "server" || c["tlsv1_2"].PreferredCipher == nil ||
		c["tlsv1_2"].PreferredCipher.Name != "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" {
		t.Errorf("tlsv1_2 preference %q %+v, want server TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", c["tlsv1_2"].Preference, c["tlsv1_2"].PreferredCipher)
	}
	for _, ci := range c["tlsv1_2"].AcceptedCipherList {
		if ci.KeyExchange == nil || ci.KeyExchange.Type != "ECDHE_RSA" || ci.KeyExchange.Group != "x25519" || ci.KeyExchange.Bits != 253 {
			t.Errorf("%s key exchange %+v, want ECDHE_RSA x25519 253", ci.Name, ci.KeyExchange)
		}
		if ci.OpenSSLName != lookupSuite(hexID(t, ci.ID)).openssl || ci.OpenSSLName == "" {
			t.Errorf("%s openssl name %q", ci.Name, ci.OpenSSLName)
		}
	}
	got13 := names(c["tlsv1_3"].AcceptedCipherList)
	want13 := []string{"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
	if !slices.Equal(sortedCopy(got13), want13) {
		t.Errorf("tlsv1_3 accepted %v, want %v", got13, want13)
	}
	if kx := c["tlsv1_3"].AcceptedCipherList[0].KeyExchange; kx == nil || kx.Group != "x25519" {
		t.Errorf("tlsv1_3 key exchange %+v, want x25519", kx)
	}

	info := res.Data["server_info"].(ServerInfo)
	if info.HighestVersion != "TLSv1.3" || info.Default.Version != "TLSv1.3" || info.Default.Cipher != "TLS_AES_128_GCM_SHA256" ||
		info.Default.Group != "x25519" || info.ALPNSelected != "http/1.1" || info.TLSWrappedProtocol != "plain_tls" {
		t.Errorf("server_info %+v", info)
	}
	if !strings.HasPrefix(info.JA3SString, "771,4865,") || info.JA3S != md5Hex(info.JA3SString) {
		t.Errorf("ja3s %q %q", info.JA3S, info.JA3SString)
	}
	if info.Handshakes > m.cfg.MaxHandshakes || info.Handshakes < 10 || info.HandshakeCapHit {
		t.Errorf("handshakes %d cap hit %v", info.Handshakes, info.HandshakeCapHit)
	}
	if mx := cc.max.Load(); mx != MaxConcurrency || cc.open.Load() != 0 {
		t.Errorf("%d connections at once (%d left open), want %d", mx, cc.open.Load(), MaxConcurrency)
	}
	if len(res.Raw) < 40 || res.Raw[0] != msgServerHello {
		t.Errorf("raw evidence is not a ServerHello: % x", res.Raw[:min(len(res.Raw), 8)])
	}

	ci := res.Data["cert_info"].(*CertInfo)
	if len(ci.CertificateChain) != 2 {
		t.Fatalf("chain of %d, want 2", len(ci.CertificateChain))
	}
	leaf, ca := ci.CertificateChain[0], ci.CertificateChain[1]
	if leaf.SHA256Fingerprint != sha256Hex(p.leafDER) || ca.SHA256Fingerprint != sha256Hex(p.caDER) {
		t.Errorf("fingerprints %s %s", leaf.SHA256Fingerprint, ca.SHA256Fingerprint)
	}
	if leaf.SPKISHA256 != sha256Hex(p.leafCert.RawSubjectPublicKeyInfo) || leaf.SerialNumber != "424242" ||
		leaf.PublicKey != (PublicKey{Algorithm: "RSA", Bits: 2048}) || leaf.SignatureAlgorithm != "ECDSA-SHA256" ||
		!slices.Equal(leaf.SANs.DNS, []string{"a.trawl.test"}) || !slices.Equal(leaf.SANs.IP, []string{"127.0.0.1"}) ||
		leaf.SelfSigned || leaf.Expired || leaf.IsCA || leaf.Subject != "CN=a.trawl.test" || leaf.Issuer != "CN=trawl test CA,O=trawl" ||
		!slices.Equal(leaf.KeyUsage, []string{"digital_signature", "key_encipherment"}) ||
		!slices.Equal(leaf.ExtendedKeyUsage, []string{"server_auth"}) || !leaf.NotAfter.Equal(p.leafCert.NotAfter) {
		t.Errorf("leaf %+v", leaf)
	}
	if !ca.SelfSigned || !ca.IsCA || ca.PublicKey != (PublicKey{Algorithm: "ECDSA", Bits: 256, Curve: "P-256"}) {
		t.Errorf("ca %+v", ca)
	}
	if !ci.Trust.Trusted || !ci.HostnameValidation.MatchesHostname || !ci.HostnameValidation.MatchesIP {
		t.Errorf("trust %+v hostname %+v", ci.Trust, ci.HostnameValidation)
	}

	v := res.Data["vulnerabilities"].(Vulnerabilities)
	if !isTrue(v.Renegotiation.SupportsSecureRenegotiation) || !isFalse(v.Compression.SupportsCompression) ||
		!isTrue(v.Fallback.SupportsFallbackSCSV) || v.Heartbleed.HeartbeatExtension || !isFalse(v.Heartbleed.VulnerableToHeartbleed) {
		t.Errorf("vulnerabilities %s", mustJSON(t, v))
	}
	if len(v.Weak.Flags) != 0 {
		t.Errorf("weak flags %v, want none", v.Weak.Flags)
	}

	// the event carries the BinaryEdge-shaped paths
	var ev map[string]any
	if err := json.Unmarshal(mustJSON(t, res), &ev); err != nil {
		t.Fatal(err)
	}
	list := ev["ciphers"].(map[string]any)["tlsv1_2"].(map[string]any)["accepted_cipher_list"].([]any)
	if first := list[0].(map[string]any); first["name"] == "" || first["openssl_name"] == "" || first["key_exchange"] == nil {
		t.Errorf("accepted_cipher_list entry %v", first)
	}
	if ev["cert_info"].(map[string]any)["certificate_chain"].([]any)[0].(map[string]any)["sha256_fingerprint"] != sha256Hex(p.leafDER) {
		t.Error("cert_info.certificate_chain[0].sha256_fingerprint missing from the event")
	}
	if ev["status"] != "success" || ev["raw"] == "" {
		t.Errorf("event status %v raw %v", ev["status"], ev["raw"])
	}
}

func TestProbeLegacyGoServer(t *testing.T) {
	p := newTestPKI(t)
	configured := []uint16{
		tls.TLS_RSA_WITH_RC4_128_SHA,
		tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA,
		tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
	}
	srv := startTLSServer(t, &tls.Config{
		Certificates: []tls.Certificate{p.leaf}, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS12,
		CipherSuites: configured, CurvePreferences: []tls.CurveID{tls.CurveP256},
	})
	m := testModule(Config{Concurrency: 1}, p.roots)
	cc := countConns(m)
	res := probeOK(t, m, srv.port)
	if res.Status != probes.StatusSuccess {
		t.Fatalf("status %s (%s)", res.Status, res.Error)
	}
	c := ciphersOf(t, res)
	want := []string{"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "TLS_RSA_WITH_3DES_EDE_CBC_SHA", "TLS_RSA_WITH_RC4_128_SHA"}
	for _, k := range []string{"tlsv1", "tlsv1_1", "tlsv1_2"} {
		if got := sortedCopy(names(c[k].AcceptedCipherList)); !slices.Equal(got, want) {
			t.Errorf("%s accepted %v, want %v", k, got, want)
		}
	}
	if c["tlsv1_3"].Supported {
		t.Error("tlsv1_3 supported, want not")
	}
	for _, ci := range c["tlsv1"].AcceptedCipherList {
		wantKX := KeyExchange{Type: "RSA"}
		if strings.HasPrefix(ci.Name, "TLS_ECDHE") {
			wantKX = KeyExchange{Type: "ECDHE_RSA", Group: "secp256r1", Bits: 256}
		}
		if ci.KeyExchange == nil || *ci.KeyExchange != wantKX {
			t.Errorf("%s key exchange %+v, want %+v", ci.Name, ci.KeyExchange, wantKX)
		}
	}
	info := res.Data["server_info"].(ServerInfo)
	if info.HighestVersion != "TLSv1.2" || info.Default.Version != "TLSv1.2" {
		t.Errorf("server_info %+v", info)
	}
	if mx := cc.max.Load(); mx != 1 || cc.open.Load() != 0 {
		t.Errorf("%d connections at once (%d left open) with concurrency 1", mx, cc.open.Load())
	}
	v := res.Data["vulnerabilities"].(Vulnerabilities)
	wantFlags := []string{"tlsv1", "tlsv1_1", "rc4", "sweet32", "cbc_in_tlsv1"}
	if !slices.Equal(v.Weak.Flags, wantFlags) {
		t.Errorf("weak flags %v, want %v", v.Weak.Flags, wantFlags)
	}
	if !isTrue(v.Fallback.SupportsFallbackSCSV) {
		t.Errorf("fallback %v, want true", v.Fallback.SupportsFallbackSCSV)
	}
}

// startSNIServer serves the PKI's leaf to a client naming a.trawl.test and
// its self-signed certificate to any other.
func startSNIServer(t *testing.T, p *testPKI) *server {
	t.Helper()
	return startTLSServer(t, &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(hi *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if hi.ServerName == "a.trawl.test" {
				return &p.leaf, nil
			}
			return &p.self, nil
		},
	})
}

func TestProbeSNI(t *testing.T) {
	p := newTestPKI(t)
	srv := startSNIServer(t, p)
	cases := []struct {
		sni       string
		wantSHA   string
		self      bool
		trusted   bool
		matchHost bool
	}{
		{"a.trawl.test", sha256Hex(p.leafDER), false, true, true},
		{"", sha256Hex(p.selfDER), true, false, false},
		{"other.trawl.test", sha256Hex(p.selfDER), true, false, false},
	}
	for _, tc := range cases {
		t.Run("sni="+tc.sni, func(t *testing.T) {
			res := probeOK(t, testModule(Config{SNI: tc.sni}, p.roots), srv.port)
			ci, ok := res.Data["cert_info"].(*CertInfo)
			if !ok || len(ci.CertificateChain) == 0 {
				t.Fatalf("no cert_info: %s %s", res.Status, res.Error)
			}
			leaf := ci.CertificateChain[0]
			if leaf.SHA256Fingerprint != tc.wantSHA || leaf.SelfSigned != tc.self || ci.Trust.Trusted != tc.trusted ||
				ci.HostnameValidation.MatchesHostname != tc.matchHost {
				t.Errorf("leaf %s self %v trust %+v host %+v", leaf.SHA256Fingerprint, leaf.SelfSigned, ci.Trust, ci.HostnameValidation)
			}
			if tc.self {
				if !leaf.Expired || leaf.PublicKey != (PublicKey{Algorithm: "ECDSA", Bits: 384, Curve: "P-384"}) || ci.Trust.Error == "" {
					t.Errorf("self-signed leaf %+v trust %+v", leaf, ci.Trust)
				}
			}
		})
	}
}

// TestProbeSendsTheTargetsHostname: a target named by the task gets that
// name as SNI and in the certificate check; --ssl.sni overrides it.
func TestProbeSendsTheTargetsHostname(t *testing.T) {
	p := newTestPKI(t)
	srv := startSNIServer(t, p)
	for _, tc := range []struct {
		cfgSNI, hostname, wantName, wantSHA string
	}{
		{"", "a.trawl.test", "a.trawl.test", sha256Hex(p.leafDER)},
		{"other.trawl.test", "a.trawl.test", "other.trawl.test", sha256Hex(p.selfDER)},
	} {
		res := probeTargetOK(t, testModule(Config{SNI: tc.cfgSNI}, p.roots),
			probes.Target{IP: "127.0.0.1", Port: srv.port, Protocol: "tcp", Hostname: tc.hostname})
		ci, ok := res.Data["cert_info"].(*CertInfo)
		if !ok || len(ci.CertificateChain) == 0 {
			t.Fatalf("no cert_info: %s %s", res.Status, res.Error)
		}
		info, _ := res.Data["server_info"].(ServerInfo)
		if got := ci.CertificateChain[0].SHA256Fingerprint; got != tc.wantSHA || info.Hostname != tc.wantName ||
			ci.HostnameValidation.MatchesHostname != (tc.wantName == "a.trawl.test") {
			t.Errorf("sni %q hostname %q: leaf %s, server_info %+v, hostname check %+v", tc.cfgSNI, tc.hostname, got, info, ci.HostnameValidation)
		}
	}
}

func TestProbeFailures(t *testing.T) {
	plain := startServer(t, func(c net.Conn) {
		buf := make([]byte, 512)
		_, _ = c.Read(buf)
		_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"))
	})
	silent := startServer(t, func(c net.Conn) {
		buf := make([]byte, 512)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	})
	greeter := startServer(t, func(c net.Conn) { _, _ = c.Write([]byte("SSH-2.0-OpenSSH_9.2p1\r\n")) })
	closed := startServer(t, func(net.Conn) {})
	closedPort := closed.port
	_ = closed.ln.Close()

	cases := []struct {
		name string
		port int
		want probes.Status
	}{
		{"plain-text", plain.port, probes.StatusTLSError},
		{"greeting", greeter.port, probes.StatusTLSError},
		{"silent", silent.port, probes.StatusTimeout},
		{"closed", closedPort, probes.StatusRefused},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := testModule(Config{Timeout: 300 * time.Millisecond}, nil)
			start := time.Now()
			res := probeOK(t, m, tc.port)
			if res.Status != tc.want || res.Error == "" {
				t.Errorf("status %s (%q), want %s", res.Status, res.Error, tc.want)
			}
			if hs := res.Data["server_info"].(ServerInfo).Handshakes; hs > 1 {
				t.Errorf("%d handshakes, want one attempt", hs)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

func TestProbeHandshakeCap(t *testing.T) {
	p := newTestPKI(t)
	srv := startTLSServer(t, &tls.Config{Certificates: []tls.Certificate{p.leaf}})
	res := probeOK(t, testModule(Config{MaxHandshakes: 4}, p.roots), srv.port)
	info := res.Data["server_info"].(ServerInfo)
	if info.Handshakes != 4 || !info.HandshakeCapHit || srv.total.Load() != 4 {
		t.Errorf("handshakes %d cap %v server saw %d, want 4 true 4", info.Handshakes, info.HandshakeCapHit, srv.total.Load())
	}
	truncated := 0
	for _, r := range ciphersOf(t, res) {
		if r.Truncated {
			truncated++
		}
	}
	if truncated == 0 {
		t.Error("no version marked truncated")
	}
}

func TestProbeCanceled(t *testing.T) {
	p := newTestPKI(t)
	srv := startTLSServer(t, &tls.Config{Certificates: []tls.Certificate{p.leaf}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res, err := testModule(Config{}, nil).Probe(ctx, probes.Target{IP: "127.0.0.1", Port: srv.port})
	if err != nil || res.Status != probes.StatusCanceled {
		t.Errorf("status %s err %v, want canceled", res.Status, err)
	}
}

func TestProbeDeadlineMidScan(t *testing.T) {
	p := newTestPKI(t)
	// every handshake is slowed so the probe's deadline lands mid-scan
	srv := startServer(t, func(c net.Conn) {
		time.Sleep(30 * time.Millisecond)
		serveTLS(c, &tls.Config{Certificates: []tls.Certificate{p.leaf}})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := testModule(Config{}, nil).Probe(ctx, probes.Target{IP: "127.0.0.1", Port: srv.port})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("probe overran its deadline: %v", d)
	}
	if res.Status != probes.StatusTimeout || !strings.Contains(res.Error, "incomplete") {
		t.Errorf("status %s %q, want timeout, incomplete", res.Status, res.Error)
	}
	if _, ok := res.Data["cert_info"]; !ok {
		t.Error("partial result lost the chain of the default handshake")
	}
}

func isTrue(b *bool) bool  { return b != nil && *b }
func isFalse(b *bool) bool { return b != nil && !*b }

func sortedCopy(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func hexID(t *testing.T, s string) uint16 {
	t.Helper()
	b, err := hex.DecodeString(strings.TrimPrefix(s, "0x"))
	if err != nil || len(b) != 2 {
		t.Fatalf("bad id %q", s)
	}
	return uint16(b[0])<<8 | uint16(b[1])
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
