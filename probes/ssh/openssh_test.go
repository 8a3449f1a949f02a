package ssh

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"trawl/probes"
	"trawl/probes/probetest"
)

// pseudoKex are entries sshd appends to its kex list that are flags, not
// algorithms (sshd -T does not show them).
var pseudoKex = []string{"kex-strict-s-v00@openssh.com", "ext-info-s"}

// TestOpenSSH probes Debian's sshd, as Debian configures it and hardened,
// and checks every field against what OpenSSH's own tools say: dpkg for
// the version, sshd -T for the algorithm lists, ssh-keygen for the keys.
func TestOpenSSH(t *testing.T) {
	h := probetest.New(t)
	pkgVersion := probetest.PackageVersion(t, "openssh-server")
	upstream, revision := probetest.UpstreamVersion(pkgVersion)
	servers := []*probetest.SSHD{
		h.StartSSHD(22, probetest.SSHDDebianDefaults),
		h.StartSSHD(2222, probetest.SSHDHardened),
	}
	for _, srv := range servers {
		t.Run(srv.Profile.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			res, err := New(Config{}).Probe(ctx, probes.Target{IP: h.IP().String(), Port: srv.Port, Protocol: "tcp"})
			if err != nil || res.Status != probes.StatusSuccess || res.Error != "" {
				t.Fatalf("status %q error %q err %v", res.Status, res.Error, err)
			}
			if e, ok := res.Data["errors"]; ok {
				t.Fatalf("step errors %v", e)
			}
			checkIdentification(t, res, upstream, revision)
			checkAlgorithms(t, res, srv)
			checkOpenSSHCyphers(t, res.Data["cyphers"].([]Cypher), srv)
			checkAuth(t, res, srv)
			if !strings.HasPrefix(string(res.Raw), res.Data["banner"].(string)+"\r\n") {
				t.Fatalf("raw evidence %q", res.Raw)
			}
		})
	}
}

func checkIdentification(t *testing.T, res probes.Result, upstream, revision string) {
	t.Helper()
	want := "SSH-2.0-OpenSSH_" + upstream + " Debian-" + revision
	if res.Data["banner"] != want {
		t.Fatalf("banner %q, want %q (from dpkg)", res.Data["banner"], want)
	}
	id := res.Data["identification"].(Identification)
	if id.ProtocolVersion != "2.0" || id.Software != "OpenSSH_"+upstream || id.Comments != "Debian-"+revision ||
		id.Product != "OpenSSH" || id.Version != upstream || id.OSDistribution != "Debian" ||
		!slices.Contains(id.CPE, "cpe:/a:openbsd:openssh:"+upstream) {
		t.Fatalf("identification %+v", id)
	}
}

func list(s string) []string { return strings.Split(s, ",") }

func checkAlgorithms(t *testing.T, res probes.Result, srv *probetest.SSHD) {
	t.Helper()
	eff := srv.Effective
	k := res.Data["kexinit"].(KexInit)
	algs := res.Data["algorithms"].(Algorithms)

	wantKex := list(eff["kexalgorithms"])
	if !slices.Equal(algs.Kex[:min(len(wantKex), len(algs.Kex))], wantKex) {
		t.Fatalf("kex %v, sshd -T %v", algs.Kex, wantKex)
	}
	for _, extra := range algs.Kex[len(wantKex):] {
		if !slices.Contains(pseudoKex, extra) {
			t.Fatalf("kex %v: unexpected %q after sshd -T's list", algs.Kex, extra)
		}
	}
	f := res.Data["features"].(Features)
	if f.StrictKex != slices.Contains(algs.Kex, "kex-strict-s-v00@openssh.com") || !f.ExtInfo {
		t.Fatalf("features %+v for kex %v", f, algs.Kex)
	}
	var pq []string
	for _, a := range wantKex {
		if strings.HasPrefix(a, "sntrup") || strings.HasPrefix(a, "mlkem") {
			pq = append(pq, a)
		}
	}
	if f.PostQuantumKex != (len(pq) > 0) || !slices.Equal(f.PostQuantumKexAlgorithms, pq) {
		t.Fatalf("post-quantum %+v, want %v", f, pq)
	}

	comp := []string{"none"}
	if eff["compression"] != "no" {
		comp = append(comp, "zlib@openssh.com")
	}
	for name, c := range map[string]struct{ got, want []string }{
		"encryption c2s":  {k.EncryptionAlgorithmsClientToServer, list(eff["ciphers"])},
		"encryption s2c":  {k.EncryptionAlgorithmsServerToClient, list(eff["ciphers"])},
		"encryption":      {algs.Encryption, list(eff["ciphers"])},
		"mac c2s":         {k.MACAlgorithmsClientToServer, list(eff["macs"])},
		"mac":             {algs.MAC, list(eff["macs"])},
		"compression c2s": {k.CompressionAlgorithmsClientToServer, comp},
		"compression":     {algs.Compression, comp},
		"server_host_key": {algs.ServerHostKey, offeredHostKeyAlgs(eff["hostkeyalgorithms"], srv.HostKeys)},
	} {
		if !slices.Equal(c.got, c.want) {
			t.Errorf("%s: got %v, want %v", name, c.got, c.want)
		}
	}
	hs := strings.Join(algs.Kex, ",") + ";" + strings.Join(algs.Encryption, ",") + ";" +
		strings.Join(algs.MAC, ",") + ";" + strings.Join(algs.Compression, ",")
	sum := md5.Sum([]byte(hs))
	if got := res.Data["hassh"].(HASSH); got != (HASSH{HASSH: hex.EncodeToString(sum[:]), HASSHAlgorithms: hs}) {
		t.Fatalf("hassh %+v", got)
	}
}

