package stream

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"time"
)

// maxHeartbeat is the longest idle gap the stream promises its clients.
const maxHeartbeat = 15 * time.Second

// Config configures the stream server.
type Config struct {
	// Listen is the address the server listens on; port 0 picks a free port.
	Listen string
	// PublicURL is the base URL put in stream URLs handed to clients; empty
	// means "http://" + the listen address.
	PublicURL string
	// QueueSize bounds each subscriber's queue of undelivered events; a
	// subscriber that lets it fill is disconnected.
	QueueSize int
	// Heartbeat is how long a connection may stay idle before a heartbeat
	// line (and, for websockets, a ping) is sent; at most 15 s.
	Heartbeat time.Duration
	// WriteTimeout bounds every write to a client.
	WriteTimeout time.Duration
	// RingSize is how many recent events are kept in memory for resuming
	// clients, because storage may not have ingested the newest ones yet.
	RingSize int
}

const (
	defaultListen       = "127.0.0.1:8081"
	defaultQueueSize    = 4096
	defaultHeartbeat    = 10 * time.Second
	defaultWriteTimeout = 10 * time.Second
	defaultRingSize     = 100000
)

// DefaultConfig returns the defaults RegisterFlags sets.
func DefaultConfig() Config {
	return Config{
		Listen:       defaultListen,
		QueueSize:    defaultQueueSize,
		Heartbeat:    defaultHeartbeat,
		WriteTimeout: defaultWriteTimeout,
		RingSize:     defaultRingSize,
	}
}

// RegisterFlags registers the stream flags under prefix and sets their defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet, prefix string) {
	fs.StringVar(&c.Listen, prefix+"listen", defaultListen, "address the stream server listens on")
	fs.StringVar(&c.PublicURL, prefix+"public-url", "",
		`base URL put in stream URLs (default "http://" + the listen address)`)
	fs.IntVar(&c.QueueSize, prefix+"queue-size", defaultQueueSize,
		"events queued per subscriber before a slow subscriber is disconnected")
	fs.DurationVar(&c.Heartbeat, prefix+"heartbeat", defaultHeartbeat,
		"idle time before a heartbeat is sent to a subscriber (at most 15s)")
	fs.DurationVar(&c.WriteTimeout, prefix+"write-timeout", defaultWriteTimeout, "deadline of each write to a subscriber")
	fs.IntVar(&c.RingSize, prefix+"ring-size", defaultRingSize,
		"recent events kept in memory to resume clients that storage has not caught up with")
}

// Validate reports every invalid setting.
func (c *Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("invalid stream listen address %q: %w", c.Listen, err))
	}
	if c.PublicURL != "" {
		u, err := url.Parse(c.PublicURL)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("invalid stream public-url %q: %w", c.PublicURL, err))
		case (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			errs = append(errs, fmt.Errorf("invalid stream public-url %q: want http(s)://host[:port][/path]", c.PublicURL))
		}
	}
	if c.QueueSize < 1 {
		errs = append(errs, fmt.Errorf("invalid stream queue-size %d: must be positive", c.QueueSize))
	}
	if c.Heartbeat <= 0 || c.Heartbeat > maxHeartbeat {
		errs = append(errs, fmt.Errorf("invalid stream heartbeat %s: must be in (0, %s]", c.Heartbeat, maxHeartbeat))
	}
	if c.WriteTimeout <= 0 {
		errs = append(errs, fmt.Errorf("invalid stream write-timeout %s: must be positive", c.WriteTimeout))
	}
	if c.RingSize < 1 {
		errs = append(errs, fmt.Errorf("invalid stream ring-size %d: must be positive", c.RingSize))
	}
	return errors.Join(errs...)
}
