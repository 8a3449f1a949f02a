package stream

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"trawl/ingest"
)

// BenchmarkFanout measures the hub's fan-out as drain runs it: put a bus
// message's id in front, decode it, keep it in the ring, queue it to 100
// subscribers (drained every 1024 events).
func BenchmarkFanout(b *testing.B) {
	const subscribers = 100
	var st counters
	h := newHub(4096, 100000, &st)
	subs := make([]*subscriber, subscribers)
	for i := range subs {
		subs[i] = h.subscribe(alice, "", "", false)
	}
	msg := encoded(b, portEvent(alice, "job_1"))
	d := ingest.Delivery{Message: ingest.Message{Value: msg}, Epoch: testEpoch}
	dec := newDecoder()
	drain := func() {
		for _, s := range subs {
			for len(s.queue) > 0 {
				<-s.queue
			}
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	for b.Loop() {
		d.Offset = int64(n)
		it, err := dec.decode(ingest.WithCursor(make([]byte, 0, len(d.Value)+40), d.Value, d.Cursor()))
		if err != nil {
			b.Fatal(err)
		}
		h.publish(it)
		if n++; n%1024 == 0 {
			drain()
		}
	}
	b.StopTimer()
	if d := st.droppedSlow.Load(); d != 0 {
		b.Fatalf("%d subscribers dropped", d)
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(n*subscribers)/b.Elapsed().Seconds(), "deliveries/s")
}

func BenchmarkDecodeItem(b *testing.B) {
	msg := onBus(b, portEvent(alice, "job_1"), 1)
	dec := newDecoder()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := dec.decode(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNDJSONFanout is end to end: bus → server → 100 NDJSON clients
// over loopback, publishing no further ahead than the queues hold.
func BenchmarkNDJSONFanout(b *testing.B) {
	const subscribers = 100
	h := startServer(b, harnessOpts{cfg: func(c *Config) { c.Heartbeat = maxHeartbeat }})
	var delivered [subscribers]atomic.Int64
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range subscribers {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.base+"/v1/stream", nil)
		req.Header.Set("X-Token", aliceToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer resp.Body.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := resp.Body.Read(buf)
				for _, c := range buf[:n] {
					if c == '\n' {
						delivered[i].Add(1)
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
	msg := encoded(b, portEvent(alice, "job_1"))
	const batch = 256
	msgs := make([]ingest.Message, batch)
	for i := range msgs {
		msgs[i] = ingest.Message{Key: []byte("job_1"), Value: msg}
	}
	minDelivered := func() int64 {
		m := delivered[0].Load()
		for i := range delivered {
			m = min(m, delivered[i].Load())
		}
		return m
	}
	b.ReportAllocs()
	b.ResetTimer()
	published := 0
	for published < b.N {
		k := min(batch, b.N-published)
		for int64(published)-minDelivered() > 2048 {
			time.Sleep(50 * time.Microsecond)
		}
		if err := h.bus.Publish(ctx, ingest.TopicEvents, msgs[:k]...); err != nil {
			b.Fatal(err)
		}
		published += k
	}
	for minDelivered() < int64(b.N) {
		if h.srv.Stats().DroppedSlow > 0 {
			b.Fatal("a subscriber was dropped")
		}
		time.Sleep(50 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	cancel()
	wg.Wait()
}
