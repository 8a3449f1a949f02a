package service

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"trawl/probes"
	"trawl/probes/probetest"
)

// serve accepts on 127.0.0.1:0 (or TLS over it when cfg is set) and runs
// handle per connection until the test ends; it returns the port.
func serve(t testing.TB, cfg *tls.Config, handle func(c net.Conn)) int {
	t.Helper()
	return probetest.Serve(t, func(c net.Conn) {
		if cfg != nil {
			tc := tls.Server(c, cfg)
			_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
			if tc.Handshake() != nil {
				return
			}
			_ = tc.SetDeadline(time.Time{})
			c = tc
		}
		handle(c)
	})
}

// drain reads until the client goes away (or a safety timeout).
func drain(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(io.Discard, c)
}

func greeter(greeting string) func(c net.Conn) {
	return func(c net.Conn) {
		_, _ = c.Write([]byte(greeting))
		drain(c)
	}
}

// responder stays silent and answers each request that starts with a key
// of replies; anything else closes the connection.
func responder(replies map[string]string) func(c net.Conn) {
	return func(c net.Conn) {
		buf := make([]byte, 4096)
		for {
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			answered := false
			for k, v := range replies {
				if bytes.HasPrefix(buf[:n], []byte(k)) {
					_, _ = c.Write([]byte(v))
					answered = true
				}
			}
			if !answered {
				return
			}
		}
	}
}

func testModule(t testing.TB) *Module {
	t.Helper()
	m := New(Config{GreetingWait: 150 * time.Millisecond, ReplyWait: 300 * time.Millisecond, PortBudget: 5 * time.Second})
	if m.err != nil {
		t.Fatal(m.err)
	}
	return m
}

func probe(t *testing.T, m *Module, port int) probes.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := m.Probe(ctx, probes.Target{IP: "127.0.0.1", Port: port, Protocol: "tcp"})
	if err != nil {
		t.Fatalf("Probe: %v", err)
	}
	if res.Started.IsZero() || res.Duration <= 0 {
		t.Fatalf("timing not set: %v %v", res.Started, res.Duration)
	}
	return res
}

func expect(t *testing.T, res probes.Result, want map[string]any) {
	t.Helper()
	for k, v := range want {
		got := res.Data[k]
		if gs, ok := got.([]string); ok {
			got = strings.Join(gs, " ")
		}
		if got != v {
			t.Errorf("%s = %#v, want %#v (data %v)", k, got, v, res.Data)
		}
	}
}

func mysqlGreeting(version string) string {
	payload := "\x0a" + version + "\x00\x08\x00\x00\x00abcdefgh\x00\xff\xf7\x08\x02\x00"
	return string([]byte{byte(len(payload)), 0, 0, 0}) + payload
}

func amqpStart(product, version string) string {
	field := func(name, val string) string {
		return string([]byte{byte(len(name))}) + name + "S" + string([]byte{0, 0, 0, byte(len(val))}) + val
	}
	table := field("copyright", "Copyright (c) x") + field("product", product) + field("version", version)
	body := "\x00\x0a\x00\x0a\x00\x09" + string([]byte{0, 0, 0, byte(len(table))}) + table + "\x00\x00\x00\x05PLAIN\x00\x00\x00\x05en_US"
	return "\x01\x00\x00" + string([]byte{0, 0, 0, byte(len(body))}) + body + "\xce"
}

