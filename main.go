// Command trawl is the internet-scan platform in one binary: `trawl all` runs
// every role in one process; `trawl api|stream|scanner|worker|ingest` run one
// role each; `trawl scan` is a one-shot scanner; `trawl user` manages accounts.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/term"

	"trawl/ingest/kafkabus"
)

var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
}

const usage = `trawl — self-hostable internet scanning

usage:
  trawl all [flags]                 every role in one process (API, stream, scanner, workers, ingest)
  trawl api|stream|scanner|worker|ingest [flags]
                                    one role per process (needs --bus kafka)
  trawl scan [flags] TARGET...      one-shot scan: JSON lines to stdout, progress to stderr
  trawl user add --name NAME        create an account; prints its X-APP-ID / X-USER-ID once
  trawl user list | delete ID       list or delete accounts
  trawl kafka init [flags]          create trawl's Kafka topics (idempotent)
  trawl version

Run 'trawl COMMAND -h' for a command's flags. Every flag can also be set as a
TRAWL_* environment variable (api.listen → TRAWL_API_LISTEN) or in --config.
`

func run(args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch {
	case cmd == "version" || cmd == "--version":
		fmt.Fprintln(stdout, "trawl", version)
		return 0
	case cmd == "help" || cmd == "-h" || cmd == "--help":
		fmt.Fprint(stdout, usage)
		return 0
	case cmd == "scan":
		return runScan(ctx, rest, stdout, stderr, getenv)
	case cmd == "user":
		return runUser(ctx, rest, stdout, stderr, getenv)
	case cmd == "kafka":
		return runKafka(ctx, rest, stdout, stderr, getenv)
	case isRole(cmd):
		return runRole(ctx, cmd, rest, stderr, getenv)
	}
	fmt.Fprintf(stderr, "trawl: unknown command %q\n\n%s", cmd, usage)
	return 2
}

func runRole(ctx context.Context, role string, args []string, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("trawl "+role, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	if err := loadConfig(fs, &cfg, args, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "trawl %s: invalid configuration:\n%s\n", role, indent(err.Error()))
		return 2
	}
	log := newLogger(stderr, cfg.LogFormat, cfg.LogLevel)
	app, err := newApp(role, &cfg, log)
	if err != nil {
		log.Error().Err(err).Str("role", role).Msg("cannot start")
		return 1
	}
	log.Info().Str("role", role).Str("version", version).Msg("starting trawl")
	if err := app.Run(ctx); err != nil {
		log.Error().Err(err).Msg("trawl stopped with an error")
		return 1
	}
	return 0
}

// runKafka: `trawl kafka init` creates the topics with the configured
// partitions and replication; running it again changes nothing.
func runKafka(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 || args[0] != "init" {
		fmt.Fprintln(stderr, "usage: trawl kafka init [--kafka.brokers host:port,…] [--kafka.partitions N] [--kafka.replication N]")
		return 2
	}
	fs := flag.NewFlagSet("trawl kafka init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	if err := loadConfig(fs, &cfg, append([]string{"--bus", BusKafka}, args[1:]...), getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "trawl kafka init: invalid configuration:\n%s\n", indent(err.Error()))
		return 2
	}
	ictx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := kafkabus.InitTopics(ictx, cfg.Kafka); err != nil {
		fmt.Fprintf(stderr, "trawl kafka init: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "topics ready on %s (prefix %q, %d partitions, replication %d)\n",
		strings.Join(cfg.Kafka.Brokers, ","), cfg.Kafka.TopicPrefix, cfg.Kafka.Partitions, cfg.Kafka.Replication)
	return 0
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}

// newLogger logs to w: console format on a terminal, JSON otherwise.
func newLogger(w io.Writer, format, level string) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		lvl = zerolog.InfoLevel
	}
	if format == "auto" {
		format = "json"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			format = "console"
		}
	}
	out := w
	if format == "console" {
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Logger()
}
