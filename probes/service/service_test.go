package service

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"trawl/probes"
)

// serve accepts on 127.0.0.1:0 and runs handle per connection until the
// test ends; it returns the port.
func serve(t testing.TB, handle func(c *net.TCPConn)) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().(*net.TCPAddr).Port
}

// drain reads until the client goes away (or a safety timeout).
func drain(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(io.Discard, c)
}

func greeter(greeting string) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		_, _ = c.Write([]byte(greeting))
		drain(c)
	}
}

func testModule() *Module {
	return New(Config{GreetingWait: 150 * time.Millisecond, ReplyWait: 300 * time.Millisecond, ReadLimit: 16 << 10})
}

func probe(t *testing.T, m *Module, port int) probes.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
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

func expectData(t *testing.T, res probes.Result, want map[string]any) {
	t.Helper()
	if !reflect.DeepEqual(res.Data, want) {
		t.Fatalf("data:\n got %#v\nwant %#v", res.Data, want)
	}
}

func TestSSHGreeting(t *testing.T) {
	port := serve(t, greeter("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"))
	m := New(Config{GreetingWait: 2 * time.Second})
	res := probe(t, m, port)
	if res.Status != probes.StatusSuccess || res.Error != "" {
		t.Fatalf("status %q error %q", res.Status, res.Error)
	}
	// a greeting ends the wait at once
	if res.Duration > time.Second {
		t.Fatalf("took %v: waited out GreetingWait despite the greeting", res.Duration)
	}
	expectData(t, res, map[string]any{
		"name": "ssh", "banner": "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3", "probe": "NULL",
		"method": "probe_matching", "product": "OpenSSH", "version": "9.2p1", "port": port, "tunnel": "",
	})
	if string(res.Raw) != "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n" {
		t.Fatalf("raw %q", res.Raw)
	}
}

func TestLateGreetingInTwoParts(t *testing.T) {
	port := serve(t, func(c *net.TCPConn) {
		time.Sleep(30 * time.Millisecond)
		_, _ = c.Write([]byte("220 mail.example.org ESMTP Pos"))
		time.Sleep(20 * time.Millisecond)
		_, _ = c.Write([]byte("tfix (Debian/GNU)\r\n"))
		drain(c)
	})
	res := probe(t, New(Config{GreetingWait: 2 * time.Second}), port)
	expectData(t, res, map[string]any{
		"name": "smtp", "banner": "220 mail.example.org ESMTP Postfix (Debian/GNU)", "probe": "NULL",
		"method": "probe_matching", "product": "Postfix smtpd", "port": port, "tunnel": "",
	})
}

func TestHTTPServer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/" || r.Proto != "HTTP/1.0" {
			http.Error(w, "unexpected request", http.StatusBadRequest)
			return
		}
		w.Header().Set("Server", "nginx/1.22.1")
		w.Header().Set("Content-Type", "text/plain")
		w.Header()["Date"] = nil
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	port := srv.Listener.Addr().(*net.TCPAddr).Port

	res := probe(t, testModule(), port)
	if res.Status != probes.StatusSuccess {
		t.Fatalf("status %q (%s)", res.Status, res.Error)
	}
	expectData(t, res, map[string]any{
		"name": "http", "banner": `HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nServer: nginx/1.22.1\r\nContent-Length: 2`,
		"probe": "GetRequest", "method": "probe_matching", "product": "nginx", "version": "1.22.1",
		"port": port, "tunnel": "",
	})
	if !strings.HasSuffix(string(res.Raw), "\r\n\r\nok") {
		t.Fatalf("raw %q lacks the body", res.Raw)
	}
}

func TestSpeaksOnlyWhenSpokenTo(t *testing.T) {
	// A redis-like server: silent until a command comes.
	port := serve(t, func(c *net.TCPConn) {
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "GET / HTTP/1.0\r\n" {
			return
		}
		_, _ = c.Write([]byte("-ERR wrong number of arguments for 'get' command\r\n"))
		drain(c)
	})
	res := probe(t, testModule(), port)
	expectData(t, res, map[string]any{
		"name": "redis", "banner": "-ERR wrong number of arguments for 'get' command", "probe": "GetRequest",
		"method": "probe_matching", "port": port, "tunnel": "",
	})
}

