package probetest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ApacheBin is the Apache httpd binary Debian's apache2 package installs.
const ApacheBin = "/usr/sbin/apache2"

// apacheModules is where Debian keeps Apache's loadable modules.
const apacheModules = "/usr/lib/apache2/modules"

// ApacheProtocols and ApacheCiphers are what StartApache configures:
// TLS 1.0 to 1.2 only, and three suites in the server's order of
// preference. @SECLEVEL=0 lets Debian 12's OpenSSL negotiate TLS 1.0 and
// 1.1 (their MD5+SHA1 handshake signature is below security level 1).
var (
	ApacheProtocols = []string{"TLSv1", "TLSv1.1", "TLSv1.2"}
	ApacheCiphers   = []string{"ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-SHA", "AES128-SHA"}
)

// TestCA is a certificate authority generated for one harness and a
// server certificate it signed.
type TestCA struct {
	CA, Leaf     *x509.Certificate
	CertPath     string // the leaf, PEM
	ChainPath    string // the CA certificate, PEM (sent after the leaf)
	KeyPath      string // the leaf's private key, PKCS#8 PEM
	LeafKeyBits  int
	LeafHostname string
}

// NewTestCA writes an RSA 2048 CA and an RSA 2048 server certificate for
// hostname and the target address, signed by that CA, into dir.
func (h *Harness) NewTestCA(dir, hostname string) *TestCA {
	h.t.Helper()
	ca, err := newTestCA(dir, hostname, net.IP(h.targetIP.AsSlice()))
	if err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	return ca
}

func newTestCA(dir, hostname string, ip net.IP) (*TestCA, error) {
	const bits = 2048
	now := time.Now()
	caKey, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		return nil, fmt.Errorf("cannot generate the CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "trawl probetest CA", Organization: []string{"trawl"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("cannot sign the CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("cannot parse the CA certificate: %w", err)
	}
	leafKey, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		return nil, fmt.Errorf("cannot generate the server key: %w", err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: hostname},
		DNSNames: []string{hostname}, IPAddresses: []net.IP{ip},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("cannot sign the server certificate: %w", err)
	}
	leafCert, err := x509.ParseCertificate(leafDER)
	if err != nil {
		return nil, fmt.Errorf("cannot parse the server certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		return nil, fmt.Errorf("cannot encode the server key: %w", err)
	}
	ca := &TestCA{
		CA: caCert, Leaf: leafCert, LeafKeyBits: bits, LeafHostname: hostname,
		CertPath:  filepath.Join(dir, hostname+".crt"),
		ChainPath: filepath.Join(dir, "ca.crt"),
		KeyPath:   filepath.Join(dir, hostname+".key"),
	}
	for _, f := range []struct {
		path, typ string
		der       []byte
		mode      os.FileMode
	}{
		{ca.CertPath, "CERTIFICATE", leafDER, 0o644},
		{ca.ChainPath, "CERTIFICATE", caDER, 0o644},
		{ca.KeyPath, "PRIVATE KEY", keyDER, 0o600},
	} {
		if err := os.WriteFile(f.path, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), f.mode); err != nil {
			return nil, fmt.Errorf("cannot write %s: %w", f.path, err)
		}
	}
	return ca, nil
}

// serial is a random positive 64-bit certificate serial number.
func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 63))
	if err != nil || n.Sign() == 0 {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

// Apache is a running Apache httpd with its TLS configuration.
type Apache struct {
	*Daemon
	TLS *TestCA
}

// StartApache runs Apache httpd (Debian's apache2, event MPM) in the
// foreground with HTTP on httpPort and HTTPS on httpsPort: ApacheProtocols,
// ApacheCiphers in server order, and a certificate from a fresh TestCA sent
// with the CA certificate. Roles: http, https.
func (h *Harness) StartApache(httpPort, httpsPort int) *Apache {
	h.t.Helper()
	Require(h.t, ApacheBin)
	dir := h.shareableDir("apache")
	ca := h.NewTestCA(dir, "apache.test")
	docs := filepath.Join(dir, "htdocs")
	if err := os.MkdirAll(docs, 0o755); err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	h.writeFile(filepath.Join(docs, "index.html"), "trawl\n")
	ip := h.targetIP.String()
	var mods string
	for _, m := range []string{"mpm_event", "authz_core", "dir", "socache_shmcb", "ssl"} {
		mods += fmt.Sprintf("LoadModule %s_module %s/mod_%s.so\n", m, apacheModules, m)
	}
	conf := fmt.Sprintf(`ServerRoot %[1]s
%[2]sServerName apache.test
PidFile %[1]s/apache.pid
DefaultRuntimeDir %[1]s
Mutex file:%[1]s default
ErrorLog /dev/stderr
LogLevel warn
User www-data
Group www-data
StartServers 1
ServerLimit 1
ThreadsPerChild 25
MaxRequestWorkers 25
Listen %[3]s:%[4]d
Listen %[3]s:%[5]d
DocumentRoot %[6]s
<Directory %[6]s>
  Require all granted
</Directory>
SSLSessionCache shmcb:%[1]s/ssl_scache(512000)
<VirtualHost %[3]s:%[5]d>
  ServerName apache.test
  SSLEngine on
  SSLCertificateFile %[7]s
  SSLCertificateChainFile %[8]s
  SSLCertificateKeyFile %[9]s
  SSLProtocol -all %[10]s
  SSLCipherSuite %[11]s:@SECLEVEL=0
  SSLHonorCipherOrder on
</VirtualHost>
`, dir, mods, ip, httpPort, httpsPort, docs, ca.CertPath, ca.ChainPath, ca.KeyPath,
		strings.Join(prefixEach("+", ApacheProtocols), " "), strings.Join(ApacheCiphers, ":"))
	path := filepath.Join(dir, "apache2.conf")
	h.writeFile(path, conf)
	s := h.Start("apache2", []string{ApacheBin, "-f", path, "-DFOREGROUND"}, h.DialReady(httpPort, ""))
	// the TLS listener opens with the HTTP one; wait for it all the same
	h.waitPort(s, httpsPort)
	return &Apache{Daemon: h.daemon(s, "apache2", map[string]int{"http": httpPort, "https": httpsPort}), TLS: ca}
}

// waitPort waits until port accepts connections or fails the test.
func (h *Harness) waitPort(s *Server, port int) {
	h.t.Helper()
	h.waitPortWithin(s, port, StartTimeout)
}

// waitPortWithin is waitPort for servers slower to start than StartTimeout.
func (h *Harness) waitPortWithin(s *Server, port int, timeout time.Duration) {
	h.t.Helper()
	ready := h.DialReady(port, "")
	deadline := time.Now().Add(timeout)
	try := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return ready(ctx)
	}
	for err := try(); err != nil; err = try() {
		if time.Now().After(deadline) {
			h.t.Fatalf("probetest: %s port %d: %v\n%s", s.Name, port, err, s.Output())
		}
		select {
		case <-s.Exited():
			h.t.Fatalf("probetest: %s exited (%v) before port %d was ready\n%s", s.Name, s.err, port, s.Output())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func prefixEach(p string, list []string) []string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = p + s
	}
	return out
}
