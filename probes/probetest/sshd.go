package probetest

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// SSHDPath is the OpenSSH server the harness runs.
const SSHDPath = "/usr/sbin/sshd"

// KeySpec is one host key to generate: an ssh-keygen type and size.
type KeySpec struct {
	Type string // rsa, ecdsa, ed25519
	Bits int    // 0: ssh-keygen's default
}

// SSHDProfile describes one sshd instance: its host keys and the extra
// sshd_config lines that shape what it offers.
type SSHDProfile struct {
	Name    string
	Keys    []KeySpec
	Options []string
}

// SSHDDebianDefaults is sshd as Debian ships it: the three host keys the
// package generates (RSA 3072, ECDSA P-256, Ed25519) and Debian's
// sshd_config settings, with OpenSSH's default algorithm lists.
var SSHDDebianDefaults = SSHDProfile{
	Name: "debian-defaults",
	Keys: []KeySpec{{"rsa", 3072}, {"ecdsa", 256}, {"ed25519", 0}},
	Options: []string{
		"KbdInteractiveAuthentication no",
		"UsePAM yes",
		"X11Forwarding yes",
		"PrintMotd no",
		"AcceptEnv LANG LC_*",
		"Subsystem sftp /usr/lib/openssh/sftp-server",
	},
}

// SSHDHardened offers only an RSA 4096 and an ECDSA P-384 key and a short
// list of modern algorithms, public-key logins only.
var SSHDHardened = SSHDProfile{
	Name: "hardened",
	Keys: []KeySpec{{"rsa", 4096}, {"ecdsa", 384}},
	Options: []string{
		"KexAlgorithms sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org",
		"Ciphers chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com",
		"MACs hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com",
		"HostKeyAlgorithms rsa-sha2-512,rsa-sha2-256,ecdsa-sha2-nistp384",
		"PubkeyAcceptedAlgorithms ssh-ed25519,ecdsa-sha2-nistp384,rsa-sha2-512",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"UsePAM no",
	},
}

// HostKey is a generated host key as OpenSSH's own tools describe it, so
// tests compare the module against ssh-keygen, not against itself.
type HostKey struct {
	Type              string // wire key type from the .pub file, e.g. "ssh-rsa"
	Base64            string // the public key blob as in the .pub file
	Bits              int    // from ssh-keygen -l
	FingerprintSHA256 string // "SHA256:…" from ssh-keygen -l
	FingerprintMD5    string // "aa:bb:…" from ssh-keygen -l -E md5
	PrivatePath       string
}

// SSHD is a running sshd.
type SSHD struct {
	*Server
	Profile    SSHDProfile
	Port       int
	Addr       string
	ConfigPath string
	HostKeys   []HostKey
	// Effective is `sshd -T`'s view of the config: lowercase keyword → value
	// (kexalgorithms, ciphers, macs, hostkeyalgorithms, …).
	Effective map[string]string
}

// StartSSHD generates p's host keys and config in the harness directory and
// runs sshd -D on port inside the namespace; it skips the test when sshd or
// ssh-keygen is missing.
func (h *Harness) StartSSHD(port int, p SSHDProfile) *SSHD {
	h.t.Helper()
	Require(h.t, SSHDPath, "ssh-keygen")
	// sshd refuses to start without its privilege separation directory,
	// which Debian creates at boot, not at install.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		h.t.Fatalf("probetest: cannot create /run/sshd: %v", err)
	}
	dir := filepath.Join(h.dir, "sshd-"+p.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	keys, err := generateHostKeys(dir, p.Keys)
	if err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "ListenAddress %s\nPidFile none\nStrictModes no\n", h.Addr(port))
	for _, k := range keys {
		fmt.Fprintf(&cfg, "HostKey %s\n", k.PrivatePath)
	}
	for _, o := range p.Options {
		cfg.WriteString(o + "\n")
	}
	conf := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(conf, []byte(cfg.String()), 0o600); err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := h.Exec(ctx, SSHDPath, "-T", "-f", conf)
	if err != nil {
		h.t.Fatalf("probetest: sshd rejects the %s config: %v", p.Name, err)
	}
	s := h.Start("sshd-"+p.Name, []string{SSHDPath, "-D", "-e", "-f", conf}, h.DialReady(port, "SSH-"))
	return &SSHD{Server: s, Profile: p, Port: port, Addr: h.Addr(port), ConfigPath: conf,
		HostKeys: keys, Effective: parseEffective(out)}
}

