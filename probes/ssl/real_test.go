package ssl

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"trawl/probes"
	"trawl/probes/probetest"
)

// The tests below run the module against real Debian servers in a target
// namespace and check it against what the harness configured and
// generated: versions, suites (as OpenSSL itself expands the configured
// cipher strings), certificates and the trust verdict.

func probeReal(t *testing.T, m *Module, h *probetest.Harness, port int) probes.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := m.Probe(ctx, probes.Target{IP: h.IP().String(), Port: port, Protocol: "tcp"})
	if err != nil {
		t.Fatalf("port %d: Probe returned an error: %v", port, err)
	}
	if res.Status != probes.StatusSuccess {
		t.Fatalf("port %d: status %s (%s)", port, res.Status, res.Error)
	}
	return res
}

// opensslSuites expands a cipher string the way the server's OpenSSL does
// for one protocol version (versionFlag: -tls1, -tls1_1, -tls1_2, -tls1_3)
// and returns the OpenSSL names in the server's order, keeping those whose
// "Au=" column is one of auth (any when auth is empty).
func opensslSuites(t *testing.T, versionFlag, cipherString string, auth ...string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "openssl", "ciphers", "-v", "-s", versionFlag, cipherString).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl ciphers %s %s: %v %s", versionFlag, cipherString, err, out)
	}
	var names []string
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		if len(auth) == 0 || slices.Contains(auth, strings.TrimPrefix(f[3], "Au=")) {
			names = append(names, f[0])
		}
	}
	return names
}