func TestFailures(t *testing.T) {
	silent := serve(t, func(c *net.TCPConn) { drain(c) })
	resets := serve(t, func(c *net.TCPConn) { _ = c.SetLinger(0) })
	closes := serve(t, func(c *net.TCPConn) { _ = c.CloseWrite(); drain(c) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).Port
	ln.Close()

	cases := []struct {
		name   string
		port   int
		status probes.Status
		probe  string
		errHas string
	}{
		{"silent", silent, probes.StatusTimeout, "GetRequest", "i/o timeout"},
		{"reset", resets, probes.StatusReset, "NULL", "connection reset"},
		{"closes without a word", closes, probes.StatusReset, "NULL", "EOF"},
		{"closed port", closed, probes.StatusRefused, "NULL", "connection refused"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := probe(t, testModule(), c.port)
			if res.Status != c.status || !strings.Contains(res.Error, c.errHas) {
				t.Fatalf("status %q error %q; want %q containing %q", res.Status, res.Error, c.status, c.errHas)
			}
			if len(res.Raw) != 0 {
				t.Fatalf("raw %q", res.Raw)
			}
			expectData(t, res, map[string]any{
				"name": "unknown", "banner": "", "probe": c.probe, "method": "table_default",
				"port": c.port, "tunnel": "",
			})
		})
	}
}

