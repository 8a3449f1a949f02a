// Package ssl is the "ssl" probe module: which SSL/TLS versions and cipher
// suites a server accepts and in what order it prefers them, the default
// negotiation and its JA3S, the certificate chain as sent with a trust
// verdict, and the behaviours scanners grade (secure renegotiation,
// compression, fallback SCSV, heartbleed, weak suites). crypto/tls does the
// default handshake; legacy versions and suites are offered with
// ClientHellos the module writes itself and judged by the ServerHello. The
// one handshake it completes itself is a minimal TLS 1.2 one (tls12.go)
// that then asks the server to renegotiate.
package ssl

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ecdh"
	"crypto/md5"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"trawl/probes"
)

// Config configures the module.
type Config struct {
	// Timeout bounds each handshake: connect, STARTTLS and the server's
	// first flight.
	Timeout time.Duration
	// Concurrency is the number of connections open to one target at once
	// (at most 2, so a server's abuse protection is never tripped).
	Concurrency int
	// MaxHandshakes caps the handshakes of one probe; the cipher lists say
	// when it cut them short.
	MaxHandshakes int
	// SNI is the server name sent to every target; empty sends the name
	// the task gave for the target's address, or none for address targets.
	SNI string
	// StartTLS is "auto" (by port: smtp 25/587, imap 143, pop3 110,
	// ftp 21), "none", or a protocol forced on every port.
	StartTLS string
	// ALPN lists the protocols offered on plain TLS ports; nil takes the
	// default, an empty list offers none.
	ALPN []string
}

// MaxConcurrency is the most connections the module opens to one target.
const MaxConcurrency = 2

// DefaultConfig returns the defaults RegisterFlags sets.
func DefaultConfig() Config {
	return Config{
		Timeout: 5 * time.Second, Concurrency: MaxConcurrency, MaxHandshakes: 120,
		StartTLS: StartTLSAuto, ALPN: []string{"h2", "http/1.1"},
	}
}

// RegisterFlags registers the module's flags under prefix and sets defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet, prefix string) {
	d := DefaultConfig()
	*c = d
	fs.DurationVar(&c.Timeout, prefix+"timeout", d.Timeout, "time limit of each TLS handshake")
	fs.IntVar(&c.Concurrency, prefix+"concurrency", d.Concurrency, "connections open to one target at once (1 or 2)")
	fs.IntVar(&c.MaxHandshakes, prefix+"max-handshakes", d.MaxHandshakes, "handshakes per probed port at most")
	fs.StringVar(&c.SNI, prefix+"sni", d.SNI, "server name to send to every target (default: the hostname the task gave for the target, none for address targets)")
	fs.StringVar(&c.StartTLS, prefix+"starttls", d.StartTLS, "auto (by port), none, smtp, imap, pop3 or ftp")
	fs.Func(prefix+"alpn", "comma-separated ALPN protocols offered on plain TLS ports (default \"h2,http/1.1\")", func(s string) error {
		c.ALPN = []string{}
		for p := range strings.SplitSeq(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				c.ALPN = append(c.ALPN, p)
			}
		}
		return nil
	})
}

// Validate reports every invalid setting.
func (c Config) Validate() error {
	var errs []error
	if c.Timeout <= 0 {
		errs = append(errs, errors.New("ssl timeout must be positive"))
	}
	if c.Concurrency < 1 || c.Concurrency > MaxConcurrency {
		errs = append(errs, fmt.Errorf("ssl concurrency must be 1 to %d", MaxConcurrency))
	}
	if c.MaxHandshakes < 1 {
		errs = append(errs, errors.New("ssl max handshakes must be positive"))
	}
	if !validStartTLS(c.StartTLS) {
		errs = append(errs, fmt.Errorf("ssl starttls %q is not auto, none, smtp, imap, pop3 or ftp", c.StartTLS))
	}
	if len(c.SNI) > 255 || strings.ContainsAny(c.SNI, " /\x00") {
		errs = append(errs, fmt.Errorf("ssl sni %q is not a host name", c.SNI))
	}
	for _, p := range c.ALPN {
		if len(p) == 0 || len(p) > 255 {
			errs = append(errs, fmt.Errorf("ssl alpn protocol %q must be 1 to 255 bytes", p))
		}
	}
	return errors.Join(errs...)
}

