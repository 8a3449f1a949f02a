package rawsock

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"
)

// ErrNoRoute: no route to the targets, so no interface or gateway to use.
var ErrNoRoute = errors.New("no route")

// ErrNoGatewayMAC: the next hop did not answer ARP.
var ErrNoGatewayMAC = errors.New("gateway MAC not resolved")

// The /proc/thread-self views follow the calling thread's network
// namespace (/proc/self/net follows the process's main thread), so a caller
// locked into another namespace reads its own tables.
const (
	procRoute = "/proc/thread-self/net/route"
	procARP   = "/proc/thread-self/net/arp"
)

// route is where probes to a destination leave.
type route struct {
	iface   string
	gateway netip.Addr // invalid when the destination is on-link
}

// lookupRoute returns the longest-prefix route to dst from /proc's IPv4
// routing table (the main table; policy routing is not followed).
func lookupRoute(r io.Reader, dst netip.Addr) (route, error) {
	want := binary.BigEndian.Uint32(dst.AsSlice())
	best, bestLen := route{}, -1
	sc := bufio.NewScanner(r)
	sc.Scan() // header
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 8 {
			continue
		}
		dest, err1 := parseHexLE(f[1])
		gw, err2 := parseHexLE(f[2])
		flags, err3 := strconv.ParseUint(f[3], 16, 32)
		mask, err4 := parseHexLE(f[7])
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil || flags&unix.RTF_UP == 0 {
			continue
		}
		ones := bitsSet(mask)
		if want&mask != dest || ones <= bestLen {
			continue
		}
		best, bestLen = route{iface: f[0]}, ones
		if flags&unix.RTF_GATEWAY != 0 {
			best.gateway = netip.AddrFrom4([4]byte{byte(gw >> 24), byte(gw >> 16), byte(gw >> 8), byte(gw)})
		}
	}
	if err := sc.Err(); err != nil {
		return route{}, fmt.Errorf("cannot read the routing table: %w", err)
	}
	if bestLen < 0 {
		return route{}, fmt.Errorf("to %s: %w", dst, ErrNoRoute)
	}
	return best, nil
}

// parseHexLE parses /proc/net/route's host-order (little-endian) hex words
// into a big-endian address value.
func parseHexLE(s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 16, 32)
	if err != nil {
		return 0, err
	}
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(v))
	return binary.BigEndian.Uint32(b[:]), nil
}

func bitsSet(mask uint32) int {
	n := 0
	for ; mask != 0; mask <<= 1 {
		if mask&0x80000000 == 0 {
			return -1 // not a prefix mask
		}
		n++
	}
	return n
}

// lookupNeighbour finds ip's MAC on iface in /proc's ARP table.
func lookupNeighbour(r io.Reader, ip netip.Addr, iface string) (net.HardwareAddr, bool) {
	sc := bufio.NewScanner(r)
	sc.Scan() // header
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// IP address, HW type, Flags, HW address, Mask, Device
		if len(f) < 6 || f[0] != ip.String() || f[5] != iface {
			continue
		}
		flags, err := strconv.ParseUint(strings.TrimPrefix(f[2], "0x"), 16, 32)
		mac, err2 := net.ParseMAC(f[3])
		if err != nil || err2 != nil || flags&0x2 == 0 { // ATF_COM: complete
			continue
		}
		return mac, true
	}
	return nil, false
}

