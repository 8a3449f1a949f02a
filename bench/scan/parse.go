package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// ErrParse marks a tool output line the bench cannot read.
var ErrParse = errors.New("cannot parse scanner output")

// A parser reads one tool's result file and reports every open port it
// lists, duplicates included: the bench counts them itself.
type parser func(r io.Reader, emit func(netip.AddrPort)) error

// maxLine bounds one output line (trawl's JSON events are a few hundred bytes).
const maxLine = 1 << 20

func lines(r io.Reader, fn func(n int, line string) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		if err := fn(n, line); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("cannot read output: %w", err)
	}
	return nil
}

func addrPort(ip, port string) (netip.AddrPort, error) {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(a, uint16(p)), nil
}

// parseTrawl reads `trawl scan` stdout: one JSON event a line; port events
// (origin.type "port") are the open ports, anything else is skipped.
func parseTrawl(r io.Reader, emit func(netip.AddrPort)) error {
	var e struct {
		Origin struct {
			Type string `json:"type"`
		} `json:"origin"`
		Target struct {
			IP   string `json:"ip"`
			Port int    `json:"port"`
		} `json:"target"`
	}
	return lines(r, func(n int, line string) error {
		e.Origin.Type, e.Target.IP, e.Target.Port = "", "", 0
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			return fmt.Errorf("%w: trawl line %d: %v", ErrParse, n, err)
		}
		if e.Origin.Type != "port" {
			return nil
		}
		ap, err := addrPort(e.Target.IP, strconv.Itoa(e.Target.Port))
		if err != nil || e.Target.Port < 1 || e.Target.Port > 65535 {
			return fmt.Errorf("%w: trawl line %d: target %s:%d", ErrParse, n, e.Target.IP, e.Target.Port)
		}
		emit(ap)
		return nil
	})
}

// parseMasscan reads masscan -oL: "open tcp 80 198.18.0.1 1700000000";
// comment lines start with '#'.
func parseMasscan(r io.Reader, emit func(netip.AddrPort)) error {
	return lines(r, func(n int, line string) error {
		if strings.HasPrefix(line, "#") {
			return nil
		}
		f := strings.Fields(line)
		if len(f) < 4 {
			return fmt.Errorf("%w: masscan line %d: %q", ErrParse, n, line)
		}
		if f[0] != "open" || f[1] != "tcp" {
			return nil // closed, banner or other protocols
		}
		ap, err := addrPort(f[3], f[2])
		if err != nil {
			return fmt.Errorf("%w: masscan line %d: %v", ErrParse, n, err)
		}
		emit(ap)
		return nil
	})
}

// parseZmap reads zmap -O csv -f saddr,sport: a header line, then
// "198.18.0.1,80" (zmap's sport is the target's port, the reply's source).
func parseZmap(r io.Reader, emit func(netip.AddrPort)) error {
	return lines(r, func(n int, line string) error {
		if n == 1 && strings.HasPrefix(line, "saddr") {
			return nil
		}
		ip, port, ok := strings.Cut(line, ",")
		if !ok {
			return fmt.Errorf("%w: zmap line %d: %q (want saddr,sport)", ErrParse, n, line)
		}
		ap, err := addrPort(ip, port)
		if err != nil {
			return fmt.Errorf("%w: zmap line %d: %v", ErrParse, n, err)
		}
		emit(ap)
		return nil
	})
}

// parseNmap reads nmap -oG: "Host: 198.18.0.1 ()\tPorts: 22/open/tcp//ssh///, 80/closed/tcp//http///".
func parseNmap(r io.Reader, emit func(netip.AddrPort)) error {
	return lines(r, func(n int, line string) error {
		if strings.HasPrefix(line, "#") || !strings.HasPrefix(line, "Host: ") {
			return nil
		}
		fields := strings.Split(line, "\t")
		host := strings.Fields(strings.TrimPrefix(fields[0], "Host: "))
		if len(host) == 0 {
			return fmt.Errorf("%w: nmap line %d: no host", ErrParse, n)
		}
		ip, err := netip.ParseAddr(host[0])
		if err != nil {
			return fmt.Errorf("%w: nmap line %d: %v", ErrParse, n, err)
		}
		for _, f := range fields[1:] {
			list, ok := strings.CutPrefix(f, "Ports: ")
			if !ok {
				continue
			}
			for _, entry := range strings.Split(list, ",") {
				parts := strings.Split(strings.TrimSpace(entry), "/")
				if len(parts) < 3 {
					return fmt.Errorf("%w: nmap line %d: port entry %q", ErrParse, n, entry)
				}
				if parts[1] != "open" || parts[2] != "tcp" {
					continue
				}
				p, err := strconv.ParseUint(parts[0], 10, 16)
				if err != nil || p == 0 {
					return fmt.Errorf("%w: nmap line %d: port %q", ErrParse, n, parts[0])
				}
				emit(netip.AddrPortFrom(ip, uint16(p)))
			}
		}
		return nil
	})
}