// TestRules runs every service's rules over replies as the real servers
// send them, through the same matching the module uses.
func TestRules(t *testing.T) {
	m := testModule(t)
	cases := []struct {
		probe, reply                            string
		name, product, version, info, host, cpe string
		soft                                    bool
	}{
		{"NULL", "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", "ssh", "OpenSSH", "9.2p1", "protocol 2.0", "", "cpe:/a:openbsd:openssh:9.2p1", false},
		{"NULL", "SSH-2.0-dropbear_2022.83\r\n", "ssh", "Dropbear sshd", "2022.83", "protocol 2.0", "", "cpe:/a:matt_johnston:dropbear_ssh_server:2022.83", false},
		{"NULL", "SSH-1.99-Cisco-1.25\r\n", "ssh", "", "", "protocol 1.99", "", "", false},
		{"NULL", "220 (vsFTPd 3.0.3)\r\n", "ftp", "vsftpd", "3.0.3", "", "", "cpe:/a:vsftpd:vsftpd:3.0.3", false},
		{"NULL", "220 ProFTPD 1.3.8 Server (Debian) [::ffff:10.0.0.1]\r\n", "ftp", "ProFTPD", "1.3.8", "", "", "cpe:/a:proftpd:proftpd:1.3.8", false},
		{"NULL", "220 Welcome to the FTP service\r\n", "ftp", "", "", "", "", "", true},
		{"NULL", "220 mx.example.com ESMTP Exim 4.96 Mon, 01 Jan 2024 00:00:00 +0000\r\n", "smtp", "Exim smtpd", "4.96", "", "mx.example.com", "cpe:/a:exim:exim:4.96", false},
		{"NULL", "220 mail.example.org ESMTP Postfix (Debian/GNU)\r\n", "smtp", "Postfix smtpd", "", "", "mail.example.org", "cpe:/a:postfix:postfix", false},
		{"NULL", "220 mx.google.com ESMTP a1-2\r\n", "smtp", "", "", "", "", "", true},
		{"NULL", "+OK Dovecot (Debian) ready.\r\n", "pop3", "Dovecot pop3d", "", "", "", "cpe:/a:dovecot:dovecot", false},
		{"NULL", "* OK [CAPABILITY IMAP4rev1 LITERAL+] Dovecot (Debian) ready.\r\n", "imap", "Dovecot imapd", "", "", "", "cpe:/a:dovecot:dovecot", false},
		{"NULL", mysqlGreeting("5.5.5-10.11.6-MariaDB-0+deb12u1"), "mysql", "MariaDB", "10.11.6", "", "", "cpe:/a:mariadb:mariadb:10.11.6", false},
		{"NULL", mysqlGreeting("8.0.36"), "mysql", "MySQL", "8.0.36", "", "", "cpe:/a:mysql:mysql:8.0.36", false},
		{"NULL", "\x45\x00\x00\x00\xff\x6a\x04Host '10.0.0.1' is not allowed to connect to this MariaDB server", "mysql", "MariaDB", "", "unauthorized", "", "", false},
		{"NULL", "RFB 003.008\n", "vnc", "", "", "protocol 3.8", "", "", false},
		{"NULL", "\xff\xfd\x18\xff\xfd\x20", "telnet", "", "", "", "", "", false},
		{"GetRequest", "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: x\r\n\r\n", "http", "nginx", "1.22.1", "", "", "cpe:/a:igor_sysoev:nginx:1.22.1", false},
		{"GetRequest", "HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\n", "http", "nginx", "", "", "", "cpe:/a:igor_sysoev:nginx", false},
		{"GetRequest", "HTTP/1.1 400 Bad Request\r\nDate: x\r\nServer: Apache/2.4.62 (Debian)\r\n\r\n", "http", "Apache httpd", "2.4.62", "(Debian)", "", "cpe:/a:apache:http_server:2.4.62", false},
		{"GetRequest", "HTTP/1.1 200 OK\r\nServer: Microsoft-IIS/10.0\r\n\r\n", "http", "Microsoft IIS httpd", "10.0", "", "", "cpe:/a:microsoft:internet_information_services:10.0 cpe:/o:microsoft:windows", false},
		// a Server line in the body is not a header
		{"GetRequest", "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\nServer: nginx/1.2.3\r\n", "http", "", "", "", "", "", true},
		{"HTTPOptions", "HTTP/1.1 405 Not Allowed\r\nServer: nginx/1.22.1\r\n\r\n", "http", "nginx", "1.22.1", "", "", "cpe:/a:igor_sysoev:nginx:1.22.1", false},
		{"RedisInfo", "$1000\r\n# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:0\r\n", "redis", "Redis key-value store", "7.0.15", "", "", "cpe:/a:redislabs:redis:7.0.15", false},
		{"RedisInfo", "-NOAUTH Authentication required.\r\n", "redis", "Redis key-value store", "", "authentication required", "", "", false},
		{"GetRequest", "-ERR wrong number of arguments for 'get' command\r\n", "redis", "Redis key-value store", "", "", "", "", false},
		{"MemcachedVersion", "VERSION 1.6.18\r\n", "memcached", "Memcached", "1.6.18", "", "", "cpe:/a:memcached:memcached:1.6.18", false},
		{"PostgreSQLStartup", "E\x00\x00\x00\x50SFATAL\x00VFATAL\x00C28000\x00Mno pg_hba.conf entry\x00\x00", "postgresql", "PostgreSQL DB", "", "", "", "cpe:/a:postgresql:postgresql", false},
		{"MQTTConnect", "\x20\x02\x00\x00\x90\x03\x00\x01\x00\x31\x2c\x00\x13$SYS/broker/versionmosquitto version 2.0.11", "mqtt", "Mosquitto", "2.0.11", "", "", "cpe:/a:eclipse:mosquitto:2.0.11", false},
		{"MQTTConnect", "\x20\x02\x00\x05", "mqtt", "", "", "not authorized", "", "", false},
		{"MQTTConnect", "\x20\x02\x00\x00", "mqtt", "", "", "", "", "", true},
		{"AMQPHeader", amqpStart("RabbitMQ", "3.10.8"), "amqp", "RabbitMQ", "3.10.8", "AMQP 0-9-1", "", "cpe:/a:vmware:rabbitmq:3.10.8", false},
		{"AMQPHeader", amqpStart("qpidd", "1.2"), "amqp", "qpidd", "", "AMQP 0-9-1", "", "", false},
		{"AMQPHeader", "AMQP\x00\x00\x09\x01", "amqp", "", "", "", "", "", true},
		{"EpmdNames", "\x00\x00\x11\x11name rabbit at port 25672\n", "epmd", "Erlang Port Mapper Daemon", "", "", "", "cpe:/a:erlang:erlang%2fotp", false},
	}
	for _, c := range cases {
		p := m.rules.Probe(c.probe)
		if p == nil {
			t.Fatalf("no probe %s", c.probe)
		}
		var d detection
		hard := m.consider(&d, p, []byte(c.reply), "")
		if hard == c.soft || (c.soft && d.soft == nil) {
			t.Errorf("%s %q: hard %v, want soft %v", c.probe, c.reply, hard, c.soft)
			continue
		}
		got := m.describe(&d, 0)
		want := map[string]any{"name": c.name, "product": c.product, "version": c.version, "extrainfo": c.info,
			"hostname": c.host, "cpe": c.cpe}
		for k, v := range want {
			g := got[k]
			if gs, ok := g.([]string); ok {
				g = strings.Join(gs, " ")
			}
			if g != v {
				t.Errorf("%s %q: %s = %q, want %q", c.probe, c.reply, k, g, v)
			}
		}
	}
}

