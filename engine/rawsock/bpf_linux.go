package rawsock

import "golang.org/x/sys/unix"

// replyFilter is a classic BPF program that keeps only unfragmented
// IPv4/TCP frames to src whose destination port is in [lo, hi]: the
// kernel drops everything else before it is queued to the receive socket.
func replyFilter(src uint32, lo, hi uint16) []unix.SockFilter {
	const (
		ldh  = unix.BPF_LD | unix.BPF_H | unix.BPF_ABS
		ldb  = unix.BPF_LD | unix.BPF_B | unix.BPF_ABS
		ldw  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		ldxh = unix.BPF_LD | unix.BPF_H | unix.BPF_IND
		msh  = unix.BPF_LDX | unix.BPF_B | unix.BPF_MSH
		jeq  = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jset = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
		jge  = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
		jgt  = unix.BPF_JMP | unix.BPF_JGT | unix.BPF_K
		ret  = unix.BPF_RET | unix.BPF_K
	)
	// jt/jf count instructions to skip; every miss jumps to the last one.
	prog := []unix.SockFilter{
		{Code: ldh, K: 12},                    // 0: ethertype
		{Code: jeq, K: unix.ETH_P_IP, Jf: 11}, // 1
		{Code: ldb, K: 23},                    // 2: IP protocol
		{Code: jeq, K: unix.IPPROTO_TCP, Jf: 9},
		{Code: ldw, K: 30}, // 4: IP destination
		{Code: jeq, K: src, Jf: 7},
		{Code: ldh, K: 20}, // 6: fragment offset
		{Code: jset, K: 0x1fff, Jt: 5},
		{Code: msh, K: 14},  // 8: X = IP header length
		{Code: ldxh, K: 16}, // 9: TCP destination port
		{Code: jge, K: uint32(lo), Jf: 2},
		{Code: jgt, K: uint32(hi), Jt: 1},
		{Code: ret, K: 0x40000}, // 12: keep
		{Code: ret, K: 0},       // 13: drop
	}
	return prog
}

// dropAll is a filter that queues nothing: the send socket never reads.
func dropAll() []unix.SockFilter {
	return []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
}
