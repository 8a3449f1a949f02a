package service

import (
	"context"
	"sync"
	"testing"
	"time"

	"trawl/probes"
	"trawl/probes/probetest"
)

// realCase is one port of a real server and what the module must say.
type realCase struct {
	role                   string
	port                   int
	name, product, version string
	tunnel                 string
	method                 string
}

func checkReal(t *testing.T, m *Module, h *probetest.Harness, c realCase) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := m.Probe(ctx, probes.Target{IP: h.IP().String(), Port: c.port})
	if err != nil || res.Status != probes.StatusSuccess {
		t.Errorf("%s (port %d): %v %q %s", c.role, c.port, err, res.Status, res.Error)
		return
	}
	d := res.Data
	if d["name"] != c.name || d["product"] != c.product || d["version"] != c.version || d["tunnel"] != c.tunnel ||
		(c.method != "" && d["method"] != c.method) {
		t.Errorf("%s (port %d): name %q product %q version %q tunnel %q method %q; want %q %q %q %q %q\nbanner %q probe %v",
			c.role, c.port, d["name"], d["product"], d["version"], d["tunnel"], d["method"],
			c.name, c.product, c.version, c.tunnel, c.method, d["banner"], d["probe"])
	}
}

// TestRealServers starts the Debian servers in one namespace and checks
// every port against the installed packages' versions, in parallel.
func TestRealServers(t *testing.T) {
	h := probetest.New(t)
	var cases []realCase
	var mu sync.Mutex
	add := func(cs ...realCase) { mu.Lock(); cases = append(cases, cs...); mu.Unlock() }
	starters := []func(t *testing.T){
		func(t *testing.T) {
			d := h.StartNginx(80, 443)
			add(realCase{"nginx http", 80, "http", "nginx", d.Version, "", MethodExtraction},
				realCase{"nginx https", 443, "http", "nginx", d.Version, "ssl", MethodExtraction})
		},
		func(t *testing.T) {
			d := h.StartRedis(6379)
			add(realCase{"redis", 6379, "redis", "Redis key-value store", d.Version, "", MethodExtraction})
		},
		func(t *testing.T) {
			d := h.StartMemcached(11211)
			add(realCase{"memcached", 11211, "memcached", "Memcached", d.Version, "", MethodExtraction})
		},
		func(t *testing.T) {
			d := h.StartVsftpd(21)
			add(realCase{"vsftpd", 21, "ftp", "vsftpd", d.Version, "", MethodExtraction})
		},
		func(t *testing.T) {
			d := h.StartMosquitto(1883)
			add(realCase{"mosquitto", 1883, "mqtt", "Mosquitto", d.Version, "", MethodExtraction})
		},
		func(t *testing.T) {
			d := h.StartMariaDB(3306)
			add(realCase{"mariadb", 3306, "mysql", "MariaDB", d.Version, "", MethodExtraction})
		},
		func(t *testing.T) {
			h.StartPostgres(5432)
			add(realCase{"postgresql", 5432, "postgresql", "PostgreSQL DB", "", "", MethodMatching})
		},
		func(t *testing.T) {
			h.StartDovecot(143, 993, 110, 995)
			add(realCase{"dovecot imap", 143, "imap", "Dovecot imapd", "", "", MethodMatching},
				realCase{"dovecot imaps", 993, "imap", "Dovecot imapd", "", "ssl", MethodMatching},
				realCase{"dovecot pop3", 110, "pop3", "Dovecot pop3d", "", "", MethodMatching},
				realCase{"dovecot pop3s", 995, "pop3", "Dovecot pop3d", "", "ssl", MethodMatching})
		},
		func(t *testing.T) {
			d := h.StartExim(25)
			add(realCase{"exim", 25, "smtp", "Exim smtpd", d.Version, "", MethodExtraction})
		},
		func(t *testing.T) {
			sshd := h.StartSSHD(22, probetest.SSHDDebianDefaults)
			up, _ := probetest.UpstreamVersion(probetest.PackageVersion(t, "openssh-server"))
			_ = sshd
			add(realCase{"openssh", 22, "ssh", "OpenSSH", up, "", MethodExtraction})
		},
	}
	for _, start := range starters {
		start(t)
	}
	m := New(Config{GreetingWait: time.Second, ReplyWait: 2 * time.Second, PortBudget: 20 * time.Second})
	t.Run("probe", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.role, func(t *testing.T) {
				t.Parallel()
				checkReal(t, m, h, c)
			})
		}
	})
}

// TestRealPostfix identifies Postfix (run from Debian's unpacked package:
// it conflicts with exim4) by its banner: product and hostname, and no
// version, which Postfix does not tell.
func TestRealPostfix(t *testing.T) {
	h := probetest.New(t)
	p := h.StartPostfix(587)
	m := New(Config{GreetingWait: time.Second, ReplyWait: 2 * time.Second, PortBudget: 20 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := m.Probe(ctx, probes.Target{IP: h.IP().String(), Port: 587})
	if err != nil || res.Status != probes.StatusSuccess {
		t.Fatalf("%v %q %s", err, res.Status, res.Error)
	}
	d := res.Data
	cpe, _ := d["cpe"].([]string)
	if d["name"] != "smtp" || d["product"] != "Postfix smtpd" || d["version"] != "" || d["hostname"] != p.Hostname ||
		d["method"] != MethodExtraction || len(cpe) != 1 || cpe[0] != "cpe:/a:postfix:postfix" {
		t.Errorf("postfix %s: %v", p.Debian, d)
	}
	if banner, _ := d["banner"].(string); banner != "220 "+p.Hostname+" ESMTP Postfix (Debian/GNU)" {
		t.Errorf("banner %q", banner)
	}
}
