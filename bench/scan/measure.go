package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrNoInterface: the interface is not in /proc/<pid>/net/dev.
var ErrNoInterface = errors.New("interface not found")

// txCounters are an interface's transmit counters.
type txCounters struct {
	Packets, Dropped uint64
}

// parseNetDev finds ifname's transmit packets and drops in the text of
// /proc/net/dev (columns: rx bytes packets errs drop fifo frame compressed
// multicast, then tx bytes packets errs drop ...).
func parseNetDev(text []byte, ifname string) (txCounters, error) {
	for _, line := range bytes.Split(text, []byte{'\n'}) {
		name, rest, ok := bytes.Cut(line, []byte{':'})
		if !ok || string(bytes.TrimSpace(name)) != ifname {
			continue
		}
		f := strings.Fields(string(rest))
		if len(f) < 12 {
			return txCounters{}, fmt.Errorf("%w: net/dev line for %s has %d fields", ErrParse, ifname, len(f))
		}
		pk, err1 := strconv.ParseUint(f[9], 10, 64)
		dr, err2 := strconv.ParseUint(f[11], 10, 64)
		if err1 != nil || err2 != nil {
			return txCounters{}, fmt.Errorf("%w: net/dev counters for %s: %q", ErrParse, ifname, line)
		}
		return txCounters{Packets: pk, Dropped: dr}, nil
	}
	return txCounters{}, fmt.Errorf("%w: %s", ErrNoInterface, ifname)
}

// sample is the transmit counter at one instant.
type sample struct {
	At time.Time
	TX txCounters
}

// sendWindow derives the probes sent and the send duration from counter
// samples taken every interval: sending began between the last sample
// before the first increase and that increase, and ended between the last
// increase and the sample before it; both ends are taken at the midpoint,
// so the quantisation errors cancel on average. A burst seen in one
// sample counts half an interval.
func sendWindow(s []sample) (sent uint64, dur time.Duration) {
	if len(s) < 2 {
		return 0, 0
	}
	first, last := -1, -1
	for i := 1; i < len(s); i++ {
		if s[i].TX.Packets > s[i-1].TX.Packets {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	if first < 0 {
		return 0, 0
	}
	mid := func(i int) time.Time { return s[i-1].At.Add(s[i].At.Sub(s[i-1].At) / 2) }
	sent = s[len(s)-1].TX.Packets - s[0].TX.Packets
	dur = mid(last).Sub(mid(first))
	if half := s[first].At.Sub(s[first-1].At) / 2; dur < half {
		dur = half
	}
	return sent, dur
}

// sampler polls an interface's counters through /proc/<pid>/net/dev of a
// process living in the interface's namespace.
type sampler struct {
	path, ifname string
	every        time.Duration
}

// run samples until ctx ends and returns the samples (one before the first
// tick and one after ctx ends, so the window is closed on both sides).
func (sm sampler) run(ctx context.Context) ([]sample, error) {
	f, err := os.Open(sm.path)
	if err != nil {
		return nil, fmt.Errorf("cannot open %s: %w", sm.path, err)
	}
	defer f.Close()
	buf := make([]byte, 0, 64<<10)
	read := func() (sample, error) {
		buf = buf[:0]
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return sample{}, fmt.Errorf("cannot rewind %s: %w", sm.path, err)
		}
		for {
			if len(buf) == cap(buf) {
				buf = append(buf, 0)[:len(buf)]
			}
			n, err := f.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
			if errors.Is(err, io.EOF) || (err == nil && n == 0) {
				break
			}
			if err != nil {
				return sample{}, fmt.Errorf("cannot read %s: %w", sm.path, err)
			}
		}
		tx, err := parseNetDev(buf, sm.ifname)
		return sample{At: time.Now(), TX: tx}, err
	}
	s0, err := read()
	if err != nil {
		return nil, err
	}
	out := []sample{s0}
	tick := time.NewTicker(sm.every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			s, err := read()
			if err != nil {
				return out, err
			}
			return append(out, s), nil
		case <-tick.C:
			s, err := read()
			if err != nil {
				return out, err
			}
			// Keep only changes and their predecessors: a long cooldown
			// then costs two samples, not thousands.
			if n := len(out); n >= 2 && out[n-1].TX == s.TX && out[n-2].TX == s.TX {
				out[n-1] = s
			} else {
				out = append(out, s)
			}
		}
	}
}

// startSampler runs sm in the background; stop ends it and returns its result.
func startSampler(ctx context.Context, sm sampler) (stop func() ([]sample, error)) {
	ctx, cancel := context.WithCancel(ctx)
	var (
		wg  sync.WaitGroup
		out []sample
		err error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		out, err = sm.run(ctx)
	}()
	return func() ([]sample, error) {
		cancel()
		wg.Wait()
		return out, err
	}
}

// truth is a workload's exact set of open ports: every answering host of
// the block on every listed port.
type truth struct {
	block netip.Prefix
	hosts map[netip.Addr]bool // nil: every address of the block answers
	ports map[uint16]bool
	count int
}

func newTruth(block netip.Prefix, hosts []netip.Addr, ports []uint16) truth {
	t := truth{block: block, ports: map[uint16]bool{}}
	for _, p := range ports {
		t.ports[p] = true
	}
	n := 1 << (32 - block.Bits())
	if hosts != nil {
		t.hosts = make(map[netip.Addr]bool, len(hosts))
		for _, h := range hosts {
			if block.Contains(h) {
				t.hosts[h] = true
			}
		}
		n = len(t.hosts)
	}
	t.count = n * len(t.ports)
	return t
}

func (t truth) open(ap netip.AddrPort) bool {
	if !t.block.Contains(ap.Addr()) || !t.ports[ap.Port()] {
		return false
	}
	return t.hosts == nil || t.hosts[ap.Addr()]
}

// score is how a tool's output compares with the ground truth.
type score struct {
	Found          int     `json:"found"`           // distinct open ports reported that are open
	Truth          int     `json:"ground_truth"`    // open ports in the workload
	Recall         float64 `json:"recall"`          // Found / Truth
	Duplicates     int     `json:"duplicates"`      // reports beyond the first of the same ip:port
	FalsePositives int     `json:"false_positives"` // distinct ip:ports reported that are not open
}

// tally counts reports; distinct ip:ports are scored once.
type tally struct {
	seen map[netip.AddrPort]bool
	dups int
}

func newTally() *tally { return &tally{seen: map[netip.AddrPort]bool{}} }

func (t *tally) add(ap netip.AddrPort) {
	if t.seen[ap] {
		t.dups++
		return
	}
	t.seen[ap] = true
}

func (t *tally) score(tr truth) score {
	s := score{Truth: tr.count, Duplicates: t.dups}
	for ap := range t.seen {
		if tr.open(ap) {
			s.Found++
		} else {
			s.FalsePositives++
		}
	}
	if tr.count > 0 {
		s.Recall = float64(s.Found) / float64(tr.count)
	}
	return s
}
