package rawsock

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
)

// Config configures the raw SYN transport. Empty Interface, SourceIP and
// GatewayMAC are resolved from the route to RouteTo (the default route when
// RouteTo is empty).
type Config struct {
	Interface  string // send and receive on this interface
	SourceIP   string // IPv4 source of the probes; default: the interface's first address
	GatewayMAC string // next hop's MAC; default: neighbour table, else an ARP request
	RouteTo    string // an address whose route picks the interface and gateway
	// SourcePorts is the scan's source-port range "lo-hi": each probe's port
	// is taken from it by the cookie, and replies to other ports are ignored.
	SourcePorts string
	TTL         int  // IP TTL of the probes
	Window      int  // TCP window of the probes
	QdiscBypass bool // PACKET_QDISC_BYPASS: skip the qdisc (frames are dropped, not queued, when the driver is full)
	RecvBuffer  int  // receive socket buffer in bytes (SO_RCVBUFFORCE as root)
	SendThreads int  // threads sending at once, each with its own socket
	// GuardHostStack keeps the host's TCP stack from seeing the scan's
	// replies (and answering each SYN-ACK with a RST) through an nftables
	// table that lives as long as the transport; see hostGuard. Skipped,
	// with a warning, where it cannot be installed safely.
	GuardHostStack bool
}

// maxSendThreads bounds --raw.send-threads: more threads than cores only
// contend.
const maxSendThreads = 64

// DefaultConfig returns the defaults RegisterFlags sets. The source ports
// lie above Linux's default ephemeral range (32768-60999), so the host
// stack guard can be installed. Two send threads where there are two
// cores: on a dense scan each reply costs the kernel more on the sending
// core than the probe did, and a second thread roughly doubles a sparse
// scan's rate; the receive ring absorbs the time the receiver loses to
// them. A 16 MiB ring holds about a third of a second of replies at the
// fastest dense rate measured here (340k/s) and lost none there;
// allocating a larger one cost a scan ~10 ms of CPU at start.
func DefaultConfig() Config {
	return Config{SourcePorts: "61000-61999", TTL: 64, Window: 1024, RecvBuffer: 16 << 20,
		SendThreads: min(2, runtime.NumCPU()), GuardHostStack: true}
}

// RegisterFlags registers the raw transport's flags under prefix.
func (c *Config) RegisterFlags(fs *flag.FlagSet, prefix string) {
	*c = DefaultConfig()
	fs.StringVar(&c.Interface, prefix+"interface", c.Interface, "raw transport: interface to scan from (default: from the route to route-to)")
	fs.StringVar(&c.SourceIP, prefix+"source-ip", c.SourceIP, "raw transport: IPv4 source address (default: the interface's)")
	fs.StringVar(&c.GatewayMAC, prefix+"gateway-mac", c.GatewayMAC, "raw transport: next hop MAC (default: neighbour table or ARP)")
	fs.StringVar(&c.RouteTo, prefix+"route-to", c.RouteTo, "raw transport: address whose route picks interface and gateway (default: the default route)")
	fs.StringVar(&c.SourcePorts, prefix+"source-ports", c.SourcePorts, "raw transport: source port range lo-hi of the probes")
	fs.IntVar(&c.TTL, prefix+"ttl", c.TTL, "raw transport: IP TTL of the probes")
	fs.IntVar(&c.Window, prefix+"window", c.Window, "raw transport: TCP window of the probes")
	fs.BoolVar(&c.QdiscBypass, prefix+"qdisc-bypass", c.QdiscBypass, "raw transport: bypass the interface's qdisc (PACKET_QDISC_BYPASS)")
	fs.IntVar(&c.RecvBuffer, prefix+"recv-buffer", c.RecvBuffer, "raw transport: receive buffer in bytes")
	fs.IntVar(&c.SendThreads, prefix+"send-threads", c.SendThreads, "raw transport: threads sending probes at once")
	fs.BoolVar(&c.GuardHostStack, prefix+"guard-host-stack", c.GuardHostStack,
		"raw transport: drop the scan's replies before the host's TCP stack (nftables, removed on exit) so it sends no RSTs; needs source ports outside the ephemeral range")
}

// Validate checks the config without touching the network.
func (c *Config) Validate() error {
	var errs []error
	if c.SourceIP != "" {
		if a, err := netip.ParseAddr(c.SourceIP); err != nil || !a.Is4() {
			errs = append(errs, fmt.Errorf("raw source-ip %q: want an IPv4 address", c.SourceIP))
		}
	}
	if c.RouteTo != "" {
		if a, err := netip.ParseAddr(c.RouteTo); err != nil || !a.Is4() {
			errs = append(errs, fmt.Errorf("raw route-to %q: want an IPv4 address", c.RouteTo))
		}
	}
	if c.GatewayMAC != "" {
		if mac, err := net.ParseMAC(c.GatewayMAC); err != nil || len(mac) != 6 {
			errs = append(errs, fmt.Errorf("raw gateway-mac %q: want an Ethernet MAC", c.GatewayMAC))
		}
	}
	if _, _, err := parsePortRange(c.SourcePorts); err != nil {
		errs = append(errs, err)
	}
	if c.TTL < 1 || c.TTL > 255 {
		errs = append(errs, fmt.Errorf("raw ttl must be 1..255, got %d", c.TTL))
	}
	if c.Window < 0 || c.Window > 65535 {
		errs = append(errs, fmt.Errorf("raw window must be 0..65535, got %d", c.Window))
	}
	if c.SendThreads < 1 || c.SendThreads > maxSendThreads {
		errs = append(errs, fmt.Errorf("raw send-threads must be 1..%d, got %d", maxSendThreads, c.SendThreads))
	}
	if c.RecvBuffer < 0 {
		errs = append(errs, fmt.Errorf("raw recv-buffer must not be negative, got %d", c.RecvBuffer))
	}
	return errors.Join(errs...)
}

// parsePortRange parses "lo-hi" or a single port.
func parsePortRange(s string) (lo, hi uint16, err error) {
	a, b, found := strings.Cut(strings.TrimSpace(s), "-")
	if !found {
		b = a
	}
	l, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	h, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 16)
	if err1 != nil || err2 != nil || l == 0 || l > h {
		return 0, 0, fmt.Errorf("raw source-ports %q: want lo-hi with 1 <= lo <= hi <= 65535", s)
	}
	return uint16(l), uint16(h), nil
}
