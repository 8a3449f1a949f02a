package ssl

import (
	"bytes"
	"crypto/md5"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"slices"
	"testing"

	"trawl/probes"
)

// clientHello is the test's own reading of a crafted ClientHello record.
type clientHello struct {
	recVersion, version uint16
	suites              []uint16
	compression         []byte
	exts                []uint16
	extData             map[uint16][]byte
}

func parseClientHelloRecord(t testing.TB, rec []byte) clientHello {
	t.Helper()
	if len(rec) < 9 || rec[0] != recordHandshake || int(binary.BigEndian.Uint16(rec[3:])) != len(rec)-5 {
		t.Fatalf("bad record header % x", rec[:min(len(rec), 9)])
	}
	msg := rec[5:]
	if msg[0] != msgClientHello || int(msg[1])<<16|int(msg[2])<<8|int(msg[3]) != len(msg)-4 {
		t.Fatalf("bad handshake header % x", msg[:4])
	}
	ch, ok := parseClientHelloBody(msg[4:])
	if !ok {
		t.Fatalf("cannot parse ClientHello body")
	}
	ch.recVersion = binary.BigEndian.Uint16(rec[1:])
	return ch
}

func parseClientHelloBody(b []byte) (clientHello, bool) {
	r := reader(b)
	var ch clientHello
	var ok bool
	if ch.version, ok = r.u16(); !ok {
		return ch, false
	}
	if _, ok = r.bytes(32); !ok {
		return ch, false
	}
	if _, ok = r.vec8(); !ok {
		return ch, false
	}
	suites, ok := r.vec16()
	if !ok {
		return ch, false
	}
	for len(suites) > 1 {
		s, _ := suites.u16()
		ch.suites = append(ch.suites, s)
	}
	if ch.compression, ok = r.vec8(); !ok {
		return ch, false
	}
	ch.extData = map[uint16][]byte{}
	if len(r) == 0 {
		return ch, true
	}
	exts, ok := r.vec16()
	if !ok || len(r) != 0 {
		return ch, false
	}
	for len(exts) > 0 {
		typ, ok1 := exts.u16()
		data, ok2 := exts.vec16()
		if !ok1 || !ok2 {
			return ch, false
		}
		ch.exts = append(ch.exts, typ)
		ch.extData[typ] = data
	}
	return ch, true
}

