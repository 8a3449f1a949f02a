package main

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

const (
	toolTrawl   = "trawl"
	toolMasscan = "masscan"
	toolZmap    = "zmap"
	toolNmap    = "nmap"

	// Each tool scans from its own source ports (masscan wants a power of
	// two), so late replies to one run never reach the next tool's filter;
	// the scanner kernel's RSTs from all of them are dropped alike. trawl's
	// lie above the ephemeral range, as its default does, so that it keeps
	// the scanner's kernel from seeing its replies (--raw.guard-host-stack).
	trawlPorts   = "61440-62463"
	masscanPorts = "41984-43007"
	zmapPorts    = "43008-44031"
	nmapPort     = "44032"
	dropRSTPorts = "41984-44032," + trawlPorts

	// "Unlimited" for tools that need a number: far above what a host sends.
	unlimitedTrawl   = 1_000_000_000
	unlimitedMasscan = 10_000_000
)

// workload is one scan: the block × ports, dense or sparse.
type workload struct {
	Name   string
	Ports  []uint16
	Sparse bool
}

func (w workload) portList() string {
	s := make([]string, len(w.Ports))
	for i, p := range w.Ports {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ",")
}

var (
	onePort   = []uint16{80}
	fivePorts = []uint16{22, 80, 443, 3389, 8080}
	// listened on in every testbed: the union of the workloads' ports
	listenPorts = fivePorts
)

// workloads are the named workloads for a block of the given prefix length.
func workloads(bits int) map[string]workload {
	b := "/" + strconv.Itoa(bits)
	return map[string]workload{
		"x1-dense":  {Name: b + "x1 dense", Ports: onePort},
		"x1-sparse": {Name: b + "x1 sparse", Ports: onePort, Sparse: true},
		"x5-dense":  {Name: b + "x5 dense", Ports: fivePorts},
		"x5-sparse": {Name: b + "x5 sparse", Ports: fivePorts, Sparse: true},
	}
}

// invocation is one process of a run; Output is the result file, which is
// the process's stdout when Stdout is set.
type invocation struct {
	Args   []string // program and arguments, run in the scanner's namespace
	Output string
	Stdout bool
}

// scanEnv is what the tools need to know about the testbed and the run.
type scanEnv struct {
	Trawl         string   // trawl binary
	TrawlFlags    []string // extra flags for trawl scan
	Interface     string
	SourceIP      string
	GatewayMAC    string
	Block         string
	CooldownSecs  int
	TrawlCooldown bool // trawl scan has --cooldown (else it uses its 1s default)
	WorkDir       string
	BlockFile     string // zmap: empty blocklist
	AllowFile     string // zmap: allowlist holding only the testbed block
	RunID         string // unique per run, for output file names
}

// setting is one tool in one configuration.
type setting struct {
	Tool, Name string
	Program    string // looked up in PATH (trawl: the built binary)
	Parse      parser
	Build      func(e scanEnv, w workload, rate int) []invocation
}

func (e scanEnv) out(name string) string { return filepath.Join(e.WorkDir, e.RunID+"."+name) }

func settings() []setting {
	return []setting{
		{Tool: toolTrawl, Name: "raw", Parse: parseTrawl, Build: trawlRun},
		{Tool: toolMasscan, Name: "default", Program: "masscan", Parse: parseMasscan, Build: masscanRun},
		{Tool: toolZmap, Name: "-T 1", Program: "zmap", Parse: parseZmap, Build: zmapRun(1)},
		{Tool: toolZmap, Name: "-T 2", Program: "zmap", Parse: parseZmap, Build: zmapRun(2)},
		{Tool: toolNmap, Name: "-sS", Program: "nmap", Parse: parseNmap, Build: nmapRun},
	}
}

// settingID names a setting for --tools: trawl, masscan, zmap, zmap-T2, nmap.
func settingID(s setting) string {
	if s.Tool == toolZmap && s.Name == "-T 2" {
		return "zmap-T2"
	}
	return s.Tool
}

func trawlRun(e scanEnv, w workload, rate int) []invocation {
	if rate == 0 {
		rate = unlimitedTrawl
	}
	args := []string{e.Trawl, "scan", "--transport", "raw", "--allow", "198.18.0.0/15", "-p", w.portList(),
		"--rate", strconv.Itoa(rate), "--progress", "off",
		"--raw.interface", e.Interface, "--raw.source-ip", e.SourceIP, "--raw.gateway-mac", e.GatewayMAC,
		"--raw.source-ports", trawlPorts}
	if e.TrawlCooldown {
		args = append(args, "--cooldown", strconv.Itoa(e.CooldownSecs)+"s")
	}
	args = append(args, e.TrawlFlags...)
	return []invocation{{Args: append(args, e.Block), Output: e.out("trawl.jsonl"), Stdout: true}}
}

func masscanRun(e scanEnv, w workload, rate int) []invocation {
	if rate == 0 {
		rate = unlimitedMasscan
	}
	out := e.out("masscan.txt")
	return []invocation{{Output: out, Args: []string{"masscan", e.Block, "-p" + w.portList(),
		"--rate", strconv.Itoa(rate), "--adapter", e.Interface, "--adapter-ip", e.SourceIP,
		"--router-mac", e.GatewayMAC, "--adapter-port", masscanPorts, "--wait", strconv.Itoa(e.CooldownSecs),
		"-oL", out}}}
}

// zmapRun: zmap 2.1 (Debian 12) scans one port per run, so a multi-port
// workload is one run per port, one after another; the row sums them.
func zmapRun(threads int) func(e scanEnv, w workload, rate int) []invocation {
	return func(e scanEnv, w workload, rate int) []invocation {
		var inv []invocation
		for _, p := range w.Ports {
			out := e.out(fmt.Sprintf("zmap%d.%d.csv", threads, p))
			inv = append(inv, invocation{Output: out, Args: []string{"zmap", "-p", strconv.Itoa(int(p)),
				"-r", strconv.Itoa(rate), // 0: no limit
				"-T", strconv.Itoa(threads), "-i", e.Interface, "-S", e.SourceIP, "-G", e.GatewayMAC,
				"-s", zmapPorts, "-c", strconv.Itoa(e.CooldownSecs), "-b", e.BlockFile, "-w", e.AllowFile,
				// zmap's documented default filter, which 2.1 drops once -f is given
				"-O", "csv", "-f", "saddr,sport", "--output-filter", "success = 1 && repeat = 0",
				"-o", out, "-q", "--disable-syslog"}})
		}
		return inv
	}
}

// nmapRun: no retries, no host discovery; nmap has no cooldown setting.
func nmapRun(e scanEnv, w workload, rate int) []invocation {
	out := e.out("nmap.gnmap")
	args := []string{"nmap", "-sS", "-Pn", "-n", "--max-retries", "0", "-p", w.portList(), "-e", e.Interface,
		"-S", e.SourceIP, "-g", nmapPort, "--open", "-oG", out}
	if rate == 0 {
		args = append(args, "-T5")
	} else {
		args = append(args, "-T4", "--min-rate", strconv.Itoa(rate), "--max-rate", strconv.Itoa(rate))
	}
	return []invocation{{Output: out, Args: append(args, e.Block)}}
}
