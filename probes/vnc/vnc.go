// Package vnc is the "vnc" probe module: the server's RFB version, the
// security types it offers (VeNCrypt with its subtypes, Tight with its
// tunnel and authentication capabilities), the failure reason
// it gives instead, and for servers without authentication the desktop
// name, geometry, pixel format and a screenshot. It never authenticates:
// password-protected servers are read up to their security types and left.
//
// TigerVNC blacklists a client after five connections that end before
// authentication, so the module opens one connection per target, two when
// a server offers None (or VeNCrypt) beside VeNCrypt or Tight, and at most
// PerHost at once to one IP across all its probes.
package vnc

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"trawl/probes"
)

// ScreenshotStore keeps screenshots; link is where the API serves one to
// the job's owner.
type ScreenshotStore interface {
	PutScreenshot(ctx context.Context, jobID string, png []byte) (link string, err error)
}

// ErrNoStore is the screenshot's store_error when the module has no store.
var ErrNoStore = errors.New("no store configured")

// Config configures the module.
type Config struct {
	// ConnTimeout bounds each connection, screenshot included (the
	// caller's ctx may end it sooner).
	ConnTimeout time.Duration
	// Screenshot enables the framebuffer capture on servers without auth.
	Screenshot bool
	// MaxPixels caps the framebuffer (width × height) the module captures.
	MaxPixels int
	// PerHost caps the module's connections open at once to one IP.
	PerHost int
	// Encodings are the RFB encodings offered for the screenshot, most
	// preferred first, by name: zrle, hextile, rre, copyrect, raw.
	Encodings []string
}

// DefaultConfig returns the defaults RegisterFlags sets.
func DefaultConfig() Config {
	return Config{ConnTimeout: 10 * time.Second, Screenshot: true, MaxPixels: 3840 * 2400, PerHost: 2,
		Encodings: []string{"zrle", "hextile", "rre", "copyrect", "raw"}}
}

// RegisterFlags registers the module's flags under prefix and sets defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet, prefix string) {
	d := DefaultConfig()
	fs.DurationVar(&c.ConnTimeout, prefix+"conn-timeout", d.ConnTimeout, "time limit of each connection to a server, screenshot included")
	fs.BoolVar(&c.Screenshot, prefix+"screenshot", d.Screenshot, "capture the screen of servers that need no authentication")
	fs.IntVar(&c.MaxPixels, prefix+"max-pixels", d.MaxPixels, "largest framebuffer (width × height) to capture")
	fs.IntVar(&c.PerHost, prefix+"per-host", d.PerHost, "connections open at once to one IP (TigerVNC bans after 5 aborted ones)")
	c.Encodings = d.Encodings
	fs.Func(prefix+"encodings", "RFB encodings offered for screenshots, preferred first (default "+
		strings.Join(d.Encodings, ",")+")", func(s string) error {
		c.Encodings = strings.Split(s, ",")
		return nil
	})
}