func TestEmbeddedRulesParse(t *testing.T) {
	rs, err := ParseRules(strings.NewReader(embeddedRules), true)
	if err != nil {
		t.Fatal(err)
	}
	if rs.Skipped != 0 {
		t.Fatalf("skipped %d", rs.Skipped)
	}
	for _, name := range []string{"NULL", "SSLSessionReq", "GetRequest", "HTTPOptions", "RedisInfo", "MemcachedVersion",
		"PostgreSQLStartup", "MQTTConnect", "AMQPHeader", "EpmdNames"} {
		if rs.Probe(name) == nil {
			t.Errorf("probe %s missing", name)
		}
	}
	if p := rs.Probe("MQTTConnect"); len(p.Then) != 1 || !bytes.Contains(p.Then[0], []byte("$SYS/broker/version")) {
		t.Errorf("MQTT then %q", p.Then)
	}
	if p := rs.Probe("PostgreSQLStartup"); len(p.Payload) != 0x23 || p.Payload[3] != 0x23 {
		t.Errorf("postgres startup length %d", len(p.Payload))
	}
}

func TestParseRulesErrors(t *testing.T) {
	cases := map[string]string{
		"match before probe": "match ssh m|^SSH|\n",
		"no payload":         "Probe TCP X\n",
		"unterminated":       "Probe TCP X q|abc\n",
		"bad directive":      "Probe TCP X q||\nfrobnicate 1\n",
		"bad pattern strict": "Probe TCP X q||\nmatch a m|(?<=x)|\n",
		"bad field":          "Probe TCP X q||\nmatch a m|x| z/1/\n",
		"bad port":           "Probe TCP X q||\nports 80,abc\n",
		"duplicate probe":    "Probe TCP X q||\nProbe TCP X q||\n",
		"match without m":    "Probe TCP X q||\nmatch a |x|\n",
		"bad port range":     "Probe TCP X q||\nports 90-80\n",
	}
	for name, in := range cases {
		if _, err := ParseRules(strings.NewReader(in), true); !errors.Is(err, ErrRules) {
			t.Errorf("%s: %v, want ErrRules", name, err)
		}
	}
	// nmap's file: uncompilable patterns are skipped and counted, UDP
	// probes ignored
	rs, err := ParseRules(strings.NewReader("Exclude T:9100\nProbe TCP X q|a\\x41\\0\\r\\n|\nrarity 1\ntotalwaitms 5000\n"+
		"match a m|(?<=x)|\nmatch b m|^\\0B|s p/B/\nProbe UDP U q|x|\nmatch u m|x|\n"), false)
	if err != nil || rs.Skipped != 1 || len(rs.Probes) != 1 || len(rs.Probes[0].Matches) != 1 {
		t.Fatalf("lenient: %v %+v", err, rs)
	}
	if got := string(rs.Probes[0].Payload); got != "aA\x00\r\n" {
		t.Errorf("payload %q", got)
	}
	if !rs.Probes[0].Matches[0].Pattern.MatchString("\x00B") {
		t.Errorf(`\0 not translated`)
	}
}

