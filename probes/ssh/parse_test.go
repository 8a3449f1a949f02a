package ssh

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"trawl/probes"
)

// The fixture is what OpenSSH 9.2p1 (Debian 12) sent a client: its
// identification line and KEXINIT packet, recorded by the module.
const fixture = "testdata/openssh-9.2p1-debian12.bin"

func readFixture(t testing.TB) (Identification, []byte) {
	t.Helper()
	b, err := os.ReadFile(fixture)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(bytes.NewReader(b))
	id, err := readIdentification(br)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := newTransport(br, io.Discard).readMessage()
	if err != nil {
		t.Fatal(err)
	}
	return id, payload
}

func TestRecordedOpenSSH(t *testing.T) {
	id, payload := readFixture(t)
	wantID := Identification{
		Line: "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10", ProtocolVersion: "2.0",
		Software: "OpenSSH_9.2p1", Comments: "Debian-2+deb12u10", Product: "OpenSSH", Version: "9.2p1",
		CPE: []string{"cpe:/a:openbsd:openssh:9.2p1", "cpe:/o:debian:debian_linux"},
		OS:  "Linux", OSDistribution: "Debian", OSRelease: "12",
	}
	if !reflect.DeepEqual(id, wantID) {
		t.Fatalf("identification\n got %+v\nwant %+v", id, wantID)
	}
	k, err := parseKexInit(payload)
	if err != nil {
		t.Fatal(err)
	}
	kex := strings.Split("sntrup761x25519-sha512,sntrup761x25519-sha512@openssh.com,curve25519-sha256,"+
		"curve25519-sha256@libssh.org,ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,"+
		"diffie-hellman-group-exchange-sha256,diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,"+
		"diffie-hellman-group14-sha256,kex-strict-s-v00@openssh.com", ",")
	ciphers := strings.Split("chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com", ",")
	macs := strings.Split("umac-64-etm@openssh.com,umac-128-etm@openssh.com,hmac-sha2-256-etm@openssh.com,"+
		"hmac-sha2-512-etm@openssh.com,hmac-sha1-etm@openssh.com,umac-64@openssh.com,umac-128@openssh.com,"+
		"hmac-sha2-256,hmac-sha2-512,hmac-sha1", ",")
	comp := []string{"none", "zlib@openssh.com"}
	want := KexInit{
		Cookie: hex.EncodeToString(payload[1:17]), KexAlgorithms: kex,
		ServerHostKeyAlgorithms:            []string{"rsa-sha2-512", "rsa-sha2-256", "ecdsa-sha2-nistp256", "ssh-ed25519"},
		EncryptionAlgorithmsClientToServer: ciphers, EncryptionAlgorithmsServerToClient: ciphers,
		MACAlgorithmsClientToServer: macs, MACAlgorithmsServerToClient: macs,
		CompressionAlgorithmsClientToServer: comp, CompressionAlgorithmsServerToClient: comp,
		LanguagesClientToServer: []string{}, LanguagesServerToClient: []string{},
	}
	if !reflect.DeepEqual(k, want) {
		t.Fatalf("kexinit\n got %+v\nwant %+v", k, want)
	}
	hs := strings.Join(kex, ",") + ";" + strings.Join(ciphers, ",") + ";" + strings.Join(macs, ",") + ";none,zlib@openssh.com"
	sum := md5.Sum([]byte(hs))
	if got := k.hassh(); got.HASSH != hex.EncodeToString(sum[:]) || got.HASSHAlgorithms != hs {
		t.Fatalf("hassh %+v", got)
	}
	f := k.features()
	wantF := Features{StrictKex: true, PostQuantumKex: true,
		PostQuantumKexAlgorithms: []string{"sntrup761x25519-sha512", "sntrup761x25519-sha512@openssh.com"}}
	if !reflect.DeepEqual(f, wantF) {
		t.Fatalf("features %+v", f)
	}
	if got := marshalKexInit(payload[1:17], k); !bytes.Equal(got, payload) {
		t.Fatalf("re-encoded KEXINIT differs:\n%x\n%x", got, payload)
	}
	fams := hostKeyFamilies(k.ServerHostKeyAlgorithms)
	wantFams := []keyFamily{
		{"ssh-rsa", "rsa-sha2-512", []string{"rsa-sha2-512", "rsa-sha2-256"}},
		{"ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256", []string{"ecdsa-sha2-nistp256"}},
		{"ssh-ed25519", "ssh-ed25519", []string{"ssh-ed25519"}},
	}
	if !reflect.DeepEqual(fams, wantFams) {
		t.Fatalf("families %+v", fams)
	}
}

func TestTruncatedKexInit(t *testing.T) {
	_, payload := readFixture(t)
	for n := 0; n < len(payload); n++ {
		if _, err := parseKexInit(payload[:n]); !errors.Is(err, probes.ErrProtocol) {
			t.Fatalf("prefix of %d bytes: err %v", n, err)
		}
	}
	bad := bytes.Clone(payload)
	bad[0] = msgNewKeys
	if _, err := parseKexInit(bad); !errors.Is(err, probes.ErrProtocol) {
		t.Fatalf("wrong type: err %v", err)
	}
	// a name-list length pointing past the end
	bad = bytes.Clone(payload)
	bad[17] = 0x7f
	if _, err := parseKexInit(bad); !errors.Is(err, probes.ErrProtocol) {
		t.Fatalf("long list: err %v", err)
	}
}

