package probetest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// EximTLS is an exim4 daemon offering STARTTLS with a generated
// certificate.
type EximTLS struct {
	*Daemon
	CertPath string // the self-signed ECDSA P-256 certificate, PEM
}

// StartEximTLS runs exim4 like StartExim with Debian's configuration, TLS
// switched on through its MAIN_TLS_* macros (root may set them with -D):
// SMTP on port offering STARTTLS with a self-signed ECDSA certificate for
// "smtp.test". Role: smtp.
func (h *Harness) StartEximTLS(port int) *EximTLS {
	h.t.Helper()
	Require(h.t, "exim4")
	dir := h.shareableDir("exim")
	cert, key := h.ECDSACert(dir, "smtp.test")
	// exim reads the key after dropping to its own user
	if err := os.Chmod(key, 0o644); err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	s := h.Start("exim4-tls", []string{"exim4", "-bdf", "-oX", h.targetIP.String() + "." + strconv.Itoa(port),
		"-oP", filepath.Join(dir, "exim.pid"),
		"-DMAIN_TLS_ENABLE=yes", "-DMAIN_TLS_CERTIFICATE=" + cert, "-DMAIN_TLS_PRIVATEKEY=" + key},
		h.DialReady(port, "220 "))
	return &EximTLS{Daemon: h.daemon(s, eximPackage(), map[string]int{"smtp": port}), CertPath: cert}
}

// eximPackage is the installed exim4 daemon package (light or heavy).
func eximPackage() string {
	out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", "exim4-daemon-light").Output()
	if err != nil || !strings.Contains(string(out), "installed") {
		return "exim4-daemon-heavy"
	}
	return "exim4-daemon-light"
}
