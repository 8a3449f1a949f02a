package ssl

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// refPRF is RFC 5246's P_hash written out literally, one fresh HMAC per
// step: A(0) = label+seed, A(i) = HMAC(secret, A(i-1)), output the
// concatenation of HMAC(secret, A(i)+label+seed).
func refPRF(h func() hash.Hash, secret []byte, label string, seed []byte, n int) []byte {
	ls := []byte(label + string(seed))
	mac := func(data ...[]byte) []byte {
		m := hmac.New(h, secret)
		for _, d := range data {
			m.Write(d)
		}
		return m.Sum(nil)
	}
	var out []byte
	a := ls
	for len(out) < n {
		a = mac(a)
		out = append(out, mac(a, ls)...)
	}
	return out[:n]
}

func TestPRF12MatchesReference(t *testing.T) {
	for _, hf := range []struct {
		name string
		h    func() hash.Hash
	}{{"sha256", sha256.New}, {"sha384", sha512.New384}} {
		for _, n := range []int{1, 12, 32, 48, 72, 100, 129} {
			secret := make([]byte, 48)
			seed := make([]byte, 64)
			_, _ = rand.Read(secret)
			_, _ = rand.Read(seed)
			got := make([]byte, n)
			prf12(hf.h, secret, "key expansion", seed, got)
			if want := refPRF(hf.h, secret, "key expansion", seed, n); !bytes.Equal(got, want) {
				t.Errorf("%s n=%d:\n got %x\nwant %x", hf.name, n, got, want)
			}
		}
	}
}

// The test vector for the TLS 1.2 SHA-256 PRF circulated on the IETF TLS
// list (secret, seed, label "test label", 100 bytes).
func TestPRF12KnownVector(t *testing.T) {
	dec := func(s string) []byte {
		b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	secret := dec("9b be 43 6b a9 40 f0 17 b1 76 52 84 9a 71 db 35")
	seed := dec("a0 ba 9f 93 6c da 31 18 27 a6 f7 96 ff d5 19 8c")
	want := dec("e3 f2 29 ba 72 7b e1 7b 8d 12 26 20 55 7c d4 53 c2 aa b2 1d 07 c3 d4 95 32 9b 52 d4 e6 1e db 5a" +
		"6b 30 17 91 e9 0d 35 c9 c9 a4 6b 4e 14 ba f9 af 0f a0 22 f7 07 7d ef 17 ab fd 37 97 c0 56 4b ab" +
		"4f bc 91 66 6e 9d ef 9b 97 fc e3 4f 79 67 89 ba a4 80 82 d1 22 ee 42 c5 a7 2e 5a 51 10 ff f7 01" +
		"87 34 7b 66")
	got := make([]byte, len(want))
	prf12(sha256.New, secret, "test label", seed, got)
	if !bytes.Equal(got, want) {
		t.Errorf("got %x\nwant %x", got, want)
	}
}

// crypto/tls's exporter (RFC 5705) is its own PRF over the master secret
// and both randoms: given the master secret from its key log, prf12 must
// produce the same bytes.
func TestPRF12MatchesCryptoTLSExporter(t *testing.T) {
	p := newTestPKI(t)
	for _, tc := range []struct {
		suite uint16
		h     func() hash.Hash
	}{
		{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, sha256.New},
		{tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, sha512.New384},
	} {
		t.Run(tls.CipherSuiteName(tc.suite), func(t *testing.T) {
			cliConn, srvConn := net.Pipe()
			defer cliConn.Close()
			defer srvConn.Close()
			deadline := time.Now().Add(5 * time.Second)
			_ = cliConn.SetDeadline(deadline)
			_ = srvConn.SetDeadline(deadline)
			srv := tls.Server(srvConn, &tls.Config{Certificates: []tls.Certificate{p.leaf}, MaxVersion: tls.VersionTLS12,
				CipherSuites: []uint16{tc.suite}})
			errs := make(chan error, 1)
			go func() { errs <- srv.Handshake() }()
			var keyLog bytes.Buffer
			rec := &recordingConn{Conn: cliConn}
			cli := tls.Client(rec, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, KeyLogWriter: &keyLog})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := cli.HandshakeContext(ctx); err != nil {
				t.Fatalf("client handshake: %v", err)
			}
			if err := <-errs; err != nil {
				t.Fatalf("server handshake: %v", err)
			}
			f := strings.Fields(keyLog.String())
			if len(f) != 3 || f[0] != "CLIENT_RANDOM" {
				t.Fatalf("key log %q", keyLog.String())
			}
			clientRandom, _ := hex.DecodeString(f[1])
			master, _ := hex.DecodeString(f[2])
			fl, err := readFlight(bytes.NewReader(rec.head), false)
			if err != nil {
				t.Fatalf("cannot parse the ServerHello: %v", err)
			}
			serverRandom := fl.helloRaw[6:38]
			st := cli.ConnectionState()
			if st.CipherSuite != tc.suite {
				t.Fatalf("suite %x", st.CipherSuite)
			}
			want, err := st.ExportKeyingMaterial("EXPORTER-trawl-test", nil, 77)
			if err != nil {
				t.Fatalf("exporter: %v", err)
			}
			got := make([]byte, 77)
			prf12(tc.h, master, "EXPORTER-trawl-test", append(clientRandom, serverRandom...), got)
			if !bytes.Equal(got, want) {
				t.Errorf("got %x\nwant %x", got, want)
			}
		})
	}
}

