package vnc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"image"
	"image/png"
	"io"
	"net"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"trawl/probes"
	"trawl/probes/probetest"
)

// serve runs a fake server on loopback (probetest.Serve).
func serve(t testing.TB, handle func(c net.Conn)) int { return probetest.Serve(t, handle) }

// memStore keeps screenshots in memory.
type memStore struct {
	mu   sync.Mutex
	pngs map[string][]byte
	err  error
}

func (s *memStore) PutScreenshot(_ context.Context, jobID string, png []byte) (string, error) {
	if s.err != nil {
		return "", s.err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pngs == nil {
		s.pngs = map[string][]byte{}
	}
	sum := sha256.Sum256(png)
	link := "/v1/jobs/" + jobID + "/screenshots/" + hex.EncodeToString(sum[:8])
	s.pngs[link] = bytes.Clone(png)
	return link, nil
}

func (s *memStore) get(link string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pngs[link]
}

func probeAt(t testing.TB, m *Module, ip string, port int, timeout time.Duration) probes.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	res, err := m.Probe(ctx, probes.Target{IP: ip, Port: port, Protocol: "tcp", JobID: "job_test"})
	if err != nil {
		t.Fatalf("Probe: %v", err)
	}
	if res.Started.IsZero() || res.Duration <= 0 {
		t.Fatalf("timing not set: %v %v", res.Started, res.Duration)
	}
	return res
}

func probe(t testing.TB, m *Module, port int, timeout time.Duration) probes.Result {
	t.Helper()
	return probeAt(t, m, "127.0.0.1", port, timeout)
}

// screenshotImage fetches the result's PNG from store, checks its hash
// and size fields and decodes it.
func screenshotImage(t testing.TB, res probes.Result, store *memStore) image.Image {
	t.Helper()
	shot, ok := res.Data["screenshot"].(*Screenshot)
	if !ok {
		t.Fatalf("no screenshot: %v (errors %v)", res.Data["screenshot"], res.Data["errors"])
	}
	b := store.get(shot.Link)
	sum := sha256.Sum256(b)
	if b == nil || shot.SHA256 != hex.EncodeToString(sum[:]) || shot.Bytes != len(b) || shot.StoreError != "" {
		t.Fatalf("screenshot %+v: stored %d bytes", shot, len(b))
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("PNG: %v", err)
	}
	if img.Bounds().Dx() != shot.Width || img.Bounds().Dy() != shot.Height {
		t.Fatalf("PNG %v, screenshot says %dx%d", img.Bounds(), shot.Width, shot.Height)
	}
	return img
}

func samePixels(t testing.TB, got image.Image, want *image.RGBA) {
	t.Helper()
	if got.Bounds() != want.Bounds() {
		t.Fatalf("bounds %v, want %v", got.Bounds(), want.Bounds())
	}
	for y := range want.Rect.Dy() {
		for x := range want.Rect.Dx() {
			r, g, b, a := got.At(x, y).RGBA()
			w := want.RGBAAt(x, y)
			if uint8(r>>8) != w.R || uint8(g>>8) != w.G || uint8(b>>8) != w.B || a != 0xffff {
				t.Fatalf("pixel %d,%d = %v, want %v", x, y, got.At(x, y), w)
			}
		}
	}
}

