package probetest

import (
	"bufio"
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestHarnessLifecycle(t *testing.T) {
	Require(t, "ip")
	var ns, hostVeth string
	var sshd *SSHD
	t.Run("up", func(t *testing.T) {
		h := New(t)
		ns, hostVeth = h.Namespace(), h.hostVeth
		if !h.IP().Is4() || !strings.HasPrefix(h.IP().String(), "198.19.") {
			t.Fatalf("target address %v is outside 198.18.0.0/15", h.IP())
		}
		sshd = h.StartSSHD(22, SSHDDebianDefaults)
		if sshd.Addr != h.IP().String()+":22" {
			t.Fatalf("addr %q", sshd.Addr)
		}
		c, err := net.DialTimeout("tcp", sshd.Addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "SSH-2.0-OpenSSH_") {
			t.Fatalf("banner %q, %v", line, err)
		}
		if len(sshd.HostKeys) != 3 {
			t.Fatalf("host keys %+v", sshd.HostKeys)
		}
		for i, want := range []struct {
			typ  string
			bits int
		}{{"ssh-rsa", 3072}, {"ecdsa-sha2-nistp256", 256}, {"ssh-ed25519", 256}} {
			k := sshd.HostKeys[i]
			if k.Type != want.typ || k.Bits != want.bits || !strings.HasPrefix(k.FingerprintSHA256, "SHA256:") ||
				strings.Count(k.FingerprintMD5, ":") != 15 {
				t.Fatalf("key %d: %+v, want %s %d bits", i, k, want.typ, want.bits)
			}
		}
		if !strings.Contains(sshd.Effective["kexalgorithms"], "curve25519-sha256") {
			t.Fatalf("sshd -T kexalgorithms %q", sshd.Effective["kexalgorithms"])
		}
	})
	// after the subtest's cleanup: no namespace, no link, no sshd
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), ns+" ") || strings.Contains(string(out), ns+"\n") {
		t.Fatalf("namespace %s still exists: %s", ns, out)
	}
	if linkExists(hostVeth) {
		t.Fatalf("link %s still exists", hostVeth)
	}
	select {
	case <-sshd.Exited():
	default:
		t.Fatal("sshd still runs after teardown")
	}
}

func TestStartFailures(t *testing.T) {
	h := New(t)
	t.Run("exits before ready", func(t *testing.T) {
		_, err := h.start("false", []string{"/bin/sh", "-c", "echo nope >&2; exit 3"}, h.DialReady(9, ""))
		if err == nil || !strings.Contains(err.Error(), "exited") || !strings.Contains(err.Error(), "nope") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("empty command", func(t *testing.T) {
		if _, err := h.start("none", nil, nil); err == nil {
			t.Fatal("no error")
		}
	})
	t.Run("wrong greeting", func(t *testing.T) {
		ready := h.DialReady(22, "SSH-")
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := ready(ctx); err == nil {
			t.Fatal("ready with nothing listening")
		}
	})
	t.Run("exec", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err := h.Exec(ctx, "ip", "-4", "-o", "addr", "show")
		if err != nil || !strings.Contains(out, h.IP().String()+"/30") {
			t.Fatalf("namespace addresses %q, %v", out, err)
		}
		if _, err := h.Exec(ctx, "/bin/false"); err == nil {
			t.Fatal("no error from /bin/false")
		}
	})
}

func TestUpstreamVersion(t *testing.T) {
	for _, c := range []struct{ in, up, rev string }{
		{"1:9.2p1-2+deb12u10", "9.2p1", "2+deb12u10"},
		{"9.6p1-3ubuntu13.5", "9.6p1", "3ubuntu13.5"},
		{"2.0", "2.0", ""},
		{"1:1.2-3-4", "1.2-3", "4"},
	} {
		up, rev := UpstreamVersion(c.in)
		if up != c.up || rev != c.rev {
			t.Errorf("UpstreamVersion(%q) = %q, %q; want %q, %q", c.in, up, rev, c.up, c.rev)
		}
	}
}
