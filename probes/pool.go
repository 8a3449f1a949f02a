package probes

import (
	"context"
	"errors"
	"flag"
	"sync"
	"sync/atomic"
	"time"
)

// PoolConfig bounds the probing: how many probes run at once, how many of
// them may hit one host, and how long one may take.
type PoolConfig struct {
	// Concurrency is the number of probes in flight across all hosts.
	Concurrency int
	// PerHost is the number of probes in flight against one IP, across all
	// modules, so a host with many open ports is not flooded.
	PerHost int
	// Timeout bounds one module's probe of one target.
	Timeout time.Duration
}

// DefaultPoolConfig returns the defaults RegisterFlags sets.
func DefaultPoolConfig() PoolConfig {
	return PoolConfig{Concurrency: 1000, PerHost: 4, Timeout: 10 * time.Second}
}

// RegisterFlags registers the pool's flags under prefix and sets defaults.
func (c *PoolConfig) RegisterFlags(fs *flag.FlagSet, prefix string) {
	d := DefaultPoolConfig()
	fs.IntVar(&c.Concurrency, prefix+"concurrency", d.Concurrency, "probes in flight across all hosts")
	fs.IntVar(&c.PerHost, prefix+"per-host", d.PerHost, "probes in flight against one IP, across all modules")
	fs.DurationVar(&c.Timeout, prefix+"timeout", d.Timeout, "time limit of one module's probe of one target")
}

// Validate reports every invalid setting.
func (c PoolConfig) Validate() error {
	var errs []error
	if c.Concurrency <= 0 {
		errs = append(errs, errors.New("pool concurrency must be positive"))
	}
	if c.PerHost <= 0 {
		errs = append(errs, errors.New("pool per-host limit must be positive"))
	}
	if c.Timeout <= 0 {
		errs = append(errs, errors.New("pool timeout must be positive"))
	}
	return errors.Join(errs...)
}

// Pool runs probes within the configured bounds.
type Pool struct {
	cfg    PoolConfig
	global chan struct{}

	mu    sync.Mutex
	hosts map[string]*hostSlots
	// spare recycles hostSlots: most hosts come and go with one probe.
	spare sync.Pool

	inFlight   atomic.Int64
	maxPerHost atomic.Int64
}

// hostSlots limits one IP. refs counts the probes holding or waiting for a
// slot, so the entry lives exactly as long as someone needs it.
type hostSlots struct {
	sem  chan struct{}
	refs int
	busy int
}

// NewPool returns a pool; non-positive settings fall back to the defaults.
func NewPool(cfg PoolConfig) *Pool {
	d := DefaultPoolConfig()
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = d.Concurrency
	}
	if cfg.PerHost <= 0 {
		cfg.PerHost = d.PerHost
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = d.Timeout
	}
	p := &Pool{
		cfg:    cfg,
		global: make(chan struct{}, cfg.Concurrency),
		hosts:  make(map[string]*hostSlots),
	}
	p.spare.New = func() any { return &hostSlots{sem: make(chan struct{}, cfg.PerHost)} }
	return p
}

// Probe runs m against t once a slot for t's host and a global slot are
// free, within the pool's Timeout, and always returns a classified Result:
// waiting that ends with ctx gives StatusCanceled (or StatusTimeout when
// ctx's deadline passed), a module error is classified by Classify.
func (p *Pool) Probe(ctx context.Context, m Module, t Target) Result {
	// Take the host's slot first: a probe waiting on a busy host must not
	// hold one of the global slots other hosts could use.
	h, err := p.acquireHost(ctx, t.IP)
	if err != nil {
		return failed(err)
	}
	defer p.releaseHost(t.IP, h)
	select {
	case p.global <- struct{}{}:
	case <-ctx.Done():
		return failed(ctx.Err())
	}
	defer func() { <-p.global }()

	p.inFlight.Add(1)
	defer p.inFlight.Add(-1)

	// started before the timeout's clock, so a timed-out probe's Duration
	// is never shorter than the timeout (a preemption between the two
	// would make it so)
	started := time.Now()
	pctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	res, err := m.Probe(pctx, t)
	if err != nil {
		res.Status = Classify(err)
		res.Error = err.Error()
	}
	if res.Status == "" {
		res.Status = StatusError
		res.Error = "module " + m.Name() + " returned no status"
	}
	if res.Started.IsZero() {
		res.Started = started
	}
	if res.Duration == 0 {
		res.Duration = time.Since(started)
	}
	return res
}

func failed(err error) Result {
	return Result{Status: Classify(err), Error: err.Error(), Started: time.Now()}
}

func (p *Pool) acquireHost(ctx context.Context, ip string) (*hostSlots, error) {
	p.mu.Lock()
	h := p.hosts[ip]
	if h == nil {
		h = p.spare.Get().(*hostSlots)
		p.hosts[ip] = h
	}
	h.refs++
	p.mu.Unlock()

	select {
	case h.sem <- struct{}{}:
	case <-ctx.Done():
		p.mu.Lock()
		p.dropRef(ip, h)
		p.mu.Unlock()
		return nil, ctx.Err()
	}

	p.mu.Lock()
	h.busy++
	if busy := int64(h.busy); busy > p.maxPerHost.Load() {
		p.maxPerHost.Store(busy) // under p.mu: no lost update
	}
	p.mu.Unlock()
	return h, nil
}

func (p *Pool) releaseHost(ip string, h *hostSlots) {
	p.mu.Lock()
	h.busy--
	<-h.sem
	p.dropRef(ip, h)
	p.mu.Unlock()
}

// dropRef must be called with p.mu held.
func (p *Pool) dropRef(ip string, h *hostSlots) {
	h.refs--
	if h.refs == 0 {
		delete(p.hosts, ip)
		p.spare.Put(h) // empty: no holder, no waiter
	}
}

// InFlight is the number of probes running now (holding both slots).
func (p *Pool) InFlight() int { return int(p.inFlight.Load()) }

// MaxPerHostSeen is the highest number of probes seen running against one
// host at once since the pool was made.
func (p *Pool) MaxPerHostSeen() int { return int(p.maxPerHost.Load()) }

// hostsTracked is the number of hosts with a probe running or waiting.
func (p *Pool) hostsTracked() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.hosts)
}