func TestProtocolVersions(t *testing.T) {
	frame := testFrame(100, 70)
	for _, c := range []struct {
		name, version, protocol string
	}{
		{"3.8", "RFB 003.008\n", "3.8"},
		{"3.7", "RFB 003.007\n", "3.7"},
		{"3.3", "RFB 003.003\n", "3.3"},
		{"3.5 speaks 3.3", "RFB 003.005\n", "3.3"},
		{"Apple 3.889", "RFB 003.889\n", "3.8"},
		{"4.1", "RFB 004.001\n", "3.8"},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := startFake(t, &fakeVNC{Version: c.version, Types: []byte{secNone}, Name: "desk " + c.name, Frame: frame})
			store := &memStore{}
			res := probe(t, New(Config{Screenshot: true}, store), srv.port, 5*time.Second)
			if res.Status != probes.StatusSuccess || res.Error != "" {
				t.Fatalf("status %q error %q", res.Status, res.Error)
			}
			if e, ok := res.Data["errors"]; ok {
				t.Fatalf("step errors %v", e)
			}
			want := map[string]any{
				"version": strings.TrimSuffix(c.version, "\n"), "protocol": c.protocol, "title": "desk " + c.name,
				"width": 100, "height": 70, "auth_enabled": false,
				"security_types": []SecurityType{{ID: 1, Name: "None"}},
				"pixel_format": PixelFormat{BitsPerPixel: 16, Depth: 16, BigEndian: true, TrueColour: true,
					RedMax: 31, GreenMax: 63, BlueMax: 31, RedShift: 11, GreenShift: 5},
			}
			for k, v := range want {
				if !reflect.DeepEqual(res.Data[k], v) {
					t.Errorf("%s = %#v, want %#v", k, res.Data[k], v)
				}
			}
			samePixels(t, screenshotImage(t, res, store), frame)
			if srv.accepted.Load() != 1 || srv.shared.Load() != 1 {
				t.Fatalf("%d connections, shared flag %d", srv.accepted.Load(), srv.shared.Load())
			}
			if got := srv.gotPixelFormat.Load().([]byte); !bytes.Equal(got, clientPixelFormat[:]) {
				t.Fatalf("SetPixelFormat %v", got)
			}
			if !strings.HasPrefix(string(res.Raw), c.version) || !bytes.Contains(res.Raw, []byte("desk "+c.name)) {
				t.Fatalf("raw evidence %q", res.Raw)
			}
		})
	}
}

// TestEncodings decodes the same frame sent in each encoding, whole and
// split over two updates (the second after a LastRect; ZRLE keeps its
// zlib stream across them).
func TestEncodings(t *testing.T) {
	frame := testFrame(150, 140)
	for _, c := range []struct {
		name  string
		offer []string
		force int32
		want  int32
	}{
		{"raw", []string{"raw"}, 0, encRaw},
		{"rre", []string{"rre", "raw"}, 0, encRRE},
		{"hextile", []string{"hextile"}, 0, encHextile},
		{"zrle", []string{"zrle", "raw"}, 0, encZRLE},
		{"copyrect", []string{"copyrect", "raw"}, encCopyRect, encCopyRect},
		{"defaults", nil, 0, encZRLE},
	} {
		for _, split := range []bool{false, true} {
			if c.force == encCopyRect && !split {
				continue
			}
			name := c.name
			if split {
				name += " split"
			}
			t.Run(name, func(t *testing.T) {
				srv := startFake(t, &fakeVNC{Types: []byte{secNone}, Name: "x", Frame: frame, Split: split, Force: c.force})
				store := &memStore{}
				res := probe(t, New(Config{Screenshot: true, Encodings: c.offer}, store), srv.port, 5*time.Second)
				if res.Status != probes.StatusSuccess {
					t.Fatalf("status %q %s", res.Status, res.Error)
				}
				samePixels(t, screenshotImage(t, res, store), frame)
				encs := srv.gotEncodings.Load().([]int32)
				if encs[len(encs)-1] != encLastRect || (c.force == 0 && encs[0] != c.want) {
					t.Fatalf("SetEncodings %v", encs)
				}
			})
		}
	}
}

