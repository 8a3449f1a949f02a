package ingest_test

import (
	"encoding/json"
	"net/netip"
	"strconv"
	"testing"

	"trawl/ingest"
)

// synackEvent is the Event a port event encoder must reproduce.
func synackEvent(job, client string, ip netip.Addr, port uint16, src netip.Addr, srcPort uint16, ts int64) *ingest.Event {
	e := &ingest.Event{
		RecordID: ingest.RecordID(job, ingest.TypePort, ip.String(), strconv.Itoa(int(port))),
		Origin: ingest.Origin{
			JobID: job, ClientID: client, Type: ingest.TypePort, Module: ingest.ModulePortscan, TS: ts, Port: int(srcPort),
		},
		Target: ingest.Target{IP: ip.String(), Port: int(port), Protocol: "tcp"},
		Result: ingest.Result{Data: json.RawMessage(`{"response":"synack"}`)},
	}
	if src.IsValid() {
		e.Origin.IP = src.String()
	}
	return e
}

func TestPortEventsMatchEncode(t *testing.T) {
	cases := []struct {
		job, client string
		ip          string
		port        uint16
		src         string
		srcPort     uint16
		ts          int64
	}{
		{"job_01abc", "usr_1", "198.18.0.1", 22, "198.19.255.1", 40961, 1795302156130},
		{"job_01abc", "usr_1", "255.255.255.255", 65535, "", 0, 0},
		{"job_01abc", "usr_1", "0.0.0.0", 1, "10.0.0.1", 0, -1},
		{`job "quoted" <&>`, "c\u2028\x01", "198.18.200.7", 8080, "198.19.255.1", 65535, 42},
		{"", "", "198.18.0.9", 443, "", 1024, 1},
	}
	var buf []byte
	for _, c := range cases {
		ip := netip.MustParseAddr(c.ip)
		var src netip.Addr
		if c.src != "" {
			src = netip.MustParseAddr(c.src)
		}
		want, err := ingest.Encode(nil, synackEvent(c.job, c.client, ip, c.port, src, c.srcPort, c.ts))
		if err != nil {
			t.Fatal(err)
		}
		pe := ingest.NewPortEvents(c.job, c.client)
		buf = pe.Append(buf[:0], ip, c.port, src, c.srcPort, c.ts)
		if string(buf) != string(want) {
			t.Errorf("%+v:\n got %s\nwant %s", c, buf, want)
		}
		if string(pe.Key()) != c.job {
			t.Errorf("key %q, want %q", pe.Key(), c.job)
		}
		var back ingest.Event
		if err := ingest.Decode(buf, &back); err != nil {
			t.Errorf("%+v: decode: %v", c, err)
		}
	}
}

func FuzzPortEvents(f *testing.F) {
	f.Add("job_1", "usr_1", uint32(0xC6120001), uint16(22), uint32(0xC613FF01), uint16(40000), int64(1))
	f.Add("j\"\\<", "\xff", uint32(0), uint16(0), uint32(0), uint16(0), int64(-5))
	f.Fuzz(func(t *testing.T, job, client string, ip32 uint32, port uint16, src32 uint32, srcPort uint16, ts int64) {
		ip := netip.AddrFrom4([4]byte{byte(ip32 >> 24), byte(ip32 >> 16), byte(ip32 >> 8), byte(ip32)})
		var src netip.Addr
		if src32 != 0 {
			src = netip.AddrFrom4([4]byte{byte(src32 >> 24), byte(src32 >> 16), byte(src32 >> 8), byte(src32)})
		}
		want, err := ingest.Encode(nil, synackEvent(job, client, ip, port, src, srcPort, ts))
		if err != nil {
			t.Fatal(err)
		}
		got := ingest.NewPortEvents(job, client).Append(nil, ip, port, src, srcPort, ts)
		if string(got) != string(want) {
			t.Fatalf("got %s\nwant %s", got, want)
		}
	})
}

func BenchmarkPortEventsAppend(b *testing.B) {
	pe := ingest.NewPortEvents("job_01m805hstf66f2daxk8b0z44mc", "usr_01m805hstf66f2daxk8b0z44mc")
	ip, src := netip.MustParseAddr("198.18.204.247"), netip.MustParseAddr("198.19.255.1")
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		buf = pe.Append(buf[:0], ip, uint16(i), src, 41096, 1795302156130)
	}
}

func BenchmarkPortEventViaEncode(b *testing.B) {
	ip, src := netip.MustParseAddr("198.18.204.247"), netip.MustParseAddr("198.19.255.1")
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := ingest.EventMessage(synackEvent("job_01m805hstf66f2daxk8b0z44mc", "usr_01m805hstf66f2daxk8b0z44mc", ip, uint16(i), src, 41096, 1795302156130)); err != nil {
			b.Fatal(err)
		}
	}
}