// Validate reports every invalid setting.
func (c Config) Validate() error {
	var errs []error
	if c.ConnTimeout <= 0 {
		errs = append(errs, errors.New("vnc connection timeout must be positive"))
	}
	if c.MaxPixels <= 0 {
		errs = append(errs, errors.New("vnc max pixels must be positive"))
	}
	if c.PerHost <= 0 || c.PerHost > 2 {
		errs = append(errs, errors.New("vnc per-host connections must be 1 or 2"))
	}
	if _, err := encodingIDs(c.Encodings); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Module is the "vnc" probe module.
type Module struct {
	cfg       Config
	encodings []int32
	store     ScreenshotStore
	gate      *hostGate
	dialer    probes.ContextDialer
}

// New returns the module; store may be nil (screenshots are hashed and
// measured but not kept). Empty or invalid settings take their defaults.
func New(cfg Config, store ScreenshotStore) *Module {
	d := DefaultConfig()
	if cfg.ConnTimeout <= 0 {
		cfg.ConnTimeout = d.ConnTimeout
	}
	if cfg.MaxPixels <= 0 {
		cfg.MaxPixels = d.MaxPixels
	}
	if cfg.PerHost <= 0 || cfg.PerHost > 2 {
		cfg.PerHost = d.PerHost
	}
	encs, err := encodingIDs(cfg.Encodings)
	if err != nil || len(encs) == 0 {
		encs, _ = encodingIDs(d.Encodings)
	}
	return &Module{cfg: cfg, encodings: encs, store: store, gate: newHostGate(cfg.PerHost), dialer: &net.Dialer{}}
}

// Name implements probes.Module.
func (m *Module) Name() string { return "vnc" }

// Screenshot describes the captured framebuffer.
type Screenshot struct {
	Link   string `json:"link,omitempty"`
	SHA256 string `json:"sha256"`
	Width  int    `json:"width"`
	Height int    `json:"height"`
	// Bytes is the PNG's size.
	Bytes int `json:"bytes"`
	// StoreError says why there is no link.
	StoreError string `json:"store_error,omitempty"`
}

// Probe examines one VNC server. The status is success once the version
// and the server's security answer (types or a failure reason) are read;
// for a server without auth ServerInit must parse too. The screenshot and
// the VeNCrypt and Tight subtypes are extra steps whose failures land
// under "errors".
func (m *Module) Probe(ctx context.Context, t probes.Target) (probes.Result, error) {
	res := probes.Result{Started: time.Now()}
	addr := net.JoinHostPort(t.IP, strconv.Itoa(t.Port))
	data := map[string]any{}
	stepErrs := map[string]string{}
	finish := func(err error) (probes.Result, error) {
		res.Duration = time.Since(res.Started)
		if len(stepErrs) > 0 {
			data["errors"] = stepErrs
		}
		res.Data = data
		res.Status = probes.Classify(err)
		if err != nil {
			res.Error = err.Error()
			if ctx.Err() != nil && !errors.Is(err, probes.ErrProtocol) {
				res.Status, res.Error = probes.Classify(ctx.Err()), ctx.Err().Error()
			}
		}
		return res, nil
	}

	first, err := m.firstConnection(ctx, t, addr, data, stepErrs)
	res.Raw = first.raw
	if err != nil {
		return finish(err)
	}
	if first.later != 0 {
		// The first connection went to None or to another type; the
		// subtypes of VeNCrypt or Tight need a connection of their own:
		// the second and last.
		if err := m.detailsConnection(ctx, t.IP, addr, first.later, first.types); err != nil {
			stepErrs[detailStep(first.later)] = err.Error()
		}
	}
	data["security_types"] = first.types
	if len(first.types) > 0 {
		data["auth_enabled"] = authEnabled(first.types)
	}
	return finish(nil)
}

// firstResult is what the first connection found.
type firstResult struct {
	types []SecurityType
	later int // a type (VeNCrypt, Tight) whose subtypes the second connection reads; 0: none
	raw   []byte
}

// detailStep names the step that reads a type's subtypes in "errors".
func detailStep(id int) string {
	if id == secTight {
		return "tight"
	}
	return "vencrypt"
}

func (m *Module) firstConnection(ctx context.Context, t probes.Target, addr string, data map[string]any, stepErrs map[string]string) (out firstResult, err error) {
	s, err := m.dial(ctx, t.IP, addr)
	if err != nil {
		return out, err
	}
	defer s.close()
	defer func() { out.raw = s.rec.Bytes() }()

	v, err := s.version()
	if v.line != "" {
		data["version"] = v.line
	}
	if err != nil {
		return out, err
	}
	data["protocol"] = v.negotiated.String()
	ids, reason, err := s.securityTypes(v.negotiated)
	if err != nil {
		return out, err
	}
	if reason != "" {
		data["msg"] = reason
		return out, nil
	}
	for _, id := range ids {
		out.types = append(out.types, SecurityType{ID: id, Name: securityTypeName(id)})
	}
	serverPicks := v.negotiated.minor < 7
	hasNone := slices.Contains(ids, secNone)
	vencrypt := slices.IndexFunc(out.types, func(st SecurityType) bool { return st.ID == secVeNCrypt })
	tight := slices.IndexFunc(out.types, func(st SecurityType) bool { return st.ID == secTight })
	attempted := 0 // the detailed type this connection read
	switch {
	case hasNone:
		if err := s.chooseNone(v.negotiated, serverPicks); err != nil {
			var refused *ServerRefusedError
			if errors.As(err, &refused) {
				data["msg"] = refused.Reason
				return out, nil
			}
			return out, err
		}
		init, err := s.clientInit()
		if err != nil {
			return out, err
		}
		data["title"], data["width"], data["height"], data["pixel_format"] = init.name, init.width, init.height, init.format
		s.rec.stop()
		if m.cfg.Screenshot {
			if shot, err := m.screenshot(ctx, s, t.JobID, init); err != nil {
				stepErrs["screenshot"] = err.Error()
			} else {
				data["screenshot"] = shot
			}
		}
	case vencrypt >= 0 && !serverPicks:
		attempted = secVeNCrypt
		st, err := s.vencrypt()
		if err != nil {
			stepErrs["vencrypt"] = err.Error()
		}
		out.types[vencrypt].Version, out.types[vencrypt].Subtypes = st.Version, st.Subtypes
	case tight >= 0 && !serverPicks:
		attempted = secTight
		st, err := s.tight()
		if err != nil {
			stepErrs["tight"] = err.Error()
		}
		out.types[tight] = st
	}
	// the second and last connection reads a detailed type this one did not
	switch {
	case serverPicks:
	case vencrypt >= 0 && attempted != secVeNCrypt:
		out.later = secVeNCrypt
	case tight >= 0 && attempted != secTight:
		out.later = secTight
	}
	// Password-protected or unknown types: leave without answering.
	return out, nil
}

// detailsConnection reads the subtypes of type id (VeNCrypt or Tight) into
// types on a connection of its own.
func (m *Module) detailsConnection(ctx context.Context, ip, addr string, id int, types []SecurityType) error {
	s, err := m.dial(ctx, ip, addr)
	if err != nil {
		return err
	}
	defer s.close()
	v, err := s.version()
	if err != nil {
		return err
	}
	ids, reason, err := s.securityTypes(v.negotiated)
	if err != nil {
		return err
	}
	if reason != "" {
		return &ServerRefusedError{Reason: reason}
	}
	if !slices.Contains(ids, id) || v.negotiated.minor < 7 {
		return fmt.Errorf("%s no longer offered: %w", securityTypeName(id), probes.ErrProtocol)
	}
	var st SecurityType
	if id == secTight {
		st, err = s.tight()
	} else {
		st, err = s.vencrypt()
	}
	for i := range types {
		if types[i].ID == id {
			types[i] = st
		}
	}
	return err
}

// authEnabled: nothing offered reaches the desktop without a password.
func authEnabled(types []SecurityType) bool {
	for _, t := range types {
		if t.ID == secNone {
			return false
		}
		if t.ID == secTight {
			if t.NoAuthentication || slices.ContainsFunc(t.Subtypes, func(c SecurityType) bool { return c.ID == tightNoAuth }) {
				return false
			}
			continue
		}
		for _, sub := range t.Subtypes {
			if sub.ID == vencryptPlainNone || sub.ID == vencryptTLSNone || sub.ID == vencryptX509None {
				return false
			}
		}
	}
	return true
}

func (m *Module) screenshot(ctx context.Context, s *session, jobID string, init serverInit) (*Screenshot, error) {
	if init.width == 0 || init.height == 0 {
		return nil, fmt.Errorf("empty framebuffer %dx%d", init.width, init.height)
	}
	if init.width*init.height > m.cfg.MaxPixels {
		return nil, fmt.Errorf("framebuffer %dx%d exceeds %d pixels", init.width, init.height, m.cfg.MaxPixels)
	}
	img, err := s.capture(init.width, init.height, m.encodings, m.cfg.MaxPixels)
	if err != nil {
		return nil, err
	}
	png, err := encodePNG(img)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(png)
	shot := &Screenshot{SHA256: hex.EncodeToString(sum[:]), Width: img.Rect.Dx(), Height: img.Rect.Dy(), Bytes: len(png)}
	if m.store == nil {
		shot.StoreError = ErrNoStore.Error()
		return shot, nil
	}
	if shot.Link, err = m.store.PutScreenshot(ctx, jobID, png); err != nil {
		shot.StoreError = fmt.Sprintf("cannot store the screenshot: %v", err)
	}
	return shot, nil
}

// session is one connection to the server.
type session struct {
	conn    net.Conn
	w       wire
	rec     *recorder
	limiter *limitReader
	release func()
}

// dial waits for a slot of the per-host gate, connects and arms the
// connection's deadline: the earlier of ConnTimeout and ctx's end.
func (m *Module) dial(ctx context.Context, ip, addr string) (*session, error) {
	release, err := m.gate.acquire(ctx, ip)
	if err != nil {
		return nil, err
	}
	conn, done, err := probes.Dial(ctx, m.dialer, addr, m.cfg.ConnTimeout)
	if err != nil {
		release()
		return nil, err
	}
	s := &session{conn: conn, rec: &recorder{limit: probes.RawLimit}}
	s.limiter = &limitReader{r: conn, rec: s.rec, left: -1}
	s.w.r = bufio.NewReaderSize(s.limiter, 32<<10)
	s.release = func() {
		done()
		release()
	}
	return s, nil
}

func (s *session) close() { s.release() }

type versionInfo struct {
	line       string
	negotiated protocolVersion
}

// version reads the server's ProtocolVersion and answers with the
// negotiated one.
func (s *session) version() (versionInfo, error) {
	var b [12]byte
	s.w.first(b[:])
	if s.w.err != nil {
		return versionInfo{}, fmt.Errorf("cannot read the RFB version: %w", s.w.err)
	}
	v, err := parseVersion(b[:])
	if err != nil {
		return versionInfo{}, err
	}
	info := versionInfo{line: string(b[:11]), negotiated: v.negotiate()}
	if _, err := s.conn.Write(info.negotiated.line()); err != nil {
		return info, err
	}
	return info, nil
}

// securityTypes reads the server's security types, or its failure reason
// when it sends none. In 3.3 the server picks one; a VNC Authentication
// challenge that follows is read as evidence.
func (s *session) securityTypes(v protocolVersion) (ids []int, reason string, err error) {
	if v.minor < 7 {
		var b [4]byte
		s.w.first(b[:])
		id := int(b[0])<<24 | int(b[1])<<16 | int(b[2])<<8 | int(b[3])
		if s.w.err == nil && id == secInvalid {
			reason = s.w.text()
		}
		if s.w.err == nil && id == secVNCAuth {
			s.w.skip(16)
		}
		if s.w.err != nil {
			return nil, "", fmt.Errorf("cannot read the security type: %w", s.w.err)
		}
		if id == secInvalid {
			return nil, reason, nil
		}
		return []int{id}, "", nil
	}
	var nb [1]byte
	s.w.first(nb[:])
	n := int(nb[0])
	if s.w.err == nil && n == 0 {
		reason = s.w.text()
	}
	b := make([]byte, n)
	s.w.full(b)
	if s.w.err != nil {
		return nil, "", fmt.Errorf("cannot read the security types: %w", s.w.err)
	}
	if n == 0 {
		return nil, reason, nil
	}
	for _, id := range b {
		ids = append(ids, int(id))
	}
	return ids, "", nil
}

// chooseNone selects None and reads the SecurityResult where the version
// has one (3.8 always; 3.7 and 3.3 none for None).
func (s *session) chooseNone(v protocolVersion, serverPicked bool) error {
	if !serverPicked {
		if _, err := s.conn.Write([]byte{secNone}); err != nil {
			return err
		}
	}
	if v.minor < 8 {
		return nil
	}
	result := s.w.u32()
	if s.w.err != nil {
		return fmt.Errorf("cannot read the security result: %w", s.w.err)
	}
	if result != 0 {
		reason := s.w.text()
		if s.w.err != nil {
			return fmt.Errorf("cannot read the security failure reason: %w", s.w.err)
		}
		return &ServerRefusedError{Reason: reason}
	}
	return nil
}

type serverInit struct {
	width, height int
	format        PixelFormat
	name          string
}

// clientInit asks to share the desktop and reads ServerInit.
func (s *session) clientInit() (serverInit, error) {
	var init serverInit
	if _, err := s.conn.Write([]byte{1}); err != nil {
		return init, err
	}
	var b [20]byte
	s.w.full(b[:])
	init.name = s.w.text()
	if s.w.err != nil {
		return init, fmt.Errorf("cannot read ServerInit: %w", s.w.err)
	}
	init.width = int(b[0])<<8 | int(b[1])
	init.height = int(b[2])<<8 | int(b[3])
	init.format = parsePixelFormat(b[4:])
	return init, nil
}

// vencrypt selects VeNCrypt, agrees on version 0.2 and reads the subtypes;
// it chooses none of them.
func (s *session) vencrypt() (SecurityType, error) {
	st := SecurityType{ID: secVeNCrypt, Name: securityTypeName(secVeNCrypt)}
	if _, err := s.conn.Write([]byte{secVeNCrypt}); err != nil {
		return st, err
	}
	major, minor := s.w.u8(), s.w.u8()
	if s.w.err != nil {
		return st, fmt.Errorf("cannot read the VeNCrypt version: %w", s.w.err)
	}
	if major != 0 || minor < 2 {
		// 0.1 lists its subtypes differently; only the version is told
		return st, fmt.Errorf("VeNCrypt version %d.%d is not 0.2", major, minor)
	}
	if _, err := s.conn.Write([]byte{0, 2}); err != nil {
		return st, err
	}
	if ack := s.w.u8(); s.w.err == nil && ack != 0 {
		return st, fmt.Errorf("server rejected VeNCrypt 0.2: %w", probes.ErrProtocol)
	}
	st.Version = "0.2"
	n := s.w.u8()
	for i := 0; i < n && s.w.err == nil; i++ {
		id := int(s.w.u32())
		st.Subtypes = append(st.Subtypes, SecurityType{ID: id, Name: vencryptSubtypeName(id)})
	}
	if s.w.err != nil {
		return st, fmt.Errorf("cannot read the VeNCrypt subtypes: %w", s.w.err)
	}
	return st, nil
}

// maxTightCaps bounds a Tight capability list (TightVNC sends a handful).
const maxTightCaps = 64

// tight chooses the Tight security type and reads its tunnel and
// authentication capabilities (choosing no tunnel, when offered, to get to
// the latter); it answers nothing further, so the connection ends before
// any authentication is attempted.
func (s *session) tight() (SecurityType, error) {
	st := SecurityType{ID: secTight, Name: securityTypeName(secTight)}
	if _, err := s.conn.Write([]byte{secTight}); err != nil {
		return st, err
	}
	tunnels, err := s.tightCaps("tunnel", func(int) string { return "" })
	st.Tunnels = tunnels
	if err != nil {
		return st, err
	}
	if len(tunnels) > 0 {
		if !slices.ContainsFunc(tunnels, func(c SecurityType) bool { return c.ID == 0 }) {
			return st, fmt.Errorf("the Tight type offers only tunnels, no NOTUNNEL: %w", probes.ErrProtocol)
		}
		if _, err := s.conn.Write([]byte{0, 0, 0, 0}); err != nil { // NOTUNNEL
			return st, err
		}
	}
	auths, err := s.tightCaps("authentication", tightAuthName)
	st.Subtypes, st.NoAuthentication = auths, err == nil && len(auths) == 0
	return st, err
}

// tightCaps reads a Tight capability list: a count, then code, vendor and
// signature of each.
func (s *session) tightCaps(what string, name func(int) string) ([]SecurityType, error) {
	n := s.w.u32()
	if s.w.err != nil {
		return nil, fmt.Errorf("cannot read the Tight %s capabilities: %w", what, s.w.err)
	}
	if n > maxTightCaps {
		return nil, fmt.Errorf("the Tight type lists %d %s capabilities: %w", n, what, probes.ErrProtocol)
	}
	var caps []SecurityType
	for range n {
		code := int(int32(s.w.u32()))
		var vendor [4]byte
		var sig [8]byte
		s.w.full(vendor[:])
		s.w.full(sig[:])
		if s.w.err != nil {
			return caps, fmt.Errorf("cannot read the Tight %s capabilities: %w", what, s.w.err)
		}
		c := SecurityType{ID: code, Name: name(code), Vendor: printable(vendor[:]), Signature: printable(sig[:])}
		if c.Name == "" {
			c.Name = c.Signature
		}
		caps = append(caps, c)
	}
	return caps, nil
}

// printable is b as text with anything but printable ASCII as '?'.
func printable(b []byte) string {
	out := make([]byte, len(b))
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		out[i] = c
	}
	return string(out)
}

// recorder keeps the first limit bytes that pass through it until stopped:
// the handshake is the evidence, not the framebuffer.
type recorder struct {
	buf     bytes.Buffer
	limit   int
	stopped bool
}

func (r *recorder) Write(p []byte) {
	if room := r.limit - r.buf.Len(); room > 0 && !r.stopped {
		r.buf.Write(p[:min(room, len(p))])
	}
}

func (r *recorder) stop() { r.stopped = true }

func (r *recorder) Bytes() []byte { return bytes.Clone(r.buf.Bytes()) }