func TestExpand(t *testing.T) {
	g := []string{"all", "1.2_3", "a\x01b"}
	cases := map[string]string{
		"v$1":               "v1.2_3",
		"$P(2)":             "ab",
		`$SUBST(1,"_",".")`: "1.2.3",
		"$9 none":           " none",
		"cost $":            "cost $",
		"$x":                "$x",
	}
	for in, want := range cases {
		if got := expand(in, g); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestProbeSequence drives the module over fake servers that answer only
// the probe meant for them: the module has to reach it.
func TestProbeSequence(t *testing.T) {
	m := testModule(t)
	cases := []struct {
		name   string
		handle func(c net.Conn)
		want   map[string]any
	}{
		{"greeting", greeter("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"), map[string]any{
			"name": "ssh", "product": "OpenSSH", "version": "9.2p1", "probe": "NULL", "method": MethodExtraction,
			"confidence": 10, "banner": "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3", "cpe": "cpe:/a:openbsd:openssh:9.2p1"}},
		{"redis", responder(map[string]string{"INFO server\r\n": "$100\r\n# Server\r\nredis_version:7.0.15\r\n"}), map[string]any{
			"name": "redis", "version": "7.0.15", "probe": "RedisInfo"}},
		{"memcached", responder(map[string]string{"version\r\n": "VERSION 1.6.18\r\n"}), map[string]any{
			"name": "memcached", "version": "1.6.18", "probe": "MemcachedVersion"}},
		{"mqtt two steps", responder(map[string]string{
			"\x10": "\x20\x02\x00\x00",
			"\x82": "\x90\x03\x00\x01\x00\x31\x2c\x00\x13$SYS/broker/versionmosquitto version 2.0.18"}), map[string]any{
			"name": "mqtt", "product": "Mosquitto", "version": "2.0.18", "probe": "MQTTConnect"}},
		{"amqp", responder(map[string]string{"AMQP": amqpStart("RabbitMQ", "3.12.1")}), map[string]any{
			"name": "amqp", "product": "RabbitMQ", "version": "3.12.1", "probe": "AMQPHeader"}},
		{"epmd", responder(map[string]string{"\x00\x01n": "\x00\x00\x11\x11name rabbit at port 25672\n"}), map[string]any{
			"name": "epmd", "probe": "EpmdNames"}},
		{"softmatch then hard", greeter("HTTP/1.0 200 OK\r\n\r\n"), map[string]any{
			"name": "http", "product": "", "method": MethodMatching, "confidence": 7}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := probe(t, m, serve(t, nil, c.handle))
			if res.Status != probes.StatusSuccess {
				t.Fatalf("status %q %s", res.Status, res.Error)
			}
			expect(t, res, c.want)
		})
	}
}

func selfSigned(t testing.TB) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "t"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

func TestTLSReprobe(t *testing.T) {
	m := testModule(t)
	cfg := selfSigned(t)
	t.Run("greeting inside TLS", func(t *testing.T) {
		res := probe(t, m, serve(t, cfg, greeter("* OK [CAPABILITY IMAP4rev1] Dovecot (Debian) ready.\r\n")))
		expect(t, res, map[string]any{"name": "imap", "product": "Dovecot imapd", "tunnel": "ssl", "probe": "NULL"})
	})
	t.Run("http inside TLS", func(t *testing.T) {
		res := probe(t, m, serve(t, cfg, responder(map[string]string{"GET ": "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\r\n"})))
		expect(t, res, map[string]any{"name": "http", "product": "nginx", "version": "1.22.1", "tunnel": "ssl", "probe": "GetRequest"})
	})
	t.Run("silent inside TLS", func(t *testing.T) {
		res := probe(t, m, serve(t, cfg, drain))
		if res.Status != probes.StatusSuccess {
			t.Fatalf("status %q", res.Status)
		}
		expect(t, res, map[string]any{"name": "unknown", "tunnel": "ssl", "method": MethodTable, "confidence": 3})
	})
}

func TestFailures(t *testing.T) {
	m := testModule(t)
	silent := serve(t, nil, drain)
	resets := serve(t, nil, func(c net.Conn) { _ = c.(*net.TCPConn).SetLinger(0) })
	closed := func() int {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		return p
	}()
	cases := []struct {
		name   string
		port   int
		status probes.Status
	}{
		{"silent", silent, probes.StatusTimeout},
		{"reset", resets, probes.StatusReset},
		{"closed port", closed, probes.StatusRefused},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := probe(t, m, c.port)
			if res.Status != c.status || res.Error == "" {
				t.Fatalf("status %q error %q; want %q", res.Status, res.Error, c.status)
			}
			if len(res.Raw) != 0 {
				t.Fatalf("raw %q", res.Raw)
			}
			expect(t, res, map[string]any{"name": "unknown", "banner": "", "method": MethodTable, "tunnel": "", "product": ""})
		})
	}
}