// Module is the "ssl" probe module.
type Module struct {
	cfg    Config
	dialer net.Dialer
	// dial opens connections; tests wrap it to count them.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// keyShare is the x25519 public key of TLS 1.3 hellos; the handshake
	// never completes, so one key serves every probe.
	keyShare []byte
	// roots verifies chains; nil means the system roots.
	roots *x509.CertPool
	now   func() time.Time
}

// x25519Base is the X25519 base point, a valid public key should key
// generation ever fail.
var x25519Base = append([]byte{9}, make([]byte, 31)...)

// New returns the module; invalid settings take their defaults.
func New(cfg Config) *Module {
	d := DefaultConfig()
	if cfg.Timeout <= 0 {
		cfg.Timeout = d.Timeout
	}
	if cfg.Concurrency < 1 || cfg.Concurrency > MaxConcurrency {
		cfg.Concurrency = d.Concurrency
	}
	if cfg.MaxHandshakes < 1 {
		cfg.MaxHandshakes = d.MaxHandshakes
	}
	if !validStartTLS(cfg.StartTLS) {
		cfg.StartTLS = d.StartTLS
	}
	if cfg.ALPN == nil {
		cfg.ALPN = d.ALPN
	}
	m := &Module{cfg: cfg, keyShare: x25519Base, now: time.Now}
	m.dial = m.dialer.DialContext
	if k, err := ecdh.X25519().GenerateKey(rand.Reader); err == nil {
		m.keyShare = k.PublicKey().Bytes()
	}
	return m
}

// Name implements probes.Module.
func (m *Module) Name() string { return "ssl" }

// versions in the order they are reported, and their names.
var versions = []struct {
	v    uint16
	key  string
	name string
}{
	{versionSSL20, "sslv2", "SSLv2"},
	{versionSSL30, "sslv3", "SSLv3"},
	{versionTLS10, "tlsv1", "TLSv1"},
	{versionTLS11, "tlsv1_1", "TLSv1.1"},
	{versionTLS12, "tlsv1_2", "TLSv1.2"},
	{versionTLS13, "tlsv1_3", "TLSv1.3"},
}

func versionName(v uint16) string {
	for _, x := range versions {
		if x.v == v {
			return x.name
		}
	}
	return "0x" + hex4(v)
}

// ServerInfo is server_info of the output.
type ServerInfo struct {
	IPAddress          string   `json:"ip_address"`
	Port               int      `json:"port"`
	Hostname           string   `json:"hostname,omitempty"`
	TLSWrappedProtocol string   `json:"tls_wrapped_protocol"`
	StartTLSGreeting   string   `json:"starttls_greeting,omitempty"`
	HighestVersion     string   `json:"highest_ssl_version_supported,omitempty"`
	Default            Default  `json:"default_negotiation"`
	ALPNOffered        []string `json:"alpn_offered,omitempty"`
	ALPNSelected       string   `json:"alpn_selected,omitempty"`
	JA3S               string   `json:"ja3s,omitempty"`
	JA3SString         string   `json:"ja3s_string,omitempty"`
	Handshakes         int      `json:"handshakes"`
	HandshakeCapHit    bool     `json:"handshake_cap_reached,omitempty"`
}

// Default is the negotiation of a modern client (crypto/tls, TLS 1.0–1.3,
// every suite it implements).
type Default struct {
	Version     string `json:"version,omitempty"`
	Cipher      string `json:"cipher,omitempty"`
	OpenSSLName string `json:"openssl_name,omitempty"`
	Group       string `json:"group,omitempty"`
	Error       string `json:"error,omitempty"`
}

// Cipher is one accepted cipher suite.
type Cipher struct {
	Name        string       `json:"name"`
	OpenSSLName string       `json:"openssl_name"`
	ID          string       `json:"id"`
	KeyExchange *KeyExchange `json:"key_exchange,omitempty"`
}

// KeyExchange is the key exchange of an accepted suite; Group and Bits
// are known for ephemeral exchanges.
type KeyExchange struct {
	Type  string `json:"type"`
	Group string `json:"group,omitempty"`
	Bits  int    `json:"bits,omitempty"`
}

