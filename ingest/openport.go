package ingest

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The open-port topic carries a record per open port — millions per large
// scan — so it uses a compact binary form instead of JSON: measured on this
// project's 2-core machine, 82 bytes instead of 239, 8× faster to encode and
// 15× faster to decode (kafkabus BenchmarkOpenPortEncoding). Decode still
// reads JSON OpenPorts, so a mixed fleet keeps working during an upgrade.
//
// Layout: a tag byte (openPortBinaryV1), then uvarint-length-prefixed strings
// and uvarints, in field order: job_id, client_id, ip, port, protocol, ttl,
// window, modules (count, then each), found (varint), source_ip, source_port.
// openPortBinaryV2 appends hostname; it is written only for an open port
// that has one, so workers of the previous release read every other record.
const (
	openPortBinaryV1 = 0xB1
	openPortBinaryV2 = 0xB2
)

var errShort = errors.New("truncated record")

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// encodeOpenPort appends op's binary form to dst.
func encodeOpenPort(dst []byte, op *OpenPort) []byte {
	tag := byte(openPortBinaryV1)
	if op.Hostname != "" {
		tag = openPortBinaryV2
	}
	dst = append(dst, tag)
	dst = appendString(dst, op.JobID)
	dst = appendString(dst, op.ClientID)
	dst = appendString(dst, op.IP)
	dst = binary.AppendUvarint(dst, uint64(op.Port))
	dst = appendString(dst, op.Protocol)
	dst = binary.AppendUvarint(dst, uint64(op.TTL))
	dst = binary.AppendUvarint(dst, uint64(op.Window))
	dst = binary.AppendUvarint(dst, uint64(len(op.Modules)))
	for _, m := range op.Modules {
		dst = appendString(dst, m)
	}
	dst = binary.AppendVarint(dst, op.Found)
	dst = appendString(dst, op.SourceIP)
	dst = binary.AppendUvarint(dst, uint64(op.SourcePort))
	if tag == openPortBinaryV2 {
		dst = appendString(dst, op.Hostname)
	}
	return dst
}

// openPortReader walks a binary OpenPort, remembering the first error.
type openPortReader struct {
	b   []byte
	err error
}

func (r *openPortReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errShort
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *openPortReader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errShort
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *openPortReader) str() string {
	n := r.uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(len(r.b)) {
		r.err = errShort
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

// decodeOpenPort parses b (which starts with the tag byte) into op.
func decodeOpenPort(b []byte, op *OpenPort) error {
	r := openPortReader{b: b[1:]}
	op.V = SchemaVersion
	op.JobID = r.str()
	op.ClientID = r.str()
	op.IP = r.str()
	op.Port = int(r.uvarint())
	op.Protocol = r.str()
	op.TTL = int(r.uvarint())
	op.Window = int(r.uvarint())
	n := r.uvarint()
	if n > uint64(len(r.b)) { // each module takes at least a byte
		r.err = errShort
	}
	op.Modules = op.Modules[:0]
	for i := uint64(0); i < n && r.err == nil; i++ {
		op.Modules = append(op.Modules, r.str())
	}
	op.Found = r.varint()
	op.SourceIP = r.str()
	op.SourcePort = int(r.uvarint())
	op.Hostname = ""
	if b[0] == openPortBinaryV2 {
		op.Hostname = r.str()
	}
	if r.err != nil {
		return fmt.Errorf("cannot decode open port: %w", r.err)
	}
	if len(r.b) != 0 {
		return fmt.Errorf("cannot decode open port: %d trailing bytes", len(r.b))
	}
	if op.Port > 65535 || op.SourcePort > 65535 || op.TTL > 255 || op.Window > 65535 {
		return errors.New("cannot decode open port: field out of range")
	}
	return nil
}
