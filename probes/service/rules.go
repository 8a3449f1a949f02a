package service

import (
	"regexp"
	"unicode/utf8"
)

// The match data. A small table for now; the full embedded rules file is a
// later issue. Patterns run over the reply decoded as Latin-1 (one rune per
// byte), so `\xff` in a pattern matches the byte 0xff as nmap's do.

// matchRule names the service behind a reply. Product is set only when the
// pattern identifies the product for certain; the version is the
// pattern's "version" group, and a rule has one only when the banner states
// it unambiguously: no version beats a wrong one.
type matchRule struct {
	name    string
	pattern *regexp.Regexp
	product string
}

// httpHeader matches a header line inside the header block of an HTTP
// response (never in the body: header lines are non-empty).
const httpHead = `(?i)^HTTP/1\.[01] \d{3}[^\r\n]*(?:\r?\n[^\r\n]+)*?\r?\n`

// First match wins: specific rules come before their service's generic one.
var matchRules = []matchRule{
	{name: "ssh", product: "OpenSSH", pattern: regexp.MustCompile(`^SSH-[\d.]+-OpenSSH_(?P<version>\d[\w.]*)(?:[ \r\n]|$)`)},
	{name: "ssh", product: "Dropbear sshd", pattern: regexp.MustCompile(`^SSH-[\d.]+-dropbear_(?P<version>\d[\d.]*)(?:[ \r\n]|$)`)},
	{name: "ssh", pattern: regexp.MustCompile(`^SSH-[\d.]+-`)},

	{name: "http", product: "nginx", pattern: regexp.MustCompile(httpHead + `Server: nginx(?:/(?P<version>\d[\d.]*))?[ \r\n]`)},
	{name: "http", product: "Apache httpd", pattern: regexp.MustCompile(httpHead + `Server: Apache(?:/(?P<version>\d[\d.]*))?[ \r\n]`)},
	{name: "http", product: "lighttpd", pattern: regexp.MustCompile(httpHead + `Server: lighttpd(?:/(?P<version>\d[\d.]*))?[ \r\n]`)},
	{name: "http", product: "Microsoft IIS httpd", pattern: regexp.MustCompile(httpHead + `Server: Microsoft-IIS(?:/(?P<version>\d[\d.]*))?[ \r\n]`)},
	{name: "http", pattern: regexp.MustCompile(`^HTTP/1\.[01] \d{3}`)},

	{name: "rtsp", pattern: regexp.MustCompile(`^RTSP/1\.0 \d{3}`)},

	{name: "ftp", product: "vsftpd", pattern: regexp.MustCompile(`^220 \(vsFTPd (?P<version>\d[\d.]*)\)`)},
	{name: "ftp", product: "ProFTPD", pattern: regexp.MustCompile(`^220[ -]ProFTPD (?P<version>\d[\w.]*) Server`)},
	{name: "ftp", pattern: regexp.MustCompile(`^220[ -][^\r\n]*\bFTP`)},

	{name: "smtp", product: "Postfix smtpd", pattern: regexp.MustCompile(`^220[ -][^\r\n]*ESMTP Postfix`)},
	{name: "smtp", product: "Exim smtpd", pattern: regexp.MustCompile(`^220[ -][^\r\n]*ESMTP Exim (?P<version>\d[\d.]*)[ \r\n]`)},
	{name: "smtp", pattern: regexp.MustCompile(`^220[ -][^\r\n]*\bE?SMTP\b`)},

	{name: "pop3", product: "Dovecot pop3d", pattern: regexp.MustCompile(`^\+OK Dovecot`)},
	{name: "pop3", pattern: regexp.MustCompile(`^\+OK[ \r\n]`)},

	{name: "imap", product: "Dovecot imapd", pattern: regexp.MustCompile(`^\* OK (?:\[[^\]\r\n]*\] )?Dovecot`)},
	{name: "imap", pattern: regexp.MustCompile(`^\* OK[ \r\n]`)},

	{name: "redis", pattern: regexp.MustCompile(`^-(?:ERR wrong number of arguments for 'get' command|ERR unknown command|NOAUTH Authentication required|DENIED Redis)`)},

	// MySQL protocol: 3-byte length, sequence 0, protocol version 10, then
	// the NUL-terminated server version.
	{name: "mysql", product: "MariaDB", pattern: regexp.MustCompile(`(?s)^.[\x00\x01]\x00\x00\x0a(?:5\.5\.5-)?(?P<version>\d+\.\d+\.\d+)-MariaDB`)},
	{name: "mysql", product: "MySQL", pattern: regexp.MustCompile(`(?s)^.[\x00\x01]\x00\x00\x0a(?P<version>\d+\.\d+\.\d+)[\x00-]`)},
	{name: "mysql", pattern: regexp.MustCompile(`(?s)^.[\x00\x01]\x00\x00\x0a\d+\.\d+\.\d+`)},
	{name: "mysql", pattern: regexp.MustCompile(`(?s)^.\x00\x00[\x00\x01]\xff..Host .* is not allowed to connect to this (?:MySQL|MariaDB) server`)},

	{name: "vnc", pattern: regexp.MustCompile(`^RFB \d{3}\.\d{3}\n`)},
	{name: "amqp", pattern: regexp.MustCompile(`^AMQP\x00`)},
	{name: "memcached", pattern: regexp.MustCompile(`^ERROR\r\n$`)},
	{name: "telnet", pattern: regexp.MustCompile(`^\xff[\xfb-\xfe]`)},
}

