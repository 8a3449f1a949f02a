// Package service is the service-detection module, nmap -sV style: it waits
// for a greeting, then sends port-prioritised protocol probes, detects TLS
// and probes again inside it, and names what answers from match rules that
// are data (rules.txt, embedded; an operator's file; nmap's database when
// present), bounded by a time budget per port.
package service

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"trawl/probes"
)

// settleWait is how long to wait for more of a reply once some of it has
// arrived and it does not look complete yet.
const settleWait = 100 * time.Millisecond

// bannerLimit caps the banner field; the whole reply is in "raw".
const bannerLimit = 1 << 10

// Methods, as result.data.method.
const (
	MethodMatching   = "probe_matching"   // a rule named the service
	MethodExtraction = "probe_extraction" // a rule also took product details from the reply
	MethodTable      = "table_default"    // nothing matched: the port's usual service
)

// Config configures the module.
type Config struct {
	// GreetingWait caps the wait for the service to speak first.
	GreetingWait time.Duration
	// ReplyWait caps the wait for the reply to each probe.
	ReplyWait time.Duration
	// PortBudget caps the whole detection of one port, all probes and the
	// TLS re-probe included (the caller's ctx may end it sooner).
	PortBudget time.Duration
	// ReadLimit caps the bytes read per reply.
	ReadLimit int
	// RulesFile is an operator's probes file (nmap-service-probes syntax)
	// tried before the embedded rules; empty for none.
	RulesFile string
	// NmapProbes is nmap's nmap-service-probes, tried after trawl's rules
	// when the file exists; empty or missing: not used.
	NmapProbes string
}

// DefaultConfig returns the defaults RegisterFlags sets.
func DefaultConfig() Config {
	return Config{GreetingWait: 2 * time.Second, ReplyWait: 3 * time.Second, PortBudget: 20 * time.Second, ReadLimit: 16 << 10}
}

// RegisterFlags registers the module's flags under prefix and sets defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet, prefix string) {
	d := DefaultConfig()
	fs.DurationVar(&c.GreetingWait, prefix+"greeting-wait", d.GreetingWait, "longest wait for a service to greet before probing it")
	fs.DurationVar(&c.ReplyWait, prefix+"reply-wait", d.ReplyWait, "longest wait for the reply to one probe")
	fs.DurationVar(&c.PortBudget, prefix+"port-budget", d.PortBudget, "longest time spent identifying one port")
	fs.IntVar(&c.ReadLimit, prefix+"read-limit", d.ReadLimit, "bytes read per reply at most")
	fs.StringVar(&c.RulesFile, prefix+"rules-file", "", "extra match rules (nmap-service-probes syntax), tried before the built-in ones")
	fs.StringVar(&c.NmapProbes, prefix+"nmap-probes", "", "path of nmap's nmap-service-probes, used after the built-in rules when present")
}

