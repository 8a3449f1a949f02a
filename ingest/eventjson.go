package ingest

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// appendEvent appends e as JSON, byte for byte what encoding/json writes for
// it (same field order, omitempty, HTML-safe escaping), without reflection:
// every open port and module result is encoded once on the hot path, and
// reflection-based encoding was a fifth of a dense scan's CPU. Result.Data
// is copied compacted, as encoding/json does.
func appendEvent(dst []byte, e *Event) ([]byte, error) {
	dst = append(dst, '{')
	first := true
	field := func(name string) {
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, '"')
		dst = append(dst, name...)
		dst = append(dst, '"', ':')
	}
	if e.V != 0 {
		field("v")
		dst = strconv.AppendInt(dst, int64(e.V), 10)
	}
	if e.ID != "" {
		field("id")
		dst = appendJSONString(dst, e.ID)
	}
	if e.RecordID != "" {
		field("record_id")
		dst = appendJSONString(dst, e.RecordID)
	}
	o := &e.Origin
	field("origin")
	dst = append(dst, `{"job_id":`...)
	dst = appendJSONString(dst, o.JobID)
	dst = append(dst, `,"client_id":`...)
	dst = appendJSONString(dst, o.ClientID)
	dst = append(dst, `,"type":`...)
	dst = appendJSONString(dst, o.Type)
	dst = append(dst, `,"module":`...)
	dst = appendJSONString(dst, o.Module)
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, o.TS, 10)
	if o.IP != "" {
		dst = append(dst, `,"ip":`...)
		dst = appendJSONString(dst, o.IP)
	}
	if o.Port != 0 {
		dst = append(dst, `,"port":`...)
		dst = strconv.AppendInt(dst, int64(o.Port), 10)
	}
	dst = append(dst, '}')
	field("target")
	dst = append(dst, '{')
	t := &e.Target
	sep := false
	if t.IP != "" {
		dst = append(dst, `"ip":`...)
		dst = appendJSONString(dst, t.IP)
		sep = true
	}
	if t.Port != 0 {
		if sep {
			dst = append(dst, ',')
		}
		dst = append(dst, `"port":`...)
		dst = strconv.AppendInt(dst, int64(t.Port), 10)
		sep = true
	}
	if t.Protocol != "" {
		if sep {
			dst = append(dst, ',')
		}
		dst = append(dst, `"protocol":`...)
		dst = appendJSONString(dst, t.Protocol)
	}
	dst = append(dst, '}')
	field("result")
	dst = append(dst, `{"data":`...)
	if e.Result.Data == nil {
		dst = append(dst, "null"...)
	} else {
		start := len(dst)
		var err error
		if dst, err = appendCompact(dst, e.Result.Data); err != nil {
			return dst[:start], err
		}
	}
	return append(dst, '}', '}'), nil
}

// appendCompact appends raw JSON without insignificant space, validating it
// (the fast path: data that is already compact and plain is copied).
func appendCompact(dst []byte, raw json.RawMessage) ([]byte, error) {
	if !json.Valid(raw) {
		return dst, &json.SyntaxError{Offset: 0}
	}
	for _, c := range raw {
		if c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '<' || c == '>' || c == '&' || c >= utf8.RuneSelf {
			b, err := json.Marshal(raw) // rare: let encoding/json compact and escape it
			return append(dst, b...), err
		}
	}
	return append(dst, raw...), nil
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s quoted as encoding/json does (HTML-safe).
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