// VersionResult is ciphers.<version> of the output.
type VersionResult struct {
	Supported          bool     `json:"supported"`
	AcceptedCipherList []Cipher `json:"accepted_cipher_list"`
	PreferredCipher    *Cipher  `json:"preferred_cipher"`
	// Preference is "server" (the server's order wins), "client" (the
	// client's order wins) or empty when fewer than two suites tell.
	Preference string `json:"preference,omitempty"`
	// Truncated reports the handshake cap cut the enumeration short.
	Truncated bool   `json:"truncated,omitempty"`
	Error     string `json:"error,omitempty"`
}

// Vulnerabilities is vulnerabilities of the output; nil verdicts were not
// tested (or could not be).
type Vulnerabilities struct {
	Compression   Compression   `json:"compression"`
	Fallback      Fallback      `json:"fallback"`
	Heartbleed    Heartbleed    `json:"heartbleed"`
	Renegotiation Renegotiation `json:"renegotiation"`
	Weak          Weak          `json:"weak_config"`
}

// Compression reports TLS compression (CRIME).
type Compression struct {
	SupportsCompression *bool `json:"supports_compression"`
}

// Fallback reports TLS_FALLBACK_SCSV support.
type Fallback struct {
	SupportsFallbackSCSV *bool `json:"supports_fallback_scsv"`
}

// Heartbleed reports the heartbeat extension and CVE-2014-0160.
type Heartbleed struct {
	HeartbeatExtension     bool  `json:"heartbeat_extension"`
	VulnerableToHeartbleed *bool `json:"is_vulnerable_to_heartbleed"`
}

// Renegotiation reports RFC 5746 support and whether the server lets a
// client start a renegotiation (tested with a TLS 1.2 ECDHE AES-GCM
// handshake; nil when none could be completed, the reason says why).
type Renegotiation struct {
	SupportsSecureRenegotiation *bool `json:"supports_secure_renegotiation"`
	AcceptsClientRenegotiation  *bool `json:"accepts_client_renegotiation"`
	// AcceptsInsecureRenegotiation is true when the server renegotiated
	// with a client that sent no RFC 5746 binding (CVE-2009-3555); it
	// is set whenever the client-initiated test ran.
	AcceptsInsecureRenegotiation *bool  `json:"accepts_insecure_renegotiation"`
	ClientRenegotiationReason    string `json:"client_renegotiation_reason,omitempty"`
}

// Weak summarises weak configuration derived from the accepted lists.
type Weak struct {
	SSLv2      bool     `json:"sslv2"`
	SSLv3      bool     `json:"sslv3"`
	TLSv1_0    bool     `json:"tlsv1"`
	TLSv1_1    bool     `json:"tlsv1_1"`
	RC4        bool     `json:"rc4"`
	SWEET32    bool     `json:"sweet32"`
	Export     bool     `json:"export"`
	Null       bool     `json:"null"`
	Anonymous  bool     `json:"anonymous"`
	DES        bool     `json:"des"`
	CBCInTLS10 bool     `json:"cbc_in_tlsv1"`
	SmallDH    bool     `json:"small_dh"`
	MinDHBits  int      `json:"min_dh_bits,omitempty"`
	Flags      []string `json:"flags"`
}

// smallDHBits is the finite-field DH size below which a group is weak.
const smallDHBits = 2048

var (
	errBudget  = errors.New("handshake cap reached")
	errNoSSLv2 = errors.New("no SSLv2 reply")
)

// scan is one Probe: its target, connection slots and handshake budget,
// and what the handshakes observed along the way.
type scan struct {
	m        *Module
	t        probes.Target
	sni      string // server name sent and checked against the certificate
	addr     string
	starttls string
	slots    chan struct{}
	left     atomic.Int64
	used     atomic.Int64
	capHit   atomic.Bool

	mu       sync.Mutex
	greeting string
	secReneg *bool
	hbExt    bool
	certs    [][]byte // from a crafted flight, when crypto/tls got none
	v2cert   []byte   // from an SSLv2 SERVER-HELLO, the last resort
	hellos   map[uint16]*flight
}

