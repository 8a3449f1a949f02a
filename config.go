package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"github.com/rs/zerolog"
	"os"
	"path/filepath"
	"strings"

	"trawl/api"
	"trawl/engine"
	"trawl/engine/connect"
	"trawl/engine/fakenet"
	"trawl/engine/rawsock"
	"trawl/ingest"
	"trawl/ingest/kafkabus"
	"trawl/ingest/membus"
	"trawl/probes"
	"trawl/probes/service"
	"trawl/probes/ssh"
	"trawl/probes/ssl"
	"trawl/probes/vnc"
	"trawl/storage/clickhouse"
	"trawl/stream"
)

// Config is the whole config tree. Each component owns its part and
// validates it; Validate reports every error at once.
type Config struct {
	File       string // optional config file of "flag-name = value" lines
	DataDir    string
	Bus        string
	Store      string
	LogLevel   string
	LogFormat  string
	SecretFile string

	// Transport is how the scanner probes: connect or raw.
	Transport string

	API     api.Config
	Stream  stream.Config
	Scanner engine.ScannerConfig
	Connect connect.Config
	Raw     rawsock.Config
	Policy  engine.PolicyConfig
	Worker  probes.WorkerConfig
	Modules ModuleConfigs
	Kafka   kafkabus.Config
	CH      clickhouse.Config
	Ingest  ingest.IngesterConfig
	Membus  membus.Config
}

// Backends; chosen explicitly, never by fallback.
const (
	BusMemory     = "memory"
	BusKafka      = "kafka"
	StoreEmbedded = "embedded"
	StoreCH       = "clickhouse"

	TransportConnect = "connect" // unprivileged TCP connects
	TransportRaw     = "raw"     // SYN scan on AF_PACKET, needs CAP_NET_RAW
	TransportDry     = "dry"     // probes go nowhere: measures the engine alone
)

// validTransport reports whether t names a scanner transport.
func validTransport(t string) bool {
	return t == TransportConnect || t == TransportRaw || t == TransportDry
}

// RegisterFlags registers every component's flags.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.File, "config", "", "config file: one 'flag-name = value' per line, '#' comments (flags and TRAWL_* env override it)")
	fs.StringVar(&c.DataDir, "data-dir", "./data", "directory of the embedded store and the token secret")
	fs.StringVar(&c.Bus, "bus", BusMemory, "message bus between roles: memory (in-process, role 'all' only) or kafka")
	fs.StringVar(&c.Store, "store", StoreEmbedded, "results store: embedded (sqlite in --data-dir) or clickhouse")
	fs.StringVar(&c.LogLevel, "log.level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&c.LogFormat, "log.format", "auto", "log format: auto (console on a terminal, JSON otherwise), console, json")
	fs.StringVar(&c.SecretFile, "auth.secret-file", "", "file holding the token signing secret shared by api and stream servers (default: <data-dir>/auth.secret, created if missing)")
	c.API.RegisterFlags(fs, "api.")
	c.Stream.RegisterFlags(fs, "stream.")
	c.Scanner.RegisterFlags(fs, "scanner.")
	fs.StringVar(&c.Transport, "scanner.transport", TransportConnect, "scanner transport: connect (unprivileged TCP connects), raw (SYN scan on AF_PACKET, needs CAP_NET_RAW) or dry (probes go nowhere)")
	c.Connect.RegisterFlags(fs, "connect.")
	c.Raw.RegisterFlags(fs, "raw.")
	c.Policy.RegisterFlags(fs, "scan.")
	c.Worker.RegisterFlags(fs, "worker.")
	c.Modules.RegisterFlags(fs)
	c.Kafka.RegisterFlags(fs, "kafka.")
	c.CH.RegisterFlags(fs, "clickhouse.")
	c.Ingest.RegisterFlags(fs, "ingest.")
	c.Membus.RegisterFlags(fs, "membus.")
}

