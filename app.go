package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"trawl/api"
	"trawl/engine"
	"trawl/ingest"
	"trawl/ingest/kafkabus"
	"trawl/ingest/membus"
	"trawl/probes"
	"trawl/probes/vnc"
	"trawl/storage"
	"trawl/storage/clickhouse"
	"trawl/storage/embedded"
	"trawl/stream"
)

// Services, in start order; they stop in reverse, so the ingester, started
// first, flushes last.
const (
	svcIngest  = "ingest"
	svcTracker = "tracker"
	svcBlobs   = "blobs"
	svcWorker  = "worker"
	svcScanner = "scanner"
	svcStream  = "stream"
	svcAPI     = "api"
)

var serviceOrder = []string{svcIngest, svcTracker, svcBlobs, svcWorker, svcScanner, svcStream, svcAPI}

// roles maps a role to the services it runs. The job tracker and the
// blobs service run with the API because they write the API's store; "all"
// runs everything but the blobs service (its worker stores screenshots
// directly).
var roles = map[string][]string{
	"all":     {svcIngest, svcTracker, svcWorker, svcScanner, svcStream, svcAPI},
	"api":     {svcTracker, svcBlobs, svcAPI},
	"stream":  {svcStream},
	"scanner": {svcScanner},
	"worker":  {svcWorker},
	"ingest":  {svcIngest},
}

func isRole(name string) bool { _, ok := roles[name]; return ok }

// service is one long-running part of a role.
type roleService struct {
	name string
	run  func(ctx context.Context) error
}

// App holds the wired parts of one role.
type App struct {
	cfg      *Config
	log      zerolog.Logger
	services []roleService
	closers  []func() error
	apiSrv   *api.Server
	streamSv *stream.Server
}

// eventStore is where events are stored and replayed from: the embedded
// store on one machine, ClickHouse at scale.
type eventStore interface {
	InsertEvents(ctx context.Context, events []ingest.Event) error
	Events(ctx context.Context, q storage.EventQuery) ([]ingest.Event, error)
	api.Analytics
}

// newApp wires role from cfg. Roles other than "all" need a network bus:
// with the in-process bus they would each see only themselves.
func newApp(role string, cfg *Config, log zerolog.Logger) (*App, error) {
	want, ok := roles[role]
	if !ok {
		return nil, fmt.Errorf("unknown role %q", role)
	}
	if cfg.Bus == BusMemory && role != "all" {
		return nil, fmt.Errorf("role %q runs as its own process and needs a network bus (--bus kafka) to reach the other roles; the in-process bus (--bus memory) only joins roles inside 'trawl all'", role)
	}
	if cfg.Bus == BusKafka && cfg.Store == StoreEmbedded && role != "all" {
		for _, svc := range want {
			if svc == svcIngest || svc == svcStream || svc == svcAPI {
				return nil, fmt.Errorf("role %q stores or reads events, and with --bus kafka the roles run apart: use --store clickhouse (an embedded store is private to one process's --data-dir)", role)
			}
		}
	}
	app := &App{cfg: cfg, log: log}
	need := map[string]bool{}
	for _, s := range want {
		need[s] = true
	}
	if need[svcAPI] && cfg.API.StreamURL == "" {
		if !need[svcStream] {
			return nil, errors.New("api.stream-url is required when the stream servers run as their own processes")
		}
		cfg.API.StreamURL = cfg.Stream.PublicURL
		if cfg.API.StreamURL == "" {
			cfg.API.StreamURL = "http://" + cfg.Stream.Listen
		}
	}
	logFor := func(name string) zerolog.Logger { return log.With().Str("component", name).Logger() }
	ok = false
	defer func() {
		if !ok {
			app.close()
		}
	}()

	var bus ingest.Bus
	if cfg.Bus == BusKafka {
		kb, err := kafkabus.New(cfg.Kafka, logFor("kafkabus"))
		if err != nil {
			return nil, err
		}
		bus = kb
	} else {
		bus = membus.New(cfg.Membus, logFor("membus"))
	}
	app.closers = append(app.closers, bus.Close)

	// The API node's metadata (users, jobs) lives in its embedded store; so do
	// events when --store embedded, and the screenshots of 'trawl all'.
	needEvents := need[svcIngest] || need[svcStream] || need[svcAPI]
	var meta *embedded.Store
	if need[svcAPI] || need[svcTracker] || (needEvents && cfg.Store == StoreEmbedded) || role == "all" {
		dbPath := filepath.Join(cfg.DataDir, "trawl.db")
		st, err := embedded.Open(context.Background(), dbPath, logFor("store"))
		if err != nil {
			return nil, fmt.Errorf("cannot open the embedded store at %s: %w", dbPath, err)
		}
		meta = st
		app.closers = append(app.closers, st.Close)
	}
	var events eventStore = meta
	if cfg.Store == StoreCH && needEvents {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		ch, err := clickhouse.Open(ctx, cfg.CH, logFor("clickhouse"))
		cancel()
		if err != nil {
			return nil, err
		}
		events = ch
		app.closers = append(app.closers, ch.Close)
	}

	var tokens *api.Tokens
	if need[svcAPI] || need[svcStream] {
		secret, err := loadSecret(cfg.secretPath())
		if err != nil {
			return nil, err
		}
		if tokens, err = api.NewTokens(secret, cfg.API.TokenTTL); err != nil {
			return nil, err
		}
	}
	policy, err := cfg.Policy.Build()
	if err != nil {
		return nil, err
	}
	// Screenshots are kept where the API serves them from: 'trawl all' stores
	// them directly; a worker of its own publishes them to the API node's
	// blobs service, and links them to --api.public-url.
	var shots vnc.ScreenshotStore
	if role == "all" {
		shots = api.Screenshots{Store: meta, BaseURL: cfg.API.BaseURL()}
	} else if need[svcWorker] {
		shots = api.PublishedScreenshots{Bus: bus, BaseURL: cfg.API.BaseURL(), MaxBytes: kafkabus.MaxBlobBytes}
	}
	reg, err := probeModules(cfg.Modules, shots)
	if err != nil {
		return nil, err
	}

	for _, name := range serviceOrder {
		if !need[name] {
			continue
		}
		var run func(context.Context) error
		switch name {
		case svcIngest:
			run = ingest.NewIngester(cfg.Ingest, bus, events, logFor(name)).Run
		case svcTracker:
			tr := api.NewTracker(bus, meta, logFor(name))
			if cfg.Bus == BusMemory {
				tr.FailOrphans(meta) // the in-process bus kept nothing across the restart
			}
			run = tr.Run
		case svcBlobs:
			run = api.NewBlobIngester(bus, meta, logFor(name)).Run
		case svcWorker:
			run = probes.NewWorker(cfg.Worker, bus, reg, logFor(name)).Run
		case svcScanner:
			newTransport := transportFactory(cfg.Transport, cfg.Connect, cfg.Raw, logFor("transport"))
			run = engine.NewScanner(cfg.Scanner, bus, policy, newTransport, logFor(name)).Run
		case svcStream:
			app.streamSv = stream.New(cfg.Stream, bus, events, tokens.Verify, logFor(name))
			run = app.streamSv.Run
		case svcAPI:
			deps := api.Deps{Bus: bus, Store: meta, Results: events, Analytics: events, Policy: policy, Resolver: net.DefaultResolver,
				Tokens: tokens, Modules: reg.Names()}
			deps.Blobs = meta
			app.apiSrv = api.New(cfg.API, deps, logFor(name))
			run = app.apiSrv.Run
		}
		app.services = append(app.services, roleService{name: name, run: run})
	}
	ok = true
	return app, nil
}