// arpResolve asks for ip's MAC on ifi with ARP requests from src.
func arpResolve(ifi *net.Interface, src, ip netip.Addr, attempts int, wait time.Duration) (net.HardwareAddr, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		return nil, fmt.Errorf("cannot open an ARP socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index}); err != nil {
		return nil, fmt.Errorf("cannot bind the ARP socket: %w", err)
	}
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, fmt.Errorf("cannot set the ARP socket timeout: %w", err)
	}
	eth := &layers.Ethernet{SrcMAC: ifi.HardwareAddr, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP}
	req := &layers.ARP{
		AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPRequest, SourceHwAddress: ifi.HardwareAddr, SourceProtAddress: src.AsSlice(),
		DstHwAddress: make([]byte, 6), DstProtAddress: ip.AsSlice(),
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, eth, req); err != nil {
		return nil, fmt.Errorf("cannot build an ARP request: %w", err)
	}
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index, Halen: 6}
	copy(to.Addr[:], layers.EthernetBroadcast)
	rx := make([]byte, 1500)
	for range attempts {
		if err := unix.Sendto(fd, buf.Bytes(), 0, to); err != nil {
			return nil, fmt.Errorf("cannot send an ARP request: %w", err)
		}
		deadline := time.Now().Add(wait)
		for time.Now().Before(deadline) {
			n, _, err := unix.Recvfrom(fd, rx, 0)
			if err != nil {
				if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
					continue
				}
				return nil, fmt.Errorf("cannot read ARP replies: %w", err)
			}
			p := gopacket.NewPacket(rx[:n], layers.LayerTypeEthernet, gopacket.NoCopy)
			a, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP)
			if ok && a.Operation == layers.ARPReply && net.IP(a.SourceProtAddress).Equal(ip.AsSlice()) {
				return net.HardwareAddr(append([]byte(nil), a.SourceHwAddress...)), nil
			}
		}
	}
	return nil, fmt.Errorf("%s on %s after %d ARP requests: %w", ip, ifi.Name, attempts, ErrNoGatewayMAC)
}

// resolved is the link-level setup of a transport.
type resolved struct {
	ifi    *net.Interface
	src    netip.Addr
	dstMAC net.HardwareAddr
}

// resolve fills in what cfg leaves empty from the route, the interface's
// addresses and the neighbour table, sending ARP when needed.
func resolve(cfg Config) (resolved, error) {
	var res resolved
	dst := netip.IPv4Unspecified()
	if cfg.RouteTo != "" {
		dst = netip.MustParseAddr(cfg.RouteTo) // Validate checked it
	}
	var rt route
	if cfg.Interface == "" || cfg.GatewayMAC == "" {
		f, err := os.Open(procRoute)
		if err != nil {
			return res, fmt.Errorf("cannot read the routing table: %w", err)
		}
		rt, err = lookupRoute(f, dst)
		f.Close()
		if err != nil && cfg.Interface == "" {
			return res, err
		}
	}
	name := cfg.Interface
	if name == "" {
		name = rt.iface
	}
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return res, fmt.Errorf("cannot find interface %q: %w", name, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return res, fmt.Errorf("interface %s has no Ethernet address", name)
	}
	res.ifi = ifi
	if cfg.SourceIP != "" {
		res.src = netip.MustParseAddr(cfg.SourceIP)
	} else {
		addrs, err := ifi.Addrs()
		if err != nil {
			return res, fmt.Errorf("cannot list %s's addresses: %w", name, err)
		}
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
				res.src = p.Addr()
				break
			}
		}
		if !res.src.IsValid() {
			return res, fmt.Errorf("interface %s has no IPv4 address; set a source IP", name)
		}
	}
	if cfg.GatewayMAC != "" {
		res.dstMAC, _ = net.ParseMAC(cfg.GatewayMAC)
		return res, nil
	}
	next := rt.gateway
	if !next.IsValid() || rt.iface != name {
		if !dst.IsUnspecified() && rt.iface == name {
			next = dst // on-link: the route-to address itself
		} else {
			return res, fmt.Errorf("no gateway on %s to resolve; set the gateway MAC: %w", name, ErrNoRoute)
		}
	}
	if f, err := os.Open(procARP); err == nil {
		mac, ok := lookupNeighbour(f, next, name)
		f.Close()
		if ok {
			res.dstMAC = mac
			return res, nil
		}
	}
	mac, err := arpResolve(ifi, res.src, next, 3, 300*time.Millisecond)
	if err != nil {
		return res, err
	}
	res.dstMAC = mac
	return res, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