// Validate reports every invalid setting.
func (c Config) Validate() error {
	var errs []error
	if c.GreetingWait <= 0 {
		errs = append(errs, errors.New("service greeting wait must be positive"))
	}
	if c.ReplyWait <= 0 {
		errs = append(errs, errors.New("service reply wait must be positive"))
	}
	if c.PortBudget <= 0 {
		errs = append(errs, errors.New("service port budget must be positive"))
	}
	if c.ReadLimit <= 0 {
		errs = append(errs, errors.New("service read limit must be positive"))
	}
	if c.RulesFile != "" {
		if _, err := loadRules(c.RulesFile, true); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Module is the "service" probe module.
type Module struct {
	cfg    Config
	rules  *RuleSet
	err    error // rules that failed to load: every probe reports it
	dialer net.Dialer
	bufs   sync.Pool
}

// New returns the module; zero or negative settings take their defaults.
// Rules files that do not load make every probe fail with the reason
// (Validate reports it before that).
func New(cfg Config) *Module {
	d := DefaultConfig()
	if cfg.GreetingWait <= 0 {
		cfg.GreetingWait = d.GreetingWait
	}
	if cfg.ReplyWait <= 0 {
		cfg.ReplyWait = d.ReplyWait
	}
	if cfg.PortBudget <= 0 {
		cfg.PortBudget = d.PortBudget
	}
	if cfg.ReadLimit <= 0 {
		cfg.ReadLimit = d.ReadLimit
	}
	m := &Module{cfg: cfg}
	m.rules, m.err = buildRules(cfg)
	m.bufs.New = func() any {
		b := make([]byte, cfg.ReadLimit)
		return &b
	}
	return m
}

// Rules returns the rules the module uses.
func (m *Module) Rules() *RuleSet { return m.rules }

func buildRules(cfg Config) (*RuleSet, error) {
	rs, err := ParseRules(strings.NewReader(embeddedRules), true)
	if err != nil {
		return nil, fmt.Errorf("cannot parse the embedded rules: %w", err)
	}
	if cfg.RulesFile != "" {
		over, err := loadRules(cfg.RulesFile, true)
		if err != nil {
			return nil, err
		}
		rs = Merge(over, rs)
	}
	if cfg.NmapProbes != "" {
		if _, err := os.Stat(cfg.NmapProbes); err == nil {
			nm, err := loadRules(cfg.NmapProbes, false)
			if err != nil {
				return nil, err
			}
			rs = Merge(rs, nm)
		}
	}
	return rs, nil
}

func loadRules(path string, strict bool) (*RuleSet, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot open rules: %w", err)
	}
	defer f.Close()
	rs, err := ParseRules(f, strict)
	if err != nil {
		return nil, fmt.Errorf("cannot load rules %s: %w", path, err)
	}
	return rs, nil
}

// Name implements probes.Module.
func (m *Module) Name() string { return "service" }

// finding is what one probe's reply showed.
type finding struct {
	rule   *Rule
	groups []string
	probe  string
	reply  []byte
	tunnel string
}

// detection is the state of one port's detection.
type detection struct {
	hard, soft *finding
	last       *finding // the last non-empty reply, for banner and raw
	firstErr   error    // what ended the first connection attempt
	connected  bool
	anyReply   bool
	tlsOK      bool
	nullOnly   bool // stop after the greeting
	skipNull   bool // the greeting was waited for already
}

// detectTLS probes inside TLS when a handshake succeeds; what it finds
// there replaces the plaintext findings.
func (m *Module) detectTLS(ctx context.Context, t probes.Target, plain dialFunc, d *detection) {
	port := t.Port
	inner, ok := m.tryTLS(ctx, t.Hostname, plain)
	if !ok {
		return
	}
	d.tlsOK = true
	in := detection{connected: true}
	m.detect(ctx, port, inner, "ssl", &in)
	switch {
	case in.hard != nil || in.soft != nil:
		d.hard, d.soft, d.last = in.hard, in.soft, in.last
	case in.last != nil:
		d.hard, d.soft, d.last = nil, nil, in.last
	default:
		d.hard, d.soft, d.last = nil, nil, &finding{tunnel: "ssl", probe: tlsProbe}
	}
}

// Probe identifies the service on t. The status is success when anything
// answered (bytes or a TLS handshake), otherwise what ended the attempt.
func (m *Module) Probe(ctx context.Context, t probes.Target) (probes.Result, error) {
	res := probes.Result{Started: time.Now()}
	if m.err != nil {
		res.Status, res.Error = probes.StatusError, m.err.Error()
		return res, nil
	}
	pctx, cancel := context.WithTimeout(ctx, m.cfg.PortBudget)
	defer cancel()

	var d detection
	plain := func(ctx context.Context) (net.Conn, error) {
		return m.dialer.DialContext(ctx, "tcp", net.JoinHostPort(t.IP, strconv.Itoa(t.Port)))
	}
	// On a usual TLS port a silent service is most likely waiting for a
	// ClientHello: try TLS before the plaintext probes.
	tlsFirst := false
	if p := m.rules.Probe(tlsProbe); p != nil {
		tlsFirst = p.SSLPorts.has(t.Port)
	}
	d.nullOnly = tlsFirst
	m.detect(pctx, t.Port, plain, "", &d)
	triedTLS := false
	if d.hard == nil && d.connected && (tlsFirst && !d.anyReply || !tlsFirst) {
		triedTLS = true
		m.detectTLS(pctx, t, plain, &d)
	}
	if tlsFirst && !d.tlsOK && d.hard == nil && d.connected && pctx.Err() == nil {
		d.nullOnly, d.skipNull = false, true
		m.detect(pctx, t.Port, plain, "", &d)
		if !triedTLS && d.hard == nil {
			m.detectTLS(pctx, t, plain, &d)
		}
	}
	res.Duration = time.Since(res.Started)
	res.Data = m.describe(&d, t.Port)
	if d.last != nil {
		res.Raw = d.last.reply
	}
	switch {
	case d.anyReply || d.tlsOK:
		res.Status = probes.StatusSuccess
	case ctx.Err() != nil:
		res.Status, res.Error = probes.Classify(ctx.Err()), ctx.Err().Error()
	default:
		err := d.firstErr
		if err == nil {
			err = os.ErrDeadlineExceeded
		}
		res.Status, res.Error = probes.Classify(err), err.Error()
	}
	return res, nil
}

// describe turns a detection into result.data.
func (m *Module) describe(d *detection, port int) map[string]any {
	data := map[string]any{
		"name": "unknown", "product": "", "version": "", "extrainfo": "", "hostname": "", "ostype": "",
		"devicetype": "", "cpe": []string{}, "tunnel": "", "method": MethodTable, "confidence": 3,
		"banner": "", "probe": nullProbe, "port": port,
	}
	if name, ok := portNames[port]; ok {
		data["name"] = name
	}
	if d.last != nil {
		data["banner"], data["probe"], data["tunnel"] = banner(d.last.reply), d.last.probe, d.last.tunnel
	}
	f := d.hard
	if f == nil {
		f = d.soft
	}
	if f == nil {
		return data
	}
	r := f.rule
	data["name"], data["probe"], data["tunnel"], data["banner"] = r.Service, f.probe, f.tunnel, banner(f.reply)
	data["method"], data["confidence"] = MethodMatching, 10
	if r.Soft {
		data["confidence"] = 7
	}
	fields := []struct{ key, tmpl string }{{"product", r.Product}, {"version", r.Version}, {"extrainfo", r.Info},
		{"hostname", r.Hostname}, {"ostype", r.OS}, {"devicetype", r.Device}}
	for _, fl := range fields {
		v := strings.TrimSpace(expand(fl.tmpl, f.groups))
		data[fl.key] = v
		if v != "" && v != fl.tmpl {
			data["method"] = MethodExtraction
		}
	}
	cpes := make([]string, 0, len(r.CPE))
	for _, c := range r.CPE {
		cpes = append(cpes, strings.TrimSuffix(expand(c, f.groups), ":"))
	}
	data["cpe"] = cpes
	return data
}

// dialFunc opens a connection to the target (plain TCP, or TLS over it).
type dialFunc func(ctx context.Context) (net.Conn, error)

// detect runs the NULL probe, then the others in port priority, until a
// hard match or the end of ctx.
func (m *Module) detect(ctx context.Context, port int, dial dialFunc, tunnel string, d *detection) {
	var conn net.Conn
	var err error
	stop := func() {}
	if !d.skipNull {
		if conn, err = dial(ctx); err != nil {
			if d.firstErr == nil {
				d.firstErr = err
			}
			return
		}
		d.connected = true
		stop = closeOnDone(ctx, conn)
		reply, err := m.exchange(ctx, conn, nil, m.cfg.GreetingWait)
		if m.consider(d, m.rules.Probe(nullProbe), reply, tunnel) || d.nullOnly {
			stop()
			return
		}
		if len(reply) > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			// a greeting that matched nothing, or a closed connection:
			// fresh connections for the probes
			if err != nil && len(reply) == 0 && d.firstErr == nil {
				d.firstErr = err
			}
			stop()
			conn = nil
		}
	}
	for _, p := range m.order(port, tunnel) {
		if ctx.Err() != nil {
			break
		}
		if d.soft != nil && !canHardMatch(m.rules, p, d.soft.rule.Service) {
			continue
		}
		if conn == nil {
			if conn, err = dial(ctx); err != nil {
				break
			}
			stop = closeOnDone(ctx, conn)
		}
		reply, _ := m.exchange(ctx, conn, p.Payload, m.cfg.ReplyWait)
		for _, next := range p.Then {
			if len(reply) == 0 {
				break
			}
			more, _ := m.exchange(ctx, conn, next, m.cfg.ReplyWait)
			reply = append(reply, more...)
		}
		stop()
		conn = nil
		if m.consider(d, p, reply, tunnel) {
			return
		}
	}
	if conn != nil {
		stop()
	}
}

