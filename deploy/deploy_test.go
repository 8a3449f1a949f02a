// Package deploy holds the files that run trawl's scaled-out shape (compose,
// systemd, Kubernetes). Its tests keep them honest: every file is parsed,
// every TRAWL_* variable and --flag must exist in the binary built from this
// tree, and the configuration each file hands each role must pass trawl's own
// validation, so a renamed flag or a bad value fails here, not on deploy.
package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go.yaml.in/yaml/v3"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// trawlBin is the binary built from this tree by TestMain.
var trawlBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "trawl-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	trawlBin = filepath.Join(dir, "trawl")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", trawlBin, "trawl")
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	cancel()
	code := 1
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot build trawl: %v\n%s", err, out)
	} else {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// roles are the commands that start a role; all of them take every flag.
var roles = map[string]bool{"all": true, "api": true, "stream": true, "scanner": true, "worker": true, "ingest": true}

// flagSet is the flags of one trawl command, read from its -h output.
type flagSet map[string]bool

var (
	flagLine  = regexp.MustCompile(`(?m)^  -([a-z][a-z0-9.-]*)`)
	flagCache = map[string]flagSet{}
)

// commandFlags runs `trawl CMD… -h` and returns the flags it lists.
func commandFlags(t testing.TB, cmd ...string) flagSet {
	t.Helper()
	key := strings.Join(cmd, " ")
	if fs, ok := flagCache[key]; ok {
		return fs
	}
	out, _ := runTrawl(t, nil, append(cmd, "-h")...)
	fs := flagSet{}
	for _, m := range flagLine.FindAllStringSubmatch(out, -1) {
		fs[m[1]] = true
	}
	if len(fs) == 0 {
		t.Fatalf("trawl %s -h listed no flags:\n%s", key, out)
	}
	flagCache[key] = fs
	return fs
}

// envName is how trawl maps a flag to its variable: api.listen → TRAWL_API_LISTEN.
func envName(flag string) string {
	return "TRAWL_" + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(flag))
}

// knownEnv maps every TRAWL_* variable trawl reads to its flag.
func knownEnv(t testing.TB) map[string]string {
	t.Helper()
	m := map[string]string{}
	for f := range commandFlags(t, "all") {
		m[envName(f)] = f
	}
	return m
}

// runTrawl runs the binary with exactly env (plus PATH) and returns its
// combined output and exit code; it never runs longer than 30 s.
func runTrawl(t testing.TB, env map[string]string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, trawlBin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	}
	t.Fatalf("cannot run trawl %v: %v", args, err)
	return "", -1
}

// roleInvocation is how a deploy file starts trawl: argv after the binary
// and the TRAWL_* environment it sets.
type roleInvocation struct {
	where string
	args  []string
	env   map[string]string
}

// checkInvocation asserts the command and flags exist and that trawl accepts
// the whole configuration. `trawl kafka init` loads and validates the same
// config tree as every role, then dials the brokers: pointed at a closed
// loopback port it fails to connect (exit 1) after validation passed, and
// reports a bad configuration with exit 2 before dialing anything.
func checkInvocation(t testing.TB, inv roleInvocation) {
	t.Helper()
	if len(inv.args) == 0 {
		t.Errorf("%s: no trawl command", inv.where)
		return
	}
	rest := inv.args[1:]
	switch cmd := inv.args[0]; {
	case roles[cmd]:
	case cmd == "kafka" && len(rest) > 0 && rest[0] == "init":
		rest = rest[1:]
	default:
		t.Errorf("%s: trawl %q is not a role or kafka init", inv.where, cmd)
		return
	}
	all := commandFlags(t, "all")
	known := knownEnv(t)
	for _, a := range rest {
		if name, ok := strings.CutPrefix(a, "--"); ok && !all[strings.SplitN(name, "=", 2)[0]] {
			t.Errorf("%s: trawl has no flag %s", inv.where, a)
		}
	}
	for k := range inv.env {
		if _, ok := known[k]; !ok && strings.HasPrefix(k, "TRAWL_") {
			t.Errorf("%s: trawl reads no variable %s", inv.where, k)
		}
	}
	if inv.args[0] == "api" && inv.env["TRAWL_API_STREAM_URL"] == "" && !contains(rest, "--api.stream-url") {
		t.Errorf("%s: 'trawl api' needs api.stream-url (the public stream URL)", inv.where)
	}
	if inv.args[0] != "all" && inv.env["TRAWL_BUS"] != "kafka" && !contains(rest, "--bus") {
		t.Errorf("%s: a role of its own needs TRAWL_BUS=kafka", inv.where)
	}
	env := map[string]string{}
	for k, v := range inv.env {
		env[k] = v
	}
	args := append(append([]string{"kafka", "init"}, rest...), "--kafka.brokers", "127.0.0.1:1")
	out, code := runTrawl(t, env, args...)
	if code != 1 || !strings.Contains(out, "cannot create topics") {
		out, _, _ = strings.Cut(out, "Usage of") // the flag list says nothing new
		t.Errorf("%s: trawl rejects this configuration (exit %d):\n%s", inv.where, code, out)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s || strings.HasPrefix(v, s+"=") {
			return true
		}
	}
	return false
}

