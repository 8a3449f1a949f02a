package rawsock

import (
	"encoding/binary"
	"fmt"
	"net"

	"github.com/dchest/siphash"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Offsets in the SYN frame: Ethernet (14) + IPv4 without options (20) +
// TCP with one MSS option (24), padded to the Ethernet minimum of 60.
const (
	offIPID     = 18
	offIPCsum   = 24
	offIPDst    = 30
	offSport    = 34
	offDport    = 36
	offSeq      = 38
	offTCPCsum  = 50
	synLen      = 58
	frameLen    = 60 // short frames are padded: not every driver does it
	synTCPLen   = 24
	defaultMSS  = 1460
	maxReplyLen = 2048
)

// template is a SYN frame built once; patch writes one probe into a copy.
// The checksums are patched incrementally: ipSum and tcpSum are the
// one's-complement sums of every field that stays the same.
type template struct {
	frame  [frameLen]byte
	ipSum  uint32
	tcpSum uint32
}

// newTemplate serializes the SYN with gopacket once. The variable fields
// (IP id, destination, ports, sequence, checksums) are left zero.
func newTemplate(srcMAC, dstMAC net.HardwareAddr, src uint32, ttl uint8, window uint16) (*template, error) {
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{
		Version: 4, IHL: 5, TTL: ttl, Protocol: layers.IPProtocolTCP,
		SrcIP: ipBytes(src), DstIP: net.IPv4zero.To4(),
	}
	mss := make([]byte, 2)
	binary.BigEndian.PutUint16(mss, defaultMSS)
	tcp := &layers.TCP{
		SYN: true, Window: window,
		Options: []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: mss}},
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, eth, ip, tcp); err != nil {
		return nil, fmt.Errorf("cannot build the SYN template: %w", err)
	}
	// gopacket pads the frame to the Ethernet minimum itself
	if n := len(buf.Bytes()); n < synLen || n > frameLen || binary.BigEndian.Uint16(buf.Bytes()[16:]) != synLen-14 {
		return nil, fmt.Errorf("cannot build the SYN template: %d bytes, want %d", n, synLen)
	}
	t := &template{}
	copy(t.frame[:], buf.Bytes())
	t.ipSum = sum16(t.frame[14:34], 0)
	// pseudo header (source, zero destination, protocol, TCP length) + header
	t.tcpSum = sum16(t.frame[26:30], uint32(layers.IPProtocolTCP)+synTCPLen)
	t.tcpSum = sum16(t.frame[34:synLen], t.tcpSum)
	return t, nil
}

// patch writes the probe to dst:dport from sport with sequence seq and IP
// id into frame, a copy of the template, fixing both checksums.
func (t *template) patch(frame []byte, dst uint32, dport, sport uint16, seq uint32, id uint16) {
	_ = frame[frameLen-1]
	copy(frame, t.frame[:])
	binary.BigEndian.PutUint16(frame[offIPID:], id)
	binary.BigEndian.PutUint32(frame[offIPDst:], dst)
	binary.BigEndian.PutUint16(frame[offSport:], sport)
	binary.BigEndian.PutUint16(frame[offDport:], dport)
	binary.BigEndian.PutUint32(frame[offSeq:], seq)
	d := dst>>16 + dst&0xffff
	binary.BigEndian.PutUint16(frame[offIPCsum:], ^fold(t.ipSum+uint32(id)+d))
	binary.BigEndian.PutUint16(frame[offTCPCsum:], ^fold(t.tcpSum+d+uint32(sport)+uint32(dport)+seq>>16+seq&0xffff))
}

// sum16 adds b's big-endian 16-bit words to s (b has an even length).
func sum16(b []byte, s uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	return s
}

// fold reduces a 32-bit one's-complement sum to 16 bits.
func fold(s uint32) uint16 {
	s = s>>16 + s&0xffff
	s += s >> 16
	return uint16(s)
}

func ipBytes(ip uint32) net.IP {
	b := make(net.IP, 4)
	binary.BigEndian.PutUint32(b, ip)
	return b
}

