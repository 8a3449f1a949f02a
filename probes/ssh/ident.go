package ssh

import (
	"regexp"
	"strings"
)

// Identification is the server's identification line (RFC 4253 §4.2)
// taken apart: "SSH-protoversion-softwareversion SP comments".
type Identification struct {
	Line            string `json:"line"`
	ProtocolVersion string `json:"protocol_version"`
	Software        string `json:"software"`
	Comments        string `json:"comments,omitempty"`
	// What the software string reveals; empty when it is not recognised.
	Product        string   `json:"product,omitempty"`
	Version        string   `json:"version,omitempty"`
	CPE            []string `json:"cpe,omitempty"`
	OS             string   `json:"os,omitempty"`
	OSDistribution string   `json:"os_distribution,omitempty"`
	OSRelease      string   `json:"os_release,omitempty"`
	PreBannerLines []string `json:"pre_banner_lines,omitempty"`
}

// parseIdentification splits line (without CR LF). ok is false when line is
// not an SSH identification.
func parseIdentification(line string) (Identification, bool) {
	id := Identification{Line: line}
	rest, found := strings.CutPrefix(line, "SSH-")
	if !found {
		return id, false
	}
	proto, rest, found := strings.Cut(rest, "-")
	if !found || proto == "" {
		return id, false
	}
	id.ProtocolVersion = proto
	id.Software, id.Comments, _ = strings.Cut(rest, " ")
	identifyProduct(&id)
	return id, true
}

// softwareRule recognises one implementation by its software version field.
type softwareRule struct {
	re      *regexp.Regexp // group 1: the version, when there is one
	product string
	cpe     string // CPE 2.2 prefix; the version is appended when known
}

// softwareRules are tried in order; the first match names the product.
var softwareRules = []softwareRule{
	{regexp.MustCompile(`^OpenSSH_([0-9][0-9A-Za-z.]*)`), "OpenSSH", "cpe:/a:openbsd:openssh"},
	{regexp.MustCompile(`^OpenSSH$`), "OpenSSH", "cpe:/a:openbsd:openssh"},
	{regexp.MustCompile(`^dropbear_([0-9][0-9.]*)`), "Dropbear sshd", "cpe:/a:matt_johnston:dropbear_ssh_server"},
	{regexp.MustCompile(`^dropbear$`), "Dropbear sshd", "cpe:/a:matt_johnston:dropbear_ssh_server"},
	{regexp.MustCompile(`^libssh[_-]([0-9][0-9.]*)`), "libssh", "cpe:/a:libssh:libssh"},
	{regexp.MustCompile(`^libssh2_([0-9][0-9.]*)`), "libssh2", "cpe:/a:libssh2:libssh2"},
	{regexp.MustCompile(`^Go$`), "Golang x/crypto/ssh server", "cpe:/a:golang:go"},
	{regexp.MustCompile(`^ROSSSH$`), "MikroTik RouterOS sshd", "cpe:/o:mikrotik:routeros"},
	{regexp.MustCompile(`^Cisco-([0-9][0-9.]*)`), "Cisco SSH", "cpe:/o:cisco:ios"},
	{regexp.MustCompile(`^mod_sftp(?:/([0-9][0-9.a-z]*))?`), "ProFTPD mod_sftp", "cpe:/a:proftpd:proftpd"},
	{regexp.MustCompile(`^AsyncSSH_([0-9][0-9.]*)`), "AsyncSSH", "cpe:/a:asyncssh_project:asyncssh"},
	{regexp.MustCompile(`^paramiko_([0-9][0-9.]*)`), "Paramiko", "cpe:/a:paramiko:paramiko"},
	{regexp.MustCompile(`^WeOnlyDo(?:-wodFTPD)?[ _]?([0-9][0-9.]*)?`), "WeOnlyDo sshd", ""},
	{regexp.MustCompile(`^Erlang/([0-9][0-9.]*)`), "Erlang sshd", "cpe:/a:erlang:erlang/otp"},
}

// osRule recognises the operating system from the comments (or software)
// the way distributions patch their OpenSSH identification.
type osRule struct {
	re         *regexp.Regexp // group 1: the release, when it shows
	os, distro string
	cpe        string
}

var osRules = []osRule{
	// Debian security updates carry "+debNNuM": the release number
	{regexp.MustCompile(`^Debian-[0-9][^ ]*?\+deb([0-9]+)u[0-9]+`), "Linux", "Debian", "cpe:/o:debian:debian_linux"},
	{regexp.MustCompile(`^Debian-`), "Linux", "Debian", "cpe:/o:debian:debian_linux"},
	{regexp.MustCompile(`^Ubuntu-`), "Linux", "Ubuntu", "cpe:/o:canonical:ubuntu_linux"},
	{regexp.MustCompile(`^Raspbian-`), "Linux", "Raspbian", "cpe:/o:raspbian:raspbian"},
	{regexp.MustCompile(`^FreeBSD-`), "FreeBSD", "FreeBSD", "cpe:/o:freebsd:freebsd"},
	{regexp.MustCompile(`^NetBSD_`), "NetBSD", "NetBSD", "cpe:/o:netbsd:netbsd"},
}

func identifyProduct(id *Identification) {
	for _, r := range softwareRules {
		m := r.re.FindStringSubmatch(id.Software)
		if m == nil {
			continue
		}
		id.Product = r.product
		if len(m) > 1 {
			id.Version = m[1]
		}
		if r.cpe != "" {
			cpe := r.cpe
			if id.Version != "" {
				cpe += ":" + id.Version
			}
			id.CPE = append(id.CPE, cpe)
		}
		break
	}
	for _, r := range osRules {
		m := r.re.FindStringSubmatch(id.Comments)
		if m == nil {
			continue
		}
		id.OS, id.OSDistribution = r.os, r.distro
		if len(m) > 1 {
			id.OSRelease = m[1]
		}
		id.CPE = append(id.CPE, r.cpe)
		break
	}
}
