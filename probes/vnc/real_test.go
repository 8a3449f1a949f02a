package vnc

import (
	"context"
	"fmt"
	"image"
	"image/color"
	"os"
	"os/user"
	"reflect"
	"strconv"
	"testing"
	"time"

	"trawl/probes"
	"trawl/probes/probetest"
)

// solid is a w×h frame of one colour given as "#rrggbb".
func solid(t testing.TB, w, h int, hex string) *image.RGBA {
	t.Helper()
	v, err := strconv.ParseUint(hex[1:], 16, 32)
	if err != nil || len(hex) != 7 {
		t.Fatalf("colour %q", hex)
	}
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	c := color.RGBA{uint8(v >> 16), uint8(v >> 8), uint8(v), 255}
	for y := range h {
		for x := range w {
			img.SetRGBA(x, y, c)
		}
	}
	return img
}

// probeReal probes srv with cfg and a counting dialer; it returns the
// result and the connections the probe opened.
func probeReal(t testing.TB, h *probetest.Harness, srv *probetest.VNCServer, cfg Config, store ScreenshotStore) (probes.Result, int64) {
	t.Helper()
	m := New(cfg, store)
	d := &countingDialer{}
	m.dialer = d
	var opened int64
	res := probeAt(t, m, h.IP().String(), srv.Port, 10*time.Second)
	opened = d.dials.Load()
	if d.open.Load() != 0 {
		t.Fatalf("%d connections left open", d.open.Load())
	}
	return res, opened
}

// tigerFormat is Xtigervnc's native format at depth 24 on little-endian
// hosts.
var tigerFormat = PixelFormat{BitsPerPixel: 32, Depth: 24, TrueColour: true, RedMax: 255, GreenMax: 255, BlueMax: 255,
	RedShift: 16, GreenShift: 8}

// TestRealServers probes TigerVNC (no auth, password, None+VeNCrypt, and
// one that bans), TightVNC (no auth, password) and x11vnc on Xvfb in a
// namespace, checking every field
// against how the harness configured them and every screenshot pixel
// against the root window colour it painted.
func TestRealServers(t *testing.T) {
	h := probetest.New(t)
	tigerNone := h.StartTigerVNC(probetest.VNCOptions{Port: 5901, Desktop: "trawl tiger none", Width: 333, Height: 211,
		Background: "#ff0000", SecurityTypes: "None"})
	tigerAuth := h.StartTigerVNC(probetest.VNCOptions{Port: 5902, Desktop: "trawl tiger auth", Width: 320, Height: 200,
		Background: "#0000ff", SecurityTypes: "VncAuth", Password: "s3cret-pw"})
	tigerMixed := h.StartTigerVNC(probetest.VNCOptions{Port: 5903, Desktop: "trawl tiger mixed", Width: 200, Height: 100,
		Background: "#123456", SecurityTypes: "None,TLSNone,TLSVnc,VncAuth", Password: "s3cret-pw"})
	tigerBans := h.StartTigerVNC(probetest.VNCOptions{Port: 5904, Desktop: "trawl tiger bans", Width: 320, Height: 200,
		SecurityTypes: "VncAuth", Password: "s3cret-pw", Args: []string{"-BlacklistThreshold", "1", "-BlacklistTimeout", "60"}})
	x11 := h.StartX11VNC(probetest.VNCOptions{Port: 5910, Desktop: "trawl x11vnc", Width: 301, Height: 199, Background: "#00ff7f",
		Args: []string{"-nocursor"}}) // x11vnc would draw the pointer into the framebuffer
	tightNone := h.StartTightVNC(probetest.VNCOptions{Port: 5920, Desktop: "trawl tight none", Width: 240, Height: 150,
		Background: "#ffa500"})
	tightAuth := h.StartTightVNC(probetest.VNCOptions{Port: 5921, Desktop: "trawl tight auth", Width: 320, Height: 200,
		Password: "s3cret-pw"})

	// TightVNC without a password: None for the screenshot, then Tight's
	// capabilities on a second connection (it lists no authentication).
	// It announces "<user>'s <desktop> desktop (<host>:<display>)".
	host, _ := os.Hostname()
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	tightTitle := fmt.Sprintf("%s's %s desktop (%s:%d)", me.Username, tightNone.Options.Desktop, host, tightNone.Display)
	for _, enc := range []string{"raw", "hextile", "rre", "copyrect"} {
		t.Run("tightvnc none/"+enc, func(t *testing.T) {
			store := &memStore{}
			res, conns := probeReal(t, h, tightNone, Config{Screenshot: true, Encodings: []string{enc}}, store)
			want := map[string]any{"version": "RFB 003.008", "protocol": "3.8", "title": tightTitle, "width": 240,
				"height": 150, "auth_enabled": false, "pixel_format": tigerFormat,
				"security_types": []SecurityType{{ID: 1, Name: "None"}, {ID: 16, Name: "Tight", NoAuthentication: true}}}
			checkReal(t, res, want, conns, 2, "msg")
			samePixels(t, screenshotImage(t, res, store), solid(t, 240, 150, "#ffa500"))
		})
	}
	t.Run("tightvnc password", func(t *testing.T) {
		res, conns := probeReal(t, h, tightAuth, Config{Screenshot: true}, &memStore{})
		want := map[string]any{"version": "RFB 003.008", "protocol": "3.8", "auth_enabled": true,
			"security_types": []SecurityType{{ID: 2, Name: "VNC Authentication"}, {ID: 16, Name: "Tight",
				Subtypes: []SecurityType{{ID: 2, Name: "VNC Authentication", Vendor: "STDV", Signature: "VNCAUTH_"}}}}}
		checkReal(t, res, want, conns, 1, "title", "width", "screenshot", "msg")
	})

	noAuth := []SecurityType{{ID: 1, Name: "None"}}
	for _, srv := range []*probetest.VNCServer{tigerNone, x11} {
		for _, enc := range []string{"raw", "hextile", "rre", "zrle", "copyrect"} {
			t.Run(srv.Name+"/"+enc, func(t *testing.T) {
				store := &memStore{}
				res, conns := probeReal(t, h, srv, Config{Screenshot: true, Encodings: []string{enc}}, store)
				if res.Status != probes.StatusSuccess || res.Data["errors"] != nil {
					t.Fatalf("status %q %s errors %v", res.Status, res.Error, res.Data["errors"])
				}
				o := srv.Options
				want := map[string]any{"version": "RFB 003.008", "protocol": "3.8", "title": o.Desktop, "width": o.Width,
					"height": o.Height, "security_types": noAuth, "auth_enabled": false}
				if srv == tigerNone {
					want["pixel_format"] = tigerFormat
				}
				for k, v := range want {
					if !reflect.DeepEqual(res.Data[k], v) {
						t.Errorf("%s = %#v, want %#v", k, res.Data[k], v)
					}
				}
				samePixels(t, screenshotImage(t, res, store), solid(t, o.Width, o.Height, o.Background))
				if conns != 1 {
					t.Fatalf("%d connections", conns)
				}
			})
		}
	}
	t.Run("tigervnc password", func(t *testing.T) {
		res, conns := probeReal(t, h, tigerAuth, Config{Screenshot: true}, &memStore{})
		want := map[string]any{"version": "RFB 003.008", "protocol": "3.8", "auth_enabled": true,
			"security_types": []SecurityType{{ID: 2, Name: "VNC Authentication"}}}
		checkReal(t, res, want, conns, 1, "title", "width", "screenshot", "msg")
	})
	t.Run("tigervnc none and vencrypt", func(t *testing.T) {
		store := &memStore{}
		res, conns := probeReal(t, h, tigerMixed, Config{Screenshot: true}, store)
		want := map[string]any{"version": "RFB 003.008", "auth_enabled": false, "title": "trawl tiger mixed",
			"width": 200, "height": 100, "pixel_format": tigerFormat,
			"security_types": []SecurityType{{ID: 19, Name: "VeNCrypt", Version: "0.2", Subtypes: []SecurityType{
				{ID: 1, Name: "None"}, {ID: 257, Name: "TLSNone"}, {ID: 258, Name: "TLSVnc"}, {ID: 2, Name: "VNC Authentication"}}},
				{ID: 1, Name: "None"}, {ID: 2, Name: "VNC Authentication"}}}
		checkReal(t, res, want, conns, 2, "msg")
		samePixels(t, screenshotImage(t, res, store), solid(t, 200, 100, "#123456"))
	})
	t.Run("tigervnc bans", func(t *testing.T) {
		res, conns := probeReal(t, h, tigerBans, Config{}, nil)
		checkReal(t, res, map[string]any{"auth_enabled": true}, conns, 1, "msg")
		// one aborted connection is TigerVNC's -BlacklistThreshold here:
		// the next one is told why it is refused, in RFB 3.3
		res, conns = probeReal(t, h, tigerBans, Config{}, nil)
		checkReal(t, res, map[string]any{"version": "RFB 003.003", "protocol": "3.3", "msg": "Too many security failures",
			"security_types": []SecurityType(nil)}, conns, 1, "auth_enabled", "title")
	})
}

