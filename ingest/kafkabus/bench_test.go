package kafkabus

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"trawl/ingest"
)

// benchEvent is a ~200-byte event value, the size of a small port event.
func benchEvent(i int) []byte {
	v := fmt.Appendf(nil, `{"v":1,"record_id":"rec_%032x","origin":{"job_id":"job_bench","client_id":"c","type":"port","module":"portscan","ts":1700000000000,"ip":"198.18.0.1","port":%d},"target":{"ip":"198.18.0.1","port":%d,"protocol":"tcp"},"result":{"data":{}}}`, i, i%65536, i%65536)
	return v
}

// BenchmarkPublishBatch: throughput of Publish with batches of 1000 events
// spread over 16 job keys, against kfake on loopback (same process).
func BenchmarkPublishBatch(b *testing.B) {
	bus := newTestBus(b, testConfig(startCluster(b, 1)))
	ctx := context.Background()
	const batch = 1000
	msgs := make([]ingest.Message, batch)
	for i := range msgs {
		msgs[i] = ingest.Message{Key: fmt.Appendf(nil, "job_%02d", i%16), Value: benchEvent(i)}
	}
	if err := bus.Publish(ctx, "bench-batch", msgs[0]); err != nil { // create the topic
		b.Fatalf("Publish: %v", err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(batch * len(msgs[0].Value)))
	start := time.Now()
	n := 0
	for b.Loop() {
		if err := bus.Publish(ctx, "bench-batch", msgs...); err != nil {
			b.Fatalf("Publish: %v", err)
		}
		n += batch
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkPublishSingle: latency of one Publish of one event, alone
// (one per core) and with 32 per core at once (the writer batches them), by
// batch timeout: a lone message waits it out.
func BenchmarkPublishSingle(b *testing.B) {
	for _, c := range []struct {
		publishers   int
		batchTimeout time.Duration
	}{{1, time.Millisecond}, {1, 5 * time.Millisecond}, {32, time.Millisecond}, {32, 5 * time.Millisecond}} {
		publishers := c.publishers
		// RunParallel starts parallelism × GOMAXPROCS goroutines.
		name := fmt.Sprintf("publishers=%d/batch-timeout=%v", publishers*runtime.GOMAXPROCS(0), c.batchTimeout)
		b.Run(name, func(b *testing.B) {
			cfg := testConfig(startCluster(b, 1))
			cfg.BatchTimeout = c.batchTimeout
			bus := newTestBus(b, cfg)
			ctx := context.Background()
			topic := fmt.Sprintf("bench-single-%d", publishers)
			if err := bus.Publish(ctx, topic, ingest.Message{Value: benchEvent(0)}); err != nil {
				b.Fatalf("Publish: %v", err)
			}
			b.ReportAllocs()
			var (
				mu  sync.Mutex
				lat []time.Duration
			)
			start := time.Now()
			b.SetParallelism(publishers) // GOMAXPROCS × publishers goroutines
			b.RunParallel(func(pb *testing.PB) {
				var mine []time.Duration
				i := 0
				for pb.Next() {
					m := ingest.Message{Key: fmt.Appendf(nil, "job_%d", i%16), Value: benchEvent(i)}
					t0 := time.Now()
					if err := bus.Publish(ctx, topic, m); err != nil {
						b.Errorf("Publish: %v", err)
						return
					}
					mine = append(mine, time.Since(t0))
					i++
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
			elapsed := time.Since(start)
			if len(lat) == 0 {
				return
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "msgs/s")
		})
	}
}

// BenchmarkConsumeAck: a group member fetching and acking (one commit per
// ack) what was published before.
func BenchmarkConsumeAck(b *testing.B) {
	bus := newTestBus(b, testConfig(startCluster(b, 1)))
	ctx := context.Background()
	const batch = 1000
	msgs := make([]ingest.Message, batch)
	for i := range msgs {
		msgs[i] = ingest.Message{Key: []byte("job_consume"), Value: benchEvent(i)}
	}
	sub, err := bus.Subscribe(ctx, "bench-consume", "g")
	if err != nil {
		b.Fatalf("Subscribe: %v", err)
	}
	b.ReportAllocs()
	start := time.Now()
	published := 0
	for b.Loop() {
		if published == 0 {
			b.StopTimer()
			if err := bus.Publish(ctx, "bench-consume", msgs...); err != nil {
				b.Fatalf("Publish: %v", err)
			}
			published = batch
			b.StartTimer()
		}
		fctx, cancel := context.WithTimeout(ctx, testTimeout)
		d, err := sub.Fetch(fctx)
		if err == nil {
			err = sub.Ack(fctx, d)
		}
		cancel()
		if err != nil {
			b.Fatalf("Fetch/Ack: %v", err)
		}
		published--
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

// The wire-encoding measurement for OpenPort (the ports topic's record): the
// JSON of ingest.Encode against a compact binary form. The codec lives here
// only as the measurement; the bus carries opaque bytes either way.

var errShort = errors.New("short binary open port")

// appendOpenPortBinary: version, then fields in order; strings as uvarint
// length + bytes, the ip as 4 or 16 bytes, numbers as (u)varints.
func appendOpenPortBinary(dst []byte, p *ingest.OpenPort) []byte {
	str := func(s string) {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
		dst = append(dst, s...)
	}
	ip := func(s string) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			dst = append(dst, 0)
			return
		}
		b := a.AsSlice()
		dst = append(dst, byte(len(b)))
		dst = append(dst, b...)
	}
	dst = append(dst, ingest.SchemaVersion)
	str(p.JobID)
	str(p.ClientID)
	ip(p.IP)
	dst = binary.BigEndian.AppendUint16(dst, uint16(p.Port))
	str(p.Protocol)
	dst = append(dst, byte(p.TTL))
	dst = binary.BigEndian.AppendUint16(dst, uint16(p.Window))
	dst = binary.AppendUvarint(dst, uint64(len(p.Modules)))
	for _, m := range p.Modules {
		str(m)
	}
	dst = binary.AppendVarint(dst, p.Found)
	ip(p.SourceIP)
	return binary.BigEndian.AppendUint16(dst, uint16(p.SourcePort))
}

// decodeOpenPortBinary parses into p, reusing p.Modules' array.
func decodeOpenPortBinary(b []byte, p *ingest.OpenPort) error {
	var err error
	take := func(n int) []byte {
		if err != nil || n > len(b) || n < 0 {
			err = errShort
			return nil
		}
		v := b[:n]
		b = b[n:]
		return v
	}
	uvarint := func() uint64 {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			err = errShort
			return 0
		}
		b = b[n:]
		return v
	}
	str := func() string { return string(take(int(uvarint()))) }
	ip := func() string {
		n := take(1)
		if err != nil || n[0] == 0 {
			return ""
		}
		a, ok := netip.AddrFromSlice(take(int(n[0])))
		if !ok {
			err = errShort
			return ""
		}
		return a.String()
	}
	v := take(1)
	if err != nil {
		return err
	}
	p.V = int(v[0])
	p.JobID = str()
	p.ClientID = str()
	p.IP = ip()
	if pb := take(2); err == nil {
		p.Port = int(binary.BigEndian.Uint16(pb))
	}
	p.Protocol = str()
	if t := take(1); err == nil {
		p.TTL = int(t[0])
	}
	if w := take(2); err == nil {
		p.Window = int(binary.BigEndian.Uint16(w))
	}
	n := int(uvarint())
	if n > len(b) {
		return errShort
	}
	p.Modules = p.Modules[:0]
	for range n {
		p.Modules = append(p.Modules, str())
	}
	found, k := binary.Varint(b)
	if k <= 0 {
		return errShort
	}
	b = b[k:]
	p.Found = found
	p.SourceIP = ip()
	if sp := take(2); err == nil {
		p.SourcePort = int(binary.BigEndian.Uint16(sp))
	}
	return err
}

func sampleOpenPort() *ingest.OpenPort {
	return &ingest.OpenPort{
		JobID: "job_01J9ZK3Q8F5W7X2Y4A6B8C0D1E", ClientID: "client_42", IP: "198.18.3.77", Port: 443,
		Protocol: "tcp", TTL: 57, Window: 64240, Modules: []string{"ssl", "service"},
		Found: 1700000000123, SourceIP: "198.18.0.1", SourcePort: 40001,
	}
}

func TestOpenPortBinaryRoundTrip(t *testing.T) {
	in := sampleOpenPort()
	in.V = ingest.SchemaVersion
	b := appendOpenPortBinary(nil, in)
	var out ingest.OpenPort
	if err := decodeOpenPortBinary(b, &out); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if fmt.Sprint(out) != fmt.Sprint(*in) {
		t.Fatalf("round trip = %+v, want %+v", out, *in)
	}
	for n := range len(b) {
		if err := decodeOpenPortBinary(b[:n], &out); err == nil {
			t.Fatalf("decode of %d of %d bytes succeeded", n, len(b))
		}
	}
	j, err := ingest.Encode(nil, in)
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	t.Logf("open port: json %d bytes, binary %d bytes", len(j), len(b))
}

func BenchmarkOpenPortEncoding(b *testing.B) {
	p := sampleOpenPort()
	jsonBytes, err := ingest.Encode(nil, p)
	if err != nil {
		b.Fatalf("Encode: %v", err)
	}
	binBytes := appendOpenPortBinary(nil, p)
	b.Run("json/encode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(jsonBytes)))
		buf := make([]byte, 0, 512)
		for b.Loop() {
			var err error
			buf, err = ingest.Encode(buf[:0], p)
			if err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(jsonBytes)), "wire-bytes")
	})
	b.Run("json/decode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(jsonBytes)))
		var out ingest.OpenPort
		for b.Loop() {
			if err := ingest.Decode(jsonBytes, &out); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("binary/encode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(binBytes)))
		buf := make([]byte, 0, 512)
		for b.Loop() {
			buf = appendOpenPortBinary(buf[:0], p)
		}
		b.ReportMetric(float64(len(binBytes)), "wire-bytes")
	})
	b.Run("binary/decode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(binBytes)))
		var out ingest.OpenPort
		for b.Loop() {
			if err := decodeOpenPortBinary(binBytes, &out); err != nil {
				b.Fatal(err)
			}
		}
	})
}