// TestCheckInvocationCatchesDrift proves the checker fails on what it must
// catch, so the tests below cannot pass vacuously.
func TestCheckInvocationCatchesDrift(t *testing.T) {
	cases := []struct {
		name string
		inv  roleInvocation
		want string
	}{
		{"unknown flag", roleInvocation{args: []string{"worker", "--worker.no-such-flag", "1"}, env: map[string]string{"TRAWL_BUS": "kafka"}}, "no flag --worker.no-such-flag"},
		{"unknown variable", roleInvocation{args: []string{"worker"}, env: map[string]string{"TRAWL_BUS": "kafka", "TRAWL_WORKR_GROUP": "x"}}, "no variable TRAWL_WORKR_GROUP"},
		{"bad value", roleInvocation{args: []string{"scanner"}, env: map[string]string{"TRAWL_BUS": "kafka", "TRAWL_SCANNER_SHARD": "2/2"}}, "rejects this configuration"},
		{"bad duration", roleInvocation{args: []string{"ingest"}, env: map[string]string{"TRAWL_BUS": "kafka", "TRAWL_INGEST_FLUSH_INTERVAL": "soon"}}, "rejects this configuration"},
		{"api without stream url", roleInvocation{args: []string{"api"}, env: map[string]string{"TRAWL_BUS": "kafka"}}, "needs api.stream-url"},
		{"memory bus", roleInvocation{args: []string{"worker"}}, "needs TRAWL_BUS=kafka"},
		{"not a role", roleInvocation{args: []string{"scna"}}, "not a role"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := &recorder{TB: t}
			checkInvocation(rec, c.inv)
			if !strings.Contains(rec.errors(), c.want) {
				t.Fatalf("got errors %q, want one containing %q", rec.errors(), c.want)
			}
		})
	}
	t.Run("good", func(t *testing.T) {
		rec := &recorder{TB: t}
		checkInvocation(rec, roleInvocation{where: "good", args: []string{"scanner", "--scanner.shard", "1/2"},
			env: map[string]string{"TRAWL_BUS": "kafka", "TRAWL_SCANNER_RATE": "500"}})
		if rec.errors() != "" {
			t.Fatalf("a valid invocation failed: %s", rec.errors())
		}
	})
}

// recorder keeps the errors a check reports instead of failing the test.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}
func (r *recorder) Helper()        {}
func (r *recorder) errors() string { return strings.Join(r.errs, "\n") }

// ---- compose -------------------------------------------------------------

// yamlDocs decodes every document of a YAML file into JSON-shaped values
// (merge keys resolved), so the checks below walk maps and slices.
func yamlDocs(t *testing.T, path string) []any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	var docs []any
	for {
		var doc any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s is not valid YAML: %v", path, err)
		}
		if doc == nil {
			continue
		}
		// through JSON: every number a float64 and every map a
		// map[string]any, as the walkers expect
		raw, err := json.Marshal(doc)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		docs = append(docs, v)
	}
	return docs
}

// obj and friends walk decoded YAML without a type per schema.
type obj = map[string]any

