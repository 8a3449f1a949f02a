// Package ssh is the "ssh" probe module: the server's identification,
// its KEXINIT algorithm lists and HASSH, every host key it holds (one
// handshake per key family), the auth methods it offers to a "none"
// request and its RFC 8308 extensions. It never sends credentials.
package ssh

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"trawl/probes"
)

// Config configures the module.
type Config struct {
	// User is the user name of the "none" auth request.
	User string
	// ClientVersion is the identification line the module sends, without
	// CR LF.
	ClientVersion string
	// ConnTimeout bounds each connection the module opens (the caller's
	// ctx may end it sooner).
	ConnTimeout time.Duration
}

// DefaultConfig returns the defaults RegisterFlags sets.
func DefaultConfig() Config {
	return Config{User: "trawl", ClientVersion: "SSH-2.0-trawl", ConnTimeout: 5 * time.Second}
}

// RegisterFlags registers the module's flags under prefix and sets defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet, prefix string) {
	d := DefaultConfig()
	fs.StringVar(&c.User, prefix+"user", d.User, "user name of the credential-less \"none\" auth request")
	fs.StringVar(&c.ClientVersion, prefix+"client-version", d.ClientVersion, "identification line sent to servers")
	fs.DurationVar(&c.ConnTimeout, prefix+"conn-timeout", d.ConnTimeout, "time limit of each connection to a server")
}

// Validate reports every invalid setting.
func (c Config) Validate() error {
	var errs []error
	if c.User == "" {
		errs = append(errs, errors.New("ssh user must not be empty"))
	}
	if !strings.HasPrefix(c.ClientVersion, "SSH-2.0-") || len(c.ClientVersion) > 253 ||
		strings.ContainsAny(c.ClientVersion, "\r\n") {
		errs = append(errs, errors.New("ssh client version must be one line starting with SSH-2.0-, at most 253 bytes"))
	}
	if c.ConnTimeout <= 0 {
		errs = append(errs, errors.New("ssh connection timeout must be positive"))
	}
	return errors.Join(errs...)
}

// Module is the "ssh" probe module.
type Module struct {
	cfg    Config
	dialer net.Dialer
}

// New returns the module; empty settings take their defaults.
func New(cfg Config) *Module {
	d := DefaultConfig()
	if cfg.User == "" {
		cfg.User = d.User
	}
	if cfg.ClientVersion == "" {
		cfg.ClientVersion = d.ClientVersion
	}
	if cfg.ConnTimeout <= 0 {
		cfg.ConnTimeout = d.ConnTimeout
	}
	return &Module{cfg: cfg}
}

// Name implements probes.Module.
func (m *Module) Name() string { return "ssh" }

// Auth is what the server answers a "none" auth request.
type Auth struct {
	Methods        []string `json:"methods"`
	PartialSuccess bool     `json:"partial_success,omitempty"`
	// NoneAccepted: the server let the "none" request in, no credentials.
	NoneAccepted bool   `json:"none_accepted"`
	Banner       string `json:"banner,omitempty"`
}

// limits of what the identification phase reads
const (
	maxIdentLine  = 1024 // RFC 4253 allows 255; be lenient, but bounded
	maxPreBanner  = 32   // lines a server may send before its SSH- line
	maxBannerRead = 16 << 10
)