// Probe scans t. The status is success when any SSL/TLS version was
// negotiated; otherwise what ended the first handshake.
func (m *Module) Probe(ctx context.Context, t probes.Target) (probes.Result, error) {
	res := probes.Result{Started: time.Now()}
	s := &scan{
		m: m, t: t, sni: cmp.Or(m.cfg.SNI, t.Hostname), addr: net.JoinHostPort(t.IP, strconv.Itoa(t.Port)),
		starttls: startTLSFor(m.cfg.StartTLS, t.Port),
		slots:    make(chan struct{}, m.cfg.Concurrency),
		hellos:   map[uint16]*flight{},
	}
	s.left.Store(int64(m.cfg.MaxHandshakes))

	info := ServerInfo{IPAddress: t.IP, Port: t.Port, Hostname: s.sni, TLSWrappedProtocol: "plain_tls"}
	if s.starttls != "" {
		info.TLSWrappedProtocol = "starttls_" + s.starttls
	} else {
		info.ALPNOffered = m.cfg.ALPN
	}

	def, defErr := s.defaultHandshake(ctx)
	if defErr != nil && stopsScan(defErr) {
		res.Duration = time.Since(res.Started)
		res.Status, res.Error = probes.Classify(defErr), defErr.Error()
		if ctx.Err() != nil {
			res.Status, res.Error = probes.Classify(ctx.Err()), ctx.Err().Error()
		}
		info.StartTLSGreeting = s.greeting
		info.Handshakes = int(s.used.Load())
		res.Data = map[string]any{"server_info": info}
		return res, nil
	}

	ciphers := s.scanVersions(ctx)
	var highest uint16
	for _, v := range versions {
		if ciphers[v.key].Supported {
			highest = v.v
		}
	}
	vulns := s.behaviours(ctx, highest, ciphers)

	info.StartTLSGreeting = s.greeting
	if highest != 0 {
		info.HighestVersion = versionName(highest)
	}
	var raw []byte
	certs := def.certs
	if defErr == nil {
		info.Default = def.negotiation
		info.ALPNSelected = def.alpn
	} else {
		info.Default.Error = defErr.Error()
	}
	hello, helloRaw := def.hello, def.helloRaw
	if hello == nil {
		// no crypto/tls handshake: the highest crafted one stands in
		s.mu.Lock()
		if fl := s.hellos[highest]; fl != nil {
			hello, helloRaw = fl.hello, fl.helloRaw
		}
		s.mu.Unlock()
	}
	if len(certs) == 0 {
		s.mu.Lock()
		certs = s.certs
		if len(certs) == 0 && len(s.v2cert) > 0 {
			certs = [][]byte{s.v2cert}
		}
		s.mu.Unlock()
	}
	if hello != nil {
		info.JA3SString = ja3sString(hello)
		info.JA3S = md5Hex(info.JA3SString)
		raw = helloRaw
	}
	info.Handshakes = int(s.used.Load())
	info.HandshakeCapHit = s.capHit.Load()

	data := map[string]any{"server_info": info, "ciphers": ciphers, "vulnerabilities": vulns}
	if len(certs) > 0 {
		data["cert_info"] = describeChain(certs, s.sni, ipOnly(t.IP), m.roots, m.now())
	}
	res.Data, res.Raw = data, raw
	res.Duration = time.Since(res.Started)
	switch {
	case ctx.Err() != nil:
		res.Status, res.Error = probes.Classify(ctx.Err()), "scan incomplete: "+ctx.Err().Error()
	case highest != 0:
		res.Status = probes.StatusSuccess
	case defErr != nil:
		res.Status, res.Error = probes.Classify(defErr), defErr.Error()
	default:
		res.Status, res.Error = probes.StatusTLSError, "no SSL/TLS version negotiated"
	}
	return res, nil
}

// stopsScan reports a first-handshake failure that makes further
// handshakes pointless: nothing listens, the port does not speak TLS (or
// STARTTLS), or it does not answer in time.
func stopsScan(err error) bool {
	var rh tls.RecordHeaderError
	if errors.As(err, &rh) || errors.Is(err, ErrNotTLS) || errors.Is(err, probes.ErrProtocol) {
		return true
	}
	switch probes.Classify(err) {
	case probes.StatusRefused, probes.StatusTimeout, probes.StatusUnreachable, probes.StatusCanceled:
		return true
	}
	return false
}