// close releases what newApp opened, last first.
func (a *App) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		if err := a.closers[i](); err != nil {
			a.log.Warn().Err(err).Msg("close")
		}
	}
	a.closers = nil
}

// Run starts every service and, when ctx ends or one of them fails, stops
// them in reverse start order, each after the one started after it.
func (a *App) Run(ctx context.Context) error {
	type running struct {
		name   string
		cancel context.CancelFunc
		done   chan error
	}
	exited := make(chan string, len(a.services))
	var all []running
	for _, s := range a.services {
		sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		r := running{name: s.name, cancel: cancel, done: make(chan error, 1)}
		go func(run func(context.Context) error) {
			err := run(sctx)
			r.done <- err
			exited <- r.name
		}(s.run)
		all = append(all, r)
	}
	go a.announce(ctx)

	var first error
	select {
	case <-ctx.Done():
	case name := <-exited:
		for _, r := range all {
			if r.name == name {
				err := <-r.done
				r.done <- err
				if err == nil {
					err = errors.New("stopped unexpectedly")
				}
				first = fmt.Errorf("%s: %w", name, err)
			}
		}
		a.log.Error().Err(first).Msg("a service failed; stopping the others")
	}
	for i := len(all) - 1; i >= 0; i-- {
		r := all[i]
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil && first == nil {
				first = fmt.Errorf("%s: %w", r.name, err)
			}
		case <-time.After(15 * time.Second):
			a.log.Warn().Str("service", r.name).Msg("service did not stop within 15s")
		}
	}
	a.close()
	a.log.Info().Msg("stopped")
	return first
}

// announce logs where the listeners are and what to do next.
func (a *App) announce(ctx context.Context) {
	var apiAddr, streamAddr string
	if a.apiSrv != nil {
		apiAddr = a.apiSrv.Addr(ctx)
	}
	if a.streamSv != nil {
		select {
		case <-a.streamSv.Ready():
			streamAddr = a.streamSv.Addr()
		case <-ctx.Done():
			return
		}
	}
	if ctx.Err() != nil || apiAddr == "" {
		return
	}
	ev := a.log.Info().Str("api", "http://"+apiAddr).Str("data_dir", a.cfg.DataDir)
	if streamAddr != "" {
		ev = ev.Str("stream", "http://"+streamAddr)
	}
	ev.Msg("trawl is ready")
	a.log.Info().Msgf("next: create an account with `trawl user add --data-dir %s --name you`, then "+
		"`curl http://%s/v1/login -H 'X-APP-ID: …' -H 'X-USER-ID: …'` (README: quickstart)", a.cfg.DataDir, apiAddr)
}

// loadSecret reads the token signing secret, creating it (0600) if missing.
// A new secret is written to a temporary file and linked into place, so a
// process starting at the same moment reads either nothing or all of it.
func loadSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		s := strings.TrimSpace(string(b))
		if len(s) < 32 {
			return nil, fmt.Errorf("token secret %s: shorter than 32 characters", path)
		}
		return []byte(s), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("cannot read token secret: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("cannot create token secret: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".auth.secret-*")
	if err != nil {
		return nil, fmt.Errorf("cannot create token secret: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.WriteString(hex.EncodeToString(raw) + "\n")
	serr := tmp.Sync()
	if cerr := tmp.Close(); werr != nil || serr != nil || cerr != nil {
		return nil, fmt.Errorf("cannot write token secret: %w", errors.Join(werr, serr, cerr))
	}
	// CreateTemp made it 0600; Link fails if another process won the race,
	// and then its secret is the one to use
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("cannot create token secret: %w", err)
	}
	return loadSecret(path)
}