func TestClientHelloLayout(t *testing.T) {
	var random [32]byte
	key := bytes.Repeat([]byte{7}, 32)

	t.Run("tls13", func(t *testing.T) {
		rec := appendClientHello(nil, helloSpec{version: versionTLS13, suites: suitesFor(versionTLS13), sni: "a.example", alpn: []string{"h2"}}, &random, key)
		ch := parseClientHelloRecord(t, rec)
		if ch.recVersion != versionTLS10 || ch.version != versionTLS12 {
			t.Errorf("versions record %#x hello %#x", ch.recVersion, ch.version)
		}
		if !slices.Equal(ch.suites, []uint16{0x1301, 0x1302, 0x1303, 0x1304, 0x1305}) {
			t.Errorf("suites %x", ch.suites)
		}
		if !bytes.Equal(ch.extData[extSupportedVersions], []byte{2, 3, 4}) {
			t.Errorf("supported_versions % x", ch.extData[extSupportedVersions])
		}
		ks := ch.extData[extKeyShare]
		if len(ks) != 2+4+32 || binary.BigEndian.Uint16(ks[2:]) != groupX25519 || !bytes.Equal(ks[6:], key) {
			t.Errorf("key_share % x", ks)
		}
		if sni := ch.extData[extServerName]; !bytes.HasSuffix(sni, []byte("a.example")) || sni[2] != 0 {
			t.Errorf("server_name % x", sni)
		}
		if !bytes.Equal(ch.extData[extALPN], []byte{0, 3, 2, 'h', '2'}) {
			t.Errorf("alpn % x", ch.extData[extALPN])
		}
		if !bytes.Equal(ch.compression, []byte{0}) {
			t.Errorf("compression % x", ch.compression)
		}
	})
	t.Run("tls10-fallback-deflate-heartbeat", func(t *testing.T) {
		rec := appendClientHello(nil, helloSpec{version: versionTLS10, suites: suitesFor(versionTLS10), fallback: true, compression: []byte{1, 0}, heartbeat: true}, &random, key)
		ch := parseClientHelloRecord(t, rec)
		if ch.version != versionTLS10 || ch.suites[len(ch.suites)-1] != scsvFallback || !bytes.Equal(ch.compression, []byte{1, 0}) {
			t.Errorf("version %#x last suite %#x compression % x", ch.version, ch.suites[len(ch.suites)-1], ch.compression)
		}
		for _, id := range ch.suites[:len(ch.suites)-1] {
			if s := lookupSuite(id); s.needsTLS12() || s.tls13() {
				t.Errorf("TLS 1.0 hello offers %s", s.iana)
			}
		}
		if _, ok := ch.extData[extSupportedVersions]; ok {
			t.Error("TLS 1.0 hello carries supported_versions")
		}
		if _, ok := ch.extData[extSignatureAlgorithms]; ok {
			t.Error("TLS 1.0 hello carries signature_algorithms")
		}
		if !bytes.Equal(ch.extData[extHeartbeat], []byte{1}) || !bytes.Equal(ch.extData[extRenegotiationInfo], []byte{0}) {
			t.Errorf("heartbeat % x renegotiation_info % x", ch.extData[extHeartbeat], ch.extData[extRenegotiationInfo])
		}
	})
	t.Run("sslv3", func(t *testing.T) {
		rec := appendClientHello(nil, helloSpec{version: versionSSL30, suites: []uint16{0x000A}}, &random, key)
		ch := parseClientHelloRecord(t, rec)
		if ch.recVersion != versionSSL30 || ch.version != versionSSL30 || len(ch.exts) != 0 ||
			!slices.Equal(ch.suites, []uint16{0x000A, scsvRenegotiation}) {
			t.Errorf("sslv3 hello %+v", ch)
		}
	})
}

func TestReadFlightRecorded(t *testing.T) {
	// openssl s_server 3.0 (-tls1_2, ECDHE-ECDSA-AES128-GCM-SHA256, P-256)
	// answering a crafted TLS 1.2 hello, recorded once.
	b, err := os.ReadFile("testdata/openssl-3.0-tls12-ecdsa-flight.bin")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := os.ReadFile("testdata/openssl-3.0-tls12-ecdsa-cert.pem")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	fl, err := readFlight(bytes.NewReader(b), true)
	if err != nil {
		t.Fatal(err)
	}
	h := fl.hello
	if h.version != versionTLS12 || h.suite != 0xC02B || h.compression != 0 || h.retry {
		t.Errorf("hello %+v", h)
	}
	if got := ja3sString(h); got != "771,49195,65281-11-23" {
		t.Errorf("ja3s string %q", got)
	}
	if !h.has(extRenegotiationInfo) || h.has(extHeartbeat) {
		t.Error("extensions misread")
	}
	if fl.kx == nil || *fl.kx != (KeyExchange{Type: "ECDHE_ECDSA", Group: "secp256r1", Bits: 256}) {
		t.Errorf("kx %+v", fl.kx)
	}
	if len(fl.certs) != 1 || !bytes.Equal(fl.certs[0], block.Bytes) || !fl.done {
		t.Errorf("certs %d done %v", len(fl.certs), fl.done)
	}
	if !bytes.Equal(fl.helloRaw, b[5:5+4+int(b[8])]) {
		t.Error("helloRaw is not the ServerHello message")
	}
	// the same bytes cut anywhere after the ServerHello still give the hello
	short, err := readFlight(bytes.NewReader(b[:len(fl.helloRaw)+5+10]), true)
	if err != nil || short.hello.suite != 0xC02B || short.done {
		t.Errorf("truncated flight: %v %+v", err, short)
	}
	// and cut inside the ServerHello it is an error a prober calls a reset
	_, err = readFlight(bytes.NewReader(b[:30]), true)
	if probes.Classify(err) != probes.StatusReset {
		t.Errorf("cut ServerHello: %v (%s)", err, probes.Classify(err))
	}
}

