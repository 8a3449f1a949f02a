package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/term"

	"trawl/api"
	"trawl/engine"
	"trawl/engine/connect"
	"trawl/engine/rawsock"
	"trawl/ingest"
	"trawl/ingest/membus"
	"trawl/probes"
	"trawl/storage"
	"trawl/storage/embedded"
)

// runUser manages the accounts that log in with X-APP-ID / X-USER-ID.
func runUser(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: trawl user add --name NAME | list | delete ID  [--data-dir DIR]")
		return 2
	}
	sub := args[0]
	fs := flag.NewFlagSet("trawl user "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data-dir", "./data", "directory of the embedded store (env TRAWL_DATA_DIR)")
	name := fs.String("name", "", "account name (add)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if v := getenv("TRAWL_DATA_DIR"); v != "" && !flagSet(fs, "data-dir") {
		*dataDir = v
	}
	store, err := embedded.Open(ctx, filepath.Join(*dataDir, "trawl.db"), zerolog.Nop())
	if err != nil {
		fmt.Fprintf(stderr, "trawl user: cannot open the store in %s: %v\n", *dataDir, err)
		return 1
	}
	defer store.Close()
	switch sub {
	case "add":
		if strings.TrimSpace(*name) == "" {
			fmt.Fprintln(stderr, "trawl user add: --name is required")
			return 2
		}
		appID := "app_" + randomToken(10)
		secret := randomToken(20)
		u := storage.User{ID: ingest.NewID("usr_"), AppID: appID, SecretHash: api.HashSecret(secret), Name: *name, Created: time.Now().UTC()}
		if err := store.CreateUser(ctx, u); err != nil {
			fmt.Fprintf(stderr, "trawl user add: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "created user %s (%s). Keep these; the user id is not shown again:\nX-APP-ID: %s\nX-USER-ID: %s\n", u.Name, u.ID, appID, secret)
		return 0
	case "list":
		users, err := store.Users(ctx)
		if err != nil {
			fmt.Fprintf(stderr, "trawl user list: %v\n", err)
			return 1
		}
		for _, u := range users {
			fmt.Fprintf(stdout, "%s\t%s\t%s\t%s\n", u.ID, u.AppID, u.Name, u.Created.Format(time.RFC3339))
		}
		return 0
	case "delete":
		if fs.NArg() != 1 {
			fmt.Fprintln(stderr, "usage: trawl user delete USER_ID")
			return 2
		}
		if err := store.DeleteUser(ctx, fs.Arg(0)); err != nil {
			fmt.Fprintf(stderr, "trawl user delete: %v\n", err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(stderr, "trawl user: unknown subcommand %q\n", sub)
	return 2
}

func flagSet(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	return found
}

func randomToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

// runScan is the one-shot scanner: the same engine, worker and event
// envelope as the platform, on an in-process bus, printing JSON lines.
func runScan(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("trawl scan", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: trawl scan [flags] TARGET...   (targets: CIDRs, addresses, ranges a-b, hostnames)")
		fs.PrintDefaults()
	}
	ports := fs.String("p", "", "ports: comma-separated ports and ranges, e.g. 22,80,8000-8100 (required)")
	fs.StringVar(ports, "ports", "", "same as -p")
	rate := fs.Int("rate", 1000, "probes per second (0: as fast as the transport goes)")
	cooldown := fs.Duration("cooldown", 0, "time to wait for late replies after the last probe (default: the scanner's)")
	mods := fs.String("modules", "", "comma-separated probe modules to run on every open port (e.g. service,ssh,ssl,vnc)")
	seed := fs.Uint64("seed", 0, "permutation seed (0: random)")
	progress := fs.String("progress", "auto", "progress on stderr: auto (a bar on a terminal), on, off")
	logLevel := fs.String("log.level", "warn", "log level on stderr")
	cpuProfile := fs.String("cpuprofile", "", "write a Go CPU profile of the scan to this file (for performance reports)")
	var policyCfg engine.PolicyConfig
	policyCfg.RegisterFlags(fs, "")
	transport := fs.String("transport", TransportConnect, "how to probe: connect (unprivileged TCP connects), raw (SYN scan, needs CAP_NET_RAW) or dry (probes go nowhere: measures the engine)")
	retries := fs.Int("retries", 0, "probe the targets that did not answer again, up to this many more passes")
	var connectCfg connect.Config
	connectCfg.RegisterFlags(fs, "connect.")
	var rawCfg rawsock.Config
	rawCfg.RegisterFlags(fs, "raw.")
	var poolCfg probes.PoolConfig
	poolCfg.RegisterFlags(fs, "probe.")
	var modCfg ModuleConfigs
	modCfg.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 1
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "trawl scan: "+format+"\n", a...)
		return 1
	}
	var errs []error
	if !validTransport(*transport) {
		errs = append(errs, fmt.Errorf("--transport %q: must be %q, %q or %q", *transport, TransportConnect, TransportRaw, TransportDry))
	}
	for _, v := range []interface{ Validate() error }{&policyCfg, &connectCfg, &rawCfg, &poolCfg, &modCfg} {
		if err := v.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if fs.NArg() == 0 {
		errs = append(errs, errors.New("no targets given"))
	}
	if *ports == "" {
		errs = append(errs, errors.New("no ports given (-p 22,80,8000-8100)"))
	}
	if *rate < 0 {
		errs = append(errs, errors.New("--rate must not be negative"))
	}
	if *cooldown < 0 {
		errs = append(errs, errors.New("--cooldown must not be negative"))
	}
	if *retries < 0 || *retries > 100 {
		errs = append(errs, fmt.Errorf("--retries must be 0..100, got %d", *retries))
	}
	if err := errors.Join(errs...); err != nil {
		return fail("%v", err)
	}
	log := newLogger(stderr, "auto", *logLevel)
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fail("%v", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fail("%v", err)
		}
		defer pprof.StopCPUProfile()
	}
	policy, err := policyCfg.Build()
	if err != nil {
		return fail("%v", err)
	}
	reg, err := probeModules(modCfg, nil)
	if err != nil {
		return fail("%v", err)
	}
	var modules []string
	for _, m := range strings.Split(*mods, ",") {
		if m = strings.TrimSpace(m); m == "" {
			continue
		}
		if _, ok := reg.Get(m); !ok {
			return fail("unknown module %q (known: %s)", m, strings.Join(reg.Names(), ", "))
		}
		modules = append(modules, m)
	}
	targets, names, err := engine.ResolveTargets(ctx, net.DefaultResolver, fs.Args())
	if err != nil {
		return fail("%v", err)
	}
	task := ingest.Task{Kind: ingest.TaskStart, JobID: ingest.NewID("job_"), ClientID: "cli", Type: ingest.JobScan,
		Shards: 1, Rate: *rate, Seed: *seed}
	if task.Seed == 0 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		task.Seed = binary.LittleEndian.Uint64(b[:])
	}
	opt := ingest.TaskOptions{Targets: targets, Hostnames: names}
	for _, p := range strings.Split(*ports, ",") {
		if p = strings.TrimSpace(p); p != "" {
			opt.Ports = append(opt.Ports, ingest.PortSpec{Ports: p, Modules: modules})
		}
	}
	task.Options = []ingest.TaskOptions{opt}
	if _, err := engine.NewSpace(task.Options, policy); err != nil {
		return fail("%v", err)
	}

	if oneProcessorScan(*rate, len(modules)) && os.Getenv("GOMAXPROCS") == "" {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	}

	bus := membus.New(membus.DefaultConfig(), log)
	defer bus.Close()
	events, err := bus.Subscribe(ctx, ingest.TopicEvents, "cli")
	if err != nil {
		return fail("%v", err)
	}
	defer events.Close()
	wctx, stopWorker := context.WithCancel(ctx)
	defer stopWorker()
	if len(modules) > 0 {
		wcfg := probes.DefaultWorkerConfig()
		wcfg.Pool = poolCfg
		go func() { _ = probes.NewWorker(wcfg, bus, reg, log).Run(wctx) }()
	}
	scanCfg := engine.DefaultScannerConfig()
	scanCfg.Rate = *rate
	scanCfg.Retries = *retries
	if *cooldown > 0 {
		scanCfg.Cooldown = *cooldown
	}
	type scanDone struct {
		stats ingest.ScanStats
		err   error
	}
	tr, err := transportFactory(*transport, connectCfg, rawCfg, log)()
	if err != nil {
		return fail("%v", err)
	}
	done := make(chan scanDone, 1)
	go func() {
		st, err := engine.RunJob(ctx, task, scanCfg, policy, tr, bus, log)
		done <- scanDone{st, err}
	}()

	bar := newProgress(stderr, *progress)
	// Output is buffered (a dense scan reports hundreds of thousands of
	// ports) and flushed at least every 100 ms while events flow, at every
	// progress update, and at the end.
	out := bufio.NewWriterSize(stdout, 64<<10)
	defer out.Flush()
	lastFlush := time.Now()
	flush := func() {
		bar.clear()
		out.Flush()
		lastFlush = time.Now()
	}
	var results, open, probesWanted uint64
	var line, cursor []byte
	sweepDone := false
	for !(sweepDone && results >= probesWanted) {
		d, err := events.Fetch(ctx)
		if err != nil {
			flush()
			if ctx.Err() != nil {
				return fail("interrupted")
			}
			return fail("%v", err)
		}
		_ = events.Ack(ctx, d)
		typ, module, ok := ingest.PeekOrigin(d.Value)
		if !ok {
			var e ingest.Event
			if err := ingest.Decode(d.Value, &e); err != nil {
				flush()
				return fail("%v", err)
			}
			typ, module = []byte(e.Origin.Type), []byte(e.Origin.Module)
		}
		switch {
		case string(typ) == ingest.TypeScanStats:
			var e ingest.Event
			var s ingest.ScanStats
			if ingest.Decode(d.Value, &e) == nil && json.Unmarshal(e.Result.Data, &s) == nil {
				flush()
				bar.update(s, results)
				if s.Done {
					sweepDone, probesWanted = true, s.Counts.Probes
					if s.Error != "" {
						flush()
						return fail("%s", s.Error)
					}
				}
			}
			continue
		case string(typ) == ingest.TypePort:
			open++
		case string(module) == ingest.ModuleGrabber:
			results++
		default:
			continue
		}
		cursor = d.AppendCursor(cursor[:0])
		line = append(ingest.WithCursor(line[:0], d.Value, cursor), '\n')
		out.Write(line)
		if time.Since(lastFlush) > 100*time.Millisecond {
			flush()
		}
	}
	flush()
	res := <-done
	bar.clear()
	if res.err != nil && !errors.Is(res.err, context.Canceled) {
		return fail("%v", res.err)
	}
	c := res.stats.Counts
	fmt.Fprintf(stderr, "trawl scan: %d probes sent, %d open ports, %d module results\n", c.Sent, open, results)
	return 0
}

// progress draws a one-line bar on a terminal.
type progress struct {
	w       io.Writer
	enabled bool
	drawn   bool
}

func newProgress(w io.Writer, mode string) *progress {
	on := mode == "on"
	if mode == "auto" {
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			on = true
		}
	}
	return &progress{w: w, enabled: on}
}

func (p *progress) update(s ingest.ScanStats, results uint64) {
	if !p.enabled {
		return
	}
	frac := 0.0
	if s.Counts.Targets > 0 {
		frac = float64(s.Counts.Sent) / float64(s.Counts.Targets)
	}
	const width = 30
	filled := int(frac * width)
	fmt.Fprintf(p.w, "\r[%s%s] %5.1f%%  %8.0f pps  sent %d  found %d  results %d  ETA %s ",
		strings.Repeat("=", filled), strings.Repeat(" ", width-filled), frac*100, s.PPS, s.Counts.Sent,
		s.Counts.OpenPorts, results, (time.Duration(s.ETASeconds) * time.Second).String())
	p.drawn = true
}

func (p *progress) clear() {
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
		p.drawn = false
	}
}

// oneProcessorMaxRate is the highest set rate at which `trawl scan` without
// modules runs Go code on one processor (GOMAXPROCS=1). Its goroutines wake
// a few hundred times a second (pacing, receive ring, publishing), and with
// a second processor idle each wake-up also wakes a thread that looks for
// work, finds none and sleeps again: at 10 kpps that was a fifth of the
// process's CPU. One processor (and so one send thread at a time) kept
// 100 kpps on a dense /16 x 5 here with the same rate, recall and CPU as two.
const oneProcessorMaxRate = 100_000

func oneProcessorScan(rate, modules int) bool {
	return rate > 0 && rate <= oneProcessorMaxRate && modules == 0
}
