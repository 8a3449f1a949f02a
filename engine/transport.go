package engine

import (
	"context"
	"errors"
	"time"
)

// ErrTransportClosed is returned by Send after Close.
var ErrTransportClosed = errors.New("transport closed")

// Probe is one ip:port to probe.
type Probe struct {
	IP   uint32
	Port uint16
}

// Reply is what came back for a probe. Open means the port accepted (a
// SYN-ACK, or a completed connect); a closed port (RST, refused) replies with
// Open false; a filtered one does not reply at all. TTL and Window are those
// of the reply packet where the transport sees packets (0 otherwise);
// SrcIP/SrcPort are the scanner's side of the probe.
type Reply struct {
	IP      uint32
	Port    uint16
	Open    bool
	TTL     uint8
	Window  uint16
	SrcIP   uint32
	SrcPort uint16
}

// Transport sends probes and reports replies. The connect transport
// (engine/connect) needs no privileges; a raw SYN transport drops in behind
// the same three calls: Start opens the receive path (and would validate
// cookies there), Send writes a batch (one syscall per batch), Close stops
// sending and drains the receive path for the cooldown.
type Transport interface {
	// Start begins receiving; onReply may be called from several goroutines.
	Start(ctx context.Context, onReply func(Reply)) error
	// Send sends a batch; it may block (backpressure). The batch may be
	// reused by the caller once Send returns.
	Send(ctx context.Context, batch []Probe) error
	// Close stops sending, waits up to cooldown for late replies and
	// in-flight probes, then stops calling onReply before it returns.
	Close(cooldown time.Duration) error
}
