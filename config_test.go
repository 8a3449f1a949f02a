package main

import (
	"bytes"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestConfigPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "trawl.conf")
	os.WriteFile(file, []byte("# comment\napi.listen = 127.0.0.1:9001\nstream.listen: 127.0.0.1:9002\ndata-dir = /from/file\n"), 0o644)
	var cfg Config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	err := loadConfig(fs, &cfg, []string{"--config", file, "--data-dir", "/from/flag"},
		envOf(map[string]string{"TRAWL_STREAM_LISTEN": "127.0.0.1:9003", "TRAWL_DATA_DIR": "/from/env"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.API.Listen != "127.0.0.1:9001" {
		t.Errorf("file value not applied: api.listen = %s", cfg.API.Listen)
	}
	if cfg.Stream.Listen != "127.0.0.1:9003" {
		t.Errorf("env does not override the file: stream.listen = %s", cfg.Stream.Listen)
	}
	if cfg.DataDir != "/from/flag" {
		t.Errorf("flag does not override env: data-dir = %s", cfg.DataDir)
	}
}

func TestConfigReportsEveryError(t *testing.T) {
	var cfg Config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	err := loadConfig(fs, &cfg, []string{"--bus", "carrier-pigeon", "--api.listen", "nohost", "--api.shards", "0", "--log.format", "xml"}, envOf(nil))
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{"bus", "api.listen", "api.shards", "log.format"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s:\n%v", want, err)
		}
	}
	// a bad value in the environment or the file is named with its source
	file := filepath.Join(t.TempDir(), "bad.conf")
	os.WriteFile(file, []byte("no-such-setting = 1\n"), 0o644)
	fs = flag.NewFlagSet("t", flag.ContinueOnError)
	err = loadConfig(fs, &Config{}, []string{"--config", file}, envOf(map[string]string{"TRAWL_API_SHARDS": "many"}))
	if err == nil || !strings.Contains(err.Error(), "no-such-setting") || !strings.Contains(err.Error(), "TRAWL_API_SHARDS") {
		t.Fatalf("want both the unknown file setting and the bad env value named, got %v", err)
	}
}

func TestRolesNeedANetworkBus(t *testing.T) {
	for _, role := range []string{"api", "stream", "scanner", "worker", "ingest"} {
		var stderr bytes.Buffer
		code := run([]string{role, "--data-dir", t.TempDir(), "--log.format", "json"}, nil, io.Discard, &stderr, envOf(nil))
		if code != 1 || !strings.Contains(stderr.String(), "network bus") {
			t.Errorf("trawl %s with the in-process bus: exit %d, log %s", role, code, stderr.String())
		}
	}
	// a broker that is not there: a clear error at start, not a hang
	var stderr bytes.Buffer
	code := run([]string{"all", "--bus", "kafka", "--kafka.brokers", "127.0.0.1:1", "--data-dir", t.TempDir(), "--log.format", "json"}, nil, io.Discard, &stderr, envOf(nil))
	if code != 1 || !strings.Contains(strings.ToLower(stderr.String()), "kafka") {
		t.Errorf("trawl all --bus kafka with no broker: exit %d, log %s", code, stderr.String())
	}
}

func TestUnknownCommand(t *testing.T) {
	var stderr bytes.Buffer
	if code := run([]string{"frobnicate"}, nil, io.Discard, &stderr, envOf(nil)); code != 2 || !strings.Contains(stderr.String(), "unknown command") {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
}

func TestUserCommands(t *testing.T) {
	dir := t.TempDir()
	var out, errb bytes.Buffer
	if code := run([]string{"user", "add", "--data-dir", dir, "--name", "alice"}, nil, &out, &errb, envOf(nil)); code != 0 {
		t.Fatalf("user add: %d %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "X-APP-ID: app_") || !strings.Contains(out.String(), "X-USER-ID: ") {
		t.Fatalf("user add output: %s", out.String())
	}
	out.Reset()
	if code := run([]string{"user", "list"}, nil, &out, &errb, envOf(map[string]string{"TRAWL_DATA_DIR": dir})); code != 0 || !strings.Contains(out.String(), "alice") {
		t.Fatalf("user list (data dir from env): %d %q %s", code, out.String(), errb.String())
	}
	id := strings.Fields(out.String())[0]
	if code := run([]string{"user", "delete", "--data-dir", dir, id}, nil, io.Discard, &errb, envOf(nil)); code != 0 {
		t.Fatalf("user delete: %d %s", code, errb.String())
	}
	if code := run([]string{"user", "add", "--data-dir", dir}, nil, io.Discard, &errb, envOf(nil)); code != 2 {
		t.Fatalf("user add without --name: exit %d", code)
	}
}

func TestLoadSecretCreatesOnceUnderRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "auth.secret")
	const n = 8
	secrets := make(chan string, n)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			s, err := loadSecret(path)
			secrets <- string(s)
			errs <- err
		}()
	}
	first := ""
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		s := <-secrets
		if first == "" {
			first = s
		}
		if s != first || len(s) < 32 {
			t.Fatalf("processes disagree on the secret: %q vs %q", s, first)
		}
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	os.WriteFile(path, []byte("short\n"), 0o600)
	if _, err := loadSecret(path); err == nil {
		t.Fatal("a short secret was accepted")
	}
}