func TestHostKeyFamilies(t *testing.T) {
	got := hostKeyFamilies([]string{"ssh-rsa", "rsa-sha2-256", "rsa-sha2-512", "ssh-dss",
		"ssh-ed25519-cert-v01@openssh.com", "rsa-sha2-256-cert-v01@openssh.com", "ssh-rsa-cert-v01@openssh.com", ""})
	want := []keyFamily{
		{"ssh-rsa", "rsa-sha2-512", []string{"ssh-rsa", "rsa-sha2-256", "rsa-sha2-512"}},
		{"ssh-dss", "ssh-dss", []string{"ssh-dss"}},
		{"ssh-ed25519-cert-v01@openssh.com", "ssh-ed25519-cert-v01@openssh.com", []string{"ssh-ed25519-cert-v01@openssh.com"}},
		{"ssh-rsa-cert-v01@openssh.com", "rsa-sha2-256-cert-v01@openssh.com", []string{"rsa-sha2-256-cert-v01@openssh.com", "ssh-rsa-cert-v01@openssh.com"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
}

func TestIdentification(t *testing.T) {
	cases := []struct {
		line string
		want Identification
	}{
		{"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.10", Identification{ProtocolVersion: "2.0", Software: "OpenSSH_8.9p1",
			Comments: "Ubuntu-3ubuntu0.10", Product: "OpenSSH", Version: "8.9p1", OS: "Linux", OSDistribution: "Ubuntu",
			CPE: []string{"cpe:/a:openbsd:openssh:8.9p1", "cpe:/o:canonical:ubuntu_linux"}}},
		{"SSH-2.0-dropbear_2022.83", Identification{ProtocolVersion: "2.0", Software: "dropbear_2022.83",
			Product: "Dropbear sshd", Version: "2022.83", CPE: []string{"cpe:/a:matt_johnston:dropbear_ssh_server:2022.83"}}},
		{"SSH-1.99-OpenSSH_3.9p1", Identification{ProtocolVersion: "1.99", Software: "OpenSSH_3.9p1",
			Product: "OpenSSH", Version: "3.9p1", CPE: []string{"cpe:/a:openbsd:openssh:3.9p1"}}},
		{"SSH-2.0-OpenSSH_9.6 FreeBSD-20240104", Identification{ProtocolVersion: "2.0", Software: "OpenSSH_9.6",
			Comments: "FreeBSD-20240104", Product: "OpenSSH", Version: "9.6", OS: "FreeBSD", OSDistribution: "FreeBSD",
			CPE: []string{"cpe:/a:openbsd:openssh:9.6", "cpe:/o:freebsd:freebsd"}}},
		{"SSH-2.0-ROSSSH", Identification{ProtocolVersion: "2.0", Software: "ROSSSH", Product: "MikroTik RouterOS sshd",
			CPE: []string{"cpe:/o:mikrotik:routeros"}}},
		{"SSH-2.0-Go", Identification{ProtocolVersion: "2.0", Software: "Go", Product: "Golang x/crypto/ssh server",
			CPE: []string{"cpe:/a:golang:go"}}},
		{"SSH-2.0-SomethingElse_1.0 with comments", Identification{ProtocolVersion: "2.0", Software: "SomethingElse_1.0",
			Comments: "with comments"}},
	}
	for _, c := range cases {
		got, ok := parseIdentification(c.line)
		c.want.Line = c.line
		if !ok || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q:\n got %+v\nwant %+v", c.line, got, c.want)
		}
	}
	for _, bad := range []string{"HTTP/1.1 400 Bad Request", "SSH-", "SSH--x", "SSH-2.0"} {
		if _, ok := parseIdentification(bad); ok {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestReadIdentification(t *testing.T) {
	read := func(s string) (Identification, error) {
		return readIdentification(bufio.NewReader(strings.NewReader(s)))
	}
	id, err := read("Welcome\r\nauthorised use only\nSSH-2.0-OpenSSH_9.2p1\r\nrest")
	if err != nil || id.Software != "OpenSSH_9.2p1" ||
		!reflect.DeepEqual(id.PreBannerLines, []string{"Welcome", "authorised use only"}) {
		t.Fatalf("%+v %v", id, err)
	}
	for name, c := range map[string]struct {
		in   string
		want error
	}{
		"http":          {"HTTP/1.1 400 Bad Request\r\n\r\n", probes.ErrProtocol},
		"no newline":    {"HTTP/1.1 400", probes.ErrProtocol},
		"closed":        {"", io.EOF},
		"endless line":  {strings.Repeat("a", 5000), probes.ErrProtocol},
		"too many":      {strings.Repeat("hello\r\n", 100), probes.ErrProtocol},
		"bad ident":     {"SSH-\r\n", probes.ErrProtocol},
		"binary before": {"\x00\x01\x02\n\x03", probes.ErrProtocol},
	} {
		if _, err := read(c.in); !errors.Is(err, c.want) {
			t.Errorf("%s: err %v, want %v", name, err, c.want)
		}
	}
}

// TestCipherRoundTrip writes packets with each cipher and reads them back
// with a second instance keyed alike; a flipped byte must fail the MAC.
func TestCipherRoundTrip(t *testing.T) {
	key := sha256.Sum256([]byte("key"))
	mkey := make([]byte, 64)
	iv := make([]byte, 16)
	make2 := map[string]func() packetCipher{
		"plain":      func() packetCipher { return plainCipher{} },
		"aes128-gcm": func() packetCipher { c, _ := newGCM(key[:16], iv[:12]); return c },
		"aes256-gcm": func() packetCipher { c, _ := newGCM(key[:32], iv[:12]); return c },
		"aes128-ctr hmac-sha2-256": func() packetCipher {
			c, _ := newCTR(key[:16], iv, sha256.New, mkey[:32], false)
			return c
		},
		"aes256-ctr hmac-sha2-256-etm": func() packetCipher {
			c, _ := newCTR(key[:32], iv, sha256.New, mkey[:32], true)
			return c
		},
	}
	for name, mk := range make2 {
		t.Run(name, func(t *testing.T) {
			w, r := mk(), mk()
			var buf bytes.Buffer
			payloads := [][]byte{{msgIgnore}, bytes.Repeat([]byte("x"), 1000), {msgNewKeys}}
			for i, p := range payloads {
				if err := w.writePacket(uint32(i), &buf, p); err != nil {
					t.Fatal(err)
				}
			}
			for i, p := range payloads {
				got, err := r.readPacket(uint32(i), &buf)
				if err != nil || !bytes.Equal(got, p) {
					t.Fatalf("packet %d: %q %v", i, got, err)
				}
			}
			if name == "plain" {
				return
			}
			w, r = mk(), mk()
			buf.Reset()
			if err := w.writePacket(0, &buf, []byte("payload")); err != nil {
				t.Fatal(err)
			}
			b := buf.Bytes()
			b[len(b)-1] ^= 1
			if _, err := r.readPacket(0, &buf); !errors.Is(err, probes.ErrProtocol) {
				t.Fatalf("tampered packet: err %v", err)
			}
		})
	}
	// oversized and truncated packets
	var huge bytes.Buffer
	huge.Write([]byte{0x7f, 0, 0, 0, 4})
	if _, err := (plainCipher{}).readPacket(0, &huge); !errors.Is(err, probes.ErrProtocol) {
		t.Fatalf("huge packet: err %v", err)
	}
	short := bytes.NewReader([]byte{0, 0, 0, 12, 4, 1, 2})
	if _, err := (plainCipher{}).readPacket(0, short); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short packet: err %v", err)
	}
}

func TestDeriveKeyExtends(t *testing.T) {
	k, h := []byte{0, 0, 0, 1, 5}, []byte("hash")
	short := deriveKey(crypto.SHA256, k, h, 'A', h, 32)
	long := deriveKey(crypto.SHA256, k, h, 'A', h, 64)
	if len(long) != 64 || !bytes.Equal(long[:32], short) {
		t.Fatalf("extension must keep the first block: %x %x", short, long)
	}
}

func TestAppendMpint(t *testing.T) {
	for _, c := range []struct{ in, want []byte }{
		{nil, []byte{0, 0, 0, 0}},
		{[]byte{0, 0}, []byte{0, 0, 0, 0}},
		{[]byte{0x7f}, []byte{0, 0, 0, 1, 0x7f}},
		{[]byte{0x80}, []byte{0, 0, 0, 2, 0, 0x80}},
		{[]byte{0, 0x01, 0x02}, []byte{0, 0, 0, 2, 1, 2}},
	} {
		if got := appendMpint(nil, c.in); !bytes.Equal(got, c.want) {
			t.Errorf("mpint(%x) = %x, want %x", c.in, got, c.want)
		}
	}
}

func TestConfig(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var c Config
	c.RegisterFlags(fs, "ssh.")
	if err := c.Validate(); err != nil || c != DefaultConfig() {
		t.Fatalf("defaults %+v: %v", c, err)
	}
	if err := fs.Parse([]string{"-ssh.user=", "-ssh.client-version=SSH-1.5-x", "-ssh.conn-timeout=0s"}); err != nil {
		t.Fatal(err)
	}
	err := c.Validate()
	for _, want := range []string{"user", "client version", "timeout"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to mention %q", err, want)
		}
	}
	m := New(Config{})
	if m.cfg != DefaultConfig() || m.Name() != "ssh" {
		t.Fatalf("New fills defaults: %+v %q", m.cfg, m.Name())
	}
	if New(Config{ConnTimeout: time.Second}).cfg.ConnTimeout != time.Second {
		t.Fatal("New overrides a set value")
	}
}
