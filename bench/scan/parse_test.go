package main

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func collect(t *testing.T, p parser, input string) ([]netip.AddrPort, error) {
	t.Helper()
	var got []netip.AddrPort
	err := p(strings.NewReader(input), func(ap netip.AddrPort) { got = append(got, ap) })
	return got, err
}

func aps(t *testing.T, s ...string) []netip.AddrPort {
	t.Helper()
	out := make([]netip.AddrPort, len(s))
	for i, v := range s {
		out[i] = netip.MustParseAddrPort(v)
	}
	return out
}

func TestParsers(t *testing.T) {
	cases := []struct {
		name  string
		p     parser
		input string
		want  []netip.AddrPort
	}{
		{"trawl", parseTrawl, `{"origin":{"type":"port","module":"portscan"},"target":{"ip":"198.18.0.1","port":80,"protocol":"tcp"},"id":"1"}
{"origin":{"type":"job_status"},"target":{"ip":"","port":0}}

{"origin":{"type":"port"},"target":{"ip":"198.18.0.1","port":80}}
{"origin":{"type":"port"},"target":{"ip":"198.18.3.4","port":22}}
`, aps(t, "198.18.0.1:80", "198.18.0.1:80", "198.18.3.4:22")},
		{"masscan -oL", parseMasscan, `#masscan
open tcp 80 198.18.0.7 1700000000
open tcp 443 198.18.0.8 1700000001
closed tcp 22 198.18.0.9 1700000001
open udp 53 198.18.0.9 1700000001
# end
`, aps(t, "198.18.0.7:80", "198.18.0.8:443")},
		{"zmap csv", parseZmap, "saddr,sport\n198.18.0.1,80\n198.18.0.1,80\n198.18.255.255,8080\n",
			aps(t, "198.18.0.1:80", "198.18.0.1:80", "198.18.255.255:8080")},
		{"zmap csv without header", parseZmap, "198.18.0.2,22\n", aps(t, "198.18.0.2:22")},
		{"nmap -oG", parseNmap, "# Nmap 7.93 scan initiated as: nmap -sS ...\n" +
			"Host: 198.18.0.1 ()\tStatus: Up\n" +
			"Host: 198.18.0.1 ()\tPorts: 22/open/tcp//ssh///, 80/closed/tcp//http///, 443/open/tcp//https///\tIgnored State: filtered (2)\n" +
			"Host: 198.18.0.2 ()\tPorts: 53/open/udp//domain///\n" +
			"# Nmap done at ... -- 4096 IP addresses (4096 hosts up) scanned in 1.2 seconds\n",
			aps(t, "198.18.0.1:22", "198.18.0.1:443")},
		{"empty", parseMasscan, "", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := collect(t, tc.p, tc.input)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestParsersRejectGarbage(t *testing.T) {
	cases := []struct {
		name  string
		p     parser
		input string
	}{
		{"trawl not json", parseTrawl, "open tcp 80 1.2.3.4\n"},
		{"trawl bad ip", parseTrawl, `{"origin":{"type":"port"},"target":{"ip":"nope","port":80}}`},
		{"trawl port 0", parseTrawl, `{"origin":{"type":"port"},"target":{"ip":"198.18.0.1","port":0}}`},
		{"masscan short line", parseMasscan, "open tcp 80\n"},
		{"masscan bad port", parseMasscan, "open tcp 99999 198.18.0.1 1\n"},
		{"zmap no comma", parseZmap, "saddr,sport\n198.18.0.1\n"},
		{"zmap bad ip", parseZmap, "saddr,sport\n198.18.0.300,80\n"},
		{"nmap bad host", parseNmap, "Host: nope ()\tPorts: 22/open/tcp//ssh///\n"},
		{"nmap bad entry", parseNmap, "Host: 198.18.0.1 ()\tPorts: 22\n"},
		{"nmap bad port", parseNmap, "Host: 198.18.0.1 ()\tPorts: x/open/tcp//ssh///\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := collect(t, tc.p, tc.input)
			if !errors.Is(err, ErrParse) {
				t.Fatalf("got error %v, want ErrParse", err)
			}
		})
	}
}

func TestParserLineTooLong(t *testing.T) {
	_, err := collect(t, parseZmap, strings.Repeat("x", maxLine+10))
	if err == nil {
		t.Fatal("an over-long line was accepted")
	}
}