func get(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(obj)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func str(v any, path ...string) string {
	switch x := get(v, path...).(type) {
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	}
	return ""
}

func list(v any, path ...string) []any {
	l, _ := get(v, path...).([]any)
	return l
}

func strList(v any, path ...string) []string {
	var out []string
	for _, e := range list(v, path...) {
		out = append(out, str(e))
	}
	return out
}

// composeDefault resolves compose's ${VAR:-default} interpolation to the
// default, as an unconfigured `docker compose up` would.
var composeVar = regexp.MustCompile(`\$\{[A-Z_][A-Z0-9_]*:-([^}]*)\}`)

func composeEnv(m any) map[string]string {
	env := map[string]string{}
	for k, v := range asObj(m) {
		env[k] = composeVar.ReplaceAllString(str(v), "$1")
	}
	return env
}

func asObj(v any) obj { m, _ := v.(obj); return m }

func TestCompose(t *testing.T) {
	docs := yamlDocs(t, "compose.yaml")
	if len(docs) != 1 {
		t.Fatalf("compose.yaml: %d documents, want 1", len(docs))
	}
	services := asObj(get(docs[0], "services"))
	for _, want := range []string{"kafka", "clickhouse", "kafka-init", "api", "stream-a", "stream-b", "scanner-0", "scanner-1", "worker", "ingest"} {
		if services[want] == nil {
			t.Errorf("compose.yaml: no service %s", want)
		}
	}
	if n := str(services["worker"], "deploy", "replicas"); n != "3" {
		t.Errorf("worker replicas %q, want 3", n)
	}
	if n := str(services["ingest"], "deploy", "replicas"); n != "2" {
		t.Errorf("ingest replicas %q, want 2", n)
	}
	if img := str(services["kafka"], "image"); !strings.HasPrefix(img, "apache/kafka:") ||
		!strings.Contains(str(services["kafka"], "environment", "KAFKA_PROCESS_ROLES"), "controller") {
		t.Errorf("kafka: want apache/kafka in KRaft mode (broker and controller), got %s", img)
	}
	secrets := asObj(get(docs[0], "secrets"))
	volumes := asObj(get(docs[0], "volumes"))
	if _, ok := volumes["api-data"]; !ok {
		t.Error("compose.yaml: no api-data volume for the api's embedded store")
	}

	raw := rawOverlay(t)
	shards := map[string]string{}
	apiShards := ""
	for name, svc := range services {
		// depends_on names services that exist, with a condition that can hold
		for dep, cond := range asObj(get(svc, "depends_on")) {
			target := services[dep]
			switch c := str(cond, "condition"); {
			case target == nil:
				t.Errorf("%s depends on missing service %s", name, dep)
			case c == "service_healthy" && get(target, "healthcheck") == nil:
				t.Errorf("%s waits for %s to be healthy, which has no healthcheck", name, dep)
			case c == "service_completed_successfully" && str(target, "restart") != "no":
				t.Errorf("%s waits for %s to complete, which restarts", name, dep)
			case c == "":
				t.Errorf("%s depends on %s without a condition", name, dep)
			}
		}
		for _, s := range strList(svc, "secrets") {
			if secrets[s] == nil {
				t.Errorf("%s uses undeclared secret %s", name, s)
			}
		}
		for _, v := range strList(svc, "volumes") {
			if src, _, ok := strings.Cut(v, ":"); ok && !strings.HasPrefix(src, ".") && !strings.HasPrefix(src, "/") {
				if _, ok := volumes[src]; !ok {
					t.Errorf("%s uses undeclared volume %s", name, src)
				}
			}
		}
		if str(svc, "image") != "trawl:local" {
			continue
		}
		env := composeEnv(get(svc, "environment"))
		args := strList(svc, "command")
		checkInvocation(t, roleInvocation{where: "compose " + name, args: args, env: env})
		if len(args) == 0 {
			continue
		}
		switch args[0] {
		case "api", "stream":
			file := env["TRAWL_AUTH_SECRET_FILE"]
			if !contains(strList(svc, "secrets"), "trawl_auth_secret") || file != "/run/secrets/trawl_auth_secret" {
				t.Errorf("%s must read the shared token secret, mounted as trawl_auth_secret (file %q)", name, file)
			}
			if get(svc, "healthcheck") == nil {
				t.Errorf("%s has a /health endpoint but no healthcheck", name)
			}
			if args[0] == "api" {
				apiShards = env["TRAWL_API_SHARDS"]
			}
		case "scanner":
			shards[name] = env["TRAWL_SCANNER_SHARD"]
			if o := raw[name]; o != nil {
				renv := env
				for k, v := range composeEnv(get(o, "environment")) {
					renv[k] = v
				}
				checkInvocation(t, roleInvocation{where: "compose.raw.yaml " + name, args: args, env: renv})
			}
		}
	}
	checkShards(t, "compose", shards, apiShards)
	for name := range raw {
		if shards[name] == "" {
			t.Errorf("compose.raw.yaml overrides %s, which is not a scanner of compose.yaml", name)
		}
	}
	dockerComposeConfig(t)
}

// checkShards asserts the scanners cover shards 0..n-1 of n = api.shards once each.
func checkShards(t *testing.T, where string, shards map[string]string, apiShards string) {
	t.Helper()
	n, err := strconv.Atoi(apiShards)
	if err != nil || n < 1 {
		t.Errorf("%s: api shards %q is not a count", where, apiShards)
		return
	}
	if len(shards) != n {
		t.Errorf("%s: %d scanners for api shards %d", where, len(shards), n)
	}
	seen := map[string]string{}
	for name, s := range shards {
		if other, dup := seen[s]; dup {
			t.Errorf("%s: %s and %s both scan shard %s", where, name, other, s)
		}
		seen[s] = name
	}
	for i := 0; i < n; i++ {
		if _, ok := seen[fmt.Sprintf("%d/%d", i, n)]; !ok {
			t.Errorf("%s: no scanner runs shard %d/%d (have %v)", where, i, n, shards)
		}
	}
}

// rawOverlay returns compose.raw.yaml's services and checks they get what
// AF_PACKET needs and nothing more.
func rawOverlay(t *testing.T) obj {
	t.Helper()
	docs := yamlDocs(t, "compose.raw.yaml")
	services := asObj(get(docs[0], "services"))
	if len(services) == 0 {
		t.Fatal("compose.raw.yaml: no services")
	}
	for name, svc := range services {
		if got := strList(svc, "cap_add"); len(got) != 1 || got[0] != "NET_RAW" {
			t.Errorf("compose.raw.yaml %s: cap_add %v, want [NET_RAW]", name, got)
		}
		if got := strList(svc, "cap_drop"); len(got) != 1 || got[0] != "ALL" {
			t.Errorf("compose.raw.yaml %s: cap_drop %v, want [ALL]", name, got)
		}
		if str(svc, "environment", "TRAWL_SCANNER_TRANSPORT") != "raw" {
			t.Errorf("compose.raw.yaml %s: does not select the raw transport", name)
		}
	}
	return services
}

// dockerComposeConfig runs `docker compose config`, which parses and
// validates without an engine, when the compose plugin is installed.
func dockerComposeConfig(t *testing.T) {
	t.Helper()
	if exec.Command("docker", "compose", "version").Run() != nil {
		t.Log("docker compose is not installed: skipped `docker compose config`")
		return
	}
	// the secret is generated per installation; give compose a stand-in
	dir := t.TempDir()
	for _, f := range []string{"compose.yaml", "compose.raw.yaml", "Dockerfile"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, f), b, 0o644)
	}
	os.MkdirAll(filepath.Join(dir, "secrets"), 0o700)
	os.WriteFile(filepath.Join(dir, "secrets", "auth.secret"), []byte(strings.Repeat("0", 64)+"\n"), 0o600)
	for _, files := range [][]string{{"compose.yaml"}, {"compose.yaml", "compose.raw.yaml"}} {
		args := []string{"compose"}
		for _, f := range files {
			args = append(args, "-f", filepath.Join(dir, f))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		out, err := exec.CommandContext(ctx, "docker", append(args, "config", "--quiet")...).CombinedOutput()
		cancel()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("docker compose config %v: %v\n%s", files, err, out)
		}
	}
}

