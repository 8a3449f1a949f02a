package ssl

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"trawl/probes"
)

// startOpenSSL runs `openssl s_server` on 127.0.0.1 with args and returns
// its port; cleanup kills it.
func startOpenSSL(t *testing.T, args ...string) int {
	t.Helper()
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed (Debian package openssl)")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, append([]string{"s_server", "-accept", "127.0.0.1:0"}, args...)...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	// s_server quits when its stdin ends: keep it open until cleanup
	stdin, err := cmd.StdinPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("cannot start openssl s_server: %v", err)
	}
	t.Cleanup(func() { _ = stdin.Close(); cancel(); _ = cmd.Wait() })
	ports := make(chan int, 1)
	go func() {
		sc := bufio.NewScanner(out)
		re := regexp.MustCompile(`ACCEPT 127\.0\.0\.1:(\d+)`)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				p, _ := strconv.Atoi(m[1])
				ports <- p
			}
		}
	}()
	select {
	case p := <-ports:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("openssl s_server did not report its port")
	}
	return 0
}

func TestProbeOpenSSLTLS10SmallDH(t *testing.T) {
	p := newTestPKI(t)
	dir := t.TempDir()
	keyDER, err := x509MarshalPKCS8(p.leaf.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der ...[]byte) string {
		var b []byte
		for _, d := range der {
			b = append(b, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	certPath := write("cert.pem", "CERTIFICATE", p.leafDER)
	chainPath := write("chain.pem", "CERTIFICATE", p.caDER)
	keyPath := write("key.pem", "PRIVATE KEY", keyDER)
	dhPath := filepath.Join(dir, "dh.pem")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// RFC 5114's 1024-bit group: a small DH prime without a slow generation
	if out, err := exec.CommandContext(ctx, "openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "dh_rfc5114:1", "-out", dhPath).CombinedOutput(); err != nil {
		t.Skipf("openssl cannot write RFC 5114 DH parameters: %v %s", err, out)
	}
	port := startOpenSSL(t, "-cert", certPath, "-cert_chain", chainPath, "-key", keyPath, "-dhparam", dhPath, "-tls1",
		"-cipher", "DHE-RSA-AES128-SHA:AES256-SHA:@SECLEVEL=0")

	res := probeOK(t, testModule(Config{}, p.roots), port)
	if res.Status != probes.StatusSuccess {
		t.Fatalf("status %s %s", res.Status, res.Error)
	}
	c := ciphersOf(t, res)
	got := sortedCopy(names(c["tlsv1"].AcceptedCipherList))
	if want := []string{"TLS_DHE_RSA_WITH_AES_128_CBC_SHA", "TLS_RSA_WITH_AES_256_CBC_SHA"}; !slices.Equal(got, want) {
		t.Errorf("tlsv1 accepted %v, want %v", got, want)
	}
	for _, k := range []string{"sslv2", "sslv3", "tlsv1_1", "tlsv1_2", "tlsv1_3"} {
		if c[k].Supported {
			t.Errorf("%s supported", k)
		}
	}
	// s_server keeps the client's order unless told -serverpref
	if c["tlsv1"].Preference != "client" || c["tlsv1"].PreferredCipher != nil {
		t.Errorf("preference %q %+v", c["tlsv1"].Preference, c["tlsv1"].PreferredCipher)
	}
	v := res.Data["vulnerabilities"].(Vulnerabilities)
	if !v.Weak.SmallDH || v.Weak.MinDHBits != 1024 || !v.Weak.CBCInTLS10 || !v.Weak.TLSv1_0 {
		t.Errorf("weak %+v", v.Weak)
	}
	if !isTrue(v.Renegotiation.SupportsSecureRenegotiation) || !isFalse(v.Compression.SupportsCompression) || v.Fallback.SupportsFallbackSCSV != nil {
		t.Errorf("vulnerabilities %s", mustJSON(t, v))
	}
	info := res.Data["server_info"].(ServerInfo)
	if info.HighestVersion != "TLSv1" || info.Default.Version != "TLSv1" || info.Default.Cipher != tls.CipherSuiteName(tls.TLS_RSA_WITH_AES_256_CBC_SHA) {
		t.Errorf("server_info %+v", info)
	}
	ci := res.Data["cert_info"].(*CertInfo)
	if len(ci.CertificateChain) != 2 || ci.CertificateChain[0].SHA256Fingerprint != sha256Hex(p.leafDER) || !ci.Trust.Trusted {
		t.Errorf("cert_info %+v", ci.Trust)
	}
}