// cookie derives a probe's sequence number, source port and IP id from a
// keyed SipHash of (source, destination, destination port): a reply is
// ours when it comes back to that port acknowledging that sequence, with no
// state kept per probe.
type cookie struct {
	k0, k1           uint64
	portLo, portSpan uint32
}

func newCookie(k0, k1 uint64, lo, hi uint16) cookie {
	return cookie{k0: k0, k1: k1, portLo: uint32(lo), portSpan: uint32(hi) - uint32(lo) + 1}
}

// probe returns the sequence number, source port and IP id of the probe
// from src to dst:dport.
func (c cookie) probe(src, dst uint32, dport uint16) (seq uint32, sport uint16, id uint16) {
	var b [10]byte
	binary.BigEndian.PutUint32(b[0:], src)
	binary.BigEndian.PutUint32(b[4:], dst)
	binary.BigEndian.PutUint16(b[8:], dport)
	h := siphash.Hash(c.k0, c.k1, b[:])
	return uint32(h), uint16(c.portLo + uint32(h>>32)%c.portSpan), uint16(h >> 48)
}

// valid reports whether a reply from remote:rport to local:lport
// acknowledging ack answers one of our probes.
func (c cookie) valid(local, remote uint32, rport, lport uint16, ack uint32) bool {
	seq, sport, _ := c.probe(local, remote, rport)
	return sport == lport && ack == seq+1
}

// replyKind is what a validated reply says about the port.
type replyKind uint8

const (
	replyNone   replyKind = iota // not a reply to our probe (or not TCP/IPv4)
	replyOpen                    // SYN-ACK
	replyClosed                  // RST(-ACK)
	replyForged                  // aimed at us but the cookie does not match
)

// reply is one decoded, validated reply.
type reply struct {
	kind   replyKind
	ip     uint32 // the target
	port   uint16 // the target's port
	local  uint32 // our address
	lport  uint16 // our port
	ttl    uint8
	window uint16
}

// decoder decodes replies with a reused gopacket DecodingLayerParser: no
// allocation per frame.
type decoder struct {
	eth     layers.Ethernet
	ip      layers.IPv4
	tcp     layers.TCP
	parser  *gopacket.DecodingLayerParser
	decoded []gopacket.LayerType
	cookie  cookie
	src     uint32 // our source address: replies go to it
}

func newDecoder(c cookie, src uint32) *decoder {
	d := &decoder{cookie: c, src: src, decoded: make([]gopacket.LayerType, 0, 4)}
	d.parser = gopacket.NewDecodingLayerParser(layers.LayerTypeEthernet, &d.eth, &d.ip, &d.tcp)
	d.parser.IgnoreUnsupported = true // the TCP payload, if any
	d.tcp.Options = make([]layers.TCPOption, 0, 8)
	return d
}

// decode classifies one received Ethernet frame.
func (d *decoder) decode(frame []byte) reply {
	if err := d.parser.DecodeLayers(frame, &d.decoded); err != nil || len(d.decoded) != 3 {
		return reply{}
	}
	if d.ip.Protocol != layers.IPProtocolTCP || d.ip.FragOffset != 0 || len(d.ip.DstIP) != 4 || len(d.ip.SrcIP) != 4 {
		return reply{}
	}
	local := binary.BigEndian.Uint32(d.ip.DstIP)
	if local != d.src {
		return reply{}
	}
	r := reply{
		ip: binary.BigEndian.Uint32(d.ip.SrcIP), port: uint16(d.tcp.SrcPort),
		local: local, lport: uint16(d.tcp.DstPort), ttl: d.ip.TTL, window: d.tcp.Window,
	}
	switch {
	case d.tcp.SYN && d.tcp.ACK && !d.tcp.RST:
		r.kind = replyOpen
	case d.tcp.RST && d.tcp.ACK:
		r.kind = replyClosed
	default:
		return reply{} // a bare RST or anything else carries no ack to check
	}
	if !d.cookie.valid(local, r.ip, r.port, r.lport, d.tcp.Ack) {
		r.kind = replyForged
	}
	return r
}