// consider matches reply against p's rules, its fallbacks' and NULL's,
// recording what it finds; it reports a hard match.
func (m *Module) consider(d *detection, p *Probe, reply []byte, tunnel string) bool {
	if len(reply) == 0 || p == nil {
		return false
	}
	d.anyReply = true
	d.last = &finding{probe: p.Name, reply: reply, tunnel: tunnel}
	text := latin1(reply)
	seen := map[string]bool{}
	var try func(p *Probe) bool
	try = func(p *Probe) bool {
		if p == nil || seen[p.Name] {
			return false
		}
		seen[p.Name] = true
		for _, r := range p.Matches {
			if d.soft != nil && r.Soft {
				continue
			}
			if d.soft != nil && r.Service != d.soft.rule.Service {
				continue
			}
			g := r.Pattern.FindStringSubmatch(text)
			if g == nil {
				continue
			}
			f := &finding{rule: r, groups: g, probe: d.last.probe, reply: reply, tunnel: tunnel}
			if r.Soft {
				d.soft = f
				continue
			}
			d.hard = f
			return true
		}
		for _, fb := range p.Fallback {
			if try(m.rules.Probe(fb)) {
				return true
			}
		}
		return false
	}
	return try(p) || try(m.rules.Probe(nullProbe))
}

// canHardMatch tells whether p (or its fallbacks) has a hard rule for svc:
// after a softmatch only such probes are worth sending.
func canHardMatch(rs *RuleSet, p *Probe, svc string) bool {
	for _, r := range p.Matches {
		if !r.Soft && r.Service == svc {
			return true
		}
	}
	for _, fb := range p.Fallback {
		if q := rs.Probe(fb); q != nil && q != p && canHardMatch(rs, q, svc) {
			return true
		}
	}
	return false
}