// offerable keeps the suites the module offers in crafted hellos (TLS 1.3
// suites are offered by IANA name) and reports the rest.
func offerable(t *testing.T, names []string) []string {
	t.Helper()
	var out, missing []string
	for _, n := range names {
		found := false
		for _, s := range suiteTable {
			if s.openssl == n || s.iana == n {
				found = true
				break
			}
		}
		if found {
			out = append(out, n)
		} else {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		t.Logf("suites the server accepts that the module does not offer: %v", missing)
	}
	return out
}

func opensslNames(list []Cipher) []string {
	out := make([]string, 0, len(list))
	for _, c := range list {
		out = append(out, c.OpenSSLName)
	}
	return out
}

func readPEMCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// checkVersions asserts exactly the versions in want are supported.
func checkVersions(t *testing.T, c map[string]*VersionResult, want ...string) {
	t.Helper()
	for _, v := range versions {
		if got := c[v.key].Supported; got != slices.Contains(want, v.key) {
			t.Errorf("%s supported = %v, want %v (error %q)", v.key, got, !got, c[v.key].Error)
		}
	}
}

func checkSameSet(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(sortedCopy(got), sortedCopy(want)) {
		t.Errorf("%s: accepted %v, want %v", what, got, want)
	}
}

func TestRealNginx(t *testing.T) {
	probetest.Require(t, "nginx", "openssl")
	h := probetest.New(t)
	h.StartNginx(80, 443)
	cert := readPEMCert(t, filepath.Join(h.Dir(), "nginx", "nginx.test.crt"))
	res := probeReal(t, testModule(Config{Timeout: 3 * time.Second}, nil), h, 443)

	c := ciphersOf(t, res)
	checkVersions(t, c, "tlsv1_2", "tlsv1_3")
	// nginx's default ssl_ciphers is HIGH:!aNULL:!MD5; an ECDSA key
	// leaves the ECDSA-authenticated suites for TLS 1.2
	checkSameSet(t, "tlsv1_2", opensslNames(c["tlsv1_2"].AcceptedCipherList),
		offerable(t, opensslSuites(t, "-tls1_2", "HIGH:!aNULL:!MD5", "ECDSA")))
	checkSameSet(t, "tlsv1_3", names(c["tlsv1_3"].AcceptedCipherList),
		offerable(t, opensslSuites(t, "-tls1_3", "HIGH:!aNULL:!MD5")))
	for _, s := range c["tlsv1_2"].AcceptedCipherList {
		// the module offers x25519 first and nginx takes the client's group
		if s.KeyExchange == nil || *s.KeyExchange != (KeyExchange{Type: "ECDHE_ECDSA", Group: "x25519", Bits: 253}) {
			t.Errorf("tlsv1_2 %s: key exchange %+v, want ECDHE_ECDSA x25519", s.Name, s.KeyExchange)
		}
	}

	info := res.Data["server_info"].(ServerInfo)
	if info.HighestVersion != "TLSv1.3" || info.Default.Version != "TLSv1.3" || info.TLSWrappedProtocol != "plain_tls" || info.JA3S == "" {
		t.Errorf("server_info %s", mustJSON(t, info))
	}

	ci := res.Data["cert_info"].(*CertInfo)
	if len(ci.CertificateChain) != 1 {
		t.Fatalf("chain of %d certificates, nginx sends its one", len(ci.CertificateChain))
	}
	leaf := ci.CertificateChain[0]
	if leaf.SHA256Fingerprint != sha256Hex(cert.Raw) || leaf.SPKISHA256 != sha256Hex(cert.RawSubjectPublicKeyInfo) ||
		leaf.SerialNumber != cert.SerialNumber.String() || leaf.Subject != "CN=nginx.test" {
		t.Errorf("leaf %s", mustJSON(t, leaf))
	}
	if leaf.PublicKey != (PublicKey{Algorithm: "ECDSA", Bits: 256, Curve: "P-256"}) || leaf.SignatureAlgorithm != "ECDSA-SHA256" {
		t.Errorf("key %+v, signature %s", leaf.PublicKey, leaf.SignatureAlgorithm)
	}
	if !slices.Equal(leaf.SANs.DNS, []string{"nginx.test"}) || !slices.Equal(leaf.SANs.IP, []string{h.IP().String()}) {
		t.Errorf("SANs %+v", leaf.SANs)
	}
	if !leaf.SelfSigned || leaf.Expired || leaf.IsCA {
		t.Errorf("self-signed %v expired %v ca %v", leaf.SelfSigned, leaf.Expired, leaf.IsCA)
	}
	if ci.Trust.Trusted || !strings.Contains(ci.Trust.Error, "unknown authority") {
		t.Errorf("trust %+v, want untrusted: unknown authority", ci.Trust)
	}
	if !ci.HostnameValidation.MatchesIP || ci.HostnameValidation.IP != h.IP().String() {
		t.Errorf("hostname validation %+v", ci.HostnameValidation)
	}

	v := res.Data["vulnerabilities"].(Vulnerabilities)
	if v.Weak.TLSv1_0 || v.Weak.TLSv1_1 || v.Weak.CBCInTLS10 || v.Weak.RC4 || v.Weak.SWEET32 || len(v.Weak.Flags) != 0 {
		t.Errorf("weak %+v", v.Weak)
	}
	// nginx on OpenSSL 3 refuses client-initiated renegotiation
	t.Logf("client renegotiation: %s", v.Renegotiation.ClientRenegotiationReason)
	if !isTrue(v.Renegotiation.SupportsSecureRenegotiation) || !isFalse(v.Compression.SupportsCompression) ||
		isTrue(v.Heartbleed.VulnerableToHeartbleed) || !isFalse(v.Renegotiation.AcceptsClientRenegotiation) ||
		!isFalse(v.Renegotiation.AcceptsInsecureRenegotiation) {
		t.Errorf("vulnerabilities %s", mustJSON(t, v))
	}
}

func TestRealApache(t *testing.T) {
	probetest.Require(t, probetest.ApacheBin, "openssl")
	h := probetest.New(t)
	a := h.StartApache(80, 443)
	cipherString := strings.Join(probetest.ApacheCiphers, ":") + ":@SECLEVEL=0"
	m := testModule(Config{Timeout: 3 * time.Second, SNI: a.TLS.LeafHostname}, nil)
	res := probeReal(t, m, h, 443)

	c := ciphersOf(t, res)
	checkVersions(t, c, "tlsv1", "tlsv1_1", "tlsv1_2")
	for _, v := range []struct{ key, flag string }{{"tlsv1", "-tls1"}, {"tlsv1_1", "-tls1_1"}, {"tlsv1_2", "-tls1_2"}} {
		want := opensslSuites(t, v.flag, cipherString)
		vr := c[v.key]
		checkSameSet(t, v.key, opensslNames(vr.AcceptedCipherList), want)
		// SSLHonorCipherOrder on: the first configured suite usable in
		// the version wins
		if vr.Preference != "server" || vr.PreferredCipher == nil || vr.PreferredCipher.OpenSSLName != want[0] {
			t.Errorf("%s: preference %q preferred %+v, want server, %s", v.key, vr.Preference, vr.PreferredCipher, want[0])
		}
	}

	info := res.Data["server_info"].(ServerInfo)
	if info.HighestVersion != "TLSv1.2" || info.Default.Version != "TLSv1.2" || info.Hostname != a.TLS.LeafHostname {
		t.Errorf("server_info %s", mustJSON(t, info))
	}

	ci := res.Data["cert_info"].(*CertInfo)
	if len(ci.CertificateChain) != 2 {
		t.Fatalf("chain of %d certificates, want leaf and CA", len(ci.CertificateChain))
	}
	leaf, ca := ci.CertificateChain[0], ci.CertificateChain[1]
	if leaf.SHA256Fingerprint != sha256Hex(a.TLS.Leaf.Raw) || ca.SHA256Fingerprint != sha256Hex(a.TLS.CA.Raw) ||
		leaf.SerialNumber != a.TLS.Leaf.SerialNumber.String() || leaf.Issuer != a.TLS.CA.Subject.String() {
		t.Errorf("chain %s", mustJSON(t, ci.CertificateChain))
	}
	if leaf.PublicKey != (PublicKey{Algorithm: "RSA", Bits: a.TLS.LeafKeyBits}) || leaf.SelfSigned || !ca.SelfSigned || !ca.IsCA {
		t.Errorf("leaf key %+v self-signed %v; CA self-signed %v is-ca %v", leaf.PublicKey, leaf.SelfSigned, ca.SelfSigned, ca.IsCA)
	}
	if !slices.Equal(leaf.SANs.DNS, []string{a.TLS.LeafHostname}) || !slices.Equal(leaf.SANs.IP, []string{h.IP().String()}) {
		t.Errorf("SANs %+v", leaf.SANs)
	}
	if ci.Trust.Trusted || !strings.Contains(ci.Trust.Error, "unknown authority") {
		t.Errorf("trust %+v, want untrusted: unknown authority", ci.Trust)
	}
	if !ci.HostnameValidation.MatchesHostname || !ci.HostnameValidation.MatchesIP {
		t.Errorf("hostname validation %+v", ci.HostnameValidation)
	}

	v := res.Data["vulnerabilities"].(Vulnerabilities)
	if !v.Weak.TLSv1_0 || !v.Weak.TLSv1_1 || !v.Weak.CBCInTLS10 || v.Weak.RC4 || v.Weak.SWEET32 || v.Weak.Null || v.Weak.Export {
		t.Errorf("weak %+v", v.Weak)
	}
	// mod_ssl on OpenSSL 3 refuses client-initiated renegotiation
	t.Logf("client renegotiation: %s", v.Renegotiation.ClientRenegotiationReason)
	if r := v.Renegotiation; !isTrue(r.SupportsSecureRenegotiation) || !isFalse(r.AcceptsClientRenegotiation) || !isFalse(r.AcceptsInsecureRenegotiation) {
		t.Errorf("renegotiation %s", mustJSON(t, r))
	}

	// trusting the test CA turns the verdict
	roots := x509.NewCertPool()
	roots.AddCert(a.TLS.CA)
	trusting := testModule(Config{Timeout: 3 * time.Second, SNI: a.TLS.LeafHostname}, roots)
	res = probeReal(t, trusting, h, 443)
	if ci := res.Data["cert_info"].(*CertInfo); !ci.Trust.Trusted || ci.Trust.Error != "" {
		t.Errorf("with the test CA as root: trust %+v", ci.Trust)
	}
}

func TestRealDovecot(t *testing.T) {
	probetest.Require(t, "dovecot")
	h := probetest.New(t)
	d := h.StartDovecot(143, 993, 110, 995)
	m := testModule(Config{Timeout: 3 * time.Second, StartTLS: StartTLSAuto}, nil)
	var fingerprint string
	for _, c := range []struct {
		role, wrapped, greeting string
	}{
		{"imaps", "plain_tls", ""},
		{"pop3s", "plain_tls", ""},
		{"imap", "starttls_imap", "* OK"},
		{"pop3", "starttls_pop3", "+OK"},
	} {
		t.Run(c.role, func(t *testing.T) {
			res := probeReal(t, m, h, d.Ports[c.role])
			info := res.Data["server_info"].(ServerInfo)
			if info.TLSWrappedProtocol != c.wrapped || !strings.HasPrefix(info.StartTLSGreeting, c.greeting) {
				t.Errorf("wrapped %q greeting %q", info.TLSWrappedProtocol, info.StartTLSGreeting)
			}
			// dovecot 2.3's ssl_min_protocol is TLSv1.2
			checkVersions(t, ciphersOf(t, res), "tlsv1_2", "tlsv1_3")
			ci := res.Data["cert_info"].(*CertInfo)
			leaf := ci.CertificateChain[0]
			if leaf.PublicKey.Curve != "P-256" || !leaf.SelfSigned || !slices.Equal(leaf.SANs.DNS, []string{"mail.test"}) ||
				ci.Trust.Trusted || !strings.Contains(ci.Trust.Error, "unknown authority") {
				t.Errorf("leaf %s trust %+v", mustJSON(t, leaf), ci.Trust)
			}
			// one certificate on every port, STARTTLS or not
			if fingerprint == "" {
				fingerprint = leaf.SHA256Fingerprint
			} else if leaf.SHA256Fingerprint != fingerprint {
				t.Errorf("fingerprint %s differs from the other ports' %s", leaf.SHA256Fingerprint, fingerprint)
			}
		})
	}
}

func TestRealEximSTARTTLS(t *testing.T) {
	probetest.Require(t, "exim4")
	h := probetest.New(t)
	e := h.StartEximTLS(25)
	cert := readPEMCert(t, e.CertPath)
	res := probeReal(t, testModule(Config{Timeout: 3 * time.Second, StartTLS: StartTLSAuto}, nil), h, 25)
	info := res.Data["server_info"].(ServerInfo)
	if info.TLSWrappedProtocol != "starttls_smtp" || !strings.HasPrefix(info.StartTLSGreeting, "220 ") ||
		!strings.Contains(info.StartTLSGreeting, "Exim "+e.Version) {
		t.Errorf("wrapped %q greeting %q, want starttls_smtp and Exim %s", info.TLSWrappedProtocol, info.StartTLSGreeting, e.Version)
	}
	if info.HighestVersion == "" || info.Default.Version == "" {
		t.Errorf("server_info %s", mustJSON(t, info))
	}
	ci := res.Data["cert_info"].(*CertInfo)
	leaf := ci.CertificateChain[0]
	if leaf.SHA256Fingerprint != sha256Hex(cert.Raw) || leaf.PublicKey.Curve != "P-256" || !leaf.SelfSigned ||
		ci.Trust.Trusted || !strings.Contains(ci.Trust.Error, "unknown authority") {
		t.Errorf("leaf %s trust %+v", mustJSON(t, leaf), ci.Trust)
	}
}

// TestRealPostfixSTARTTLS: Postfix's smtpd (Debian's package, unpacked)
// upgraded with STARTTLS on the submission port.
func TestRealPostfixSTARTTLS(t *testing.T) {
	h := probetest.New(t)
	p := h.StartPostfix(587)
	cert := readPEMCert(t, p.CertPath)
	res := probeReal(t, testModule(Config{Timeout: 3 * time.Second, StartTLS: StartTLSAuto}, nil), h, 587)
	info := res.Data["server_info"].(ServerInfo)
	if info.TLSWrappedProtocol != "starttls_smtp" || info.StartTLSGreeting != "220 "+p.Hostname+" ESMTP Postfix (Debian/GNU)" {
		t.Errorf("wrapped %q greeting %q, want starttls_smtp and Postfix's banner", info.TLSWrappedProtocol, info.StartTLSGreeting)
	}
	if info.HighestVersion != "TLSv1.3" || info.Default.Version != "TLSv1.3" {
		t.Errorf("server_info %s", mustJSON(t, info))
	}
	ci := res.Data["cert_info"].(*CertInfo)
	leaf := ci.CertificateChain[0]
	if leaf.SHA256Fingerprint != sha256Hex(cert.Raw) || leaf.PublicKey.Curve != "P-256" || !leaf.SelfSigned || ci.Trust.Trusted {
		t.Errorf("leaf %s trust %+v", mustJSON(t, leaf), ci.Trust)
	}
}