// ---- systemd -------------------------------------------------------------

// unitFile is a parsed systemd unit: section → key → values in order.
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		case section == "":
			t.Fatalf("%s:%d: setting outside a section", path, n)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s:%d: want Key=Value", path, n)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

func (u unitFile) one(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// readEnvFile reads KEY=VALUE lines as systemd's EnvironmentFile= does (no quoting used here).
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not KEY=VALUE", path, line)
		}
		env[k] = v
	}
	return env
}

func TestSystemdUnits(t *testing.T) {
	fileEnv := readEnvFile(t, "systemd/trawl.env")
	if _, ok := fileEnv["TRAWL_AUTH_SECRET_FILE"]; ok {
		t.Error("trawl.env sets TRAWL_AUTH_SECRET_FILE: the secret comes from LoadCredential=, and EnvironmentFile= would override the units")
	}
	units := map[string]string{ // unit file → the instance to check it as
		"trawl-api.service":        "",
		"trawl-stream.service":     "",
		"trawl-scanner@.service":   "0-2",
		"trawl-worker@.service":    "1",
		"trawl-ingest@.service":    "1",
		"trawl-kafka-init.service": "",
	}
	shards := map[string]string{}
	for file, instance := range units {
		u := parseUnit(t, filepath.Join("systemd", file))
		for _, sec := range []string{"Unit", "Service"} {
			if u[sec] == nil {
				t.Errorf("%s: no [%s] section", file, sec)
			}
		}
		if got := u.one("Service", "EnvironmentFile"); got != "/etc/trawl/trawl.env" {
			t.Errorf("%s: EnvironmentFile=%s, want /etc/trawl/trawl.env", file, got)
		}
		if u.one("Service", "User") != "trawl" || u.one("Service", "ProtectSystem") != "strict" || u.one("Service", "NoNewPrivileges") != "yes" {
			t.Errorf("%s: want User=trawl, ProtectSystem=strict, NoNewPrivileges=yes", file)
		}
		oneshot := u.one("Service", "Type") == "oneshot"
		if !oneshot && (u.one("Service", "Restart") != "on-failure" || u.one("Install", "WantedBy") == "") {
			t.Errorf("%s: want Restart=on-failure and an [Install] WantedBy=", file)
		}
		scanner := strings.HasPrefix(file, "trawl-scanner@")
		ambient, bounding := u.one("Service", "AmbientCapabilities"), u["Service"]["CapabilityBoundingSet"]
		if scanner && (ambient != "CAP_NET_RAW" || len(bounding) != 1 || bounding[0] != "CAP_NET_RAW") {
			t.Errorf("%s: want AmbientCapabilities=CAP_NET_RAW and CapabilityBoundingSet=CAP_NET_RAW, got %q %q", file, ambient, bounding)
		}
		if !scanner && (ambient != "" || len(bounding) != 1 || bounding[0] != "") {
			t.Errorf("%s: must hold no capability (AmbientCapabilities=%q, CapabilityBoundingSet=%q)", file, ambient, bounding)
		}
		api := file == "trawl-api.service"
		if api != (u.one("Service", "StateDirectory") == "trawl") {
			t.Errorf("%s: only the api keeps state (StateDirectory=trawl)", file)
		}

		// the command line systemd would run, specifiers and variables expanded
		state, creds := t.TempDir(), t.TempDir()
		cmdline := u.one("Service", "ExecStart")
		cmdline = strings.NewReplacer("%I", strings.ReplaceAll(instance, "-", "/"), "%i", instance,
			"${STATE_DIRECTORY}", state, "${CREDENTIALS_DIRECTORY}", creds).Replace(cmdline)
		if strings.ContainsAny(cmdline, "%$") {
			t.Errorf("%s: ExecStart has an unexpanded specifier or variable: %s", file, cmdline)
		}
		argv := strings.Fields(cmdline)
		if len(argv) < 2 || argv[0] != "/usr/local/bin/trawl" {
			t.Errorf("%s: ExecStart=%s does not run /usr/local/bin/trawl", file, cmdline)
			continue
		}
		env := map[string]string{}
		for _, kv := range u["Service"]["Environment"] {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
		for k, v := range fileEnv { // EnvironmentFile= overrides Environment=
			env[k] = v
		}
		checkInvocation(t, roleInvocation{where: "systemd " + file, args: argv[1:], env: env})
		if argv[1] == "api" || argv[1] == "stream" {
			if !strings.HasPrefix(u.one("Service", "LoadCredential"), "auth.secret:/etc/trawl/auth.secret") ||
				!strings.Contains(cmdline, "--auth.secret-file "+creds+"/auth.secret") {
				t.Errorf("%s: must read the shared token secret through LoadCredential=auth.secret", file)
			}
		}
		if argv[1] == "scanner" {
			for i := 0; i < 2; i++ { // the instances trawl.env's TRAWL_API_SHARDS=2 asks for
				shards[fmt.Sprintf("trawl-scanner@%d-2", i)] = fmt.Sprintf("%d/2", i)
			}
		}
	}
	checkShards(t, "systemd", shards, fileEnv["TRAWL_API_SHARDS"])
	systemdVerify(t, units)
}

// systemdVerify runs `systemd-analyze verify` on the units inside a scratch
// root holding the binary, the environment file and the system's own units,
// and fails on any warning it prints.
func systemdVerify(t *testing.T, units map[string]string) {
	t.Helper()
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze is not installed (Debian: systemd): skipped `systemd-analyze verify`")
		return
	}
	sysUnits := "/lib/systemd/system"
	if _, err := os.Stat(filepath.Join(sysUnits, "sysinit.target")); err != nil {
		t.Logf("no system units in %s: skipped `systemd-analyze verify`", sysUnits)
		return
	}
	root := t.TempDir()
	copyFile(t, trawlBin, filepath.Join(root, "usr/local/bin/trawl"), 0o755)
	copyFile(t, "systemd/trawl.env", filepath.Join(root, "etc/trawl/trawl.env"), 0o644)
	if err := os.MkdirAll(filepath.Join(root, "usr/lib/systemd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-r", sysUnits, filepath.Join(root, "usr/lib/systemd/system")).CombinedOutput(); err != nil {
		t.Fatalf("copy system units: %v\n%s", err, out)
	}
	var names []string
	for file, instance := range units {
		copyFile(t, filepath.Join("systemd", file), filepath.Join(root, "etc/systemd/system", file), 0o644)
		names = append(names, strings.Replace(file, "@.", "@"+instance+".", 1))
	}
	sort.Strings(names)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sa, append([]string{"verify", "--root=" + root}, names...)...)
	cmd.Dir = filepath.Join(root, "etc/systemd/system")
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify %v: %v\n%s", names, err, out)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// ---- Kubernetes ----------------------------------------------------------

// kinds are the objects the manifests may hold, with their API versions.
var kinds = map[string]string{
	"Namespace": "v1", "ConfigMap": "v1", "Secret": "v1", "Service": "v1", "PersistentVolumeClaim": "v1",
	"Deployment": "apps/v1", "StatefulSet": "apps/v1", "Job": "batch/v1",
}

// manifests are the decoded documents of every file kustomization.yaml lists.
type manifests struct {
	configMaps map[string]map[string]string
	secrets    map[string]map[string]string
	pvcs       map[string]bool
	services   map[string]any
	workloads  map[string]any // kind/name → object
}

func loadManifests(t *testing.T) manifests {
	t.Helper()
	kust := yamlDocs(t, "k8s/kustomization.yaml")
	files := strList(kust[0], "resources")
	onDisk, _ := filepath.Glob("k8s/*.yaml")
	if len(onDisk) != len(files)+1 {
		t.Errorf("kustomization.yaml lists %v; k8s/ holds %v", files, onDisk)
	}
	m := manifests{configMaps: map[string]map[string]string{}, secrets: map[string]map[string]string{},
		pvcs: map[string]bool{}, services: map[string]any{}, workloads: map[string]any{}}
	for _, f := range files {
		for _, d := range yamlDocs(t, filepath.Join("k8s", f)) {
			kind, name := str(d, "kind"), str(d, "metadata", "name")
			where := f + " " + kind + "/" + name
			if want, ok := kinds[kind]; !ok || str(d, "apiVersion") != want {
				t.Errorf("%s: unexpected apiVersion %q for kind %q", where, str(d, "apiVersion"), kind)
			}
			if name == "" {
				t.Errorf("%s: no metadata.name", where)
			}
			if kind != "Namespace" && str(d, "metadata", "namespace") != "trawl" {
				t.Errorf("%s: namespace %q, want trawl", where, str(d, "metadata", "namespace"))
			}
			switch kind {
			case "ConfigMap":
				m.configMaps[name] = composeEnv(get(d, "data"))
			case "Secret":
				m.secrets[name] = composeEnv(get(d, "stringData"))
				for k := range asObj(get(d, "data")) {
					m.secrets[name][k] = "(base64)"
				}
			case "PersistentVolumeClaim":
				m.pvcs[name] = true
			case "Service":
				m.services[name] = d
			case "Deployment", "StatefulSet", "Job":
				m.workloads[kind+"/"+name] = d
			}
		}
	}
	return m
}

func TestKubernetes(t *testing.T) {
	m := loadManifests(t)
	cfg := m.configMaps["trawl-config"]
	if cfg == nil {
		t.Fatal("no ConfigMap trawl-config")
	}
	if s := m.secrets["trawl-secrets"]["auth.secret"]; len(s) >= 32 {
		t.Errorf("secret.yaml ships a usable token secret (%d characters): keep a placeholder trawl refuses", len(s))
	}
	replicas := map[string]string{"Deployment/trawl-api": "1", "Deployment/trawl-stream": "2",
		"Deployment/trawl-worker": "3", "Deployment/trawl-ingest": "2", "StatefulSet/trawl-scanner": cfg["TRAWL_API_SHARDS"]}
	for w, n := range replicas {
		if m.workloads[w] == nil {
			t.Errorf("no %s", w)
		} else if got := str(m.workloads[w], "spec", "replicas"); got != n {
			t.Errorf("%s: replicas %s, want %s", w, got, n)
		}
	}
	if m.workloads["Job/trawl-kafka-init"] == nil {
		t.Error("no Job trawl-kafka-init")
	}
	if s := str(m.workloads["Deployment/trawl-api"], "spec", "strategy", "type"); s != "Recreate" {
		t.Errorf("trawl-api strategy %q: two api pods must never share the embedded store (Recreate)", s)
	}
	if svc := str(m.workloads["StatefulSet/trawl-scanner"], "spec", "serviceName"); m.services[svc] == nil {
		t.Errorf("scanner StatefulSet names service %q, which is not defined", svc)
	}

	for id, w := range m.workloads {
		pod := get(w, "spec", "template", "spec")
		labels := asObj(get(w, "spec", "template", "metadata", "labels"))
		for k, v := range asObj(get(w, "spec", "selector", "matchLabels")) {
			if labels[k] != v {
				t.Errorf("%s: selector %s=%v does not match the pod labels", id, k, v)
			}
		}
		if !strings.HasPrefix(id, "Job/") && len(asObj(get(w, "spec", "selector", "matchLabels"))) == 0 {
			t.Errorf("%s: no selector", id)
		}
		if get(pod, "securityContext", "runAsNonRoot") != true {
			t.Errorf("%s: pods must run as non-root", id)
		}
		volumes := map[string]any{}
		for _, v := range list(pod, "volumes") {
			volumes[str(v, "name")] = v
			if c := str(v, "persistentVolumeClaim", "claimName"); c != "" && !m.pvcs[c] {
				t.Errorf("%s: volume claims missing PVC %s", id, c)
			}
			if s := str(v, "secret", "secretName"); s != "" {
				for _, it := range list(v, "secret", "items") {
					if _, ok := m.secrets[s][str(it, "key")]; !ok {
						t.Errorf("%s: secret %s has no key %s", id, s, str(it, "key"))
					}
				}
			}
		}
		for _, c := range list(pod, "containers") {
			where := id + " container " + str(c, "name")
			env, mounts := m.containerEnv(t, where, c), map[string]string{}
			for _, vm := range list(c, "volumeMounts") {
				if volumes[str(vm, "name")] == nil {
					t.Errorf("%s: mounts undefined volume %s", where, str(vm, "name"))
				}
				mounts[str(vm, "mountPath")] = str(vm, "name")
			}
			if get(c, "securityContext", "allowPrivilegeEscalation") != false || !contains(strList(c, "securityContext", "capabilities", "drop"), "ALL") {
				t.Errorf("%s: want allowPrivilegeEscalation false and capabilities drop ALL", where)
			}
			ports := map[string]bool{}
			for _, p := range list(c, "ports") {
				ports[str(p, "name")] = true
			}
			for _, probe := range []string{"readinessProbe", "livenessProbe"} {
				if p := str(c, probe, "httpGet", "port"); p != "" && !ports[p] {
					t.Errorf("%s: %s uses undefined port %s", where, probe, p)
				}
			}
			invocations := m.containerInvocations(t, where, w, c, env)
			for _, inv := range invocations {
				checkInvocation(t, inv)
			}
			if len(invocations) == 0 {
				continue
			}
			switch role := invocations[0].args[0]; role {
			case "api", "stream":
				file := env["TRAWL_AUTH_SECRET_FILE"]
				if mounts[filepath.Dir(file)] == "" {
					t.Errorf("%s: the token secret %s is not mounted", where, file)
				}
				if role == "api" {
					if v := volumes[mounts[env["TRAWL_DATA_DIR"]]]; str(v, "persistentVolumeClaim", "claimName") == "" {
						t.Errorf("%s: the api's data dir %s is not on a PersistentVolumeClaim", where, env["TRAWL_DATA_DIR"])
					}
				}
			case "scanner":
				shards := map[string]string{}
				for _, inv := range invocations {
					for i, a := range inv.args {
						if a == "--scanner.shard" && i+1 < len(inv.args) {
							shards[inv.where] = inv.args[i+1]
						}
					}
				}
				checkShards(t, where, shards, cfg["TRAWL_API_SHARDS"])
			}
		}
	}
	for name, svc := range m.services {
		matched := false
		for id, w := range m.workloads {
			labels := asObj(get(w, "spec", "template", "metadata", "labels"))
			sel := asObj(get(svc, "spec", "selector"))
			ok := len(sel) > 0
			for k, v := range sel {
				ok = ok && labels[k] == v
			}
			if !ok {
				continue
			}
			matched = true
			for _, p := range list(svc, "spec", "ports") {
				target := str(p, "targetPort")
				found := false
				for _, c := range list(w, "spec", "template", "spec", "containers") {
					for _, cp := range list(c, "ports") {
						found = found || str(cp, "name") == target || str(cp, "containerPort") == target
					}
				}
				if !found {
					t.Errorf("service %s: targetPort %s is no port of %s", name, target, id)
				}
			}
		}
		if !matched {
			t.Errorf("service %s selects no pods", name)
		}
	}
	kubectlKustomize(t)
}

// containerEnv is the environment Kubernetes gives a container: envFrom
// ConfigMaps, then env entries (literal or from ConfigMap/Secret keys).
func (m manifests) containerEnv(t *testing.T, where string, c any) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, from := range list(c, "envFrom") {
		name := str(from, "configMapRef", "name")
		data, ok := m.configMaps[name]
		if !ok {
			t.Errorf("%s: envFrom names missing ConfigMap %q", where, name)
		}
		for k, v := range data {
			env[k] = v
		}
	}
	for _, e := range list(c, "env") {
		name := str(e, "name")
		switch {
		case get(e, "valueFrom", "configMapKeyRef") != nil:
			cm, key := str(e, "valueFrom", "configMapKeyRef", "name"), str(e, "valueFrom", "configMapKeyRef", "key")
			v, ok := m.configMaps[cm][key]
			if !ok {
				t.Errorf("%s: %s refers to missing ConfigMap key %s/%s", where, name, cm, key)
			}
			env[name] = v
		case get(e, "valueFrom", "secretKeyRef") != nil:
			s, key := str(e, "valueFrom", "secretKeyRef", "name"), str(e, "valueFrom", "secretKeyRef", "key")
			v, ok := m.secrets[s][key]
			if !ok {
				t.Errorf("%s: %s refers to missing Secret key %s/%s", where, name, s, key)
			}
			env[name] = v
		default:
			env[name] = str(e, "value")
		}
	}
	return env
}

