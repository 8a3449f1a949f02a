// Package clickhouse is the results store at scale: events in ClickHouse
// (clickhouse-go/v2, native protocol). It keeps the storage/embedded events
// semantics — id order, first write of a record wins, Result.Data byte for
// byte — on MergeTree tables, and its SQL runs on Debian's 18.16 server as
// well as on current releases.
package clickhouse

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"regexp"
	"strings"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/rs/zerolog"
)

// Config says where the server is and which database holds trawl's tables.
type Config struct {
	Addr        []string // host:port of the native protocol; several = failover
	Database    string
	Username    string
	Password    string
	DialTimeout time.Duration
}

const (
	defaultAddr        = "127.0.0.1:9000"
	defaultDatabase    = "trawl"
	defaultUsername    = "default"
	defaultDialTimeout = 5 * time.Second
)

// DefaultConfig returns the defaults RegisterFlags sets.
func DefaultConfig() Config {
	return Config{
		Addr:        []string{defaultAddr},
		Database:    defaultDatabase,
		Username:    defaultUsername,
		DialTimeout: defaultDialTimeout,
	}
}

// RegisterFlags registers the store's flags under prefix and sets their defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet, prefix string) {
	*c = DefaultConfig()
	fs.Func(prefix+"addr", "clickhouse: native protocol host:port, comma-separated for failover (default "+defaultAddr+")",
		func(s string) error {
			c.Addr = splitAddrs(s)
			return nil
		})
	fs.StringVar(&c.Database, prefix+"database", c.Database, "clickhouse: database of trawl's tables (created if missing)")
	fs.StringVar(&c.Username, prefix+"username", c.Username, "clickhouse: user name")
	fs.StringVar(&c.Password, prefix+"password", c.Password, "clickhouse: password")
	fs.DurationVar(&c.DialTimeout, prefix+"dial-timeout", c.DialTimeout, "clickhouse: timeout of one connection attempt")
}

func splitAddrs(s string) []string {
	var addrs []string
	for a := range strings.SplitSeq(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	return addrs
}

// identifier is what Database may be: it is spliced into statements.
var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Validate reports every invalid setting.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Addr) == 0 {
		errs = append(errs, errors.New("clickhouse addr: at least one host:port is required"))
	}
	for _, a := range c.Addr {
		if i := strings.LastIndexByte(a, ':'); i <= 0 || i == len(a)-1 {
			errs = append(errs, fmt.Errorf("clickhouse addr %q: must be host:port", a))
		}
	}
	if !identifier.MatchString(c.Database) {
		errs = append(errs, fmt.Errorf("clickhouse database %q: must be letters, digits and _, not starting with a digit", c.Database))
	}
	if c.Username == "" {
		errs = append(errs, errors.New("clickhouse username: must not be empty"))
	}
	if c.DialTimeout <= 0 {
		errs = append(errs, fmt.Errorf("clickhouse dial-timeout %s: must be positive", c.DialTimeout))
	}
	return errors.Join(errs...)
}

// Store is the ClickHouse events store. It is safe for concurrent use.
type Store struct {
	log      zerolog.Logger
	conn     driver.Conn
	database string
	features features
}

// Open connects, creates the database if missing and applies the
// migrations it lacks.
func Open(ctx context.Context, cfg Config, log zerolog.Logger) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cannot open clickhouse store: %w", err)
	}
	// The database may not exist yet, so the first connection uses the
	// server's default one.
	boot, err := connect(ctx, cfg, "default")
	if err != nil {
		return nil, err
	}
	err = boot.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+cfg.Database)
	_ = boot.Close()
	if err != nil {
		return nil, fmt.Errorf("cannot create database %s: %w", cfg.Database, err)
	}

	conn, err := connect(ctx, cfg, cfg.Database)
	if err != nil {
		return nil, err
	}
	version, err := conn.ServerVersion()
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("cannot read clickhouse server version: %w", err)
	}
	s := &Store{
		log:      log,
		conn:     conn,
		database: cfg.Database,
		features: featuresOf(version.Version.Major),
	}
	current, applied, err := s.migrate(ctx, migrations)
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("cannot open clickhouse store: %w", err)
	}
	log.Info().Strs("addr", cfg.Addr).Str("database", cfg.Database).
		Str("server_version", fmt.Sprintf("%d.%d.%d", version.Version.Major, version.Version.Minor, version.Version.Patch)).
		Int("schema_version", current).Int("migrations_applied", applied).Msg("clickhouse store open")
	return s, nil
}

// connect opens a pool on database and checks that the server answers.
func connect(ctx context.Context, cfg Config, database string) (driver.Conn, error) {
	conn, err := ch.Open(&ch.Options{
		Addr: cfg.Addr,
		Auth: ch.Auth{Database: database, Username: cfg.Username, Password: cfg.Password},
		// LZ4 on the wire: event envelopes compress several times over.
		Compression: &ch.Compression{Method: ch.CompressionLZ4},
		DialTimeout: cfg.DialTimeout,
		ClientInfo: ch.ClientInfo{
			Products: []struct{ Name, Version string }{{Name: "trawl", Version: "1"}},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("cannot connect to clickhouse %v: %w", cfg.Addr, err)
	}
	if err := conn.Ping(ctx); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("cannot connect to clickhouse %v: %w", cfg.Addr, err)
	}
	return conn, nil
}

// Close closes the connections. Calls in flight fail.
func (s *Store) Close() error {
	return s.conn.Close()
}

// features are the server's abilities the schema uses when it has them.
type features struct {
	// lowCardinality: LowCardinality(String) without the experimental
	// setting 18.16 requires for it (generally available well before 20.1).
	lowCardinality bool
}

func featuresOf(major uint64) features {
	return features{lowCardinality: major >= 20}
}

// stringEnum is the column type of a string with few distinct values.
func (f features) stringEnum() string {
	if f.lowCardinality {
		return "LowCardinality(String)"
	}
	return "String"
}
