package stream

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"trawl/ingest"
)

// eventHead is the part of an event the hub routes by; the rest of the bytes
// pass through untouched.
type eventHead struct {
	V      int    `json:"v"`
	ID     string `json:"id"`
	Origin struct {
		JobID    string `json:"job_id"`
		ClientID string `json:"client_id"`
		Type     string `json:"type"`
	} `json:"origin"`
}

var (
	errNoID     = errors.New("event has no id")
	errInternal = errors.New("internal event")
)

// maxInterned bounds the decoder's table of job ids, client ids and types.
const maxInterned = 4096

// decoder reads the routing fields of bus events. Every event on the bus
// passes through it, so it walks the few fields it needs by hand and reuses
// the strings that repeat (job and client ids); anything unusual goes to
// encoding/json, so the walk is a shortcut and never a different answer. One
// goroutine owns a decoder.
type decoder struct {
	names map[string]string
}

func newDecoder() *decoder { return &decoder{names: make(map[string]string)} }

func (d *decoder) intern(b []byte) string {
	if s, ok := d.names[string(b)]; ok {
		return s
	}
	if len(d.names) >= maxInterned {
		clear(d.names)
	}
	s := string(b)
	d.names[s] = s
	return s
}

// decode keeps b as the event's line (b must not change afterwards: bus
// payloads do not). Internal events return errInternal.
func (d *decoder) decode(b []byte) (*item, error) {
	var h eventHead
	if !d.walk(b, &h) {
		var err error
		if h, err = decodeHead(b); err != nil {
			return nil, err
		}
	}
	if h.V > ingest.SchemaVersion {
		return nil, fmt.Errorf("cannot decode event version %d: %w", h.V, ingest.ErrVersion)
	}
	if h.ID == "" {
		return nil, errNoID
	}
	if kind := (ingest.Event{Origin: ingest.Origin{Type: h.Origin.Type}}); kind.Internal() {
		return nil, errInternal
	}
	it := &item{id: h.ID, jobID: h.Origin.JobID, clientID: h.Origin.ClientID, line: b}
	if h.Origin.Type == ingest.TypeJobStatus {
		terminal, err := isTerminal(b)
		if err != nil {
			return nil, err
		}
		it.terminal = terminal
	}
	// One event must stay one NDJSON line; encoders emit compact JSON, so
	// this copy only happens for foreign producers that indent.
	if bytes.IndexByte(b, '\n') >= 0 {
		var buf bytes.Buffer
		if err := json.Compact(&buf, b); err != nil {
			return nil, fmt.Errorf("cannot compact event: %w", err)
		}
		it.line = buf.Bytes()
	}
	return it, nil
}

// decodeHead is the slow path of decode: kept apart so that the common path
// keeps its eventHead on the stack.
func decodeHead(b []byte) (eventHead, error) {
	var h eventHead
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("cannot decode event: %w", err)
	}
	return h, nil
}

// isTerminal decodes a job_status event fully (they are rare), so that
// "terminal" means exactly what ingest says.
func isTerminal(b []byte) (bool, error) {
	var e ingest.Event
	if err := json.Unmarshal(b, &e); err != nil {
		return false, fmt.Errorf("cannot decode job status: %w", err)
	}
	return e.Terminal(), nil
}

// walk fills h from the JSON object b. It reports false (leave it to
// encoding/json) on escapes in the strings it reads, keys that match its
// fields only ignoring case, values of an unexpected kind, or anything
// malformed. The values it skips are checked for structure only: bus
// payloads are written by ingest.Encode.
func (d *decoder) walk(b []byte, h *eventHead) bool {
	w := walker{b: b}
	ok := w.object(func(key []byte) bool {
		switch string(key) {
		case "v":
			return w.int(&h.V)
		case "id":
			return w.str(&h.ID, nil)
		case "origin":
			return w.object(func(key []byte) bool {
				switch string(key) {
				case "job_id":
					return w.str(&h.Origin.JobID, d)
				case "client_id":
					return w.str(&h.Origin.ClientID, d)
				case "type":
					return w.str(&h.Origin.Type, d)
				}
				return !foldsTo(key, "job_id", "client_id", "type") && w.skip()
			})
		}
		return !foldsTo(key, "v", "id", "origin") && w.skip()
	})
	w.space()
	return ok && w.i == len(b)
}

// foldsTo reports whether key equals one of names ignoring case, as
// encoding/json matches keys.
func foldsTo(key []byte, names ...string) bool {
	for _, n := range names {
		if len(key) == len(n) && strings.EqualFold(string(key), n) {
			return true
		}
	}
	return false
}

