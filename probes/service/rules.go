package service

import (
	"bufio"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The match data is a probes file in nmap-service-probes syntax, so the
// same parser reads trawl's embedded rules, an operator's file and nmap's
// own database. Supported directives: Probe (TCP only), ports, sslports,
// fallback, match, softmatch, plus trawl's "then q|…|" (a follow-up payload
// sent on the same connection after the first reply: MQTT's SUBSCRIBE after
// CONNECT). Other nmap directives (rarity, totalwaitms, Exclude, …) are
// accepted and ignored. Patterns run over the reply decoded as Latin-1 (one
// rune per byte), so `\xff` in a pattern matches the byte 0xff as in PCRE.

//go:embed rules.txt
var embeddedRules string

// ErrRules marks a rules file that cannot be parsed.
var ErrRules = errors.New("invalid rules")

// nullProbe is the name of the probe that sends nothing: its matches apply
// to greetings, and to every probe's reply after the probe's own.
const nullProbe = "NULL"

// Probe is one payload and the rules that recognise the replies to it.
type Probe struct {
	Name     string
	Payload  []byte
	Then     [][]byte // sent one by one after each reply, same connection
	Ports    portSet
	SSLPorts portSet
	Fallback []string
	Matches  []*Rule
}

// Rule is one match or softmatch line.
type Rule struct {
	Service string
	Soft    bool
	Pattern *regexp.Regexp
	// Templates with $1…$9, $P(n) and $SUBST(n,"from","to") references to
	// the pattern's groups.
	Product, Version, Info, Hostname, OS, Device string
	CPE                                          []string
	Line                                         int
}

// RuleSet is a parsed probes file: probes in file order.
type RuleSet struct {
	Probes []*Probe
	byName map[string]*Probe
	// Skipped counts match lines whose PCRE pattern Go's regexp cannot
	// compile (back-references, look-arounds): nmap's file has some.
	Skipped int
}

// Probe returns the named probe or nil.
func (rs *RuleSet) Probe(name string) *Probe { return rs.byName[name] }

type portSet []portRange

type portRange struct{ lo, hi int }

func (s portSet) has(port int) bool {
	for _, r := range s {
		if port >= r.lo && port <= r.hi {
			return true
		}
	}
	return false
}

// ParseRules parses a probes file; strict makes patterns Go cannot compile
// an error (trawl's own files) rather than a skipped line (nmap's file).
func ParseRules(r io.Reader, strict bool) (*RuleSet, error) {
	rs := &RuleSet{byName: map[string]*Probe{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var cur *Probe
	skipping := false // inside a UDP probe
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		dir, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		bad := func(why string, a ...any) error {
			return fmt.Errorf("%w: line %d: %s", ErrRules, n, fmt.Sprintf(why, a...))
		}
		if dir == "Probe" {
			f := strings.SplitN(rest, " ", 3)
			if len(f) < 3 {
				return nil, bad("Probe needs a protocol, a name and q|payload|")
			}
			skipping = f[0] != "TCP"
			if skipping {
				continue
			}
			payload, _, err := delimited(strings.TrimPrefix(f[2], "q"))
			if err != nil || !strings.HasPrefix(f[2], "q") {
				return nil, bad("Probe %s: bad payload: %v", f[1], err)
			}
			cur = &Probe{Name: f[1], Payload: unescape(payload)}
			if old := rs.byName[cur.Name]; old != nil {
				return nil, bad("probe %s defined twice", cur.Name)
			}
			rs.byName[cur.Name] = cur
			rs.Probes = append(rs.Probes, cur)
			continue
		}
		if skipping || dir == "Exclude" {
			continue
		}
		if cur == nil {
			return nil, bad("%s before any Probe", dir)
		}
		switch dir {
		case "ports", "sslports":
			ps, err := parsePorts(rest)
			if err != nil {
				return nil, bad("%v", err)
			}
			if dir == "ports" {
				cur.Ports = append(cur.Ports, ps...)
			} else {
				cur.SSLPorts = append(cur.SSLPorts, ps...)
			}
		case "fallback":
			for _, f := range strings.Split(rest, ",") {
				cur.Fallback = append(cur.Fallback, strings.TrimSpace(f))
			}
		case "then":
			payload, _, err := delimited(strings.TrimPrefix(rest, "q"))
			if err != nil || !strings.HasPrefix(rest, "q") {
				return nil, bad("then: bad payload: %v", err)
			}
			cur.Then = append(cur.Then, unescape(payload))
		case "match", "softmatch":
			rule, err := parseMatch(rest, dir == "softmatch")
			if err != nil {
				if !strict && errors.Is(err, errPattern) {
					rs.Skipped++
					continue
				}
				return nil, bad("%v", err)
			}
			rule.Line = n
			cur.Matches = append(cur.Matches, rule)
		case "rarity", "totalwaitms", "tcpwrappedms":
		default:
			return nil, bad("unknown directive %q", dir)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cannot read rules: %w", err)
	}
	return rs, nil
}

// Merge returns a set trying over's rules first: a probe of the same name
// takes over's payload and ports when over sets them, and its matches come
// before base's; new probes come first, in over's order.
func Merge(over, base *RuleSet) *RuleSet {
	out := &RuleSet{byName: map[string]*Probe{}, Skipped: over.Skipped + base.Skipped}
	add := func(p *Probe) {
		out.byName[p.Name] = p
		out.Probes = append(out.Probes, p)
	}
	for _, o := range over.Probes {
		if base.byName[o.Name] == nil {
			add(o)
		}
	}
	for _, b := range base.Probes {
		o := over.byName[b.Name]
		if o == nil {
			add(b)
			continue
		}
		p := *b
		if len(o.Payload) > 0 {
			p.Payload, p.Then = o.Payload, o.Then
		}
		if len(o.Ports) > 0 {
			p.Ports = o.Ports
		}
		if len(o.SSLPorts) > 0 {
			p.SSLPorts = o.SSLPorts
		}
		if len(o.Fallback) > 0 {
			p.Fallback = o.Fallback
		}
		p.Matches = append(append([]*Rule(nil), o.Matches...), b.Matches...)
		add(&p)
	}
	return out
}

var errPattern = errors.New("pattern does not compile")

// parseMatch parses `service m|re|flags p/…/ v/…/ i/…/ h/…/ o/…/ d/…/ cpe:/…/`.
func parseMatch(s string, soft bool) (*Rule, error) {
	svc, rest, ok := strings.Cut(s, " ")
	if !ok || !strings.HasPrefix(rest, "m") {
		return nil, fmt.Errorf("match needs a service and m|pattern|")
	}
	pat, rest, err := delimited(rest[1:])
	if err != nil {
		return nil, err
	}
	flags := ""
	for rest != "" && (rest[0] == 'i' || rest[0] == 's') {
		flags += rest[:1]
		rest = rest[1:]
	}
	re, err := compilePattern(pat, flags)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %v", errPattern, pat, err)
	}
	r := &Rule{Service: svc, Soft: soft, Pattern: re}
	for rest = strings.TrimSpace(rest); rest != ""; rest = strings.TrimSpace(rest) {
		var key string
		if strings.HasPrefix(rest, "cpe:") {
			key, rest = "cpe", rest[4:]
		} else {
			key, rest = rest[:1], rest[1:]
		}
		val, after, err := delimited(rest)
		if err != nil {
			return nil, fmt.Errorf("field %s: %v", key, err)
		}
		rest = after
		if key == "cpe" && strings.HasPrefix(rest, "a") {
			rest = rest[1:]
		}
		switch key {
		case "p":
			r.Product = val
		case "v":
			r.Version = val
		case "i":
			r.Info = val
		case "h":
			r.Hostname = val
		case "o":
			r.OS = val
		case "d":
			r.Device = val
		case "cpe":
			r.CPE = append(r.CPE, "cpe:/"+val)
		default:
			return nil, fmt.Errorf("unknown field %q", key)
		}
	}
	return r, nil
}

// delimited splits "|body|rest" at the closing delimiter (the first rune).
func delimited(s string) (body, rest string, err error) {
	if s == "" {
		return "", "", errors.New("missing delimiter")
	}
	d, size := utf8.DecodeRuneInString(s)
	end := strings.IndexRune(s[size:], d)
	if end < 0 {
		return "", "", fmt.Errorf("unterminated %q", d)
	}
	return s[size : size+end], s[size+end+size:], nil
}

// compilePattern turns a PCRE pattern into a Go one: `\0` (NUL) becomes
// `\x00`; the rest of the syntax the files use is shared.
func compilePattern(pat, flags string) (*regexp.Regexp, error) {
	pat = strings.ReplaceAll(pat, `\0`, `\x00`)
	if flags != "" {
		pat = "(?" + flags + ")" + pat
	}
	return regexp.Compile(pat)
}

// unescape decodes a payload's C escapes: \r \n \t \0 \\ \xHH; other
// escaped characters stand for themselves.
func unescape(s string) []byte {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 == len(s) {
			out = append(out, c)
			continue
		}
		i++
		switch s[i] {
		case 'r':
			out = append(out, '\r')
		case 'n':
			out = append(out, '\n')
		case 't':
			out = append(out, '\t')
		case '0':
			out = append(out, 0)
		case 'x':
			if i+3 <= len(s) {
				if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
					out = append(out, byte(v))
					i += 2
					continue
				}
			}
			out = append(out, 'x')
		default:
			out = append(out, s[i])
		}
	}
	return out
}