// generateHostKeys runs ssh-keygen for every spec (in parallel: RSA 4096
// takes a while) and describes the keys with ssh-keygen -l.
func generateHostKeys(dir string, specs []KeySpec) ([]HostKey, error) {
	keys := make([]HostKey, len(specs))
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	for i, spec := range specs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			keys[i], errs[i] = generateHostKey(dir, spec)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return keys, nil
}

func generateHostKey(dir string, spec KeySpec) (HostKey, error) {
	path := filepath.Join(dir, "ssh_host_"+spec.Type+"_key")
	args := []string{"-q", "-N", "", "-C", "", "-t", spec.Type, "-f", path}
	if spec.Bits > 0 {
		args = append(args, "-b", strconv.Itoa(spec.Bits))
	}
	if err := run("ssh-keygen", args...); err != nil {
		return HostKey{}, err
	}
	pub, err := os.ReadFile(path + ".pub")
	if err != nil {
		return HostKey{}, fmt.Errorf("cannot read the public key: %w", err)
	}
	f := strings.Fields(string(pub))
	if len(f) < 2 {
		return HostKey{}, fmt.Errorf("cannot parse %s.pub: %q", path, pub)
	}
	if _, err := base64.StdEncoding.DecodeString(f[1]); err != nil {
		return HostKey{}, fmt.Errorf("cannot parse %s.pub: %w", path, err)
	}
	k := HostKey{Type: f[0], Base64: f[1], PrivatePath: path}
	bits, sha, err := keygenFingerprint(path+".pub", "sha256")
	if err != nil {
		return HostKey{}, err
	}
	_, md5, err := keygenFingerprint(path+".pub", "md5")
	if err != nil {
		return HostKey{}, err
	}
	k.Bits, k.FingerprintSHA256, k.FingerprintMD5 = bits, sha, strings.TrimPrefix(md5, "MD5:")
	return k, nil
}

// keygenFingerprint parses `ssh-keygen -l -E hash -f pub`:
// "3072 SHA256:abc… comment (RSA)".
func keygenFingerprint(pub, hash string) (int, string, error) {
	out, err := exec.Command("ssh-keygen", "-l", "-E", hash, "-f", pub).Output()
	if err != nil {
		return 0, "", fmt.Errorf("cannot fingerprint %s: %w", pub, err)
	}
	f := strings.Fields(string(out))
	if len(f) < 2 {
		return 0, "", fmt.Errorf("cannot parse ssh-keygen -l output %q", out)
	}
	bits, err := strconv.Atoi(f[0])
	if err != nil {
		return 0, "", fmt.Errorf("cannot parse ssh-keygen -l output %q: %w", out, err)
	}
	return bits, f[1], nil
}

func parseEffective(out string) map[string]string {
	m := make(map[string]string)
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if ok {
			m[strings.ToLower(k)] = v
		}
	}
	return m
}

// PackageVersion returns the installed version of a Debian package as
// dpkg-query reports it ("1:9.2p1-2+deb12u10"); it skips the test when the
// package or dpkg-query is missing.
func PackageVersion(t testing.TB, pkg string) string {
	t.Helper()
	out, err := exec.Command("dpkg-query", "-W", "-f=${Version}", pkg).Output()
	if err != nil || len(out) == 0 {
		t.Skipf("probetest: cannot tell the version of Debian package %s (not installed? .ci/deps installs it): %v", pkg, err)
	}
	return string(out)
}

// UpstreamVersion splits a Debian version "[epoch:]upstream[-revision]"
// into its upstream part and revision ("1:9.2p1-2+deb12u10" → "9.2p1",
// "2+deb12u10").
func UpstreamVersion(v string) (upstream, revision string) {
	if _, rest, ok := strings.Cut(v, ":"); ok {
		v = rest
	}
	if i := strings.LastIndex(v, "-"); i >= 0 {
		return v[:i], v[i+1:]
	}
	return v, ""
}