func TestSecurity(t *testing.T) {
	cases := []struct {
		name   string
		srv    *fakeVNC
		status probes.Status
		want   map[string]any
		conns  int64
	}{
		{"3.8 vnc auth", &fakeVNC{Types: []byte{secVNCAuth}}, probes.StatusSuccess, map[string]any{
			"auth_enabled": true, "security_types": []SecurityType{{ID: 2, Name: "VNC Authentication"}}}, 1},
		{"3.3 vnc auth, challenge read", &fakeVNC{Version: "RFB 003.003\n", Types: []byte{secVNCAuth}}, probes.StatusSuccess,
			map[string]any{"auth_enabled": true, "protocol": "3.3", "security_types": []SecurityType{{ID: 2, Name: "VNC Authentication"}}}, 1},
		{"many types", &fakeVNC{Types: []byte{2, 5, 6, 16, 17, 18, 20, 30, 113, 200, 99}, TightAuths: []tightCap{{2, "STDV", "VNCAUTH_"}}}, probes.StatusSuccess, map[string]any{
			"auth_enabled": true, "security_types": []SecurityType{{ID: 2, Name: "VNC Authentication"}, {ID: 5, Name: "RA2"},
				{ID: 6, Name: "RA2ne"}, {ID: 16, Name: "Tight", Subtypes: []SecurityType{tightVNCAuth}}, {ID: 17, Name: "Ultra"},
				{ID: 18, Name: "TLS"}, {ID: 20, Name: "SASL"}, {ID: 30, Name: "Apple Remote Desktop"},
				{ID: 113, Name: "UltraVNC MS-Logon II"}, {ID: 200, Name: "RealVNC"}, {ID: 99, Name: "Unknown"}}}, 1},
		{"3.8 banned", &fakeVNC{Reason: "Too many security failures"}, probes.StatusSuccess,
			map[string]any{"msg": "Too many security failures", "security_types": []SecurityType(nil)}, 1},
		{"3.3 banned (TigerVNC)", &fakeVNC{Version: "RFB 003.003\n", Reason: "Too many security failures"}, probes.StatusSuccess,
			map[string]any{"msg": "Too many security failures", "version": "RFB 003.003"}, 1},
		{"None refused by SecurityResult", &fakeVNC{Types: []byte{secNone}, NoneResult: 1, NoneReason: "no desktop for you"},
			probes.StatusSuccess, map[string]any{"msg": "no desktop for you", "auth_enabled": false}, 1},
		{"VeNCrypt only", &fakeVNC{Types: []byte{secVeNCrypt}, Subtypes: []uint32{258, 2, 262}}, probes.StatusSuccess,
			map[string]any{"auth_enabled": true, "security_types": []SecurityType{{ID: 19, Name: "VeNCrypt", Version: "0.2",
				Subtypes: []SecurityType{{ID: 258, Name: "TLSVnc"}, {ID: 2, Name: "VNC Authentication"}, {ID: 262, Name: "X509Plain"}}}}}, 1},
		{"VeNCrypt with TLSNone", &fakeVNC{Types: []byte{secVeNCrypt, secVNCAuth}, Subtypes: []uint32{257}}, probes.StatusSuccess,
			map[string]any{"auth_enabled": false}, 1},
		{"None and VeNCrypt: two connections", &fakeVNC{Types: []byte{secVeNCrypt, secNone, secVNCAuth}, Subtypes: []uint32{1, 257, 258, 2},
			Name: "both", Frame: testFrame(40, 30)}, probes.StatusSuccess, map[string]any{
			"auth_enabled": false, "title": "both", "security_types": []SecurityType{{ID: 19, Name: "VeNCrypt", Version: "0.2",
				Subtypes: []SecurityType{{ID: 1, Name: "None"}, {ID: 257, Name: "TLSNone"}, {ID: 258, Name: "TLSVnc"},
					{ID: 2, Name: "VNC Authentication"}}}, {ID: 1, Name: "None"}, {ID: 2, Name: "VNC Authentication"}}}, 2},
		{"Tight behind a tunnel list", &fakeVNC{Types: []byte{secTight}, TightTunnels: []tightCap{{0, "TGHT", "NOTUNNEL"}},
			TightAuths: []tightCap{{2, "STDV", "VNCAUTH_"}, {129, "TGHT", "ULGNAUTH"}}}, probes.StatusSuccess, map[string]any{
			"auth_enabled": true, "security_types": []SecurityType{{ID: 16, Name: "Tight",
				Tunnels:  []SecurityType{{ID: 0, Name: "NOTUNNEL", Vendor: "TGHT", Signature: "NOTUNNEL"}},
				Subtypes: []SecurityType{tightVNCAuth, {ID: 129, Name: "Unix Login", Vendor: "TGHT", Signature: "ULGNAUTH"}}}}}, 1},
		{"Tight without authentication", &fakeVNC{Types: []byte{secTight, secVNCAuth}}, probes.StatusSuccess, map[string]any{
			"auth_enabled": false, "security_types": []SecurityType{{ID: 16, Name: "Tight", NoAuthentication: true},
				{ID: 2, Name: "VNC Authentication"}}}, 1},
		{"None and Tight: two connections (TightVNC without a password)", &fakeVNC{Types: []byte{secNone, secTight}, Name: "tight",
			Frame: testFrame(20, 10)}, probes.StatusSuccess, map[string]any{"auth_enabled": false, "title": "tight",
			"security_types": []SecurityType{{ID: 1, Name: "None"}, {ID: 16, Name: "Tight", NoAuthentication: true}}}, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := startFake(t, c.srv)
			res := probe(t, New(Config{Screenshot: true}, nil), srv.port, 5*time.Second)
			if res.Status != c.status {
				t.Fatalf("status %q %s", res.Status, res.Error)
			}
			for k, v := range c.want {
				if !reflect.DeepEqual(res.Data[k], v) {
					t.Errorf("%s = %#v, want %#v", k, res.Data[k], v)
				}
			}
			if e, ok := res.Data["errors"]; ok {
				t.Fatalf("step errors %v", e)
			}
			if srv.choseAuth.Load() || srv.sentAfterTypes.Load() {
				t.Fatal("the module answered an authentication type")
			}
			if n := srv.accepted.Load(); n != c.conns {
				t.Fatalf("%d connections, want %d", n, c.conns)
			}
			if shot, ok := res.Data["screenshot"].(*Screenshot); ok && (shot.StoreError != ErrNoStore.Error() || shot.Link != "") {
				t.Fatalf("screenshot without a store: %+v", shot)
			}
		})
	}
}

