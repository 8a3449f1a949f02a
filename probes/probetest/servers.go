package probetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// Daemon is a running Debian server started by one of the Start… helpers
// below, with the package it comes from and that package's version, so
// tests assert what a module reports against dpkg, not a typed string.
type Daemon struct {
	*Server
	Ports   map[string]int // role → port: "http", "https", "imap", "imaps", …
	Package string         // Debian package, e.g. "nginx"
	// Version is the package's upstream version ("1.22.1" of
	// "1.22.1-9+deb12u1"); Debian is the full dpkg version.
	Version, Debian string
}

// Addr is "ip:port" of the daemon's role.
func (h *Harness) DaemonAddr(d *Daemon, role string) string { return h.Addr(d.Ports[role]) }

func (h *Harness) daemon(s *Server, pkg string, ports map[string]int) *Daemon {
	h.t.Helper()
	full := PackageVersion(h.t, pkg)
	up, _ := UpstreamVersion(full)
	return &Daemon{Server: s, Ports: ports, Package: pkg, Version: up, Debian: full}
}

// shareableDir makes a directory that daemons dropping privileges to their
// own user can enter (t.TempDir is 0700 root), removed at test end.
func (h *Harness) shareableDir(name string) string {
	h.t.Helper()
	dir, err := os.MkdirTemp("", "trawl-"+name+"-")
	if err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	h.t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func (h *Harness) writeFile(path, content string) {
	h.t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
}

// ECDSACert writes a self-signed ECDSA P-256 certificate for the target
// address into dir and returns the cert and key paths.
func (h *Harness) ECDSACert(dir, name string) (certPath, keyPath string) {
	h.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		IPAddresses:  []net.IP{h.targetIP.AsSlice()},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	certPath, keyPath = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	h.writeFile(certPath, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	h.writeFile(keyPath, string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})))
	return certPath, keyPath
}

// StartNginx runs nginx with HTTP on httpPort and HTTPS (TLS 1.2 and 1.3,
// an ECDSA self-signed certificate) on httpsPort.
func (h *Harness) StartNginx(httpPort, httpsPort int) *Daemon {
	h.t.Helper()
	Require(h.t, "nginx")
	dir := filepath.Join(h.dir, "nginx")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	cert, key := h.ECDSACert(dir, "nginx.test")
	ip := h.targetIP.String()
	conf := fmt.Sprintf(`daemon off;
master_process on;
worker_processes 1;
user root;
pid %[1]s/nginx.pid;
error_log stderr;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path %[1]s/body; proxy_temp_path %[1]s/proxy; fastcgi_temp_path %[1]s/fcgi;
  uwsgi_temp_path %[1]s/uwsgi; scgi_temp_path %[1]s/scgi;
  server {
    listen %[2]s:%[3]d;
    listen %[2]s:%[4]d ssl;
    ssl_certificate %[5]s;
    ssl_certificate_key %[6]s;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { return 200 "trawl\n"; }
  }
}
`, dir, ip, httpPort, httpsPort, cert, key)
	path := filepath.Join(dir, "nginx.conf")
	h.writeFile(path, conf)
	s := h.Start("nginx", []string{"nginx", "-c", path, "-e", "stderr"}, h.DialReady(httpPort, ""))
	return h.daemon(s, "nginx", map[string]int{"http": httpPort, "https": httpsPort})
}

// StartRedis runs redis-server without persistence or protected mode.
func (h *Harness) StartRedis(port int) *Daemon {
	h.t.Helper()
	Require(h.t, "redis-server")
	dir := filepath.Join(h.dir, "redis")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	s := h.Start("redis", []string{"redis-server", "--bind", h.targetIP.String(), "--port", strconv.Itoa(port),
		"--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no"}, h.DialReady(port, ""))
	return h.daemon(s, "redis-server", map[string]int{"redis": port})
}

// StartMemcached runs memcached on TCP only.
func (h *Harness) StartMemcached(port int) *Daemon {
	h.t.Helper()
	Require(h.t, "memcached")
	s := h.Start("memcached", []string{"memcached", "-u", "root", "-l", h.targetIP.String(), "-p", strconv.Itoa(port), "-U", "0"},
		h.DialReady(port, ""))
	return h.daemon(s, "memcached", map[string]int{"memcached": port})
}

// StartVsftpd runs vsftpd in the foreground, anonymous logins off.
func (h *Harness) StartVsftpd(port int) *Daemon {
	h.t.Helper()
	Require(h.t, "vsftpd")
	if err := os.MkdirAll("/var/run/vsftpd/empty", 0o755); err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	path := filepath.Join(h.dir, "vsftpd.conf")
	h.writeFile(path, fmt.Sprintf("listen=YES\nlisten_ipv6=NO\nlisten_address=%s\nlisten_port=%d\nbackground=NO\n"+
		"anonymous_enable=NO\nlocal_enable=YES\npam_service_name=vsftpd\nsecure_chroot_dir=/var/run/vsftpd/empty\n",
		h.targetIP, port))
	if err := os.Chmod(path, 0o600); err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	s := h.Start("vsftpd", []string{"vsftpd", path}, h.DialReady(port, "220 "))
	return h.daemon(s, "vsftpd", map[string]int{"ftp": port})
}

// StartMosquitto runs mosquitto with an anonymous listener on port.
func (h *Harness) StartMosquitto(port int) *Daemon {
	h.t.Helper()
	Require(h.t, "mosquitto")
	path := filepath.Join(h.dir, "mosquitto.conf")
	h.writeFile(path, fmt.Sprintf("user root\nlistener %d %s\nallow_anonymous true\npersistence false\nlog_dest stderr\n", port, h.targetIP))
	s := h.Start("mosquitto", []string{"mosquitto", "-c", path}, h.DialReady(port, ""))
	return h.daemon(s, "mosquitto", map[string]int{"mqtt": port})
}

