package probes

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", err)}
	}
	cases := []struct {
		name string
		err  error
		want Status
	}{
		{"nil", nil, StatusSuccess},
		{"refused", opErr(syscall.ECONNREFUSED), StatusRefused},
		{"reset", &net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, StatusReset},
		{"broken pipe", opErr(syscall.EPIPE), StatusReset},
		{"eof", fmt.Errorf("cannot read greeting: %w", io.EOF), StatusReset},
		{"host unreachable", opErr(syscall.EHOSTUNREACH), StatusUnreachable},
		{"net unreachable", opErr(syscall.ENETUNREACH), StatusUnreachable},
		{"i/o timeout", &net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, StatusTimeout},
		{"connect timeout", opErr(syscall.ETIMEDOUT), StatusTimeout},
		{"ctx deadline", fmt.Errorf("cannot probe: %w", context.DeadlineExceeded), StatusTimeout},
		{"ctx canceled", fmt.Errorf("cannot probe: %w", context.Canceled), StatusCanceled},
		{"protocol", fmt.Errorf("cannot parse banner: %w", ErrProtocol), StatusProtocolError},
		{"protocol wins over eof", fmt.Errorf("truncated: %w: %w", ErrProtocol, io.ErrUnexpectedEOF), StatusProtocolError},
		{"auth", fmt.Errorf("server says: %w", ErrAuthRequired), StatusAuthRequired},
		{"tls record", tls.RecordHeaderError{Msg: "tls: first record does not look like a TLS handshake"}, StatusTLSError},
		{"tls alert", &net.OpError{Op: "remote error", Err: tls.AlertError(40)}, StatusTLSError},
		{"tls plain text", fmt.Errorf("handshake: %w", errors.New("tls: server selected unsupported protocol version 300")), StatusTLSError},
		{"joined", errors.Join(errors.New("x"), errors.New("tls: bad certificate")), StatusTLSError},
		{"other", errors.New("something odd"), StatusError},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Classify(c.err); got != c.want {
				t.Fatalf("Classify(%v) = %q, want %q", c.err, got, c.want)
			}
		})
	}
}

func TestClassifyRealDialErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = net.Dial("tcp", addr)
	if got := Classify(err); got != StatusRefused {
		t.Fatalf("dial closed port: %v classified %q, want refused", err, got)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var d net.Dialer
	_, err = d.DialContext(ctx, "tcp", addr)
	if got := Classify(err); got != StatusCanceled {
		t.Fatalf("dial with canceled ctx: %v classified %q, want canceled", err, got)
	}
}

func decodeData(t *testing.T, r Result) map[string]any {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("unmarshal %s: %v", b, err)
	}
	return m
}

func TestResultJSON(t *testing.T) {
	started := time.UnixMilli(1_700_000_000_123)
	r := Result{
		Status:   StatusSuccess,
		Data:     map[string]any{"name": "ssh", "port": 22, "status": "module's own", "raw": "dropped"},
		Raw:      []byte("SSH-2.0-x\r\n\x00\xff\"é"),
		Started:  started,
		Duration: 1500 * time.Microsecond,
	}
	got := decodeData(t, r)
	want := map[string]any{
		"name":   "ssh",
		"port":   float64(22),
		"status": "success",
		"timing": map[string]any{"started_ms": float64(1_700_000_000_123), "duration_ms": 1.5},
		"raw":    `SSH-2.0-x\r\n\x00\xff\"é`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("data = %#v\nwant %#v", got, want)
	}
	back, err := strconv.Unquote(`"` + got["raw"].(string) + `"`)
	if err != nil || back != string(r.Raw) {
		t.Fatalf("raw does not unquote back: %q, %v", back, err)
	}
}

func TestResultJSONErrorAndTruncation(t *testing.T) {
	raw := []byte(strings.Repeat("a", RawLimit+10))
	got := decodeData(t, Result{Status: StatusTimeout, Error: "i/o timeout", Raw: raw})
	if got["status"] != "timeout" || got["error"] != "i/o timeout" {
		t.Fatalf("status/error = %v/%v", got["status"], got["error"])
	}
	if got["raw_truncated"] != true {
		t.Fatalf("raw_truncated = %v, want true", got["raw_truncated"])
	}
	if n := len(got["raw"].(string)); n != RawLimit {
		t.Fatalf("raw length = %d, want %d", n, RawLimit)
	}
	if ts := got["timing"].(map[string]any); ts["started_ms"] != float64(0) {
		t.Fatalf("zero Started gave started_ms %v, want 0", ts["started_ms"])
	}

	got = decodeData(t, Result{Status: StatusRefused, Data: map[string]any{"error": "module's", "raw_truncated": true}})
	if _, ok := got["error"]; ok {
		t.Fatalf("empty Error must omit error, got %v", got["error"])
	}
	if _, ok := got["raw"]; ok {
		t.Fatal("no raw bytes must omit raw")
	}
	if _, ok := got["raw_truncated"]; ok {
		t.Fatal("raw_truncated must only come from truncation")
	}
}

type namedModule struct{ name string }

func (m namedModule) Name() string { return m.name }
func (m namedModule) Probe(context.Context, Target) (Result, error) {
	return Result{Status: StatusSuccess}, nil
}

func TestRegistry(t *testing.T) {
	r, err := NewRegistry(namedModule{"vnc"}, namedModule{"service"}, namedModule{"ssh"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.Names(), []string{"service", "ssh", "vnc"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Names() = %v, want %v", got, want)
	}
	r.Names()[0] = "mutated"
	if r.Names()[0] != "service" {
		t.Fatal("Names must return a copy")
	}
	if m, ok := r.Get("ssh"); !ok || m.Name() != "ssh" {
		t.Fatalf("Get(ssh) = %v, %v", m, ok)
	}
	if _, ok := r.Get("ftp"); ok {
		t.Fatal("Get(ftp) found a module that was never registered")
	}

	if _, err := NewRegistry(namedModule{"ssh"}, namedModule{"ssh"}); !errors.Is(err, ErrDuplicateModule) {
		t.Fatalf("duplicate names: err = %v, want ErrDuplicateModule", err)
	}
	if _, err := NewRegistry(namedModule{""}); err == nil {
		t.Fatal("empty name: want an error")
	}
	if _, err := NewRegistry(nil); err == nil {
		t.Fatal("nil module: want an error")
	}
	empty, err := NewRegistry()
	if err != nil || len(empty.Names()) != 0 {
		t.Fatalf("empty registry: %v, %v", empty.Names(), err)
	}
}