// tightVNCAuth is TightVNC's VNC authentication capability.
var tightVNCAuth = SecurityType{ID: 2, Name: "VNC Authentication", Vendor: "STDV", Signature: "VNCAUTH_"}

func TestFailures(t *testing.T) {
	silent := serve(t, func(c net.Conn) { drain(c) })
	httpLike := serve(t, func(c net.Conn) {
		_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"))
		drain(c)
	})
	halfVersion := serve(t, func(c net.Conn) { _, _ = c.Write([]byte("RFB 003")) })
	closesAtOnce := serve(t, func(c net.Conn) {})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	frame := testFrame(20, 10)
	trunc := func(f *fakeVNC, n int) int {
		f.Truncate = n
		return startFake(t, f).port
	}
	cases := []struct {
		name    string
		port    int
		status  probes.Status
		errHas  string
		version string
	}{
		{"closed port", closed, probes.StatusRefused, "connection refused", ""},
		{"silent", silent, probes.StatusTimeout, "", ""},
		{"not rfb", httpLike, probes.StatusProtocolError, "not an RFB server", ""},
		{"half a version", halfVersion, probes.StatusProtocolError, "truncated", ""},
		{"closes at once", closesAtOnce, probes.StatusReset, "EOF", ""},
		{"truncated types", trunc(&fakeVNC{Types: []byte{1, 2, 19}}, 12+2), probes.StatusProtocolError, "security types", "RFB 003.008"},
		{"truncated reason", trunc(&fakeVNC{Reason: "Too many security failures"}, 12+1+4+3), probes.StatusProtocolError, "truncated", "RFB 003.008"},
		{"truncated 3.3 type", trunc(&fakeVNC{Version: "RFB 003.003\n", Types: []byte{1}}, 12+2), probes.StatusProtocolError, "security type", "RFB 003.003"},
		{"truncated security result", trunc(&fakeVNC{Types: []byte{1}}, 12+2+2), probes.StatusProtocolError, "security result", "RFB 003.008"},
		{"truncated ServerInit", trunc(&fakeVNC{Types: []byte{1}, Name: "abc", Frame: frame}, 12+2+4+20+4+1), probes.StatusProtocolError, "ServerInit", "RFB 003.008"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			res := probe(t, New(Config{}, nil), c.port, 500*time.Millisecond)
			if res.Status != c.status || !strings.Contains(res.Error, c.errHas) {
				t.Fatalf("status %q error %q; want %q containing %q", res.Status, res.Error, c.status, c.errHas)
			}
			if v, _ := res.Data["version"].(string); !strings.HasPrefix(v, c.version) {
				t.Fatalf("version %q, want %q", v, c.version)
			}
			if time.Since(start) > 2*time.Second {
				t.Fatalf("took %v: not bounded by ctx", time.Since(start))
			}
		})
	}
	t.Run("conn timeout shorter than ctx", func(t *testing.T) {
		res := probe(t, New(Config{ConnTimeout: 100 * time.Millisecond}, nil), silent, 5*time.Second)
		if res.Status != probes.StatusTimeout || res.Duration > time.Second {
			t.Fatalf("status %q after %v (%s)", res.Status, res.Duration, res.Error)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		res, err := New(Config{}, nil).Probe(ctx, probes.Target{IP: "127.0.0.1", Port: silent})
		if err != nil || res.Status != probes.StatusCanceled {
			t.Fatalf("status %q err %v", res.Status, err)
		}
	})
}

