package service

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"trawl/probes"
	"trawl/probes/probetest"
)

// TestRealApacheAndRabbitMQ checks Apache httpd (plain and TLS, a
// certificate from a test CA), RabbitMQ's AMQP port and its epmd against
// the installed packages' versions.
func TestRealApacheAndRabbitMQ(t *testing.T) {
	m := New(Config{GreetingWait: time.Second, ReplyWait: 2 * time.Second, PortBudget: 20 * time.Second})
	t.Run("apache", func(t *testing.T) {
		probetest.Require(t, probetest.ApacheBin)
		h := probetest.New(t) // one namespace per subtest: its failures stop only it
		a := h.StartApache(80, 443)
		for _, c := range []realCase{
			{"apache http", 80, "http", "Apache httpd", a.Version, "", MethodExtraction},
			{"apache https", 443, "http", "Apache httpd", a.Version, "ssl", MethodExtraction},
		} {
			checkReal(t, m, h, c)
			res := probeReal(t, m, h, c.port)
			if cpe, _ := res.Data["cpe"].([]string); !slices.Contains(cpe, "cpe:/a:apache:http_server:"+a.Version) {
				t.Errorf("%s: cpe %v", c.role, res.Data["cpe"])
			}
			if info, _ := res.Data["extrainfo"].(string); !strings.Contains(info, "Debian") {
				t.Errorf("%s: extrainfo %q, want the (Debian) comment", c.role, info)
			}
		}
	})
	t.Run("rabbitmq", func(t *testing.T) {
		probetest.Require(t, probetest.RabbitMQBin)
		h := probetest.New(t)
		r := h.StartRabbitMQ(5672)
		checkReal(t, m, h, realCase{"rabbitmq amqp", 5672, "amqp", "RabbitMQ", r.Version, "", MethodExtraction})
		checkReal(t, m, h, realCase{"epmd", probetest.EpmdPort, "epmd", "Erlang Port Mapper Daemon", "", "", MethodMatching})
		// the node registered itself: epmd's reply names it
		res := probeReal(t, m, h, probetest.EpmdPort)
		if b, _ := res.Data["banner"].(string); !strings.Contains(b, "name rabbit at port") {
			t.Errorf("epmd banner %q does not list the rabbit node", b)
		}
	})
}

func probeReal(t *testing.T, m *Module, h *probetest.Harness, port int) probes.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := m.Probe(ctx, probes.Target{IP: h.IP().String(), Port: port})
	if err != nil {
		t.Fatalf("port %d: %v", port, err)
	}
	return res
}
