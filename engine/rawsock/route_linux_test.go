package rawsock

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const procRouteFixture = `Iface	Destination	Gateway 	Flags	RefCnt	Use	Metric	Mask		MTU	Window	IRTT
eth0	00000000	0100A8C0	0003	0	0	100	00000000	0	0	0
eth0	0000A8C0	00000000	0001	0	0	100	00FFFFFF	0	0	0
tun0	000012C6	00000000	0001	0	0	0	0000FEFF	0	0	0
eth1	000A12C6	01FF13C6	0003	0	0	0	00FFFFFF	0	0	0
down0	000B12C6	00000000	0000	0	0	0	00FFFFFF	0	0	0
`

func TestLookupRoute(t *testing.T) {
	cases := []struct {
		dst, iface, gw string
	}{
		{"8.8.8.8", "eth0", "192.168.0.1"},
		{"0.0.0.0", "eth0", "192.168.0.1"},
		{"192.168.0.77", "eth0", ""},
		{"198.18.3.4", "tun0", ""},
		{"198.18.10.9", "eth1", "198.19.255.1"},
		{"198.18.11.9", "tun0", ""}, // the /24 is down: the /15 wins
	}
	for _, tc := range cases {
		rt, err := lookupRoute(strings.NewReader(procRouteFixture), netip.MustParseAddr(tc.dst))
		if err != nil {
			t.Fatalf("%s: %v", tc.dst, err)
		}
		gw := ""
		if rt.gateway.IsValid() {
			gw = rt.gateway.String()
		}
		if rt.iface != tc.iface || gw != tc.gw {
			t.Errorf("%s: via %s gw %q, want %s gw %q", tc.dst, rt.iface, gw, tc.iface, tc.gw)
		}
	}
	noDefault := strings.Join(strings.Split(procRouteFixture, "\n")[2:], "\n")
	noDefault = "header\n" + noDefault
	if _, err := lookupRoute(strings.NewReader(noDefault), netip.MustParseAddr("8.8.8.8")); !errors.Is(err, ErrNoRoute) {
		t.Errorf("no default route: %v, want ErrNoRoute", err)
	}
}

const procARPFixture = `IP address       HW type     Flags       HW address            Mask     Device
198.19.255.2     0x1         0x2         aa:bb:cc:dd:ee:01     *        tb1s
198.19.255.3     0x1         0x0         00:00:00:00:00:00     *        tb1s
10.0.0.1         0x1         0x2         aa:bb:cc:dd:ee:02     *        eth0
`

func TestLookupNeighbour(t *testing.T) {
	mac, ok := lookupNeighbour(strings.NewReader(procARPFixture), netip.MustParseAddr("198.19.255.2"), "tb1s")
	if !ok || mac.String() != "aa:bb:cc:dd:ee:01" {
		t.Errorf("complete entry: %v %v", mac, ok)
	}
	if _, ok := lookupNeighbour(strings.NewReader(procARPFixture), netip.MustParseAddr("198.19.255.3"), "tb1s"); ok {
		t.Error("incomplete entry used")
	}
	if _, ok := lookupNeighbour(strings.NewReader(procARPFixture), netip.MustParseAddr("10.0.0.1"), "tb1s"); ok {
		t.Error("entry of another interface used")
	}
}

// runBPF is a minimal classic BPF interpreter for the opcodes replyFilter
// uses, so the filter is checked without privileges.
func runBPF(t *testing.T, prog []unix.SockFilter, pkt []byte) uint32 {
	t.Helper()
	var a, x uint32
	load := func(off uint32, size int) (uint32, bool) {
		if int(off)+size > len(pkt) {
			return 0, false
		}
		switch size {
		case 1:
			return uint32(pkt[off]), true
		case 2:
			return uint32(binary.BigEndian.Uint16(pkt[off:])), true
		default:
			return binary.BigEndian.Uint32(pkt[off:]), true
		}
	}
	for pc := 0; pc < len(prog); pc++ {
		in := prog[pc]
		var ok = true
		switch in.Code {
		case unix.BPF_LD | unix.BPF_H | unix.BPF_ABS:
			a, ok = load(in.K, 2)
		case unix.BPF_LD | unix.BPF_B | unix.BPF_ABS:
			a, ok = load(in.K, 1)
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			a, ok = load(in.K, 4)
		case unix.BPF_LD | unix.BPF_H | unix.BPF_IND:
			a, ok = load(x+in.K, 2)
		case unix.BPF_LDX | unix.BPF_B | unix.BPF_MSH:
			var b uint32
			b, ok = load(in.K, 1)
			x = 4 * (b & 0xf)
		case unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K,
			unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, unix.BPF_JMP | unix.BPF_JGT | unix.BPF_K:
			var cond bool
			switch in.Code &^ (unix.BPF_JMP | unix.BPF_K) {
			case unix.BPF_JEQ:
				cond = a == in.K
			case unix.BPF_JSET:
				cond = a&in.K != 0
			case unix.BPF_JGE:
				cond = a >= in.K
			case unix.BPF_JGT:
				cond = a > in.K
			}
			if cond {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		case unix.BPF_RET | unix.BPF_K:
			return in.K
		default:
			t.Fatalf("opcode %#x not interpreted", in.Code)
		}
		if !ok {
			return 0 // out-of-bounds loads drop the packet, as in the kernel
		}
	}
	t.Fatal("program fell off its end")
	return 0
}

func TestReplyFilter(t *testing.T) {
	prog := replyFilter(testSrc, 40000, 40999)
	fragment := replyFrame(t, testDst, testSrc, 443, 40000, 1, true, false, true)
	binary.BigEndian.PutUint16(fragment[20:], 0x0010) // fragment offset 16
	arp := replyFrame(t, testDst, testSrc, 443, 40000, 1, true, false, true)
	arp[12], arp[13] = 0x08, 0x06
	cases := []struct {
		name  string
		frame []byte
		keep  bool
	}{
		{"syn-ack to the lowest port", replyFrame(t, testDst, testSrc, 443, 40000, 1, true, false, true), true},
		{"rst-ack to the highest port", replyFrame(t, testDst, testSrc, 443, 40999, 1, false, true, true), true},
		{"below the range", replyFrame(t, testDst, testSrc, 443, 39999, 1, true, false, true), false},
		{"above the range", replyFrame(t, testDst, testSrc, 443, 41000, 1, true, false, true), false},
		{"to another address", replyFrame(t, testDst, testSrc+1, 443, 40000, 1, true, false, true), false},
		{"our own syn", replyFrame(t, testSrc, testDst, 40000, 443, 0, true, false, false), false},
		{"a fragment", fragment, false},
		{"not IPv4", arp, false},
		{"truncated", replyFrame(t, testDst, testSrc, 443, 40000, 1, true, false, true)[:36], false},
	}
	for _, tc := range cases {
		if got := runBPF(t, prog, tc.frame) != 0; got != tc.keep {
			t.Errorf("%s: kept %v, want %v", tc.name, got, tc.keep)
		}
	}
}