// order lists the probes to send after NULL: those naming the port first,
// then the rest, in file order; the TLS pseudo-probe is never sent as bytes.
func (m *Module) order(port int, tunnel string) []*Probe {
	var first, rest []*Probe
	for _, p := range m.rules.Probes {
		if p.Name == nullProbe || p.Name == tlsProbe || len(p.Payload) == 0 {
			continue
		}
		listed := p.Ports.has(port)
		if tunnel == "ssl" {
			listed = listed || p.SSLPorts.has(port)
		}
		if listed {
			first = append(first, p)
		} else {
			rest = append(rest, p)
		}
	}
	return append(first, rest...)
}

// tlsProbe names the TLS handshake step in the rules (its sslports).
const tlsProbe = "SSLSessionReq"

// tryTLS runs a TLS handshake (any certificate: this identifies, it does
// not trust), naming the server when the task named it, and returns a
// dialer of TLS connections when it succeeds.
func (m *Module) tryTLS(ctx context.Context, serverName string, plain dialFunc) (dialFunc, bool) {
	dial := func(ctx context.Context) (net.Conn, error) {
		raw, err := plain(ctx)
		if err != nil {
			return nil, err
		}
		hctx, cancel := context.WithTimeout(ctx, m.cfg.ReplyWait)
		defer cancel()
		c := tls.Client(raw, &tls.Config{ServerName: serverName, InsecureSkipVerify: true, MinVersion: tls.VersionTLS10}) //nolint:gosec // identification only
		if err := c.HandshakeContext(hctx); err != nil {
			closeAbruptly(raw)
			return nil, err
		}
		return c, nil
	}
	c, err := dial(ctx)
	if err != nil {
		return nil, false
	}
	closeAbruptly(c)
	return dial, true
}

