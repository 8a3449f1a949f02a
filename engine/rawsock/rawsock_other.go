//go:build !linux

package rawsock

import (
	"context"
	"errors"
	"time"

	"github.com/rs/zerolog"

	"trawl/engine"
)

// ErrUnsupported: raw sockets are implemented for Linux only.
var ErrUnsupported = errors.New("raw transport is only available on Linux")

// Transport is unavailable on this platform.
type Transport struct{}

// New fails on this platform.
func New(Config, zerolog.Logger) (*Transport, error) { return nil, ErrUnsupported }

func (*Transport) Start(context.Context, func(engine.Reply)) error { return ErrUnsupported }
func (*Transport) Send(context.Context, []engine.Probe) error      { return ErrUnsupported }
func (*Transport) Close(time.Duration) error                       { return nil }