// Probe examines one SSH server. The status is success once the
// identification and KEXINIT are parsed; later steps (host keys, auth)
// that fail leave their error under "errors" and their fields out.
func (m *Module) Probe(ctx context.Context, t probes.Target) (probes.Result, error) {
	res := probes.Result{Started: time.Now()}
	addr := net.JoinHostPort(t.IP, strconv.Itoa(t.Port))
	data := map[string]any{}
	stepErrs := map[string]string{}

	first, err := m.firstConnection(ctx, addr, stepErrs)
	res.Raw = first.raw
	if err != nil {
		res.Duration = time.Since(res.Started)
		res.Status, res.Error = probes.Classify(err), err.Error()
		if ctx.Err() != nil && !errors.Is(err, probes.ErrProtocol) {
			res.Status, res.Error = probes.Classify(ctx.Err()), ctx.Err().Error()
		}
		if first.ident.Line != "" {
			putIdentification(data, first.ident)
		}
		res.Data = data
		return res, nil
	}
	putIdentification(data, first.ident)
	if first.kexInit != nil {
		k := *first.kexInit
		data["algorithms"] = k.algorithms()
		data["kexinit"] = k
		data["hassh"] = k.hassh()
		f := k.features()
		// OpenSSH before 9.6 does not announce ext-info-s but sends EXT_INFO
		f.ExtInfo = f.ExtInfo || (first.auth != nil && first.auth.extensions != nil)
		data["features"] = f

		cyphers := first.cyphers
		cyphers = append(cyphers, m.hostKeys(ctx, addr, k.ServerHostKeyAlgorithms, first.cyphers, stepErrs)...)
		data["cyphers"] = cyphers
	}
	if first.auth != nil {
		data["auth"] = Auth{Methods: first.auth.methods, PartialSuccess: first.auth.partial,
			NoneAccepted: first.auth.noneAccepted, Banner: first.auth.banner}
		if len(first.auth.extensions) > 0 {
			ext := make(map[string]string, len(first.auth.extensions))
			for k, v := range first.auth.extensions {
				ext[k] = probes.Printable(v)
			}
			data["extensions"] = ext
			if v, ok := first.auth.extensions["server-sig-algs"]; ok {
				data["server_sig_algs"] = strings.Split(string(v), ",")
			}
		}
	}
	if len(stepErrs) > 0 {
		data["errors"] = stepErrs
	}
	res.Data = data
	res.Status = probes.StatusSuccess
	res.Duration = time.Since(res.Started)
	return res, nil
}

// firstResult is what the first connection found.
type firstResult struct {
	ident   Identification
	kexInit *KexInit
	auth    *authInfo
	cyphers []Cypher
	raw     []byte
}

// firstConnection reads the identification and KEXINIT (the probe's
// success), then tries the module's own key exchange for the first host
// key family, the extensions and the auth methods; failures after KEXINIT
// land in stepErrs.
func (m *Module) firstConnection(ctx context.Context, addr string, stepErrs map[string]string) (firstResult, error) {
	var out firstResult
	conn, done, err := m.dial(ctx, addr)
	if err != nil {
		return out, err
	}
	defer done()
	// Both sides may send their identification at once (RFC 4253 §4.2).
	if _, err := io.WriteString(conn, m.cfg.ClientVersion+"\r\n"); err != nil {
		return out, err
	}
	rec := &recorder{limit: probes.RawLimit}
	br := bufio.NewReaderSize(io.TeeReader(conn, rec), 4096)
	out.ident, err = readIdentification(br)
	out.raw = rec.Bytes()
	if err != nil {
		return out, err
	}
	if !strings.HasPrefix(out.ident.ProtocolVersion, "2.") && out.ident.ProtocolVersion != "1.99" {
		// SSH-1 only: nothing more to learn without speaking SSH-1
		return out, nil
	}
	tr := newTransport(br, conn)
	serverKexInit, err := tr.readMessage()
	out.raw = rec.Bytes()
	if err != nil {
		return out, fmt.Errorf("cannot read KEXINIT: %w", err)
	}
	k, err := parseKexInit(serverKexInit)
	if err != nil {
		return out, err
	}
	out.kexInit = &k

	families := hostKeyFamilies(k.ServerHostKeyAlgorithms)
	offer := []string{}
	if len(families) > 0 {
		offer = []string{families[0].algorithm}
	}
	client := clientKexInit(offer)
	cookie := make([]byte, 16)
	_, _ = rand.Read(cookie)
	clientPayload := marshalKexInit(cookie, client)
	if err := tr.writePacket(clientPayload); err != nil {
		stepErrs["kex"] = err.Error()
		return out, nil
	}
	kr, err := tr.keyExchange(m.cfg.ClientVersion, out.ident.Line, clientPayload, serverKexInit, client, k)
	if kr.hostKey != nil && len(families) > 0 {
		c, cerr := newCypher(kr.hostKey, kr.hostKeyAlgo, families[0].all)
		if cerr == nil {
			c.SignatureVerified = kr.signatureOK
			out.cyphers = append(out.cyphers, c)
		} else {
			stepErrs["host_key:"+families[0].name] = cerr.Error()
		}
	}
	if err != nil {
		stepErrs["kex"] = err.Error()
		return out, nil
	}
	auth, err := tr.probeAuth(m.cfg.User)
	if err != nil {
		stepErrs["auth"] = err.Error()
		if auth.extensions != nil {
			out.auth = &auth
		}
		return out, nil
	}
	out.auth = &auth
	tr.disconnect()
	return out, nil
}

