package nmapcmp

import (
	"context"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"trawl/probes"
	"trawl/probes/probetest"
	"trawl/probes/service"
)

type row struct {
	server, pkg string
	port        int
}

// nmapRun is the part of nmap's XML output the table needs.
type nmapRun struct {
	Ports []struct {
		Port    int `xml:"portid,attr"`
		Service struct {
			Name    string `xml:"name,attr"`
			Product string `xml:"product,attr"`
			Version string `xml:"version,attr"`
			Tunnel  string `xml:"tunnel,attr"`
		} `xml:"service"`
	} `xml:"host>ports>port"`
}

func TestCompare(t *testing.T) {
	if os.Getenv("TRAWL_NMAPCMP") == "" {
		t.Skip("set TRAWL_NMAPCMP=1 to run the nmap comparison (needs root, nmap and the servers)")
	}
	probetest.Require(t, "nmap")
	h := probetest.New(t)
	var rows []row
	add := func(d *probetest.Daemon, server string, roles ...string) {
		for _, r := range roles {
			rows = append(rows, row{server + " " + r, d.Version, d.Ports[r]})
		}
	}
	add(h.StartNginx(80, 443), "nginx", "http", "https")
	add(h.StartRedis(6379), "redis", "redis")
	add(h.StartMemcached(11211), "memcached", "memcached")
	add(h.StartVsftpd(21), "vsftpd", "ftp")
	add(h.StartMosquitto(1883), "mosquitto", "mqtt")
	add(h.StartMariaDB(3306), "mariadb", "mysql")
	add(h.StartPostgres(5432), "postgresql", "postgresql")
	add(h.StartDovecot(143, 993, 110, 995), "dovecot", "imap", "imaps", "pop3", "pop3s")
	add(h.StartExim(25), "exim4", "smtp")
	add(h.StartPostfix(587).Daemon, "postfix", "smtp")
	sshd := h.StartSSHD(22, probetest.SSHDDebianDefaults)
	up, _ := probetest.UpstreamVersion(probetest.PackageVersion(t, "openssh-server"))
	rows = append(rows, row{"openssh", up, sshd.Port})

	var ports []string
	for _, r := range rows {
		ports = append(ports, strconv.Itoa(r.port))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, "nmap", "-sV", "-Pn", "-n", "-p", strings.Join(ports, ","), "-oX", "-", h.IP().String()).Output()
	if err != nil {
		t.Fatalf("nmap: %v", err)
	}
	nmapTime := time.Since(start)
	var run nmapRun
	if err := xml.Unmarshal(out, &run); err != nil {
		t.Fatalf("nmap xml: %v", err)
	}
	nmapBy := map[int]string{}
	for _, p := range run.Ports {
		s := p.Service
		nmapBy[p.Port] = strings.TrimSpace(fmt.Sprintf("%s %s %s", prefix(s.Tunnel)+s.Name, s.Product, s.Version))
	}

	m := service.New(service.Config{})
	start = time.Now()
	trawlBy := map[int]string{}
	for _, r := range rows {
		res, _ := m.Probe(ctx, probes.Target{IP: h.IP().String(), Port: r.port})
		d := res.Data
		trawlBy[r.port] = strings.TrimSpace(fmt.Sprintf("%s %s %s", prefix(fmt.Sprint(d["tunnel"]))+fmt.Sprint(d["name"]), d["product"], d["version"]))
	}
	trawlTime := time.Since(start)

	var b strings.Builder
	w := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "port\tserver\tpackage\tnmap -sV\ttrawl")
	for _, r := range rows {
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", r.port, r.server, r.pkg, nmapBy[r.port], trawlBy[r.port])
	}
	_ = w.Flush()
	fmt.Fprintf(&b, "nmap -sV (all ports, parallel): %v; trawl (one port after another): %v\n", nmapTime.Round(time.Millisecond), trawlTime.Round(time.Millisecond))
	t.Log("\n" + b.String())
}

func prefix(tunnel string) string {
	if tunnel == "" || tunnel == "<nil>" {
		return ""
	}
	return tunnel + "/"
}
