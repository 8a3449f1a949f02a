// Package api is trawl's HTTP API on fasthttp: BinaryEdge's login and tasks,
// task state and results, with one error object for every failure.
package api

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"trawl/engine"
	"trawl/ingest"
	"trawl/storage"
)

// Config of the API server.
type Config struct {
	Listen       string
	PublicURL    string // base URL of this API as clients reach it (screenshot links); default http://<listen>
	StreamURL    string // public base URL of the stream servers, put into stream_url fields
	MaxBodyBytes int
	TokenTTL     time.Duration
	Shards       int // scanner shards every job is split across
	DefaultRate  int // probes/s of a job that names none
	MaxRate      int // upper bound of a job's rate
	ResolveWait  time.Duration
	// RequestTimeout bounds the work of one request (store, bus).
	RequestTimeout time.Duration
}

// DefaultConfig returns the defaults RegisterFlags sets.
func DefaultConfig() Config {
	return Config{
		Listen:         "127.0.0.1:8080",
		MaxBodyBytes:   1 << 20,
		TokenTTL:       24 * time.Hour,
		Shards:         1,
		DefaultRate:    10000,
		MaxRate:        1000000,
		ResolveWait:    5 * time.Second,
		RequestTimeout: 30 * time.Second,
	}
}

// RegisterFlags registers the config's flags under prefix.
func (c *Config) RegisterFlags(fs *flag.FlagSet, prefix string) {
	d := DefaultConfig()
	fs.StringVar(&c.Listen, prefix+"listen", d.Listen, "API listen address (host:port)")
	fs.StringVar(&c.PublicURL, prefix+"public-url", "", "base URL of the API as clients reach it, used in links (default: http://<api.listen>)")
	fs.StringVar(&c.StreamURL, prefix+"stream-url", d.StreamURL, "public base URL of the stream servers, returned in stream_url (default: this process's stream server in 'trawl all'; required for 'trawl api')")
	fs.IntVar(&c.MaxBodyBytes, prefix+"max-body", d.MaxBodyBytes, "largest request body accepted, in bytes")
	fs.DurationVar(&c.TokenTTL, prefix+"token-ttl", d.TokenTTL, "lifetime of a client token from /v1/login")
	fs.IntVar(&c.Shards, prefix+"shards", d.Shards, "scanner shards each job is split across (must match the scanners' --scanner.shard i/n)")
	fs.IntVar(&c.DefaultRate, prefix+"default-rate", d.DefaultRate, "probes per second of a job that names no rate")
	fs.IntVar(&c.MaxRate, prefix+"max-rate", d.MaxRate, "highest probes per second a job may ask for")
	fs.DurationVar(&c.RequestTimeout, prefix+"request-timeout", d.RequestTimeout, "time allowed for one request's storage and bus work")
	fs.DurationVar(&c.ResolveWait, prefix+"resolve-timeout", d.ResolveWait, "time allowed to resolve a task's hostnames")
}

// Validate reports every problem of the config.
func (c *Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("api.listen %q: %w", c.Listen, err))
	}
	if c.PublicURL != "" && !strings.HasPrefix(c.PublicURL, "http://") && !strings.HasPrefix(c.PublicURL, "https://") {
		errs = append(errs, fmt.Errorf("api.public-url %q: must be an http(s) URL", c.PublicURL))
	}
	if c.StreamURL != "" && !strings.HasPrefix(c.StreamURL, "http://") && !strings.HasPrefix(c.StreamURL, "https://") {
		errs = append(errs, fmt.Errorf("api.stream-url %q: must be an http(s) URL", c.StreamURL))
	}
	if c.MaxBodyBytes < 1024 {
		errs = append(errs, fmt.Errorf("api.max-body %d: must be at least 1024", c.MaxBodyBytes))
	}
	if c.TokenTTL < time.Minute {
		errs = append(errs, fmt.Errorf("api.token-ttl %s: must be at least 1m", c.TokenTTL))
	}
	if c.Shards < 1 {
		errs = append(errs, fmt.Errorf("api.shards %d: must be at least 1", c.Shards))
	}
	if c.DefaultRate < 1 || c.MaxRate < c.DefaultRate {
		errs = append(errs, fmt.Errorf("api.default-rate %d / api.max-rate %d: need 1 <= default <= max", c.DefaultRate, c.MaxRate))
	}
	if c.RequestTimeout <= 0 {
		errs = append(errs, fmt.Errorf("api.request-timeout %s: must be positive", c.RequestTimeout))
	}
	if c.ResolveWait <= 0 {
		errs = append(errs, fmt.Errorf("api.resolve-timeout %s: must be positive", c.ResolveWait))
	}
	return errors.Join(errs...)
}