// closeOnDone unblocks the connection's reads and writes when ctx ends;
// the returned func closes the connection and stops watching.
func closeOnDone(ctx context.Context, conn net.Conn) func() {
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	var once sync.Once
	return func() {
		once.Do(func() {
			stop()
			closeAbruptly(conn)
		})
	}
}

// exchange writes payload (when any) and reads the reply, up to wait. The
// reply is a copy; err is what ended reading when nothing came back.
func (m *Module) exchange(ctx context.Context, conn net.Conn, payload []byte, wait time.Duration) ([]byte, error) {
	if len(payload) > 0 {
		if err := conn.SetWriteDeadline(waitUntil(ctx, wait)); err != nil {
			return nil, err
		}
		if _, err := conn.Write(payload); err != nil {
			return nil, err
		}
	}
	bp := m.bufs.Get().(*[]byte)
	defer m.bufs.Put(bp)
	n, err := readReply(ctx, conn, *bp, wait, len(payload) == 0)
	if n == 0 {
		return nil, err
	}
	return bytes.Clone((*bp)[:n]), nil
}

// readReply reads into buf until it is full, the peer closes, the reply
// looks complete (a greeting ending a line) or goes quiet for settleWait,
// or wait (capped by ctx's deadline) passes with nothing read.
func readReply(ctx context.Context, conn net.Conn, buf []byte, wait time.Duration, greeting bool) (int, error) {
	deadline := waitUntil(ctx, wait)
	if err := setReadDeadline(ctx, conn, deadline); err != nil {
		return 0, err
	}
	n := 0
	for n < len(buf) {
		k, err := conn.Read(buf[n:])
		n += k
		if err != nil {
			if n > 0 && (errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded)) {
				return n, nil
			}
			return n, err
		}
		if greeting && n > 0 && buf[n-1] == '\n' {
			return n, nil
		}
		if err := setReadDeadline(ctx, conn, minTime(time.Now().Add(settleWait), deadline)); err != nil {
			return n, nil
		}
	}
	return n, nil
}

// setReadDeadline sets t unless ctx has ended: the deadline set when ctx
// ended must not be overwritten by a later one.
func setReadDeadline(ctx context.Context, conn net.Conn, t time.Time) error {
	if err := conn.SetReadDeadline(t); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		_ = conn.SetReadDeadline(time.Unix(1, 0))
		return err
	}
	return nil
}

func waitUntil(ctx context.Context, wait time.Duration) time.Time {
	d := time.Now().Add(wait)
	if cd, ok := ctx.Deadline(); ok {
		return minTime(d, cd)
	}
	return d
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// closeAbruptly closes with a reset instead of a FIN: a scanner opens
// connections by the million, and TIME_WAIT on each would exhaust its
// ephemeral ports.
func closeAbruptly(conn net.Conn) {
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// banner is the head of the reply (up to the first blank line, as an HTTP
// or SMTP header block ends), without its final line break, escaped.
func banner(reply []byte) string {
	head := reply
	if i := bytes.Index(head, []byte("\n\r\n")); i >= 0 {
		head = head[:i+1]
	} else if i := bytes.Index(head, []byte("\n\n")); i >= 0 {
		head = head[:i+1]
	}
	if len(head) > bannerLimit {
		head = head[:bannerLimit]
	}
	head = bytes.TrimSuffix(head, []byte("\n"))
	head = bytes.TrimSuffix(head, []byte("\r"))
	return probes.Printable(head)
}