func TestContextEnds(t *testing.T) {
	silent := serve(t, func(c *net.TCPConn) { drain(c) })
	m := New(Config{GreetingWait: 5 * time.Second, ReplyWait: 5 * time.Second})
	target := probes.Target{IP: "127.0.0.1", Port: silent}

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	res, err := m.Probe(ctx, target)
	if err != nil || res.Status != probes.StatusCanceled || res.Error != context.Canceled.Error() {
		t.Fatalf("canceled: %q %q %v", res.Status, res.Error, err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("cancel took %v to take effect", el)
	}

	ctx, cancel = context.WithTimeout(context.Background(), 80*time.Millisecond)
	defer cancel()
	res, err = m.Probe(ctx, target)
	if err != nil || res.Status != probes.StatusTimeout {
		t.Fatalf("deadline: %q %q %v", res.Status, res.Error, err)
	}
	// the deadline passed during the greeting wait: no probe was sent
	if res.Data["probe"] != "NULL" {
		t.Fatalf("probe %v sent after the deadline", res.Data["probe"])
	}
}

func TestReadLimit(t *testing.T) {
	port := serve(t, greeter(strings.Repeat("x", 100)+"\r\n"))
	res := probe(t, New(Config{ReadLimit: 10}), port)
	if string(res.Raw) != "xxxxxxxxxx" {
		t.Fatalf("raw %q, want the first 10 bytes", res.Raw)
	}
}

func TestIdentify(t *testing.T) {
	mysqlGreeting := func(version string) string {
		payload := "\x0a" + version + "\x00\x08\x00\x00\x00abcdefgh\x00\xff\xf7\x08\x02\x00"
		return string([]byte{byte(len(payload)), 0, 0, 0}) + payload
	}
	cases := []struct {
		reply                  string
		port                   int
		name, product, version string
		matched                bool
	}{
		{"SSH-2.0-OpenSSH_8.4p1 Debian-5+deb11u1\r\n", 22, "ssh", "OpenSSH", "8.4p1", true},
		{"SSH-2.0-OpenSSH_for_Windows_8.1\r\n", 22, "ssh", "", "", true},
		{"SSH-2.0-dropbear_2022.83\r\n", 2222, "ssh", "Dropbear sshd", "2022.83", true},
		{"SSH-1.99-Cisco-1.25\r\n", 22, "ssh", "", "", true},
		{"HTTP/1.1 400 Bad Request\r\nServer: Apache/2.4.57 (Debian)\r\n\r\n", 80, "http", "Apache httpd", "2.4.57", true},
		{"HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\n", 80, "http", "nginx", "", true},
		{"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\nServer: nginx/1.2.3\r\n", 80, "http", "", "", true},
		{"HTTP/1.1 200 OK\r\nServer: Microsoft-IIS/10.0\r\n\r\n", 80, "http", "Microsoft IIS httpd", "10.0", true},
		{"220 (vsFTPd 3.0.5)\r\n", 21, "ftp", "vsftpd", "3.0.5", true},
		{"220 ProFTPD 1.3.8 Server (Debian) [::ffff:10.0.0.1]\r\n", 21, "ftp", "ProFTPD", "1.3.8", true},
		{"220 Welcome to the FTP service\r\n", 21, "ftp", "", "", true},
		{"220 mx.example.com ESMTP Exim 4.96 Mon, 01 Jan 2024\r\n", 25, "smtp", "Exim smtpd", "4.96", true},
		{"220 mx.google.com ESMTP a1-2\r\n", 25, "smtp", "", "", true},
		{"+OK Dovecot (Debian) ready.\r\n", 110, "pop3", "Dovecot pop3d", "", true},
		{"* OK [CAPABILITY IMAP4rev1 LITERAL+] Dovecot (Debian) ready.\r\n", 143, "imap", "Dovecot imapd", "", true},
		{"-NOAUTH Authentication required.\r\n", 6379, "redis", "", "", true},
		{mysqlGreeting("8.0.36"), 3306, "mysql", "MySQL", "8.0.36", true},
		{mysqlGreeting("5.5.5-10.11.6-MariaDB-0+deb12u1"), 3306, "mysql", "MariaDB", "10.11.6", true},
		{"RFB 003.008\n", 5900, "vnc", "", "", true},
		{"\xff\xfd\x18\xff\xfd\x20", 23, "telnet", "", "", true},
		{"ERROR\r\n", 11211, "memcached", "", "", true},
		{"\x00\x01garbage", 22, "ssh", "", "", false},
		{"\x00\x01garbage", 31337, "unknown", "", "", false},
		{"", 443, "https", "", "", false},
	}
	for _, c := range cases {
		got := identify([]byte(c.reply), c.port)
		want := match{name: c.name, product: c.product, version: c.version, matched: c.matched}
		if got != want {
			t.Errorf("identify(%q, %d) = %+v, want %+v", c.reply, c.port, got, want)
		}
	}
}

func TestProbeFor(t *testing.T) {
	for port, want := range map[int]string{80: "GetRequest", 8080: "GetRequest", 31337: "GetRequest", 11211: "GenericLines", 7: "GenericLines"} {
		if got := probeFor(port).name; got != want {
			t.Errorf("probeFor(%d) = %s, want %s", port, got, want)
		}
	}
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
	if err := fs.Parse([]string{"-service.greeting-wait=1s", "-service.read-limit=100", "-service.reply-wait=3s"}); err != nil {
		t.Fatal(err)
	}
	if c != (Config{GreetingWait: time.Second, ReplyWait: 3 * time.Second, ReadLimit: 100}) {
		t.Fatalf("parsed %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	err := Config{ReadLimit: -1}.Validate()
	for _, want := range []string{"greeting", "reply", "read limit"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("zero config: %v, want a %s error", err, want)
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
	port := serve(t, greeter("SSH-2.0-OpenSSH_9.2p1\r\n"))
	pool := probes.NewPool(probes.PoolConfig{Concurrency: 8, PerHost: 2, Timeout: 2 * time.Second})
	m := testModule()
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
	port := serve(b, greeter("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"))
	m := New(DefaultConfig())
	target := probes.Target{IP: "127.0.0.1", Port: port, Protocol: "tcp"}
	ctx := context.Background()
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		res, err := m.Probe(ctx, target)
		if err != nil || res.Status != probes.StatusSuccess {
			b.Fatalf("%v %q %s", err, res.Status, res.Error)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "probes/s")
}

func BenchmarkServiceGreeterParallel(b *testing.B) {
	port := serve(b, greeter("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"))
	m := New(DefaultConfig())
	target := probes.Target{IP: "127.0.0.1", Port: port, Protocol: "tcp"}
	b.ReportAllocs()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			res, err := m.Probe(context.Background(), target)
			if err != nil || res.Status != probes.StatusSuccess {
				b.Errorf("%v %q %s", err, res.Status, res.Error)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "probes/s")
}