var k8sVar = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// containerInvocations returns how the container starts trawl, once per pod
// for a StatefulSet (the pod name differs). args run under the image's
// entrypoint (trawl); a /bin/sh -c command runs for real with a stand-in
// trawl on PATH that records the argv the shell produced.
func (m manifests) containerInvocations(t *testing.T, where string, w, c any, env map[string]string) []roleInvocation {
	t.Helper()
	expand := func(s string) string { // Kubernetes' $(VAR) expansion
		return k8sVar.ReplaceAllStringFunc(s, func(v string) string {
			if val, ok := env[v[2:len(v)-1]]; ok {
				return val
			}
			return v
		})
	}
	var args []string
	for _, a := range strList(c, "args") {
		args = append(args, expand(a))
	}
	command := strList(c, "command")
	if len(command) == 0 {
		return []roleInvocation{{where: where, args: args, env: env}}
	}
	if len(command) != 3 || command[0] != "/bin/sh" || command[1] != "-c" || len(args) > 0 {
		t.Errorf("%s: command %q: want the image's entrypoint or /bin/sh -c SCRIPT", where, command)
		return nil
	}
	pods := []string{str(w, "metadata", "name")}
	if str(w, "kind") == "StatefulSet" {
		n, _ := strconv.Atoi(str(w, "spec", "replicas"))
		pods = nil
		for i := 0; i < n; i++ {
			pods = append(pods, fmt.Sprintf("%s-%d", str(w, "metadata", "name"), i))
		}
	}
	bin := t.TempDir()
	os.WriteFile(filepath.Join(bin, "trawl"), []byte("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$ARGV_OUT\"\n"), 0o755)
	var out []roleInvocation
	for _, pod := range pods {
		argvFile := filepath.Join(bin, pod+".argv")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cmd := exec.CommandContext(ctx, "/bin/sh", "-c", expand(command[2]))
		cmd.Env = []string{"PATH=" + bin + ":/usr/bin:/bin", "HOSTNAME=" + pod, "ARGV_OUT=" + argvFile}
		for k, v := range env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		b, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("%s: the entrypoint script failed in pod %s: %v\n%s", where, pod, err, b)
			continue
		}
		argv, err := os.ReadFile(argvFile)
		if err != nil {
			t.Errorf("%s: the entrypoint script did not run trawl in pod %s", where, pod)
			continue
		}
		out = append(out, roleInvocation{where: where + " pod " + pod, args: strings.Fields(string(argv)), env: env})
	}
	return out
}