// TestScreenshotFailures: the handshake's fields stay and the status is
// success when only the screenshot fails; the reason is under errors.
func TestScreenshotFailures(t *testing.T) {
	frame := testFrame(64, 48)
	cases := []struct {
		name   string
		srv    *fakeVNC
		cfg    Config
		errHas string
	}{
		{"encoding not offered", &fakeVNC{Force: 7}, Config{Encodings: []string{"raw"}}, "encoding 7 the module did not offer"},
		{"too large", &fakeVNC{}, Config{MaxPixels: 64*48 - 1}, "exceeds 3071 pixels"},
		{"cut short", &fakeVNC{Truncate: 12 + 2 + 4 + 24 + 1 + 4 + 12 + 100}, Config{}, "truncated"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.srv.Types, c.srv.Name, c.srv.Frame = []byte{secNone}, "desk", frame
			srv := startFake(t, c.srv)
			c.cfg.Screenshot = true
			res := probe(t, New(c.cfg, &memStore{}), srv.port, 3*time.Second)
			if res.Status != probes.StatusSuccess || res.Data["title"] != "desk" || res.Data["width"] != 64 {
				t.Fatalf("status %q data %v", res.Status, res.Data)
			}
			errs, _ := res.Data["errors"].(map[string]string)
			if !strings.Contains(errs["screenshot"], c.errHas) {
				t.Fatalf("errors %v, want screenshot error containing %q", errs, c.errHas)
			}
			if _, ok := res.Data["screenshot"]; ok {
				t.Fatal("screenshot despite the error")
			}
		})
	}
	t.Run("screenshots disabled", func(t *testing.T) {
		srv := startFake(t, &fakeVNC{Types: []byte{secNone}, Name: "d", Frame: frame})
		res := probe(t, New(Config{}, &memStore{}), srv.port, 3*time.Second)
		if _, ok := res.Data["screenshot"]; ok || res.Status != probes.StatusSuccess || srv.gotEncodings.Load() != nil {
			t.Fatalf("status %q screenshot %v", res.Status, res.Data["screenshot"])
		}
	})
	t.Run("store fails", func(t *testing.T) {
		srv := startFake(t, &fakeVNC{Types: []byte{secNone}, Name: "d", Frame: frame})
		res := probe(t, New(Config{Screenshot: true}, &memStore{err: errors.New("disk full")}), srv.port, 3*time.Second)
		shot, _ := res.Data["screenshot"].(*Screenshot)
		if shot == nil || shot.Link != "" || shot.StoreError != "cannot store the screenshot: disk full" || shot.Width != 64 {
			t.Fatalf("screenshot %+v", shot)
		}
	})
}

// TestPerHostConnections: concurrent probes of one IP never hold more
// than two connections to it at once.
func TestPerHostConnections(t *testing.T) {
	srv := startFake(t, &fakeVNC{Types: []byte{secVeNCrypt, secNone}, Subtypes: []uint32{257}, Name: "d",
		Frame: testFrame(16, 8), Hold: 30 * time.Millisecond})
	m := New(Config{Screenshot: true}, nil)
	dialer := &countingDialer{}
	m.dialer = dialer
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := probe(t, m, srv.port, 10*time.Second)
			if res.Status != probes.StatusSuccess {
				t.Errorf("status %q %s", res.Status, res.Error)
			}
		}()
	}
	wg.Wait()
	if n := dialer.max.Load(); n != 2 {
		t.Fatalf("%d connections at once, want 2", n)
	}
	if n := dialer.open.Load(); n != 0 {
		t.Fatalf("%d connections left open", n)
	}
	if n := srv.accepted.Load(); n != 12 {
		t.Fatalf("%d connections for 6 probes of a None+VeNCrypt server", n)
	}
	m.gate.mu.Lock()
	defer m.gate.mu.Unlock()
	if len(m.gate.hosts) != 0 {
		t.Fatalf("gate keeps %d hosts", len(m.gate.hosts))
	}
}

func TestGateCanceled(t *testing.T) {
	g := newHostGate(1)
	release, err := g.acquire(context.Background(), "h")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := g.acquire(ctx, "h"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v", err)
	}
	release()
	release() // idempotent
	if len(g.hosts) != 0 {
		t.Fatalf("gate keeps %v", g.hosts)
	}
}