func TestReadFlightReplies(t *testing.T) {
	serverHello := func(random []byte, exts []byte) []byte {
		body := []byte{3, 3}
		body = append(body, random...)
		body = append(body, 0, 0x13, 0x01, 0)
		body = binary.BigEndian.AppendUint16(body, uint16(len(exts)))
		body = append(body, exts...)
		msg := append([]byte{msgServerHello, 0, byte(len(body) >> 8), byte(len(body))}, body...)
		return append([]byte{recordHandshake, 3, 3, byte(len(msg) >> 8), byte(len(msg))}, msg...)
	}
	retryExts := []byte{0, 43, 0, 2, 3, 4, 0, 51, 0, 2, 0, 23}
	cases := []struct {
		name  string
		reply []byte
		check func(*testing.T, *flight, error)
	}{
		{"alert", []byte{21, 3, 3, 0, 2, 2, 40}, func(t *testing.T, _ *flight, err error) {
			var ae AlertError
			if !errors.As(err, &ae) || ae.Description != 40 || probes.Classify(err) != probes.StatusTLSError {
				t.Errorf("%v", err)
			}
		}},
		{"http", []byte("HTTP/1.1 400 Bad Request\r\n\r\n"), func(t *testing.T, _ *flight, err error) {
			if !errors.Is(err, ErrNotTLS) || probes.Classify(err) != probes.StatusTLSError {
				t.Errorf("%v", err)
			}
		}},
		{"closed", nil, func(t *testing.T, _ *flight, err error) {
			if !errors.Is(err, io.EOF) || !rejection(err) {
				t.Errorf("%v", err)
			}
		}},
		{"hello-retry", serverHello(helloRetryRandom[:], retryExts), func(t *testing.T, fl *flight, err error) {
			if err != nil || !fl.hello.retry || fl.hello.version != versionTLS13 {
				t.Fatalf("%v %+v", err, fl)
			}
			if g, ok := fl.hello.group(); !ok || g != 23 {
				t.Errorf("group %d", g)
			}
		}},
		{"bad-extensions", serverHello(make([]byte, 32), []byte{0, 43, 0, 9}), func(t *testing.T, _ *flight, err error) {
			if !errors.Is(err, errMalformed) {
				t.Errorf("%v", err)
			}
		}},
		{"oversized-record", []byte{22, 3, 3, 0xff, 0xff}, func(t *testing.T, _ *flight, err error) {
			if !errors.Is(err, ErrNotTLS) {
				t.Errorf("%v", err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fl, err := readFlight(bytes.NewReader(tc.reply), true)
			tc.check(t, fl, err)
		})
	}
}

func TestParseServerKeyExchangeDH(t *testing.T) {
	p := append([]byte{0, 0xd5}, bytes.Repeat([]byte{0xff}, 127)...) // a leading zero, then 1024 bits
	ske := binary.BigEndian.AppendUint16(nil, uint16(len(p)))
	ske = append(ske, p...)
	ske = append(ske, 0, 1, 2, 0, 1, 5) // g, Ys
	kx := parseServerKeyExchange(ske, 0x0033)
	if kx == nil || *kx != (KeyExchange{Type: "DHE_RSA", Group: "ffdhe_1024", Bits: 1024}) {
		t.Errorf("kx %+v", kx)
	}
	if kx := parseServerKeyExchange([]byte{0, 9, 1}, 0x0033); kx != nil {
		t.Errorf("truncated SKE gave %+v", kx)
	}
	if kx := parseServerKeyExchange([]byte{1, 0, 23}, 0xC02F); kx != nil {
		t.Errorf("explicit curve gave %+v", kx)
	}
}

func TestSSLv2ServerHello(t *testing.T) {
	cert := []byte("not really a certificate")
	specs := []byte{0x01, 0x00, 0x80, 0x07, 0x00, 0xC0}
	body := []byte{sslv2ServerHello, 0, 1, 0, 2}
	body = binary.BigEndian.AppendUint16(body, uint16(len(cert)))
	body = binary.BigEndian.AppendUint16(body, uint16(len(specs)))
	body = binary.BigEndian.AppendUint16(body, 16)
	body = append(body, cert...)
	body = append(body, specs...)
	body = append(body, make([]byte, 16)...)
	msg := append([]byte{0x80 | byte(len(body)>>8), byte(len(body))}, body...)
	rep, err := readSSLv2Hello(bytes.NewReader(msg))
	if err != nil || !slices.Equal(rep.ciphers, []uint32{0x010080, 0x0700C0}) || !bytes.Equal(rep.cert, cert) {
		t.Fatalf("%v %+v", err, rep)
	}
	if _, err := readSSLv2Hello(bytes.NewReader([]byte{21, 3, 0, 0, 2, 2, 40})); !errors.Is(err, errNoSSLv2) {
		t.Errorf("TLS alert: %v", err)
	}
	var challenge [16]byte
	hello := appendSSLv2Hello(nil, &challenge)
	if int(hello[0]&0x7f)<<8|int(hello[1]) != len(hello)-2 || hello[2] != sslv2ClientHello ||
		binary.BigEndian.Uint16(hello[5:]) != uint16(3*len(sslv2Ciphers)) {
		t.Errorf("client hello % x", hello)
	}
}

func TestSuiteDerivations(t *testing.T) {
	cases := []struct {
		id                                         uint16
		kx                                         string
		tls12                                      bool
		rc4, des3, export, null, anon, cbc, dh, ec bool
	}{
		{0x0003, "RSA", false, true, false, true, false, false, false, false, false},
		{0x000A, "RSA", false, false, true, false, false, false, true, false, false},
		{0x0018, "DH_anon", false, true, false, false, false, true, false, true, false},
		{0x0033, "DHE_RSA", false, false, false, false, false, false, true, true, false},
		{0x003B, "RSA", true, false, false, false, true, false, false, false, false},
		{0x0062, "RSA", false, false, false, true, false, false, true, false, false},
		{0xC02F, "ECDHE_RSA", true, false, false, false, false, false, false, false, true},
		{0xC019, "ECDH_anon", false, false, false, false, false, true, true, false, true},
		{0xCCA9, "ECDHE_ECDSA", true, false, false, false, false, false, false, false, true},
		{0x1301, "", true, false, false, false, false, false, false, false, false},
	}
	for _, tc := range cases {
		s := lookupSuite(tc.id)
		got := []bool{s.needsTLS12(), s.isRC4(), s.is3DES(), s.isExport(), s.isNull(), s.isAnon(), s.isCBC(), s.ephemeralDH(), s.ephemeralEC()}
		want := []bool{tc.tls12, tc.rc4, tc.des3, tc.export, tc.null, tc.anon, tc.cbc, tc.dh, tc.ec}
		if s.keyExchange() != tc.kx || !slices.Equal(got, want) {
			t.Errorf("%s: kx %q flags %v, want %q %v", s.iana, s.keyExchange(), got, tc.kx, want)
		}
	}
	if s := lookupSuite(0xFFFE); s.iana != "UNKNOWN_0xFFFE" {
		t.Errorf("unknown suite named %q", s.iana)
	}
	seen := map[uint16]bool{}
	for _, s := range suiteTable {
		if seen[s.id] {
			t.Errorf("duplicate suite %#x", s.id)
		}
		seen[s.id] = true
	}
}

func TestJA3S(t *testing.T) {
	h := &serverHello{legacyVersion: 771, suite: 0xC02F, extensions: []uint16{65281, 11, 35, 16}}
	s := ja3sString(h)
	sum := md5.Sum([]byte("771,49199,65281-11-35-16"))
	if s != "771,49199,65281-11-35-16" || md5Hex(s) != hex.EncodeToString(sum[:]) {
		t.Errorf("ja3s %q %s", s, md5Hex(s))
	}
}