// kubectlKustomize renders the manifests offline when kubectl is installed.
func kubectlKustomize(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("kubectl"); err != nil {
		t.Log("kubectl is not installed: skipped `kubectl kustomize`")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "kubectl", "kustomize", "k8s").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize k8s: %v\n%s", err, out)
	}
	if n := len(regexp.MustCompile(`(?m)^kind: `).FindAll(out, -1)); n < 10 {
		t.Errorf("kubectl kustomize rendered %d objects", n)
	}
}

// ---- every file's mentions ------------------------------------------------

var (
	envToken  = regexp.MustCompile(`\bTRAWL_[A-Z0-9_]+`)
	flagToken = regexp.MustCompile(`--[a-z][a-z0-9-]*(?:\.[a-z0-9-]+)+`)
	// trawl in command position: a line's start, after --, &&, |, `exec NAME`, or as a path
	trawlCmd = regexp.MustCompile(`(?:^\s*|(?:--|&&|\||exec\s+\S+)\s+|\S/)trawl ([a-z]+)(.*)$`)
)

// TestMentionsExist reads every deploy file as text, README included: each
// TRAWL_* variable and dotted --flag must exist, and each `trawl CMD …` in
// the README's code blocks must name a command and flags it has.
func TestMentionsExist(t *testing.T) {
	known := knownEnv(t)
	all := commandFlags(t, "all")
	var files []string
	filepath.WalkDir(".", func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasSuffix(p, "_test.go") {
			files = append(files, p)
		}
		return nil
	})
	if len(files) < 15 {
		t.Fatalf("found only %v", files)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range envToken.FindAllString(string(b), -1) {
			if _, ok := known[v]; !ok {
				t.Errorf("%s: trawl reads no variable %s", f, v)
			}
		}
		for _, fl := range flagToken.FindAllString(string(b), -1) {
			if !all[fl[2:]] {
				t.Errorf("%s: trawl has no flag %s", f, fl)
			}
		}
	}
	checkReadmeCommands(t)
}