// StartMariaDB initialises a data directory with mariadb-install-db and
// runs mariadbd on port, grant tables off so any client sees the greeting.
func (h *Harness) StartMariaDB(port int) *Daemon {
	h.t.Helper()
	Require(h.t, "mariadbd", "mariadb-install-db")
	dir := h.shareableDir("mariadb")
	data := filepath.Join(dir, "data")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "mariadb-install-db", "--no-defaults", "--user=root", "--datadir="+data,
		"--auth-root-authentication-method=normal", "--skip-test-db").CombinedOutput(); err != nil {
		h.t.Fatalf("probetest: mariadb-install-db: %v\n%s", err, out)
	}
	s := h.Start("mariadb", []string{"mariadbd", "--no-defaults", "--user=root", "--datadir=" + data,
		"--bind-address=" + h.targetIP.String(), "--port=" + strconv.Itoa(port), "--socket=" + filepath.Join(dir, "sock"),
		"--pid-file=" + filepath.Join(dir, "pid"), "--skip-grant-tables", "--skip-name-resolve", "--log-error=" + filepath.Join(dir, "err")},
		h.DialReady(port, ""))
	return h.daemon(s, "mariadb-server", map[string]int{"mysql": port})
}

// PostgresBin is the directory of the PostgreSQL server programs.
func PostgresBin(t testing.TB) string {
	t.Helper()
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(matches) == 0 {
		t.Skip("probetest: PostgreSQL is not installed (.ci/deps installs postgresql)")
	}
	return filepath.Dir(matches[len(matches)-1])
}

// StartPostgres runs initdb as the postgres user in a fresh directory and
// the server on port.
func (h *Harness) StartPostgres(port int) *Daemon {
	h.t.Helper()
	Require(h.t, "runuser")
	bin := PostgresBin(h.t)
	dir := h.shareableDir("postgres")
	data := filepath.Join(dir, "data")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "chown", "postgres:postgres", dir).CombinedOutput(); err != nil {
		h.t.Fatalf("probetest: chown: %v %s", err, out)
	}
	if out, err := exec.CommandContext(ctx, "runuser", "-u", "postgres", "--", filepath.Join(bin, "initdb"), "-D", data,
		"-A", "trust", "-U", "postgres", "--no-sync").CombinedOutput(); err != nil {
		h.t.Fatalf("probetest: initdb: %v\n%s", err, out)
	}
	s := h.Start("postgres", []string{"runuser", "-u", "postgres", "--", filepath.Join(bin, "postgres"), "-D", data,
		"-c", "listen_addresses=" + h.targetIP.String(), "-p", strconv.Itoa(port), "-k", dir, "-c", "fsync=off"},
		h.DialReady(port, ""))
	version := filepath.Base(filepath.Dir(bin))
	return h.daemon(s, "postgresql-"+version, map[string]int{"postgresql": port})
}

// StartDovecot runs dovecot with IMAP and POP3 in plaintext and over TLS
// (an ECDSA self-signed certificate): roles imap, imaps, pop3, pop3s.
func (h *Harness) StartDovecot(imap, imaps, pop3, pop3s int) *Daemon {
	h.t.Helper()
	Require(h.t, "dovecot")
	dir := h.shareableDir("dovecot")
	cert, key := h.ECDSACert(dir, "mail.test")
	conf := fmt.Sprintf(`base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = /dev/stderr
protocols = imap pop3
listen = %[2]s
ssl = yes
ssl_cert = <%[3]s
ssl_key = <%[4]s
mail_location = maildir:%[1]s/mail/%%u
passdb {
  driver = static
  args = nopassword=y
}
userdb {
  driver = static
  args = uid=root gid=root home=%[1]s/home/%%u
}
service imap-login {
  inet_listener imap {
    port = %[5]d
  }
  inet_listener imaps {
    port = %[6]d
    ssl = yes
  }
}
service pop3-login {
  inet_listener pop3 {
    port = %[7]d
  }
  inet_listener pop3s {
    port = %[8]d
    ssl = yes
  }
}
`, dir, h.targetIP, cert, key, imap, imaps, pop3, pop3s)
	path := filepath.Join(dir, "dovecot.conf")
	h.writeFile(path, conf)
	s := h.Start("dovecot", []string{"dovecot", "-F", "-c", path}, h.DialReady(imap, "* OK"))
	for _, p := range []int{imaps, pop3, pop3s} {
		ready := h.DialReady(p, "")
		deadline := time.Now().Add(StartTimeout)
		for err := ready(context.Background()); err != nil; err = ready(context.Background()) {
			if time.Now().After(deadline) {
				h.t.Fatalf("probetest: dovecot port %d: %v\n%s", p, err, s.Output())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return h.daemon(s, "dovecot-core", map[string]int{"imap": imap, "imaps": imaps, "pop3": pop3, "pop3s": pop3s})
}

// StartExim runs exim4 as a listening daemon on port with Debian's
// generated configuration (its banner names the version).
func (h *Harness) StartExim(port int) *Daemon {
	h.t.Helper()
	Require(h.t, "exim4")
	s := h.Start("exim4", []string{"exim4", "-bdf", "-oX", h.targetIP.String() + "." + strconv.Itoa(port),
		"-oP", filepath.Join(h.dir, "exim.pid")}, h.DialReady(port, "220 "))
	return h.daemon(s, eximPackage(), map[string]int{"smtp": port})
}