// offeredHostKeyAlgs is what sshd puts in its KEXINIT: per host key, in
// the order of the HostKey lines, the configured algorithms for that key.
func offeredHostKeyAlgs(configured string, keys []probetest.HostKey) []string {
	keyTypeOf := func(alg string) string {
		if strings.HasPrefix(alg, "rsa-sha2-") && !strings.Contains(alg, "cert") {
			return "ssh-rsa"
		}
		return alg
	}
	var out []string
	for _, k := range keys {
		for _, a := range list(configured) {
			if keyTypeOf(a) == k.Type {
				out = append(out, a)
			}
		}
	}
	return out
}

func checkOpenSSHCyphers(t *testing.T, got []Cypher, srv *probetest.SSHD) {
	t.Helper()
	if len(got) != len(srv.HostKeys) {
		t.Fatalf("%d cyphers for %d host keys: %+v", len(got), len(srv.HostKeys), got)
	}
	for _, k := range srv.HostKeys {
		i := slices.IndexFunc(got, func(c Cypher) bool { return c.Cypher == k.Type })
		if i < 0 {
			t.Fatalf("host key %s missing from %+v", k.Type, got)
		}
		c := got[i]
		want := Cypher{Cypher: k.Type, Key: k.Base64, Length: k.Bits, Fingerprint: k.FingerprintMD5,
			FingerprintSHA256: k.FingerprintSHA256, HostKeyAlgorithm: c.HostKeyAlgorithm,
			HostKeyAlgorithms: c.HostKeyAlgorithms, SignatureVerified: true}
		if !reflect.DeepEqual(c, want) {
			t.Fatalf("cypher\n got %+v\nwant %+v (ssh-keygen)", c, want)
		}
		if k.Type == "ssh-rsa" && (c.HostKeyAlgorithm != "rsa-sha2-512" ||
			!slices.Equal(c.HostKeyAlgorithms, []string{"rsa-sha2-512", "rsa-sha2-256"})) {
			t.Fatalf("rsa algorithms %q %v", c.HostKeyAlgorithm, c.HostKeyAlgorithms)
		}
	}
}

func checkAuth(t *testing.T, res probes.Result, srv *probetest.SSHD) {
	t.Helper()
	// OpenSSH lists methods in its own table order (auth2.c).
	var want []string
	for _, m := range []struct{ option, method string }{
		{"pubkeyauthentication", "publickey"},
		{"gssapiauthentication", "gssapi-with-mic"},
		{"passwordauthentication", "password"},
		{"kbdinteractiveauthentication", "keyboard-interactive"},
		{"hostbasedauthentication", "hostbased"},
	} {
		if srv.Effective[m.option] == "yes" {
			want = append(want, m.method)
		}
	}
	auth := res.Data["auth"].(Auth)
	if !slices.Equal(auth.Methods, want) || auth.NoneAccepted || auth.PartialSuccess {
		t.Fatalf("auth %+v, want methods %v (sshd -T)", auth, want)
	}
	// OpenSSH's server-sig-algs is every signature algorithm it knows, which
	// its client lists with ssh -Q sig.
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Logf("ssh (openssh-client) missing: server-sig-algs not compared")
		return
	}
	out, err := exec.Command("ssh", "-Q", "sig").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := res.Data["server_sig_algs"].([]string), strings.Fields(string(out)); !slices.Equal(got, want) {
		t.Fatalf("server-sig-algs %v, ssh -Q sig %v", got, want)
	}
}

// BenchmarkProbeOpenSSH measures whole probes (banner, KEXINIT, every host
// key, auth methods) per second against Debian's sshd in a namespace.
func BenchmarkProbeOpenSSH(b *testing.B) {
	h := probetest.New(b)
	srv := h.StartSSHD(22, probetest.SSHDDebianDefaults)
	m := New(Config{})
	target := probes.Target{IP: h.IP().String(), Port: srv.Port}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		res, err := m.Probe(ctx, target)
		cancel()
		if err != nil || res.Status != probes.StatusSuccess {
			b.Fatalf("status %q %s %v", res.Status, res.Error, err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "probes/s")
	b.ReportMetric(float64(b.N*(len(srv.HostKeys)))/b.Elapsed().Seconds(), "handshakes/s")
}