func checkReal(t *testing.T, res probes.Result, want map[string]any, conns, wantConns int64, absent ...string) {
	t.Helper()
	if res.Status != probes.StatusSuccess || res.Data["errors"] != nil {
		t.Fatalf("status %q %s errors %v", res.Status, res.Error, res.Data["errors"])
	}
	for k, v := range want {
		if !reflect.DeepEqual(res.Data[k], v) {
			t.Errorf("%s = %#v, want %#v", k, res.Data[k], v)
		}
	}
	for _, k := range absent {
		if v, ok := res.Data[k]; ok {
			t.Errorf("%s = %#v, want none", k, v)
		}
	}
	if conns != wantConns {
		t.Fatalf("%d connections, want %d", conns, wantConns)
	}
}

// BenchmarkTigerVNC measures handshakes (version, types, ServerInit) and
// whole probes with a 1024×768 screenshot per second against Xtigervnc.
func BenchmarkTigerVNC(b *testing.B) {
	h := probetest.New(b)
	srv := h.StartTigerVNC(probetest.VNCOptions{Port: 5901, Desktop: "bench", Width: 1024, Height: 768,
		Background: "#336699", SecurityTypes: "None"})
	for _, c := range []struct {
		name   string
		cfg    Config
		metric string
	}{
		{"handshake", Config{}, "handshakes/s"},
		{"screenshot zrle", Config{Screenshot: true}, "screenshots/s"},
		{"screenshot raw", Config{Screenshot: true, Encodings: []string{"raw"}}, "screenshots/s"},
	} {
		b.Run(c.name, func(b *testing.B) {
			m := New(c.cfg, nil)
			target := probes.Target{IP: h.IP().String(), Port: srv.Port}
			b.ReportAllocs()
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				res, err := m.Probe(ctx, target)
				cancel()
				if err != nil || res.Status != probes.StatusSuccess || res.Data["errors"] != nil {
					b.Fatalf("status %q %s %v %v", res.Status, res.Error, res.Data["errors"], err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), c.metric)
		})
	}
}