// walker steps through JSON text.
type walker struct {
	b []byte
	i int
}

func (w *walker) space() {
	for w.i < len(w.b) {
		switch w.b[w.i] {
		case ' ', '\t', '\n', '\r':
			w.i++
		default:
			return
		}
	}
}

func (w *walker) eat(c byte) bool {
	w.space()
	if w.i < len(w.b) && w.b[w.i] == c {
		w.i++
		return true
	}
	return false
}

func (w *walker) peek() byte {
	w.space()
	if w.i < len(w.b) {
		return w.b[w.i]
	}
	return 0
}

// plain reads a string of printable ASCII without escapes (encoding/json
// would rewrite invalid UTF-8; ids never need more).
func (w *walker) plain() ([]byte, bool) {
	if !w.eat('"') {
		return nil, false
	}
	for j := w.i; j < len(w.b); j++ {
		switch c := w.b[j]; {
		case c == '"':
			s := w.b[w.i:j]
			w.i = j + 1
			return s, true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return nil, false
		}
	}
	return nil, false
}

// object walks {"key": value, ...}; field must consume the value.
func (w *walker) object(field func(key []byte) bool) bool {
	if !w.eat('{') {
		return false
	}
	if w.eat('}') {
		return true
	}
	for {
		key, ok := w.plain()
		if !ok || !w.eat(':') || !field(key) {
			return false
		}
		if !w.eat(',') {
			return w.eat('}')
		}
	}
}

// str reads a string or null into dst, interned through d when set.
func (w *walker) str(dst *string, d *decoder) bool {
	if w.peek() == 'n' {
		return w.literal("null")
	}
	s, ok := w.plain()
	if !ok {
		return false
	}
	if d != nil {
		*dst = d.intern(s)
	} else {
		*dst = string(s)
	}
	return true
}

// int reads a small non-negative integer or null.
func (w *walker) int(dst *int) bool {
	if w.peek() == 'n' {
		return w.literal("null")
	}
	n, digits := 0, 0
	for ; w.i < len(w.b) && '0' <= w.b[w.i] && w.b[w.i] <= '9'; w.i++ {
		if digits++; digits > 9 {
			return false
		}
		n = n*10 + int(w.b[w.i]-'0')
	}
	if digits == 0 || (digits > 1 && w.b[w.i-digits] == '0') {
		return false
	}
	if w.i < len(w.b) {
		if c := w.b[w.i]; c == '.' || c == 'e' || c == 'E' {
			return false
		}
	}
	*dst = n
	return true
}

func (w *walker) literal(lit string) bool {
	if !bytes.HasPrefix(w.b[w.i:], []byte(lit)) {
		return false
	}
	w.i += len(lit)
	return true
}

// skip steps over one value of any kind.
func (w *walker) skip() bool {
	switch c := w.peek(); c {
	case '"':
		return w.skipString()
	case '{', '[':
		return w.skipContainer()
	case 0, ',', '}', ']', ':':
		return false
	}
	start := w.i // number or literal
	for w.i < len(w.b) {
		switch w.b[w.i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return w.i > start
		case '"', '{', '[', ':':
			return false
		}
		w.i++
	}
	return w.i > start
}

func (w *walker) skipString() bool {
	for j := w.i + 1; j < len(w.b); j++ {
		switch w.b[j] {
		case '\\':
			j++
		case '"':
			w.i = j + 1
			return true
		}
	}
	return false
}

// skipContainer steps over a balanced object or array.
func (w *walker) skipContainer() bool {
	var stack [64]byte // open brackets; deeper nesting is left to encoding/json
	depth := 0
	for w.i < len(w.b) {
		switch c := w.b[w.i]; c {
		case '"':
			if !w.skipString() {
				return false
			}
			continue
		case '{', '[':
			if depth == len(stack) {
				return false
			}
			stack[depth] = c
			depth++
		case '}', ']':
			if depth == 0 || stack[depth-1] != c-2 { // '{'+2 == '}', '['+2 == ']'
				return false
			}
			if depth--; depth == 0 {
				w.i++
				return true
			}
		}
		w.i++
	}
	return false
}

// itemFromEvent encodes an event read from storage.
func itemFromEvent(e *ingest.Event) (*item, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("cannot encode event %s: %w", e.ID, err)
	}
	return &item{id: e.ID, jobID: e.Origin.JobID, clientID: e.Origin.ClientID, line: b, terminal: e.Terminal()}, nil
}