func checkReadmeCommands(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	flagsOf := func(cmd string) flagSet {
		switch {
		case roles[cmd] || cmd == "kafka":
			return commandFlags(t, "all")
		case cmd == "user":
			return commandFlags(t, "user", "add")
		case cmd == "scan":
			return commandFlags(t, "scan")
		case cmd == "version":
			return flagSet{}
		}
		return nil
	}
	code, checked := false, 0
	text := strings.ReplaceAll(string(b), "\\\n", " ") // shell line continuations
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			code = !code
			continue
		}
		if !code || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		m := trawlCmd.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		checked++
		fs := flagsOf(m[1])
		if fs == nil {
			t.Errorf("README: trawl has no command %q: %s", m[1], line)
			continue
		}
		for _, tok := range strings.Fields(m[2]) {
			if tok == "|" || tok == "&&" || tok == ";" || strings.HasPrefix(tok, ">") || strings.HasPrefix(tok, "#") {
				break
			}
			if name, ok := strings.CutPrefix(strings.TrimLeft(tok, "-"), ""); strings.HasPrefix(tok, "-") && ok {
				if name = strings.SplitN(name, "=", 2)[0]; !fs[name] {
					t.Errorf("README: trawl %s has no flag %s: %s", m[1], tok, line)
				}
			}
		}
	}
	if checked < 5 {
		t.Errorf("README: found %d trawl commands in code blocks, want the walkthrough's", checked)
	}
}
