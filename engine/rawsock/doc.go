// Package rawsock is the raw SYN engine.Transport for Linux (no cgo): SYN
// frames built once with gopacket and patched per probe, sent in batches
// with sendmmsg on an AF_PACKET socket, replies read from a second
// AF_PACKET socket behind a classic BPF filter (TCP to our address and
// source-port range; outgoing frames skipped) and decoded by a reused
// gopacket DecodingLayerParser.
//
// Validation is stateless: a keyed SipHash of (source, destination,
// destination port) gives each probe its sequence number, source port and
// IP id; a SYN-ACK or RST-ACK counts only when it comes back to that port
// acknowledging that sequence + 1. The key is random per transport.
//
// The scanner host's kernel sees the SYN-ACKs too and, having no socket
// for them, answers each with a RST. Unless told not to, the transport
// keeps replies to its source ports away from the host's stack with an
// nftables table of its own, removed with it (hoststack_linux.go).
package rawsock