// portNames names the service usually found on a port, the guess when no
// rule matches the reply ("table_default").
var portNames = map[int]string{
	21: "ftp", 22: "ssh", 23: "telnet", 25: "smtp", 53: "domain", 80: "http", 110: "pop3",
	143: "imap", 443: "https", 465: "smtps", 554: "rtsp", 587: "submission", 993: "imaps",
	995: "pop3s", 1433: "ms-sql-s", 1883: "mqtt", 3306: "mysql", 3389: "ms-wbt-server",
	5432: "postgresql", 5672: "amqp", 5900: "vnc", 6379: "redis", 8080: "http-proxy",
	8443: "https-alt", 9200: "wap-wsp", 11211: "memcache", 27017: "mongod",
}

// sendProbe is a payload sent when the service does not greet.
type sendProbe struct {
	name    string
	payload []byte
}

var (
	getRequest   = sendProbe{name: "GetRequest", payload: []byte("GET / HTTP/1.0\r\n\r\n")}
	genericLines = sendProbe{name: "GenericLines", payload: []byte("\r\n\r\n")}
)

// linePorts are ports of known line-oriented services that stay silent
// until spoken to and answer an empty line; every other port gets the HTTP
// request, which web servers answer and most line protocols reject in a
// recognizable way.
var linePorts = map[int]bool{
	7:     true, // echo
	11211: true, // memcached
}

func probeFor(port int) sendProbe {
	if linePorts[port] {
		return genericLines
	}
	return getRequest
}

// match is the service a reply shows.
type match struct {
	name, product, version string
	matched                bool
}

func identify(reply []byte, port int) match {
	if len(reply) > 0 {
		text := latin1(reply)
		for _, r := range matchRules {
			sub := r.pattern.FindStringSubmatch(text)
			if sub == nil {
				continue
			}
			m := match{name: r.name, product: r.product, matched: true}
			if i := r.pattern.SubexpIndex("version"); i > 0 && m.product != "" {
				m.version = sub[i]
			}
			return m
		}
	}
	if name, ok := portNames[port]; ok {
		return match{name: name}
	}
	return match{name: "unknown"}
}

// latin1 decodes b one rune per byte; ASCII, the common case, is copied as is.
func latin1(b []byte) string {
	ascii := true
	for _, c := range b {
		if c >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		return string(b)
	}
	out := make([]byte, 0, len(b)*2)
	for _, c := range b {
		out = utf8.AppendRune(out, rune(c))
	}
	return string(out)
}