// Validate checks the whole tree.
func (c *Config) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("data-dir: must not be empty"))
	}
	if c.Bus != BusMemory && c.Bus != BusKafka {
		errs = append(errs, fmt.Errorf("bus %q: must be %q or %q", c.Bus, BusMemory, BusKafka))
	}
	if c.Store != StoreEmbedded && c.Store != StoreCH {
		errs = append(errs, fmt.Errorf("store %q: must be %q or %q", c.Store, StoreEmbedded, StoreCH))
	}
	if !validTransport(c.Transport) {
		errs = append(errs, fmt.Errorf("scanner.transport %q: must be %q, %q or %q", c.Transport, TransportConnect, TransportRaw, TransportDry))
	}
	switch c.LogFormat {
	case "auto", "console", "json":
	default:
		errs = append(errs, fmt.Errorf("log.format %q: must be auto, console or json", c.LogFormat))
	}
	for _, v := range []interface{ Validate() error }{&c.API, &c.Stream, &c.Scanner, &c.Connect, &c.Raw, &c.Policy, &c.Worker, &c.Modules, &c.Ingest, &c.Membus} {
		if err := v.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Bus == BusKafka {
		if err := c.Kafka.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Store == StoreCH {
		if err := c.CH.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ModuleConfigs are the probe modules' settings, shared by the worker role
// and `trawl scan`.
type ModuleConfigs struct {
	Service service.Config
	SSH     ssh.Config
	SSL     ssl.Config
	VNC     vnc.Config
}

// RegisterFlags registers every module's flags under its name.
func (m *ModuleConfigs) RegisterFlags(fs *flag.FlagSet) {
	m.Service.RegisterFlags(fs, "service.")
	m.SSH.RegisterFlags(fs, "ssh.")
	m.SSL.RegisterFlags(fs, "ssl.")
	m.VNC.RegisterFlags(fs, "vnc.")
}

// Validate reports every module's problems.
func (m *ModuleConfigs) Validate() error {
	return errors.Join(m.Service.Validate(), m.SSH.Validate(), m.SSL.Validate(), m.VNC.Validate())
}

// probeModules is the explicit list of probe modules this build runs.
// shots keeps VNC screenshots; nil leaves them unstored.
func probeModules(m ModuleConfigs, shots vnc.ScreenshotStore) (*probes.Registry, error) {
	return probes.NewRegistry(service.New(m.Service), ssh.New(m.SSH), ssl.New(m.SSL), vnc.New(m.VNC, shots))
}

// secretPath is where the token secret lives.
func (c *Config) secretPath() string {
	if c.SecretFile != "" {
		return c.SecretFile
	}
	return filepath.Join(c.DataDir, "auth.secret")
}

// loadConfig parses args with precedence flags > TRAWL_* env > config file >
// defaults, then validates. env maps a flag name to its variable:
// "api.listen" → TRAWL_API_LISTEN.
func loadConfig(fs *flag.FlagSet, c *Config, args []string, getenv func(string) string) error {
	c.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fromFile := map[string]string{}
	if file := c.File; file == "" && getenv("TRAWL_CONFIG") != "" {
		c.File = getenv("TRAWL_CONFIG")
	}
	if c.File != "" {
		m, err := readConfigFile(c.File)
		if err != nil {
			return err
		}
		fromFile = m
		for name := range m {
			if fs.Lookup(name) == nil {
				errs = append(errs, fmt.Errorf("config file %s: unknown setting %q", c.File, name))
			}
		}
	}
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || f.Name == "config" {
			return
		}
		val, src := getenv(envName(f.Name)), envName(f.Name)
		if val == "" {
			val, src = fromFile[f.Name], "config file "+c.File
		}
		if val == "" {
			return
		}
		if err := fs.Set(f.Name, val); err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", src, f.Name, err))
		}
	})
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return c.Validate()
}

func envName(flagName string) string {
	return "TRAWL_" + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(flagName))
}

func readConfigFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read config file: %w", err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			k, v, ok = strings.Cut(line, ":")
		}
		if !ok {
			return nil, fmt.Errorf("config file %s:%d: want 'name = value'", path, n)
		}
		out[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"`)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cannot read config file: %w", err)
	}
	return out, nil
}

// transportFactory returns the constructor of the configured scanner
// transport. Each job gets its own transport.
func transportFactory(transport string, connectCfg connect.Config, rawCfg rawsock.Config, log zerolog.Logger) func() (engine.Transport, error) {
	if transport == TransportDry {
		return func() (engine.Transport, error) { return fakenet.NewDry(), nil }
	}
	if transport == TransportRaw {
		return func() (engine.Transport, error) {
			tr, err := rawsock.New(rawCfg, log)
			if err != nil {
				return nil, err // not tr: a nil *Transport in an interface is not nil
			}
			return tr, nil
		}
	}
	return func() (engine.Transport, error) { return connect.New(connectCfg), nil }
}
