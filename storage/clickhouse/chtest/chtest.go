// Package chtest starts private clickhouse-server processes for tests: a
// config and a data directory in a temp dir, free ports on 127.0.0.1 only,
// never the system service. Start gives a test its own server; Shared gives
// every test of a package one server (stop it with Main), and NewDatabase a
// fresh database on it.
package chtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
)

// Binary is the server Debian's clickhouse-server package installs.
const Binary = "/usr/sbin/clickhouse-server"

// startTimeout bounds one start: the process up and answering a ping.
const startTimeout = 30 * time.Second

// startAttempts: ports are picked free and then handed to the server, so
// another process can take one in between; a failed start retries on new ones.
const startAttempts = 3

// Server is a running private clickhouse-server.
type Server struct {
	Addr string // host:port of the native protocol
	Dir  string // config, data and logs

	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has been waited for
}

// Start starts a private server for t and returns its address; it stops
// the server and removes its directory when t ends. It skips t when
// clickhouse-server is not installed.
func Start(t testing.TB) string {
	t.Helper()
	return StartServer(t).Addr
}

// StartServer is Start for a test that also stops the server itself.
func StartServer(t testing.TB) *Server {
	t.Helper()
	skipIfMissing(t)
	srv, err := start(t.TempDir())
	if err != nil {
		t.Fatalf("cannot start clickhouse-server: %v", err)
	}
	t.Cleanup(srv.Stop)
	return srv
}

var shared struct {
	once sync.Once
	dir  string // holds the server's attempt directories
	srv  *Server
	err  error
}

// Shared returns the address of the package's shared server, starting it on
// first use. Its directory is not t's: Main stops it and removes it after
// every test ran. It skips t when clickhouse-server is not installed.
func Shared(t testing.TB) string {
	t.Helper()
	skipIfMissing(t)
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "chtest-")
		if shared.err != nil {
			return
		}
		shared.srv, shared.err = start(shared.dir)
	})
	if shared.err != nil {
		t.Fatalf("cannot start shared clickhouse-server: %v", shared.err)
	}
	return shared.srv.Addr
}

// Main runs the package's tests and then stops the shared server, if one
// was started. Call it from TestMain: os.Exit(chtest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if shared.srv != nil {
		shared.srv.Stop()
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
	}
	return code
}

// NewDatabase returns the name of a database no other test uses; it drops
// the database (if it was created) when t ends.
func NewDatabase(t testing.TB, addr string) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "test_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		conn, err := ch.Open(&ch.Options{Addr: []string{addr}, DialTimeout: 5 * time.Second})
		if err != nil {
			return
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name); err != nil {
			t.Logf("cannot drop test database %s: %v", name, err)
		}
	})
	return name
}

func skipIfMissing(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(Binary); err != nil {
		t.Skip("clickhouse-server not installed; `make deps` (root) installs it")
	}
}

// start runs a server in dir, retrying on fresh ports when one is taken.
func start(dir string) (*Server, error) {
	var errs []error
	for attempt := range startAttempts {
		attemptDir := filepath.Join(dir, strconv.Itoa(attempt))
		srv, err := startOnce(attemptDir)
		if err == nil {
			return srv, nil
		}
		errs = append(errs, err)
		_ = os.RemoveAll(attemptDir)
	}
	return nil, errors.Join(errs...)
}

func startOnce(dir string) (*Server, error) {
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	for _, sub := range []string{"data", "tmp", "user_files", "format_schemas", "log"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o750); err != nil {
			return nil, err
		}
	}
	config := filepath.Join(dir, "config.xml")
	if err := os.WriteFile(config, []byte(configXML(dir, ports[0], ports[1], ports[2])), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "users.xml"), []byte(usersXML), 0o600); err != nil {
		return nil, err
	}
	out, err := os.Create(filepath.Join(dir, "log", "stdout.log"))
	if err != nil {
		return nil, err
	}
	defer out.Close() // the child holds its own descriptor

	cmd := exec.Command(Binary, "--config-file="+config)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	// The server dies with the test binary, even when the binary is
	// killed before its cleanups run.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	srv := &Server{
		Addr:   net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
		Dir:    dir,
		cmd:    cmd,
		exited: make(chan struct{}),
	}
	go func() {
		_ = cmd.Wait()
		close(srv.exited)
	}()
	if err := srv.waitReady(startTimeout); err != nil {
		srv.Stop()
		return nil, fmt.Errorf("%w (logs in %s)%s", err, dir, tail(filepath.Join(dir, "log", "server.err.log")))
	}
	return srv, nil
}

// waitReady pings until the server answers, it exits, or timeout passes.
func (s *Server) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	conn, err := ch.Open(&ch.Options{Addr: []string{s.Addr}, DialTimeout: time.Second})
	if err != nil {
		return err
	}
	defer conn.Close()
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return fmt.Errorf("clickhouse-server exited during start: %s", s.cmd.ProcessState)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		last = conn.Ping(ctx)
		cancel()
		if last == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("clickhouse-server not ready after %s: %w", timeout, last)
}

// Stop kills the server and waits (bounded) until it is gone. Stopping
// twice is harmless.
func (s *Server) Stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Kill()
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
	}
}

// freePorts returns n distinct ports free on 127.0.0.1 at the time of the call.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("cannot find a free port: %w", err)
		}
		defer l.Close() // held until all are picked, so they differ
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// tail returns the end of a log file, for a start failure's message.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	const keep = 2000
	if len(b) > keep {
		b = b[len(b)-keep:]
	}
	return "\n" + string(b)
}

// configXML is the smallest config 18.16 and current releases both accept:
// loopback only, every path inside dir. The root element is <yandex>, which
// newer releases still read.
func configXML(dir string, tcpPort, httpPort, interserverPort int) string {
	return `<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>` + filepath.Join(dir, "log", "server.log") + `</log>
    <errorlog>` + filepath.Join(dir, "log", "server.err.log") + `</errorlog>
    <size>10M</size>
    <count>1</count>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>` + strconv.Itoa(tcpPort) + `</tcp_port>
  <http_port>` + strconv.Itoa(httpPort) + `</http_port>
  <interserver_http_port>` + strconv.Itoa(interserverPort) + `</interserver_http_port>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <path>` + filepath.Join(dir, "data") + `/</path>
  <tmp_path>` + filepath.Join(dir, "tmp") + `/</tmp_path>
  <user_files_path>` + filepath.Join(dir, "user_files") + `/</user_files_path>
  <format_schema_path>` + filepath.Join(dir, "format_schemas") + `/</format_schema_path>
  <users_config>` + filepath.Join(dir, "users.xml") + `</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <mlock_executable>false</mlock_executable>
</yandex>
`
}

// usersXML: the default user, no password, loopback only.
const usersXML = `<?xml version="1.0"?>
<yandex>
  <profiles>
    <default>
      <max_memory_usage>2000000000</max_memory_usage>
    </default>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas>
    <default>
      <interval>
        <duration>3600</duration>
        <queries>0</queries>
        <errors>0</errors>
        <result_rows>0</result_rows>
        <read_rows>0</read_rows>
        <execution_time>0</execution_time>
      </interval>
    </default>
  </quotas>
</yandex>
`