// refOpen decrypts one AES-GCM TLS 1.2 record, written from RFC 5288 and
// RFC 5246 6.2.3.3 independently of gcmRecord.
func refOpen(t *testing.T, key, salt []byte, seq uint64, record []byte) (byte, []byte, error) {
	t.Helper()
	if len(record) < 5 || record[1] != 3 || record[2] != 3 || int(binary.BigEndian.Uint16(record[3:5])) != len(record)-5 {
		t.Fatalf("bad record header % x", record[:min(5, len(record))])
	}
	block, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(block)
	body := record[5:]
	nonce := append(append([]byte{}, salt...), body[:8]...)
	if binary.BigEndian.Uint64(body[:8]) != seq {
		t.Errorf("explicit nonce %x, want the sequence number %d", body[:8], seq)
	}
	ad := binary.BigEndian.AppendUint64(nil, seq)
	ad = append(ad, record[0], 3, 3)
	ad = binary.BigEndian.AppendUint16(ad, uint16(len(body)-8-16))
	pt, err := aead.Open(nil, nonce, body[8:], ad)
	return record[0], pt, err
}

// refSeal is refOpen's inverse, with an explicit nonce that is not the
// sequence number (a peer may choose any unique value).
func refSeal(key, salt []byte, seq uint64, typ byte, pt []byte) []byte {
	block, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(block)
	explicit := make([]byte, 8)
	_, _ = rand.Read(explicit)
	nonce := append(append([]byte{}, salt...), explicit...)
	ad := binary.BigEndian.AppendUint64(nil, seq)
	ad = append(ad, typ, 3, 3)
	ad = binary.BigEndian.AppendUint16(ad, uint16(len(pt)))
	rec := []byte{typ, 3, 3, 0, 0}
	rec = append(rec, explicit...)
	rec = aead.Seal(rec, nonce, pt, ad)
	binary.BigEndian.PutUint16(rec[3:], uint16(len(rec)-5))
	return rec
}

func TestGCMRecordRoundTrip(t *testing.T) {
	for _, keyLen := range []int{16, 32} {
		key := make([]byte, keyLen)
		salt := make([]byte, 4)
		_, _ = rand.Read(key)
		_, _ = rand.Read(salt)
		out, err := newGCMRecord(key, salt)
		if err != nil {
			t.Fatal(err)
		}
		in, err := newGCMRecord(key, salt)
		if err != nil {
			t.Fatal(err)
		}
		for seq := range uint64(3) {
			msg := bytes.Repeat([]byte{byte(seq)}, 10+int(seq)*100)
			typ, pt, err := refOpen(t, key, salt, seq, out.seal(nil, recordHandshake, msg))
			if err != nil || typ != recordHandshake || !bytes.Equal(pt, msg) {
				t.Fatalf("key %d seq %d: reference cannot open the sealed record: %v", keyLen, seq, err)
			}
			rec := refSeal(key, salt, seq, recordAlert, msg)
			got, err := in.open(rec[0], rec[5:])
			if err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("key %d seq %d: cannot open the reference record: %v", keyLen, seq, err)
			}
		}
		// a record sealed for another sequence number, a flipped bit, a
		// wrong type and a truncated record must all fail
		bad := [][]byte{
			refSeal(key, salt, 7, recordAlert, []byte("x")),
			func() []byte { r := refSeal(key, salt, 3, recordAlert, []byte("x")); r[len(r)-1] ^= 1; return r }(),
			refSeal(key, salt, 3, recordHandshake, []byte("x")),
			refSeal(key, salt, 3, recordAlert, nil)[:5+20],
		}
		for i, rec := range bad {
			if _, err := in.open(recordAlert, rec[5:]); err == nil {
				t.Errorf("key %d: bad record %d opened", keyLen, i)
			}
		}
		if in.seq != 3 {
			t.Errorf("failed opens moved the sequence number to %d", in.seq)
		}
	}
}

func BenchmarkTLS12RenegHandshake(b *testing.B) {
	p := newTestPKI(b)
	srv := startTLSServer(b, &tls.Config{Certificates: []tls.Certificate{p.leaf}, MaxVersion: tls.VersionTLS12})
	addr := "127.0.0.1:" + strconv.Itoa(srv.port)
	b.ReportAllocs()
	for b.Loop() {
		conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		c := newTLS12Client(conn, "", nil)
		if err := c.handshake(); err != nil {
			b.Fatal(err)
		}
		if v := c.renegotiate(); !isFalse(v.accepted) {
			b.Fatalf("verdict %+v", v)
		}
		closeAbruptly(conn)
	}
}