// dial connects with the module's connect timeout (probes.Dial).
func (m *Module) dial(ctx context.Context, addr string) (net.Conn, func(), error) {
	return probes.Dial(ctx, &m.dialer, addr, m.cfg.ConnTimeout)
}

// readIdentification reads lines until the SSH- identification line; a
// server may send other lines first (RFC 4253 §4.2).
func readIdentification(r *bufio.Reader) (Identification, error) {
	var pre []string
	read := 0
	for len(pre) <= maxPreBanner {
		line, err := readLine(r, maxIdentLine)
		read += len(line)
		if err != nil {
			if len(line) > 0 && !errors.Is(err, errLineTooLong) {
				// the peer sent something and closed or stalled mid-line
				return Identification{PreBannerLines: pre}, fmt.Errorf("not an SSH server (%q): %w: %w", line, err, probes.ErrProtocol)
			}
			if errors.Is(err, errLineTooLong) {
				return Identification{PreBannerLines: pre}, fmt.Errorf("not an SSH server: %w", err)
			}
			if len(pre) > 0 {
				// lines that were no identification, then silence or close
				return Identification{PreBannerLines: pre}, fmt.Errorf("not an SSH server (%q): %w: %w", pre[0], err, probes.ErrProtocol)
			}
			return Identification{PreBannerLines: pre}, err
		}
		if strings.HasPrefix(line, "SSH-") {
			id, ok := parseIdentification(line)
			if !ok {
				return id, fmt.Errorf("bad identification %q: %w", line, probes.ErrProtocol)
			}
			id.PreBannerLines = pre
			return id, nil
		}
		pre = append(pre, line)
		if read > maxBannerRead {
			break
		}
	}
	return Identification{PreBannerLines: pre}, fmt.Errorf("no SSH identification in %d lines: %w", len(pre), probes.ErrProtocol)
}

var errLineTooLong = fmt.Errorf("line too long: %w", probes.ErrProtocol)

// readLine reads one line of at most limit bytes and strips CR LF (or LF).
func readLine(r *bufio.Reader, limit int) (string, error) {
	var line []byte
	for {
		b, err := r.ReadByte()
		if err != nil {
			return string(line), err
		}
		if b == '\n' {
			return string(bytes.TrimSuffix(line, []byte{'\r'})), nil
		}
		line = append(line, b)
		if len(line) > limit {
			return string(line), errLineTooLong
		}
	}
}

// recorder keeps the first limit bytes that pass through it: the evidence.
type recorder struct {
	buf   bytes.Buffer
	limit int
}

func (r *recorder) Write(p []byte) (int, error) {
	if room := r.limit - r.buf.Len(); room > 0 {
		r.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (r *recorder) Bytes() []byte { return bytes.Clone(r.buf.Bytes()) }

// putIdentification records the banner, its parse, and — at the top level,
// where every module puts them for analytics — product and version.
func putIdentification(data map[string]any, id Identification) {
	data["banner"] = id.Line
	data["identification"] = id
	if id.Product != "" {
		data["product"] = id.Product
	}
	if id.Version != "" {
		data["version"] = id.Version
	}
}