// Store is the metadata the API reads and writes (users, jobs): the API
// node's embedded store.
type Store interface {
	UserByAppID(ctx context.Context, appID string) (storage.User, error)
	User(ctx context.Context, id string) (storage.User, error)
	CreateJob(ctx context.Context, j storage.Job) error
	Job(ctx context.Context, id string) (storage.Job, error)
	Jobs(ctx context.Context, q storage.JobQuery) ([]storage.Job, error)
	UpdateJob(ctx context.Context, j storage.Job) error
}

// Results is where the API reads a job's stored events: the embedded store
// on one machine, ClickHouse at scale.
type Results interface {
	Events(ctx context.Context, q storage.EventQuery) ([]ingest.Event, error)
}

// Publisher is the part of the bus the API needs.
type Publisher interface {
	Publish(ctx context.Context, topic string, msgs ...ingest.Message) error
}

// Deps are the parts the API server is wired to.
type Deps struct {
	Bus      Publisher
	Store    Store
	Results  Results
	Blobs    BlobStore // screenshots; nil when this node keeps none
	Policy   engine.Policy
	Resolver engine.Resolver
	Tokens   *Tokens
	Modules  []string // names of the probe modules workers run

	// Analytics is the configured events store (the one Results reads);
	// nil: the analytics endpoints answer 503.
	Analytics Analytics
}

// Server is the API server.
type Server struct {
	cfg     Config
	deps    Deps
	modules map[string]bool
	log     zerolog.Logger
	routes  []route
	addr    chan string
}

// New returns an API server.
func New(cfg Config, deps Deps, log zerolog.Logger) *Server {
	s := &Server{cfg: cfg, deps: deps, modules: map[string]bool{}, log: log, addr: make(chan string, 1)}
	for _, m := range deps.Modules {
		s.modules[m] = true
	}
	s.routes = s.routeTable()
	return s
}

// Addr returns the listen address once Run is listening, or "" if ctx ends first.
func (s *Server) Addr(ctx context.Context) string {
	select {
	case a := <-s.addr:
		s.addr <- a
		return a
	case <-ctx.Done():
		return ""
	}
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w", s.cfg.Listen, err)
	}
	srv := &fasthttp.Server{
		Handler:            s.Handler,
		Name:               "trawl",
		MaxRequestBodySize: s.cfg.MaxBodyBytes,
		ReadTimeout:        30 * time.Second,
		WriteTimeout:       60 * time.Second,
		IdleTimeout:        2 * time.Minute,
		Logger:             fasthttpLogger{s.log},
		// an oversized body must still get the error object, not a bare close
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			if errors.Is(err, fasthttp.ErrBodyTooLarge) {
				s.writeError(ctx, &Error{Status: http.StatusRequestEntityTooLarge, Code: "payload_too_large",
					Message: fmt.Sprintf("request body exceeds %d bytes", s.cfg.MaxBodyBytes)})
				return
			}
			s.writeError(ctx, &Error{Status: http.StatusBadRequest, Code: "invalid_request", Message: "malformed HTTP request: " + err.Error()})
		},
	}
	s.addr <- ln.Addr().String()
	s.log.Info().Str("addr", "http://"+ln.Addr().String()).Msg("api listening")
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("api server stopped: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.ShutdownWithContext(sctx); err != nil {
		s.log.Warn().Err(err).Msg("api shutdown")
	}
	<-done
	return nil
}

type fasthttpLogger struct{ log zerolog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Debug().Msgf(format, args...)
}

// BaseURL is the API's public URL: PublicURL, else http://<listen>.
func (c *Config) BaseURL() string {
	if c.PublicURL != "" {
		return strings.TrimRight(c.PublicURL, "/")
	}
	return "http://" + c.Listen
}
