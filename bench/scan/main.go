// Command scan runs trawl's raw SYN scanner side by side with masscan, zmap
// and nmap on the netns testbed (engine/testbed/testbed.sh), on the same
// workloads, in one run, alternating the tools, and prints one row per
// tool, setting, workload and rate. Needs root; bench/bench-scan.sh
// installs the peers and builds trawl first (`make bench-scan`).
//
// Every figure is taken the same way for every tool: probes sent and the
// send duration from the scanner veth's transmit counter (sampled every
// millisecond), CPU seconds from the process's rusage (wait4), results
// from the tool's own output file, scored here against the exact ground
// truth.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

func main() {
	if len(os.Args) == 4 && os.Args[1] == helperArg {
		os.Exit(runHelper(os.Args[2], os.Args[3], os.Stdin, os.Stdout))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Config configures a bench run.
type Config struct {
	Trawl          string
	TrawlFlags     string
	Script         string
	Tools          string
	Workloads      string
	Rates          string
	Bits           int
	Quick          bool
	Cooldown       time.Duration
	Settle         time.Duration
	RunTimeout     time.Duration
	SparseFraction float64
	Seed           uint64
	SampleEvery    time.Duration
	JSON           string
	Keep           bool
}

const (
	quickBits  = 20
	quickRates = "100k,max"
	quickTools = "trawl,masscan,zmap,zmap-T2" // nmap alone takes minutes per unlimited run
)

// RegisterFlags registers the bench's flags under prefix.
func (c *Config) RegisterFlags(fs *flag.FlagSet, prefix string) {
	fs.StringVar(&c.Trawl, prefix+"trawl", "bin/trawl", "the trawl binary")
	fs.StringVar(&c.TrawlFlags, prefix+"trawl-flags", "", "extra flags for every trawl run, space-separated (e.g. --raw.send-threads 1)")
	fs.StringVar(&c.Script, prefix+"testbed-script", "engine/testbed/testbed.sh", "the testbed script")
	fs.StringVar(&c.Tools, prefix+"tools", "trawl,masscan,zmap,zmap-T2,nmap", "tool settings to run: trawl, masscan, zmap, zmap-T2, nmap")
	fs.StringVar(&c.Workloads, prefix+"workloads", "x1-dense,x1-sparse,x5-dense,x5-sparse", "workloads: x1|x5 ports, dense|sparse")
	fs.StringVar(&c.Rates, prefix+"rates", "10k,50k,100k,300k,1M,max", "target rates in probes/s (k, M suffixes; max = unlimited)")
	fs.IntVar(&c.Bits, prefix+"bits", 16, "prefix length of the scanned block 198.18.0.0/bits (16..24)")
	fs.BoolVar(&c.Quick, prefix+"quick", false, "a /20 at "+quickRates+" with "+quickTools+" unless -bits/-rates/-tools are given: a few minutes")
	fs.DurationVar(&c.Cooldown, prefix+"cooldown", time.Second, "every tool's wait for late replies (whole seconds)")
	fs.DurationVar(&c.Settle, prefix+"settle", 3*time.Second, "pause before every run (the targets' half-open connections expire)")
	fs.DurationVar(&c.RunTimeout, prefix+"run-timeout", 10*time.Minute, "a run taking longer is killed and reported as an error")
	fs.Float64Var(&c.SparseFraction, prefix+"sparse-fraction", 0.01, "fraction of the block that answers in the sparse workloads")
	fs.Uint64Var(&c.Seed, prefix+"seed", 1, "seed of the sparse host choice")
	fs.DurationVar(&c.SampleEvery, prefix+"sample-every", time.Millisecond, "how often the veth counters are read")
	fs.StringVar(&c.JSON, prefix+"json", "", "also write the rows as JSON to this file")
	fs.BoolVar(&c.Keep, prefix+"keep", false, "keep the work directory (tool outputs)")
}

// Validate checks the config.
func (c *Config) Validate() error {
	var errs []error
	if c.Bits < 16 || c.Bits > 24 {
		errs = append(errs, fmt.Errorf("bits %d: want 16..24", c.Bits))
	}
	if c.Cooldown < time.Second || c.Cooldown%time.Second != 0 {
		errs = append(errs, fmt.Errorf("cooldown %s: want whole seconds, at least 1s (masscan and zmap take seconds)", c.Cooldown))
	}
	if c.Settle < 0 || c.RunTimeout <= 0 || c.SampleEvery <= 0 {
		errs = append(errs, errors.New("settle must not be negative; run-timeout and sample-every must be positive"))
	}
	if c.SparseFraction <= 0 || c.SparseFraction > 1 {
		errs = append(errs, fmt.Errorf("sparse-fraction %v: want (0, 1]", c.SparseFraction))
	}
	if _, err := parseRates(c.Rates); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.pickSettings(); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.pickWorkloads(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *Config) pickSettings() ([]setting, error) {
	all := settings()
	var out []setting
	for _, id := range strings.Split(c.Tools, ",") {
		id = strings.TrimSpace(id)
		i := slices.IndexFunc(all, func(s setting) bool { return settingID(s) == id })
		if i < 0 {
			return nil, fmt.Errorf("unknown tool %q (known: trawl, masscan, zmap, zmap-T2, nmap)", id)
		}
		s := all[i]
		if s.Tool == toolTrawl && strings.TrimSpace(c.TrawlFlags) != "" {
			s.Name += " " + strings.Join(strings.Fields(c.TrawlFlags), " ")
		}
		out = append(out, s)
	}
	return out, nil
}

func (c *Config) pickWorkloads() ([]workload, error) {
	known := workloads(c.Bits)
	var out []workload
	for _, id := range strings.Split(c.Workloads, ",") {
		w, ok := known[strings.TrimSpace(id)]
		if !ok {
			return nil, fmt.Errorf("unknown workload %q (known: x1-dense, x1-sparse, x5-dense, x5-sparse)", id)
		}
		out = append(out, w)
	}
	return out, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench-scan", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	cfg.RegisterFlags(fs, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if cfg.Quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["bits"] {
			cfg.Bits = quickBits
		}
		if !set["rates"] {
			cfg.Rates = quickRates
		}
		if !set["tools"] {
			cfg.Tools = quickTools
		}
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "bench-scan: %v\n", err)
		return 2
	}
	log := zerolog.New(zerolog.ConsoleWriter{Out: stderr, TimeFormat: time.TimeOnly, NoColor: true}).With().Timestamp().Logger()
	b := &bench{cfg: cfg, log: log}
	rows, header, err := b.run(ctx)
	if len(rows) > 0 {
		fillRatios(rows)
		for _, h := range header {
			fmt.Fprintln(stdout, "# "+h)
		}
		if werr := writeTable(stdout, rows); werr != nil && err == nil {
			err = werr
		}
		if cfg.JSON != "" {
			if werr := writeJSONFile(cfg.JSON, header, rows); werr != nil && err == nil {
				err = werr
			}
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "bench-scan: %v\n", err)
		return 1
	}
	return 0
}

