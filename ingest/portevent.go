package ingest

import (
	"net/netip"
	"strconv"
)

// PortEvents encodes one job's open-port events — type port, module
// portscan, data {"response":"synack"} — byte for byte as Encode writes the
// equivalent Event, from parts made once per job. A dense scan reports one
// such event per probe; building an Event and encoding it field by field
// was most of the scanner's user time per open port.
type PortEvents struct {
	key     []byte // the job id: every message's key
	jobID   string
	origin  []byte // from `","origin":{` up to the "ts" value
	scratch []byte // the record id's hash input
}

// portEventData is the result of every port event.
const portEventData = `{"response":"synack"}`

// NewPortEvents prepares the encoder for one job's port events.
func NewPortEvents(jobID, clientID string) *PortEvents {
	o := []byte(`","origin":{"job_id":`)
	o = appendJSONString(o, jobID)
	o = append(o, `,"client_id":`...)
	o = appendJSONString(o, clientID)
	o = append(o, `,"type":"`+TypePort+`","module":"`+ModulePortscan+`","ts":`...)
	return &PortEvents{key: []byte(jobID), jobID: jobID, origin: o}
}

// Key is the messages' key (the job id, shared: do not modify).
func (p *PortEvents) Key() []byte { return p.key }

// Append appends the event of ip:port found open at ts (unix ms) by a probe
// from src:srcPort (src invalid and srcPort 0 when unknown), as Encode writes
// Event{RecordID: RecordID(job, TypePort, ip, port), …}. Not safe for
// concurrent use (it reuses a scratch buffer).
func (p *PortEvents) Append(dst []byte, ip netip.Addr, port uint16, src netip.Addr, srcPort uint16, ts int64) []byte {
	// the record id hashes job, type, ip and port text as RecordID does
	h := append(p.scratch[:0], p.jobID...)
	h = append(h, 0)
	h = append(h, TypePort...)
	h = append(h, 0)
	ipStart := len(h)
	h = ip.AppendTo(h)
	ipEnd := len(h)
	h = append(h, 0)
	h = strconv.AppendUint(h, uint64(port), 10)
	portEnd := len(h)
	h = append(h, 0)
	p.scratch = h

	dst = append(dst, `{"v":`...)
	dst = strconv.AppendInt(dst, SchemaVersion, 10)
	dst = append(dst, `,"record_id":"`...)
	dst = appendRecordID(dst, h)
	dst = append(dst, p.origin...)
	dst = strconv.AppendInt(dst, ts, 10)
	if src.IsValid() {
		dst = append(dst, `,"ip":"`...)
		dst = src.AppendTo(dst)
		dst = append(dst, '"')
	}
	if srcPort != 0 {
		dst = append(dst, `,"port":`...)
		dst = strconv.AppendUint(dst, uint64(srcPort), 10)
	}
	dst = append(dst, `},"target":{"ip":"`...)
	dst = append(dst, h[ipStart:ipEnd]...)
	dst = append(dst, '"')
	if port != 0 {
		dst = append(dst, `,"port":`...)
		dst = append(dst, h[ipEnd+1:portEnd]...)
	}
	return append(dst, `,"protocol":"tcp"},"result":{"data":`+portEventData+`}}`...)
}
