package probetest

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
)

// PostfixRoot is where .ci/deps unpacks Debian's postfix package. Postfix
// and exim4 conflict (each is the system's mail transport agent), so the
// harness runs Postfix from the unpacked files instead of installing it;
// VERSION there holds the package version.
var PostfixRoot = "/var/lib/trawl-test/postfix"

// Postfix is a running Postfix smtpd offering STARTTLS.
type Postfix struct {
	*Daemon
	Hostname string // myhostname, in the banner and the EHLO reply
	CertPath string // the self-signed ECDSA P-256 certificate, PEM
}

// postfixUser runs the queue: any unprivileged account but the one
// default_privs names (Postfix refuses the two being equal).
const postfixUser = "nobody"

// StartPostfix runs Postfix's master with one smtpd on port (role smtp):
// Debian's banner ("$myhostname ESMTP $mail_name (Debian/GNU)"), STARTTLS
// with a self-signed ECDSA certificate, no local delivery. It skips the
// test when the unpacked package is missing.
func (h *Harness) StartPostfix(port int) *Postfix {
	h.t.Helper()
	master := filepath.Join(PostfixRoot, "usr/lib/postfix/sbin/master")
	Require(h.t, "env")
	if _, err := os.Stat(master); err != nil {
		h.t.Skipf("probetest: postfix is not unpacked in %s (.ci/deps does it): %v", PostfixRoot, err)
	}
	version, err := os.ReadFile(filepath.Join(PostfixRoot, "VERSION"))
	if err != nil {
		h.t.Skipf("probetest: postfix in %s has no VERSION: %v", PostfixRoot, err)
	}
	owner, err := user.Lookup(postfixUser)
	if err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	uid, _ := strconv.Atoi(owner.Uid)
	gid, _ := strconv.Atoi(owner.Gid)

	dir := h.shareableDir("postfix")
	conf, queue, data := filepath.Join(dir, "conf"), filepath.Join(dir, "queue"), filepath.Join(dir, "data")
	for _, d := range []string{conf, queue, data, filepath.Join(queue, "pid"), filepath.Join(queue, "public"), filepath.Join(queue, "private")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			h.t.Fatalf("probetest: %v", err)
		}
	}
	// the queue's service sockets and the data files belong to the mail owner
	for _, d := range []string{data, filepath.Join(queue, "public"), filepath.Join(queue, "private")} {
		if err := os.Chown(d, uid, gid); err != nil {
			h.t.Fatalf("probetest: %v", err)
		}
	}
	const hostname = "mail.trawl.test"
	cert, key := h.ECDSACert(dir, hostname)
	if err := os.Chmod(key, 0o644); err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	libs := filepath.Join(PostfixRoot, "usr/lib/postfix")
	h.writeFile(filepath.Join(conf, "main.cf"), strings.Join([]string{
		"compatibility_level = 3.6",
		"queue_directory = " + queue,
		"data_directory = " + data,
		"daemon_directory = " + filepath.Join(libs, "sbin"),
		"command_directory = " + filepath.Join(PostfixRoot, "usr/sbin"),
		"shlib_directory = " + libs,
		"meta_directory = " + filepath.Join(PostfixRoot, "etc/postfix"),
		"import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LD_LIBRARY_PATH=" + libs,
		"mail_owner = " + postfixUser,
		"default_privs = daemon",
		"setgid_group = mail",
		"myhostname = " + hostname,
		"mydomain = trawl.test",
		"inet_protocols = ipv4",
		"inet_interfaces = " + h.targetIP.String(),
		"smtpd_banner = $myhostname ESMTP $mail_name (Debian/GNU)",
		// no anvil, proxymap or local delivery: smtpd alone answers
		"smtpd_client_connection_count_limit = 0",
		"smtpd_client_connection_rate_limit = 0",
		"local_recipient_maps =",
		"alias_maps =",
		"alias_database =",
		"smtpd_tls_cert_file = " + cert,
		"smtpd_tls_key_file = " + key,
		"smtpd_tls_security_level = may",
		"",
	}, "\n"))
	h.writeFile(filepath.Join(conf, "master.cf"), fmt.Sprintf(
		"%s:%d inet n - n - - smtpd\ntlsmgr unix - - n 1000? 1 tlsmgr\n", h.targetIP, port))
	s := h.Start("postfix", []string{"env", "LD_LIBRARY_PATH=" + libs, master, "-c", conf, "-d"}, h.DialReady(port, "220 "))
	h.t.Cleanup(func() { stopGracefully(s) })
	full := strings.TrimSpace(string(version))
	up, _ := UpstreamVersion(full)
	return &Postfix{
		Daemon:   &Daemon{Server: s, Ports: map[string]int{"smtp": port}, Package: "postfix", Version: up, Debian: full},
		Hostname: hostname, CertPath: cert,
	}
}
