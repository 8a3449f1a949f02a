package rawsock

import (
	"encoding/binary"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

var (
	testSrcMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	testDstMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
)

const (
	testSrc = 0xc613ff01 // 198.19.255.1
	testDst = 0xc6120a07 // 198.18.10.7
)

func testTemplate(t testing.TB) *template {
	t.Helper()
	tmpl, err := newTemplate(testSrcMAC, testDstMAC, testSrc, 64, 1024)
	if err != nil {
		t.Fatal(err)
	}
	return tmpl
}

// checksum is a plain (non-incremental) Internet checksum over b.
func checksum(b []byte, s uint32) uint16 {
	if len(b)%2 == 1 {
		b = append(b[:len(b):len(b)], 0)
	}
	return ^fold(sum16(b, s))
}

func TestPatchedFramesHaveValidChecksums(t *testing.T) {
	tmpl := testTemplate(t)
	c := newCookie(1, 2, 40000, 40999)
	frame := make([]byte, frameLen)
	cases := []struct {
		dst  uint32
		port uint16
	}{
		{testDst, 80}, {0xffffffff, 65535}, {0, 1}, {0xc6120000, 443}, {0x01020304, 22},
	}
	for _, tc := range cases {
		seq, sport, id := c.probe(testSrc, tc.dst, tc.port)
		tmpl.patch(frame, tc.dst, tc.port, sport, seq, id)

		// 1. an independent full computation over the patched bytes
		if got := checksum(frame[14:34], 0); got != 0 {
			t.Errorf("dst %08x: IP header does not sum to 0xffff (residue %04x)", tc.dst, got)
		}
		pseudo := sum16(frame[26:34], uint32(layers.IPProtocolTCP)+synTCPLen)
		if got := checksum(frame[34:synLen], pseudo); got != 0 {
			t.Errorf("dst %08x: TCP segment does not sum to 0xffff (residue %04x)", tc.dst, got)
		}

		// 2. gopacket decodes the frame to what was patched in, and its own
		// serializer computes the same checksums
		p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if ip == nil || tcp == nil {
			t.Fatalf("dst %08x: gopacket did not decode IPv4/TCP: %v", tc.dst, p.ErrorLayer())
		}
		if binary.BigEndian.Uint32(ip.DstIP) != tc.dst || binary.BigEndian.Uint32(ip.SrcIP) != testSrc ||
			ip.Id != id || ip.TTL != 64 || ip.Length != 44 {
			t.Errorf("dst %08x: IP fields %+v", tc.dst, ip)
		}
		if uint16(tcp.DstPort) != tc.port || uint16(tcp.SrcPort) != sport || tcp.Seq != seq || !tcp.SYN ||
			tcp.ACK || tcp.RST || tcp.Window != 1024 {
			t.Errorf("dst %08x: TCP fields %+v", tc.dst, tcp)
		}
		if len(tcp.Options) != 1 || tcp.Options[0].OptionType != layers.TCPOptionKindMSS ||
			binary.BigEndian.Uint16(tcp.Options[0].OptionData) != defaultMSS {
			t.Errorf("dst %08x: options %v, want MSS %d", tc.dst, tcp.Options, defaultMSS)
		}
		wantIP, wantTCP := ip.Checksum, tcp.Checksum
		if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
			t.Fatal(err)
		}
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true},
			ip, tcp); err != nil {
			t.Fatal(err)
		}
		out := buf.Bytes()
		if got := binary.BigEndian.Uint16(out[10:]); got != wantIP {
			t.Errorf("dst %08x: IP checksum %04x, gopacket computes %04x", tc.dst, wantIP, got)
		}
		if got := binary.BigEndian.Uint16(out[20+16:]); got != wantTCP {
			t.Errorf("dst %08x: TCP checksum %04x, gopacket computes %04x", tc.dst, wantTCP, got)
		}
	}
}

func TestCookieSpreadsSourcePortsInRange(t *testing.T) {
	c := newCookie(11, 22, 40000, 40009)
	seen := map[uint16]int{}
	for port := range uint16(2000) {
		seq, sport, _ := c.probe(testSrc, testDst, port)
		if sport < 40000 || sport > 40009 {
			t.Fatalf("source port %d outside 40000-40009", sport)
		}
		seen[sport]++
		if !c.valid(testSrc, testDst, port, sport, seq+1) {
			t.Fatalf("port %d: own probe's reply not valid", port)
		}
	}
	if len(seen) != 10 {
		t.Errorf("source ports used: %d of 10", len(seen))
	}
	other := newCookie(12, 22, 40000, 40009)
	s1, _, _ := c.probe(testSrc, testDst, 80)
	s2, _, _ := other.probe(testSrc, testDst, 80)
	if s1 == s2 {
		t.Errorf("different keys gave the same sequence %d", s1)
	}
}