func parsePorts(s string) (portSet, error) {
	var ps portSet
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(f, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("bad port %q", f)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("bad port range %q", f)
			}
		}
		ps = append(ps, portRange{a, b})
	}
	return ps, nil
}

// expand fills a template from the groups of a match: $1…$9, $P(n) (the
// group's printable characters only) and $SUBST(n,"from","to").
func expand(tmpl string, groups []string) string {
	if !strings.Contains(tmpl, "$") {
		return tmpl
	}
	var b strings.Builder
	group := func(n int) string {
		if n < len(groups) {
			return groups[n]
		}
		return ""
	}
	for i := 0; i < len(tmpl); i++ {
		c := tmpl[i]
		if c != '$' || i+1 == len(tmpl) {
			b.WriteByte(c)
			continue
		}
		rest := tmpl[i+1:]
		switch {
		case rest[0] >= '1' && rest[0] <= '9':
			b.WriteString(group(int(rest[0] - '0')))
			i++
		case strings.HasPrefix(rest, "P(") && len(rest) >= 4 && rest[3] == ')':
			for _, r := range group(int(rest[2] - '0')) {
				if r >= 0x20 && r < 0x7f {
					b.WriteRune(r)
				}
			}
			i += 4
		case strings.HasPrefix(rest, "SUBST("):
			end := strings.IndexByte(rest, ')')
			args := strings.Split(rest[6:max(end, 6)], ",")
			if end < 0 || len(args) != 3 || len(args[0]) != 1 {
				b.WriteByte(c)
				continue
			}
			from, to := strings.Trim(args[1], `"`), strings.Trim(args[2], `"`)
			b.WriteString(strings.ReplaceAll(group(int(args[0][0]-'0')), from, to))
			i += end + 1
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// portNames names the service usually found on a port, the guess when no
// rule matches ("table_default").
var portNames = map[int]string{
	21: "ftp", 22: "ssh", 23: "telnet", 25: "smtp", 53: "domain", 80: "http", 110: "pop3",
	143: "imap", 443: "https", 465: "smtps", 554: "rtsp", 587: "submission", 993: "imaps",
	995: "pop3s", 1433: "ms-sql-s", 1883: "mqtt", 3306: "mysql", 3389: "ms-wbt-server",
	4369: "epmd", 5432: "postgresql", 5672: "amqp", 5900: "vnc", 6379: "redis", 8080: "http-proxy",
	8443: "https-alt", 11211: "memcache", 27017: "mongod",
}

// latin1 decodes b one rune per byte; ASCII, the common case, is copied as is.
func latin1(b []byte) string {
	ascii := true
	for _, c := range b {
		if c >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		return string(b)
	}
	out := make([]byte, 0, len(b)*2)
	for _, c := range b {
		out = utf8.AppendRune(out, rune(c))
	}
	return string(out)
}
