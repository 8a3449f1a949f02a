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
// for them, answers each with a RST. That costs CPU on a dense scan and
// tells the target to drop the half-open connection, but does not change
// the results. This package does not touch the firewall: to suppress those
// RSTs, drop outgoing RSTs from the scan's source ports, e.g.
//
//	nft add table inet trawl
//	nft add chain inet trawl out '{ type filter hook output priority 0; }'
//	nft add rule inet trawl out tcp sport 40000-40999 tcp flags rst drop
//
// (the testbed installs this in its scanner namespace on request).
package rawsock