func TestBudgetAndContext(t *testing.T) {
	silent := serve(t, nil, drain)
	target := probes.Target{IP: "127.0.0.1", Port: silent}
	m := New(Config{GreetingWait: 5 * time.Second, ReplyWait: 5 * time.Second, PortBudget: 300 * time.Millisecond})
	start := time.Now()
	res, err := m.Probe(context.Background(), target)
	if err != nil || res.Status != probes.StatusTimeout {
		t.Fatalf("budget: %q %q %v", res.Status, res.Error, err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("port budget ignored: %v", el)
	}

	m = New(Config{GreetingWait: 5 * time.Second, ReplyWait: 5 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start = time.Now()
	res, err = m.Probe(ctx, target)
	if err != nil || res.Status != probes.StatusCanceled || res.Error != context.Canceled.Error() {
		t.Fatalf("canceled: %q %q %v", res.Status, res.Error, err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("cancel took %v to take effect", el)
	}
}

func TestOperatorRules(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.txt")
	// overrides the OpenSSH rule for one banner and adds a probe
	rules := "Probe TCP NULL q||\nmatch ssh m|^SSH-2\\.0-OpenSSH_9\\.2p1 Acme| p/Acme SSH/ v/1.0/\n" +
		"Probe TCP Hello q|HELLO\\r\\n|\nmatch acme m|^WORLD (\\d+)\\r\\n| p/Acme/ v/$1/\n"
	if err := os.WriteFile(path, []byte(rules), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{GreetingWait: 150 * time.Millisecond, ReplyWait: 300 * time.Millisecond, RulesFile: path}
	if err := (Config{GreetingWait: 1, ReplyWait: 1, PortBudget: 1, ReadLimit: 1, RulesFile: path}).Validate(); err != nil {
		t.Fatal(err)
	}
	m := New(cfg)
	res := probe(t, m, serve(t, nil, greeter("SSH-2.0-OpenSSH_9.2p1 Acme\r\n")))
	expect(t, res, map[string]any{"name": "ssh", "product": "Acme SSH", "version": "1.0"})
	res = probe(t, m, serve(t, nil, greeter("SSH-2.0-OpenSSH_9.6p1\r\n")))
	expect(t, res, map[string]any{"name": "ssh", "product": "OpenSSH", "version": "9.6p1"})
	res = probe(t, m, serve(t, nil, responder(map[string]string{"HELLO": "WORLD 42\r\n"})))
	expect(t, res, map[string]any{"name": "acme", "product": "Acme", "version": "42", "probe": "Hello"})

	bad := filepath.Join(dir, "bad.txt")
	if err := os.WriteFile(bad, []byte("match x m|y|\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	broken := New(Config{RulesFile: bad})
	r, err := broken.Probe(context.Background(), probes.Target{IP: "127.0.0.1", Port: 1})
	if err != nil || r.Status != probes.StatusError || !strings.Contains(r.Error, "invalid rules") {
		t.Fatalf("bad rules: %q %q %v", r.Status, r.Error, err)
	}
	if err := (Config{GreetingWait: 1, ReplyWait: 1, PortBudget: 1, ReadLimit: 1, RulesFile: filepath.Join(dir, "none")}).Validate(); err == nil {
		t.Fatal("missing rules file accepted")
	}
}

func TestNmapProbesOptional(t *testing.T) {
	m := New(Config{NmapProbes: filepath.Join(t.TempDir(), "absent")})
	if m.err != nil || len(m.rules.Probes) != len(New(Config{}).rules.Probes) {
		t.Fatalf("absent nmap file: %v", m.err)
	}
	const system = "/usr/share/nmap/nmap-service-probes"
	if _, err := os.Stat(system); err != nil {
		t.Skipf("nmap is not installed (%v): the absent-file case above is the point", err)
	}
	m = New(Config{NmapProbes: system, GreetingWait: 150 * time.Millisecond, ReplyWait: 300 * time.Millisecond})
	if m.err != nil || len(m.rules.Probes) < 50 {
		t.Fatalf("nmap file: %v, %d probes", m.err, len(m.rules.Probes))
	}
	t.Logf("nmap-service-probes: %d probes, %d patterns Go cannot compile", len(m.rules.Probes), m.rules.Skipped)
	// trawl's rule still wins for what it knows
	res := probe(t, m, serve(t, nil, greeter("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")))
	expect(t, res, map[string]any{"product": "OpenSSH", "version": "9.2p1"})
}

func TestBanner(t *testing.T) {
	cases := map[string]string{
		"SSH-2.0-x\r\n":                       "SSH-2.0-x",
		"HTTP/1.0 200 OK\r\nA: b\r\n\r\nbody": `HTTP/1.0 200 OK\r\nA: b`,
		"one\n\ntwo":                          "one",
		"\x00\x01bin\xff":                     `\x00\x01bin\xff`,
		strings.Repeat("y", 2000):             strings.Repeat("y", bannerLimit),
	}
	for in, want := range cases {
		if got := banner([]byte(in)); got != want {
			t.Errorf("banner(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestConfig(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.RegisterFlags(fs, "service.")
	if c != DefaultConfig() {
		t.Fatalf("defaults: %+v", c)
	}
	if err := fs.Parse([]string{"-service.greeting-wait=1s", "-service.read-limit=100", "-service.reply-wait=3s",
		"-service.port-budget=7s", "-service.nmap-probes=/x"}); err != nil {
		t.Fatal(err)
	}
	want := Config{GreetingWait: time.Second, ReplyWait: 3 * time.Second, PortBudget: 7 * time.Second, ReadLimit: 100, NmapProbes: "/x"}
	if c != want {
		t.Fatalf("parsed %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	err := Config{ReadLimit: -1}.Validate()
	for _, w := range []string{"greeting", "reply", "budget", "read limit"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Fatalf("zero config: %v, want a %s error", err, w)
		}
	}
	if m := New(Config{}); m.cfg != DefaultConfig() || m.Name() != "service" {
		t.Fatalf("New(zero) = %+v %s", m.cfg, m.Name())
	}
}

func TestRunsInPool(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > before; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Errorf("goroutines: %d before, %d after", before, runtime.NumGoroutine())
				return
			}
		}
	})
	port := serve(t, nil, greeter("SSH-2.0-OpenSSH_9.2p1\r\n"))
	pool := probes.NewPool(probes.PoolConfig{Concurrency: 8, PerHost: 2, Timeout: 2 * time.Second})
	m := testModule(t)
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := pool.Probe(context.Background(), m, probes.Target{IP: "127.0.0.1", Port: port})
			if r.Status != probes.StatusSuccess || r.Data["version"] != "9.2p1" {
				errs <- errors.New(string(r.Status) + " " + r.Error)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if pool.MaxPerHostSeen() > 2 {
		t.Fatalf("per-host cap exceeded: %d", pool.MaxPerHostSeen())
	}
}

func BenchmarkServiceGreeter(b *testing.B) {
	port := serve(b, nil, greeter("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"))
	m := New(DefaultConfig())
	target := probes.Target{IP: "127.0.0.1", Port: port, Protocol: "tcp"}
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		res, err := m.Probe(context.Background(), target)
		if err != nil || res.Status != probes.StatusSuccess {
			b.Fatalf("%v %q %s", err, res.Status, res.Error)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "probes/s")
}

func BenchmarkMatchNull(b *testing.B) {
	m := New(DefaultConfig())
	p := m.rules.Probe(nullProbe)
	reply := []byte("220 (vsFTPd 3.0.3)\r\n")
	b.ReportAllocs()
	for b.Loop() {
		var d detection
		if !m.consider(&d, p, reply, "") {
			b.Fatal("no match")
		}
	}
}
