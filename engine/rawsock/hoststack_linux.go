package rawsock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The host's own TCP stack also receives every reply to the scan: it finds
// no socket for a SYN-ACK and answers with a RST, which on a dense scan is
// about a sixth of the scanner's CPU (route lookup, established and
// listener lookups, building and sending the RST). hostGuard keeps the
// stack from seeing the scan's replies: an nftables table with one rule in
// prerouting, before any routing, that drops TCP to the scan's source
// address and ports on the scan's interface. The receive socket still gets
// every reply: packet sockets see a frame before IP does.
//
// The table is owned by the netlink socket that made it (NFT_TABLE_F_OWNER),
// so the kernel removes it when that socket closes, even if trawl is killed.
// It is never installed when the source ports overlap the host's ephemeral
// range, where it would drop replies to the host's own connections.
//
// What the targets see changes: no RST ends their half-open connection, so
// they retransmit the SYN-ACK a few times until they give up (the scan
// counts those as duplicates) — as with any scanner whose replies the host
// does not answer.
type hostGuard struct {
	conn  *nftables.Conn
	table *nftables.Table
}

// tableFlagOwner is NFT_TABLE_F_OWNER (Linux 5.12+).
const tableFlagOwner = 0x2

var guardTables atomic.Uint64 // makes table names unique within the process

// ephemeralRangeFile holds the ephemeral port range of the opening thread's
// network namespace.
const ephemeralRangeFile = "/proc/sys/net/ipv4/ip_local_port_range"

// guardHostStack installs the table in the calling thread's network
// namespace.
func guardHostStack(ifindex int, src netip.Addr, lo, hi uint16) (*hostGuard, error) {
	if elo, ehi, err := ephemeralRange(); err != nil {
		return nil, err
	} else if lo <= ehi && elo <= hi {
		return nil, fmt.Errorf("source ports %d-%d overlap the host's ephemeral range %d-%d (net.ipv4.ip_local_port_range), "+
			"where a drop would hit the host's own connections: choose --raw.source-ports outside it", lo, hi, elo, ehi)
	}
	conn, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("cannot open nftables: %w", err)
	}
	g := &hostGuard{conn: conn}
	g.table = conn.AddTable(&nftables.Table{
		Family: nftables.TableFamilyIPv4,
		Name:   "trawl_" + strconv.Itoa(os.Getpid()) + "_" + strconv.FormatUint(guardTables.Add(1), 10),
		Flags:  tableFlagOwner,
	})
	chain := conn.AddChain(&nftables.Chain{
		Name: "replies", Table: g.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw,
	})
	conn.AddRule(&nftables.Rule{Table: g.table, Chain: chain, Exprs: replyMatch(ifindex, src, lo, hi)})
	if err := conn.Flush(); err != nil {
		_ = conn.CloseLasting()
		return nil, fmt.Errorf("cannot install the nftables table: %w", err)
	}
	return g, nil
}

// replyMatch is `meta iif <ifindex> ip daddr <src> meta l4proto tcp
// tcp dport <lo>-<hi> drop`.
func replyMatch(ifindex int, src netip.Addr, lo, hi uint16) []expr.Any {
	ifi := make([]byte, 4)
	binary.NativeEndian.PutUint32(ifi, uint32(ifindex))
	addr := src.As4()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIF, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifi},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:]},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Range{Op: expr.CmpOpEq, Register: 1,
			FromData: binary.BigEndian.AppendUint16(nil, lo), ToData: binary.BigEndian.AppendUint16(nil, hi)},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// release deletes the table and closes the netlink socket (which alone
// would also remove it).
func (g *hostGuard) release() error {
	if g == nil {
		return nil
	}
	g.conn.DelTable(g.table)
	err := g.conn.Flush()
	if cerr := g.conn.CloseLasting(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cannot remove the nftables table %s: %w", g.table.Name, err)
	}
	return nil
}

// ephemeralRange reads the namespace's ephemeral port range.
func ephemeralRange() (lo, hi uint16, err error) {
	b, err := os.ReadFile(ephemeralRangeFile)
	if err != nil {
		return 0, 0, fmt.Errorf("cannot read the ephemeral port range: %w", err)
	}
	return parseEphemeralRange(string(b))
}

func parseEphemeralRange(s string) (lo, hi uint16, err error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return 0, 0, errors.New("cannot parse the ephemeral port range " + strconv.Quote(s))
	}
	l, err1 := strconv.ParseUint(f[0], 10, 16)
	h, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || l > h {
		return 0, 0, errors.New("cannot parse the ephemeral port range " + strconv.Quote(s))
	}
	return uint16(l), uint16(h), nil
}
