package kafkabus

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"strings"
	"time"
)

// Config says where the brokers are, how topics are laid out and how
// producers batch and consumers poll.
type Config struct {
	// Brokers are the bootstrap addresses, host:port.
	Brokers []string
	// ClientID names this process to the brokers (logs, quotas).
	ClientID string
	// Partitions and Replication are used when topics are created (by
	// InitTopics, or on first use with CreateTopics). Existing topics keep
	// theirs.
	Partitions  int
	Replication int
	// TopicPrefix is prepended to every bus topic name: several deployments
	// can share one cluster.
	TopicPrefix string
	// CreateTopics creates a topic the first time this process publishes to
	// it or subscribes to it. Turn it off where the cluster forbids it and run
	// `trawl kafka init` instead.
	CreateTopics bool
	// BatchSize is the most messages per produce request and partition;
	// BatchTimeout is how long a batch that is not full waits for more. Keep
	// the timeout small: Publish is synchronous, so a lone message waits it
	// out.
	BatchSize    int
	BatchTimeout time.Duration
	// MinBytes and MaxWait shape consumer fetches: the broker answers once it
	// has MinBytes or MaxWait has passed.
	MinBytes int
	MaxWait  time.Duration
	// DialTimeout bounds connecting to a broker, and New's check that the
	// cluster is reachable.
	DialTimeout time.Duration
	// Consumer-group timings. HeartbeatInterval is also how soon a member
	// notices a rebalance (a member joining or leaving).
	HeartbeatInterval time.Duration
	SessionTimeout    time.Duration
	RebalanceTimeout  time.Duration
}

// DefaultConfig returns the defaults RegisterFlags sets.
func DefaultConfig() Config {
	return Config{
		Brokers:           []string{"localhost:9092"},
		ClientID:          "trawl",
		Partitions:        12,
		Replication:       1,
		TopicPrefix:       "trawl.",
		CreateTopics:      true,
		BatchSize:         1000,
		BatchTimeout:      time.Millisecond,
		MinBytes:          1,
		MaxWait:           500 * time.Millisecond,
		DialTimeout:       5 * time.Second,
		HeartbeatInterval: time.Second,
		SessionTimeout:    10 * time.Second,
		RebalanceTimeout:  10 * time.Second,
	}
}

// brokerList is a comma-separated flag value.
type brokerList struct{ dst *[]string }

func (b brokerList) String() string {
	if b.dst == nil {
		return ""
	}
	return strings.Join(*b.dst, ",")
}

func (b brokerList) Set(s string) error {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	*b.dst = out
	return nil
}

// RegisterFlags registers the Kafka flags under prefix and sets their defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet, prefix string) {
	d := DefaultConfig()
	c.Brokers = d.Brokers
	fs.Var(brokerList{&c.Brokers}, prefix+"brokers", "Kafka bootstrap brokers, comma-separated host:port")
	fs.StringVar(&c.ClientID, prefix+"client-id", d.ClientID, "client id sent to the brokers")
	fs.IntVar(&c.Partitions, prefix+"partitions", d.Partitions, "partitions of each topic trawl creates")
	fs.IntVar(&c.Replication, prefix+"replication", d.Replication, "replication factor of each topic trawl creates")
	fs.StringVar(&c.TopicPrefix, prefix+"topic-prefix", d.TopicPrefix, "prefix of every topic name")
	fs.BoolVar(&c.CreateTopics, prefix+"create-topics", d.CreateTopics, "create a topic on first use (else run 'trawl kafka init')")
	fs.IntVar(&c.BatchSize, prefix+"batch-size", d.BatchSize, "most messages per produce request and partition")
	fs.DurationVar(&c.BatchTimeout, prefix+"batch-timeout", d.BatchTimeout, "how long a produce batch waits to fill")
	fs.IntVar(&c.MinBytes, prefix+"min-bytes", d.MinBytes, "bytes a consumer fetch waits for")
	fs.DurationVar(&c.MaxWait, prefix+"max-wait", d.MaxWait, "longest a consumer fetch waits for min-bytes")
	fs.DurationVar(&c.DialTimeout, prefix+"dial-timeout", d.DialTimeout, "timeout for connecting to a broker")
	fs.DurationVar(&c.HeartbeatInterval, prefix+"heartbeat-interval", d.HeartbeatInterval, "consumer-group heartbeat interval")
	fs.DurationVar(&c.SessionTimeout, prefix+"session-timeout", d.SessionTimeout, "consumer-group session timeout")
	fs.DurationVar(&c.RebalanceTimeout, prefix+"rebalance-timeout", d.RebalanceTimeout, "consumer-group rebalance timeout")
}

// maxTopicLen is Kafka's limit on topic names.
const maxTopicLen = 249

// Validate reports every invalid setting.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("brokers: at least one host:port is required"))
	}
	for _, b := range c.Brokers {
		if _, port, err := net.SplitHostPort(b); err != nil || port == "" {
			errs = append(errs, fmt.Errorf("broker %q: want host:port", b))
		}
	}
	if c.Partitions <= 0 {
		errs = append(errs, fmt.Errorf("partitions %d: must be positive", c.Partitions))
	}
	if c.Replication <= 0 || c.Replication > 32767 {
		errs = append(errs, fmt.Errorf("replication %d: must be in 1..32767", c.Replication))
	}
	if !validTopicChars(c.TopicPrefix) || len(c.TopicPrefix) > maxTopicLen/2 {
		errs = append(errs, fmt.Errorf("topic-prefix %q: only [a-zA-Z0-9._-], at most %d characters", c.TopicPrefix, maxTopicLen/2))
	}
	if c.BatchSize <= 0 {
		errs = append(errs, fmt.Errorf("batch-size %d: must be positive", c.BatchSize))
	}
	positive := []struct {
		name string
		d    time.Duration
	}{
		{"batch-timeout", c.BatchTimeout}, {"max-wait", c.MaxWait}, {"dial-timeout", c.DialTimeout},
		{"heartbeat-interval", c.HeartbeatInterval}, {"session-timeout", c.SessionTimeout},
		{"rebalance-timeout", c.RebalanceTimeout},
	}
	for _, p := range positive {
		if p.d <= 0 {
			errs = append(errs, fmt.Errorf("%s %v: must be positive", p.name, p.d))
		}
	}
	if c.MinBytes <= 0 || c.MinBytes > maxFetchBytes {
		errs = append(errs, fmt.Errorf("min-bytes %d: must be in 1..%d", c.MinBytes, maxFetchBytes))
	}
	if c.HeartbeatInterval > 0 && c.SessionTimeout > 0 && c.HeartbeatInterval >= c.SessionTimeout {
		errs = append(errs, fmt.Errorf("heartbeat-interval %v: must be shorter than session-timeout %v", c.HeartbeatInterval, c.SessionTimeout))
	}
	return errors.Join(errs...)
}

// validTopicChars reports whether s uses only Kafka's topic alphabet.
func validTopicChars(s string) bool {
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