func TestConfig(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var c Config
	c.RegisterFlags(fs, "vnc.")
	if !reflect.DeepEqual(c, DefaultConfig()) || c.Validate() != nil {
		t.Fatalf("defaults %+v: %v", c, c.Validate())
	}
	if err := fs.Parse([]string{"-vnc.encodings", "raw,hextile", "-vnc.screenshot=false"}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Encodings, []string{"raw", "hextile"}) || c.Screenshot {
		t.Fatalf("parsed %+v", c)
	}
	bad := Config{Encodings: []string{"tight"}, PerHost: 3}
	err := bad.Validate()
	for _, want := range []string{"timeout", "max pixels", "per-host", `unknown vnc encoding "tight"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to mention %q", err, want)
		}
	}
}

func TestNoLeaks(t *testing.T) {
	srv := startFake(t, &fakeVNC{Types: []byte{secNone}, Name: "d", Frame: testFrame(30, 20)})
	before := runtime.NumGoroutine()
	var wg sync.WaitGroup
	m := New(Config{Screenshot: true}, nil)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, _ = m.Probe(ctx, probes.Target{IP: "127.0.0.1", Port: srv.port})
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+2 {
		t.Fatalf("%d goroutines after the probes, %d before", n, before)
	}
}

func drain(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(io.Discard, c)
}

// BenchmarkProbeFake measures whole probes with a 1024×768 ZRLE screenshot
// against the in-process server.
func BenchmarkProbeFake(b *testing.B) {
	srv := startFake(b, &fakeVNC{Types: []byte{secNone}, Name: "bench", Frame: testFrame(1024, 768)})
	m := New(Config{Screenshot: true}, nil)
	b.ReportAllocs()
	for b.Loop() {
		res := probe(b, m, srv.port, 10*time.Second)
		if _, ok := res.Data["screenshot"]; !ok {
			b.Fatalf("status %q %s %v", res.Status, res.Error, res.Data["errors"])
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "screenshots/s")
}

// countingDialer tracks the module's open connections.
type countingDialer struct {
	d                net.Dialer
	open, max, dials atomic.Int64
}

func (c *countingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := c.d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c.dials.Add(1)
	n := c.open.Add(1)
	for m := c.max.Load(); n > m && !c.max.CompareAndSwap(m, n); m = c.max.Load() {
	}
	return &countedConn{Conn: conn, c: c}, nil
}

type countedConn struct {
	net.Conn
	c    *countingDialer
	once sync.Once
}

func (cc *countedConn) Close() error {
	cc.once.Do(func() { cc.c.open.Add(-1) })
	return cc.Conn.Close()
}

// TestTightTunnels: the module asks for no tunnel when Tight lists tunnels,
// and stops (a step error, nothing answered) when NOTUNNEL is not among them.
func TestTightTunnels(t *testing.T) {
	with := startFake(t, &fakeVNC{Types: []byte{secTight}, TightTunnels: []tightCap{{1, "TGHT", "SOMETUNL"}, {0, "TGHT", "NOTUNNEL"}},
		TightAuths: []tightCap{{2, "STDV", "VNCAUTH_"}}})
	res := probe(t, New(Config{}, nil), with.port, 5*time.Second)
	if res.Status != probes.StatusSuccess || res.Data["errors"] != nil || with.gotTunnel.Load() != 0 {
		t.Fatalf("status %q errors %v, tunnel chosen %d", res.Status, res.Data["errors"], with.gotTunnel.Load())
	}
	without := startFake(t, &fakeVNC{Types: []byte{secTight}, TightTunnels: []tightCap{{1, "TGHT", "SOMETUNL"}}})
	res = probe(t, New(Config{}, nil), without.port, 5*time.Second)
	errs, _ := res.Data["errors"].(map[string]string)
	if res.Status != probes.StatusSuccess || !strings.Contains(errs["tight"], "NOTUNNEL") || without.gotTunnel.Load() != -1 ||
		without.sentAfterTypes.Load() {
		t.Fatalf("status %q errors %v, tunnel chosen %d", res.Status, res.Data["errors"], without.gotTunnel.Load())
	}
	types, _ := res.Data["security_types"].([]SecurityType)
	if len(types) != 1 || len(types[0].Tunnels) != 1 || types[0].Tunnels[0].Signature != "SOMETUNL" || types[0].Subtypes != nil {
		t.Fatalf("security types %+v", types)
	}
}