// replyFrame builds a reply from dst:dport to src:sport with gopacket.
func replyFrame(t testing.TB, from, to uint32, sport, dport uint16, ack uint32, syn, rst, ackFlag bool) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: testDstMAC, DstMAC: testSrcMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 61, Protocol: layers.IPProtocolTCP, SrcIP: ipBytes(from), DstIP: ipBytes(to)}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: 777, Ack: ack,
		SYN: syn, RST: rst, ACK: ackFlag, Window: 29200}
	if syn {
		tcp.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{5, 0xb4}}}
	}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true},
		eth, ip, tcp); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func TestDecoderValidatesCookies(t *testing.T) {
	c := newCookie(5, 6, 40000, 40999)
	d := newDecoder(c, testSrc)
	seq, sport, _ := c.probe(testSrc, testDst, 443)
	cases := []struct {
		name  string
		frame []byte
		want  replyKind
	}{
		{"syn-ack", replyFrame(t, testDst, testSrc, 443, sport, seq+1, true, false, true), replyOpen},
		{"rst-ack", replyFrame(t, testDst, testSrc, 443, sport, seq+1, false, true, true), replyClosed},
		{"syn-ack with a wrong ack", replyFrame(t, testDst, testSrc, 443, sport, seq+2, true, false, true), replyForged},
		{"syn-ack acking the sequence itself", replyFrame(t, testDst, testSrc, 443, sport, seq, true, false, true), replyForged},
		{"syn-ack to another source port", replyFrame(t, testDst, testSrc, 443, sport^1, seq+1, true, false, true), replyForged},
		{"syn-ack from another port", replyFrame(t, testDst, testSrc, 444, sport, seq+1, true, false, true), replyForged},
		{"syn-ack from another host", replyFrame(t, testDst+1, testSrc, 443, sport, seq+1, true, false, true), replyForged},
		{"rst-ack with a wrong ack", replyFrame(t, testDst, testSrc, 443, sport, 12345, false, true, true), replyForged},
		{"to another address", replyFrame(t, testDst, testSrc+1, 443, sport, seq+1, true, false, true), replyNone},
		{"bare rst", replyFrame(t, testDst, testSrc, 443, sport, seq+1, false, true, false), replyNone},
		{"our own syn", replyFrame(t, testSrc, testDst, sport, 443, 0, true, false, false), replyNone},
		{"truncated", replyFrame(t, testDst, testSrc, 443, sport, seq+1, true, false, true)[:40], replyNone},
		{"garbage", []byte{1, 2, 3}, replyNone},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := d.decode(tc.frame)
			if r.kind != tc.want {
				t.Fatalf("kind %d, want %d", r.kind, tc.want)
			}
			if tc.want == replyOpen || tc.want == replyClosed {
				if r.ip != testDst || r.port != 443 || r.local != testSrc || r.lport != sport || r.ttl != 61 || r.window != 29200 {
					t.Errorf("reply %+v", r)
				}
			}
		})
	}
}

func TestTemplateRejectsBadAddresses(t *testing.T) {
	if _, err := newTemplate(net.HardwareAddr{1, 2}, testDstMAC, testSrc, 64, 1024); err == nil {
		t.Error("a 2-byte MAC built a template")
	}
}

func BenchmarkPatch(b *testing.B) {
	tmpl := testTemplate(b)
	frame := make([]byte, frameLen)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		tmpl.patch(frame, testDst+uint32(i), uint16(i), 40000, uint32(i)*2654435761, uint16(i))
	}
}

func BenchmarkCookie(b *testing.B) {
	c := newCookie(1, 2, 40000, 40999)
	var sink uint32
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		seq, _, _ := c.probe(testSrc, testDst+uint32(i), 80)
		sink += seq
	}
	_ = sink
}

func BenchmarkPatchWithCookie(b *testing.B) {
	tmpl := testTemplate(b)
	c := newCookie(1, 2, 40000, 40999)
	frame := make([]byte, frameLen)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		dst := testDst + uint32(i)
		seq, sport, id := c.probe(testSrc, dst, 80)
		tmpl.patch(frame, dst, 80, sport, seq, id)
	}
}

func BenchmarkDecodeReply(b *testing.B) {
	c := newCookie(5, 6, 40000, 40999)
	d := newDecoder(c, testSrc)
	seq, sport, _ := c.probe(testSrc, testDst, 443)
	frame := replyFrame(b, testDst, testSrc, 443, sport, seq+1, true, false, true)
	b.ReportAllocs()
	for b.Loop() {
		if d.decode(frame).kind != replyOpen {
			b.Fatal("not decoded as open")
		}
	}
}