// open takes a handshake from the budget and a connection slot, dials and
// runs the STARTTLS dialogue. release gives everything back.
func (s *scan) open(ctx context.Context) (net.Conn, func(), error) {
	if s.left.Add(-1) < 0 {
		s.capHit.Store(true)
		return nil, nil, errBudget
	}
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	s.used.Add(1)
	hctx, cancel := context.WithTimeout(ctx, s.m.cfg.Timeout)
	conn, err := s.m.dial(hctx, "tcp", s.addr)
	if err != nil {
		cancel()
		<-s.slots
		return nil, nil, err
	}
	if d, ok := hctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	// a parent ctx ending early unblocks the reads at once
	stop := context.AfterFunc(hctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	release := func() {
		stop()
		closeAbruptly(conn)
		cancel()
		<-s.slots
	}
	if s.starttls != "" {
		greeting, err := startTLS(conn, s.starttls)
		s.mu.Lock()
		if s.greeting == "" {
			s.greeting = greeting
		}
		s.mu.Unlock()
		if err != nil {
			release()
			return nil, nil, err
		}
	}
	return conn, release, nil
}

// closeAbruptly closes with a reset: a scanner leaves no TIME_WAIT behind.
func closeAbruptly(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// exchange sends the hello h describes and reads the server's flight.
func (s *scan) exchange(ctx context.Context, h helloSpec, more bool) (*flight, error) {
	conn, release, err := s.open(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	var random [32]byte
	_, _ = rand.Read(random[:])
	if _, err := conn.Write(appendClientHello(make([]byte, 0, 1024), h, &random, s.m.keyShare)); err != nil {
		return nil, err
	}
	fl, err := readFlight(conn, more)
	if fl != nil {
		s.observe(fl)
	}
	return fl, err
}

// observe keeps what any ServerHello tells about the server as a whole.
func (s *scan) observe(fl *flight) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := fl.hello
	if h.version < versionTLS13 && h.version >= versionSSL30 {
		secure := h.has(extRenegotiationInfo)
		if s.secReneg == nil || secure {
			s.secReneg = &secure
		}
	}
	if h.has(extHeartbeat) {
		s.hbExt = true
	}
	if len(s.certs) == 0 && len(fl.certs) > 0 {
		s.certs = fl.certs
	}
}

// defaultResult is what the crypto/tls handshake found.
type defaultResult struct {
	negotiation Default
	alpn        string
	certs       [][]byte
	hello       *serverHello
	helloRaw    []byte
}

// headLimit caps the bytes kept of the default handshake's reply, enough
// for the ServerHello.
const headLimit = 4 << 10

// recordingConn keeps the first bytes read so the ServerHello crypto/tls
// consumed can be parsed again for JA3S and evidence.
type recordingConn struct {
	net.Conn
	head []byte
}

func (c *recordingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if room := headLimit - len(c.head); room > 0 && n > 0 {
		c.head = append(c.head, b[:min(n, room)]...)
	}
	return n, err
}

func (s *scan) defaultHandshake(ctx context.Context) (defaultResult, error) {
	var out defaultResult
	conn, release, err := s.open(ctx)
	if err != nil {
		return out, err
	}
	defer release()
	rec := &recordingConn{Conn: conn}
	cfg := &tls.Config{
		InsecureSkipVerify: true, // the chain is judged separately, against the system roots
		ServerName:         s.sni,
		MinVersion:         tls.VersionTLS10,
		MaxVersion:         tls.VersionTLS13,
		CipherSuites:       goSuites,
	}
	if s.starttls == "" {
		cfg.NextProtos = s.m.cfg.ALPN
	}
	tc := tls.Client(rec, cfg)
	err = tc.HandshakeContext(ctx)
	if fl, ferr := readFlight(bytesReader(rec.head), false); ferr == nil {
		out.hello, out.helloRaw = fl.hello, fl.helloRaw
	}
	if err != nil {
		return out, fmt.Errorf("cannot complete the default handshake: %w", err)
	}
	st := tc.ConnectionState()
	sc := lookupSuite(st.CipherSuite)
	out.negotiation = Default{Version: versionName(st.Version), Cipher: sc.iana, OpenSSLName: sc.openssl}
	if st.CurveID != 0 {
		out.negotiation.Group, _ = groupName(uint16(st.CurveID))
	}
	out.alpn = st.NegotiatedProtocol
	for _, c := range st.PeerCertificates {
		out.certs = append(out.certs, c.Raw)
	}
	return out, nil
}

// goSuites is every suite crypto/tls implements, insecure ones included,
// so the default handshake succeeds wherever crypto/tls can.
var goSuites = func() []uint16 {
	var ids []uint16
	for _, c := range tls.CipherSuites() {
		ids = append(ids, c.ID)
	}
	for _, c := range tls.InsecureCipherSuites() {
		ids = append(ids, c.ID)
	}
	return ids
}()

// scanVersions enumerates every version, the connection slots bounding
// how many handshakes run at once.
func (s *scan) scanVersions(ctx context.Context) map[string]*VersionResult {
	out := make(map[string]*VersionResult, len(versions))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, v := range versions {
		wg.Go(func() {
			var r *VersionResult
			if v.v == versionSSL20 {
				r = s.scanSSLv2(ctx)
			} else {
				r = s.scanVersion(ctx, v.v)
			}
			mu.Lock()
			out[v.key] = r
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// rejection reports errors meaning "the server said no" rather than "the
// handshake failed": an alert, a close, a reset, garbage.
func rejection(err error) bool {
	var ae AlertError
	if errors.As(err, &ae) || errors.Is(err, errMalformed) || errors.Is(err, ErrNotTLS) || errors.Is(err, errNoSSLv2) {
		return true
	}
	return probes.Classify(err) == probes.StatusReset
}

// scanVersion finds the suites version v accepts by offering everything
// and removing each suite the server picks, then offers the accepted
// ones in two orders to see whose preference wins.
func (s *scan) scanVersion(ctx context.Context, v uint16) *VersionResult {
	r := &VersionResult{AcceptedCipherList: []Cipher{}}
	offered := suitesFor(v)
	var accepted []uint16
	for len(offered) > 0 {
		fl, err := s.exchange(ctx, s.hello(v, offered), true)
		if err != nil {
			if errors.Is(err, errBudget) {
				r.Truncated = true
			} else if !rejection(err) && len(accepted) == 0 {
				r.Error = err.Error()
			}
			break
		}
		h := fl.hello
		if h.version != v || !slices.Contains(offered, h.suite) {
			break // negotiated another version, or picked what was not offered
		}
		if len(accepted) == 0 {
			s.mu.Lock()
			s.hellos[v] = fl
			s.mu.Unlock()
		}
		accepted = append(accepted, h.suite)
		r.AcceptedCipherList = append(r.AcceptedCipherList, describeCipher(h.suite, fl))
		offered = slices.DeleteFunc(offered, func(id uint16) bool { return id == h.suite })
	}
	r.Supported = len(accepted) > 0
	switch len(accepted) {
	case 0:
	case 1:
		r.PreferredCipher = &r.AcceptedCipherList[0]
	default:
		r.Preference, r.PreferredCipher = s.preference(ctx, v, accepted, r.AcceptedCipherList)
	}
	return r
}

// preference offers the accepted suites in table order and reversed: the
// same pick both times means the server's order wins.
func (s *scan) preference(ctx context.Context, v uint16, accepted []uint16, list []Cipher) (string, *Cipher) {
	order := slices.Clone(accepted)
	slices.SortFunc(order, func(a, b uint16) int { return tableIndex(a) - tableIndex(b) })
	first, err := s.exchange(ctx, s.hello(v, order), false)
	if err != nil {
		return "", nil
	}
	slices.Reverse(order)
	second, err := s.exchange(ctx, s.hello(v, order), false)
	if err != nil {
		return "", nil
	}
	if first.hello.suite != second.hello.suite {
		return "client", nil
	}
	for i := range list {
		if list[i].ID == "0x"+hex4(first.hello.suite) {
			return "server", &list[i]
		}
	}
	return "server", nil
}

func tableIndex(id uint16) int {
	for i, s := range suiteTable {
		if s.id == id {
			return i
		}
	}
	return len(suiteTable)
}

func (s *scan) hello(v uint16, suites []uint16) helloSpec {
	h := helloSpec{version: v, suites: suites, sni: s.sni, heartbeat: v < versionTLS13}
	if s.starttls == "" {
		h.alpn = s.m.cfg.ALPN
	}
	return h
}

func describeCipher(id uint16, fl *flight) Cipher {
	sc := lookupSuite(id)
	c := Cipher{Name: sc.iana, OpenSSLName: sc.openssl, ID: "0x" + hex4(id)}
	switch {
	case fl.hello.version >= versionTLS13:
		if g, ok := fl.hello.group(); ok {
			c.KeyExchange = groupKeyExchange("ECDHE", g)
			if g >= 256 && g <= 260 {
				c.KeyExchange.Type = "DHE"
			}
		}
	case fl.kx != nil:
		c.KeyExchange = fl.kx
	case sc.keyExchange() != "":
		c.KeyExchange = &KeyExchange{Type: sc.keyExchange()}
	}
	return c
}

func (s *scan) scanSSLv2(ctx context.Context) *VersionResult {
	r := &VersionResult{AcceptedCipherList: []Cipher{}}
	conn, release, err := s.open(ctx)
	if err != nil {
		if errors.Is(err, errBudget) {
			r.Truncated = true
		} else {
			r.Error = err.Error()
		}
		return r
	}
	defer release()
	var challenge [16]byte
	_, _ = rand.Read(challenge[:])
	if _, err := conn.Write(appendSSLv2Hello(nil, &challenge)); err != nil {
		r.Error = err.Error()
		return r
	}
	rep, err := readSSLv2Hello(conn)
	if err != nil {
		if !rejection(err) {
			r.Error = err.Error()
		}
		return r
	}
	for _, code := range rep.ciphers {
		for _, c := range sslv2Ciphers {
			if c.code == code {
				r.AcceptedCipherList = append(r.AcceptedCipherList, Cipher{
					Name: c.name, OpenSSLName: c.openssl, ID: fmt.Sprintf("0x%06X", c.code),
					KeyExchange: &KeyExchange{Type: "RSA"},
				})
			}
		}
	}
	r.Supported = len(r.AcceptedCipherList) > 0
	if r.Supported {
		s.mu.Lock()
		s.v2cert = append([]byte(nil), rep.cert...)
		s.mu.Unlock()
	}
	return r
}

// behaviours runs the behaviour tests against the highest version below
// TLS 1.3 and derives the weak-config flags.
func (s *scan) behaviours(ctx context.Context, highest uint16, ciphers map[string]*VersionResult) Vulnerabilities {
	var v Vulnerabilities
	v.Weak = weakFlags(ciphers)
	legacy := min(highest, versionTLS12)
	if legacy < versionSSL30 {
		v.Renegotiation.ClientRenegotiationReason = "not tested: no SSLv3 to TLS 1.2 handshake succeeded"
		return v
	}
	var wg sync.WaitGroup
	if highest > versionTLS10 {
		wg.Go(func() { v.Fallback.SupportsFallbackSCSV = s.fallback(ctx, highest-1) })
	}
	wg.Go(func() { v.Compression.SupportsCompression = s.compression(ctx, legacy) })
	var reneg renegVerdict
	wg.Go(func() { reneg = s.clientRenegotiation(ctx, ciphers["tlsv1_2"]) })
	wg.Wait()
	v.Renegotiation.AcceptsClientRenegotiation = reneg.accepted
	v.Renegotiation.ClientRenegotiationReason = reneg.reason
	if reneg.accepted != nil {
		insecure := *reneg.accepted && !reneg.secure
		v.Renegotiation.AcceptsInsecureRenegotiation = &insecure
	}

	s.mu.Lock()
	v.Renegotiation.SupportsSecureRenegotiation = s.secReneg
	v.Heartbleed.HeartbeatExtension = s.hbExt
	s.mu.Unlock()
	if v.Heartbleed.HeartbeatExtension {
		v.Heartbleed.VulnerableToHeartbleed = s.heartbleed(ctx, legacy)
	} else {
		no := false
		v.Heartbleed.VulnerableToHeartbleed = &no // no heartbeat, no heartbleed
	}
	return v
}

// fallback offers version v (below the highest) with TLS_FALLBACK_SCSV:
// a server that supports it answers inappropriate_fallback, one that does
// not negotiates v.
func (s *scan) fallback(ctx context.Context, v uint16) *bool {
	h := s.hello(v, suitesFor(v))
	h.fallback = true
	fl, err := s.exchange(ctx, h, false)
	var ae AlertError
	switch {
	case errors.As(err, &ae) && ae.Description == alertInappropriateFallback:
		yes := true
		return &yes
	case err == nil && fl.hello.version == v:
		no := false
		return &no
	}
	return nil // another refusal says nothing about the SCSV
}

// compression offers DEFLATE before null compression.
func (s *scan) compression(ctx context.Context, v uint16) *bool {
	h := s.hello(v, suitesFor(v))
	h.compression = []byte{1, 0}
	fl, err := s.exchange(ctx, h, false)
	if err != nil {
		return nil
	}
	yes := fl.hello.compression != 0
	return &yes
}

// heartbleedWait bounds the wait for a heartbeat response.
const heartbleedWait = 2 * time.Second

// heartbleed sends a heartbeat request whose length field overstates its
// payload once the server's flight is done; only a vulnerable server
// answers with more bytes than were sent.
func (s *scan) heartbleed(ctx context.Context, v uint16) *bool {
	conn, release, err := s.open(ctx)
	if err != nil {
		return nil
	}
	defer release()
	var random [32]byte
	_, _ = rand.Read(random[:])
	if _, err := conn.Write(appendClientHello(nil, s.hello(v, suitesFor(v)), &random, s.m.keyShare)); err != nil {
		return nil
	}
	fl, err := readFlight(conn, true)
	if err != nil || !fl.done {
		return nil
	}
	if _, err := conn.Write(appendHeartbeatProbe(nil, fl.hello.version)); err != nil {
		return nil
	}
	_ = conn.SetReadDeadline(time.Now().Add(min(heartbleedWait, s.m.cfg.Timeout)))
	vulnerable, err := readHeartbeatReply(conn)
	if err != nil && !vulnerable && !rejection(err) && probes.Classify(err) != probes.StatusTimeout {
		return nil
	}
	return &vulnerable
}

// weakFlags derives the weak-config summary from the accepted lists.
func weakFlags(ciphers map[string]*VersionResult) Weak {
	var w Weak
	supported := func(k string) bool { r := ciphers[k]; return r != nil && r.Supported }
	w.SSLv2, w.SSLv3, w.TLSv1_0, w.TLSv1_1 = supported("sslv2"), supported("sslv3"), supported("tlsv1"), supported("tlsv1_1")
	for key, r := range ciphers {
		if r == nil {
			continue
		}
		for _, c := range r.AcceptedCipherList {
			name := c.Name
			w.RC4 = w.RC4 || strings.Contains(name, "RC4")
			w.SWEET32 = w.SWEET32 || strings.Contains(name, "3DES") || strings.Contains(name, "DES_192_EDE3")
			w.Export = w.Export || strings.Contains(name, "EXPORT")
			w.Null = w.Null || strings.Contains(name, "_NULL_")
			w.Anonymous = w.Anonymous || strings.Contains(name, "_anon_")
			w.DES = w.DES || strings.Contains(name, "_DES_CBC") || strings.Contains(name, "_DES40_") || strings.Contains(name, "DES_64")
			w.CBCInTLS10 = w.CBCInTLS10 || (key == "tlsv1" || key == "sslv3") && strings.Contains(name, "_CBC_")
			if kx := c.KeyExchange; kx != nil && strings.HasPrefix(kx.Group, "ffdhe_") && kx.Bits > 0 {
				if w.MinDHBits == 0 || kx.Bits < w.MinDHBits {
					w.MinDHBits = kx.Bits
				}
			}
		}
	}
	w.SmallDH = w.MinDHBits > 0 && w.MinDHBits < smallDHBits
	w.Flags = []string{}
	for _, f := range []struct {
		on   bool
		name string
	}{
		{w.SSLv2, "sslv2"}, {w.SSLv3, "sslv3"}, {w.TLSv1_0, "tlsv1"}, {w.TLSv1_1, "tlsv1_1"},
		{w.RC4, "rc4"}, {w.SWEET32, "sweet32"}, {w.Export, "export"}, {w.Null, "null"},
		{w.Anonymous, "anonymous"}, {w.DES, "des"}, {w.CBCInTLS10, "cbc_in_tlsv1"}, {w.SmallDH, "small_dh"},
	} {
		if f.on {
			w.Flags = append(w.Flags, f.name)
		}
	}
	return w
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// md5Hex is the lowercase hex md5 of s (JA3S is defined with md5).
func md5Hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}