func writeJSONFile(path string, header []string, rows []row) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("cannot write %s: %w", path, err)
	}
	if err := writeJSON(f, header, rows); err != nil {
		f.Close()
		return fmt.Errorf("cannot write %s: %w", path, err)
	}
	return f.Close()
}

// bench is one run of the matrix.
type bench struct {
	cfg Config
	log zerolog.Logger
}

func (b *bench) run(ctx context.Context) ([]row, []string, error) {
	cfg := b.cfg
	if os.Geteuid() != 0 {
		return nil, nil, errors.New("needs root (network namespaces, raw sockets)")
	}
	sets, _ := cfg.pickSettings()
	loads, _ := cfg.pickWorkloads()
	rates, _ := parseRates(cfg.Rates)
	for _, s := range sets {
		prog := s.Program
		if s.Tool == toolTrawl {
			prog = cfg.Trawl
		}
		if _, err := exec.LookPath(prog); err != nil {
			return nil, nil, fmt.Errorf("%s not found (bench/bench-scan.sh installs the peers and builds trawl): %w", prog, err)
		}
	}
	for _, p := range []string{"ip", "nft", "bash"} {
		if _, err := exec.LookPath(p); err != nil {
			return nil, nil, fmt.Errorf("%s not found (Debian: iproute2, nftables): %w", p, err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return nil, nil, fmt.Errorf("cannot find this program: %w", err)
	}
	trawlBin, err := exec.LookPath(cfg.Trawl)
	if err != nil {
		return nil, nil, err
	}
	if trawlBin, err = filepath.Abs(trawlBin); err != nil {
		return nil, nil, fmt.Errorf("cannot resolve %s: %w", cfg.Trawl, err)
	}
	work, err := os.MkdirTemp("", "bench-scan-")
	if err != nil {
		return nil, nil, fmt.Errorf("cannot make a work directory: %w", err)
	}
	if cfg.Keep {
		b.log.Info().Str("dir", work).Msg("keeping the tool outputs")
	} else {
		defer os.RemoveAll(work)
	}
	block := netip.PrefixFrom(netip.MustParseAddr("198.18.0.0"), cfg.Bits)
	env := scanEnv{Trawl: trawlBin, TrawlFlags: strings.Fields(cfg.TrawlFlags), Block: block.String(), CooldownSecs: int(cfg.Cooldown / time.Second),
		TrawlCooldown: trawlHasCooldown(ctx, trawlBin), WorkDir: work,
		BlockFile: work + "/zmap-blocklist", AllowFile: work + "/zmap-allowlist"}
	if err := os.WriteFile(env.BlockFile, nil, 0o644); err != nil {
		return nil, nil, fmt.Errorf("cannot write the zmap blocklist: %w", err)
	}
	if err := os.WriteFile(env.AllowFile, []byte(block.String()+"\n"), 0o644); err != nil {
		return nil, nil, fmt.Errorf("cannot write the zmap allowlist: %w", err)
	}
	if !env.TrawlCooldown && cfg.Cooldown != time.Second {
		return nil, nil, fmt.Errorf("this trawl scan has no --cooldown flag (it waits 1s): run with --cooldown 1s")
	}

	// One testbed per density, built once: listeners on every workload port.
	beds := map[bool]*bed{}
	defer func() {
		for _, bd := range beds {
			bd.close()
		}
	}()
	hosts := sparseHosts(block, cfg.SparseFraction, cfg.Seed)
	for _, w := range loads {
		if beds[w.Sparse] != nil {
			continue
		}
		label := "d"
		if w.Sparse {
			label = "s"
		}
		bd, err := buildBed(ctx, bedConfig{Script: cfg.Script, Self: self, Block: block, Ports: listenPorts,
			Sparse: hosts, IsSparse: w.Sparse, DropRST: dropRSTPorts, WorkDir: work, Log: b.log, NameLabel: label})
		if err != nil {
			return nil, nil, err
		}
		beds[w.Sparse] = bd
	}
	header := b.header(ctx, block, len(hosts), env, sets)

	var rows []row
	cell := 0
	for _, w := range loads {
		bd := beds[w.Sparse]
		var tr truth
		if w.Sparse {
			tr = newTruth(block, hosts, w.Ports)
		} else {
			tr = newTruth(block, nil, w.Ports)
		}
		for _, rate := range rates {
			// Alternate: each cell starts with the next tool in turn.
			for k := range sets {
				s := sets[(cell+k)%len(sets)]
				if err := sleepCtx(ctx, cfg.Settle); err != nil {
					return rows, header, err
				}
				e := env
				e.Interface, e.SourceIP, e.GatewayMAC = bd.ScannerIf, bd.SourceIP, bd.GatewayMAC
				e.RunID = fmt.Sprintf("%03d", len(rows))
				r := b.runOne(ctx, bd, e, s, w, rate, tr)
				b.log.Info().Str("workload", w.Name).Str("rate", rateName(rate)).Str("tool", s.Tool).Str("setting", s.Name).
					Float64("pps", r.PPS).Float64("wall_s", r.WallSeconds).Float64("cpu_s", r.CPUSeconds).
					Float64("recall", r.Recall).Str("error", r.Error).Msg("run")
				rows = append(rows, r)
				if ctx.Err() != nil {
					return rows, header, ctx.Err()
				}
			}
			cell++
		}
	}
	return rows, header, nil
}

// runOne runs one setting's invocations one after another and scores them.
func (b *bench) runOne(ctx context.Context, bd *bed, e scanEnv, s setting, w workload, rate int, tr truth) row {
	r := row{Tool: s.Tool, Setting: s.Name, Workload: w.Name, Rate: rate}
	t := newTally()
	var sendDur time.Duration
	for _, inv := range s.Build(e, w, rate) {
		m, err := b.measure(ctx, bd, e.WorkDir, inv)
		r.Probes += m.sent
		r.Packets += m.packets
		r.TxDropped += m.dropped
		sendDur += m.send
		r.WallSeconds += m.wall.Seconds()
		r.CPUSeconds += m.cpu.Seconds()
		if err != nil {
			r.Error = err.Error()
			return r
		}
		f, err := os.Open(inv.Output)
		if err != nil {
			r.Error = fmt.Sprintf("no output: %v", err)
			return r
		}
		err = s.Parse(f, t.add)
		f.Close()
		if err != nil {
			r.Error = err.Error()
			return r
		}
	}
	r.SendSeconds = sendDur.Seconds()
	if sendDur > 0 {
		r.PPS = float64(r.Probes) / sendDur.Seconds()
	}
	r.score = t.score(tr)
	return r
}

type measured struct {
	sent, packets, dropped uint64
	send, wall             time.Duration
	cpu                    time.Duration
}

// measure runs one process in the scanner's namespace with the veth
// counters sampled around it.
func (b *bench) measure(ctx context.Context, bd *bed, dir string, inv invocation) (measured, error) {
	var m measured
	rctx, cancel := context.WithTimeout(ctx, b.cfg.RunTimeout)
	defer cancel()
	cmd := exec.CommandContext(rctx, "ip", append([]string{"netns", "exec", bd.ScannerNS}, inv.Args...)...)
	cmd.Dir = dir // masscan writes paused.conf on interrupt
	cmd.WaitDelay = 5 * time.Second
	tail := &tailBuffer{max: 4096}
	cmd.Stderr = tail
	if inv.Stdout {
		f, err := os.Create(inv.Output)
		if err != nil {
			return m, fmt.Errorf("cannot create %s: %w", inv.Output, err)
		}
		defer f.Close()
		cmd.Stdout = f
	}
	before, err := bd.probesSeen(ctx)
	if err != nil {
		return m, err
	}
	stop := startSampler(ctx, sampler{path: bd.netDevPath(), ifname: bd.ScannerIf, every: b.cfg.SampleEvery})
	start := time.Now()
	runErr := cmd.Run()
	m.wall = time.Since(start)
	samples, sErr := stop()
	m.packets, m.send = sendWindow(samples)
	if n := len(samples); n > 0 {
		m.dropped = samples[n-1].TX.Dropped - samples[0].TX.Dropped
	}
	after, cErr := bd.probesSeen(ctx)
	m.sent = after - before
	if ps := cmd.ProcessState; ps != nil {
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
			m.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	switch {
	case rctx.Err() != nil && ctx.Err() == nil:
		return m, fmt.Errorf("%s timed out after %s", inv.Args[0], b.cfg.RunTimeout)
	case runErr != nil:
		return m, fmt.Errorf("%s: %v: %s", inv.Args[0], runErr, lastLine(tail.String()))
	case sErr != nil:
		return m, fmt.Errorf("cannot sample the veth counters: %w", sErr)
	case cErr != nil:
		return m, cErr
	}
	return m, nil
}

func (b *bench) header(ctx context.Context, block netip.Prefix, sparseN int, env scanEnv, sets []setting) []string {
	h := []string{
		fmt.Sprintf("bench-scan %s, %d CPUs, kernel %s", time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), firstLine(ctx, "uname", "-r")),
		fmt.Sprintf("testbed: %s behind a veth (offloads off when ethtool is present); dense: every host answers; sparse: %d hosts (%.2f%%) answer, the rest drop probes silently",
			block, sparseN, 100*float64(sparseN)/float64(int(1)<<(32-block.Bits()))),
		fmt.Sprintf("kernel RSTs to SYN-ACKs: dropped for every tool alike (nftables output rule in the scanner namespace, source ports %s; trawl %s, masscan %s, zmap %s, nmap %s); "+
			"trawl also keeps the scanner's kernel from seeing its replies at all (its default --raw.guard-host-stack); the targets answer with SYN cookies",
			dropRSTPorts, trawlPorts, masscanPorts, zmapPorts, nmapPort),
		fmt.Sprintf("cooldown %ds for every tool (trawl %s, masscan --wait, zmap -c; nmap has none); %s pause before every run; tools alternate, each rate starting with the next tool",
			env.CooldownSecs, map[bool]string{true: "--cooldown", false: "its fixed 1s"}[env.TrawlCooldown], b.cfg.Settle),
		"probes = SYNs counted on arrival in the targets' namespace (nftables); achieved pps = probes / send duration (first to last frame on the scanner veth's tx counter, read every ms); CPU = user+sys of the process (wait4); ratios = trawl / peer on the same workload and rate (< 1: trawl better)",
		"zmap 2.1 scans one port per run: x5 rows sum five runs (and five cooldowns) in wall and CPU",
	}
	for _, s := range sets {
		switch s.Tool {
		case toolMasscan:
			h = append(h, "masscan: "+firstLine(ctx, "masscan", "--version")+
				"; its wall time includes a stall after --wait ends (its status shows \"waiting -N-secs\"), which is masscan's own")
		case toolZmap:
			if s.Name == "-T 1" {
				h = append(h, "zmap: "+firstLine(ctx, "zmap", "--version"))
			}
		case toolNmap:
			h = append(h, "nmap: "+firstLine(ctx, "nmap", "--version"))
		}
	}
	return h
}

// firstLine is the first non-empty output line of a short command.
func firstLine(ctx context.Context, name string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, name, args...).CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return "?"
}

// trawlHasCooldown reports whether `trawl scan` takes --cooldown.
func trawlHasCooldown(ctx context.Context, bin string) bool {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, bin, "scan", "-h").CombinedOutput()
	return strings.Contains(string(out), "-cooldown ")
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// lastLine is the last non-empty line of a tool's stderr (status lines
// end in \r), bounded in length.
func lastLine(s string) string {
	const max = 300
	parts := strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' })
	for i := len(parts) - 1; i >= 0; i-- {
		if l := strings.Join(strings.Fields(parts[i]), " "); l != "" {
			if len(l) > max {
				l = l[:max] + "…"
			}
			return l
		}
	}
	return ""
}

// tailBuffer keeps the last max bytes written (a tool's stderr).
type tailBuffer struct {
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.buf) }
