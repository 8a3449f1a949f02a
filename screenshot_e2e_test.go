package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"trawl/ingest"
	"trawl/probes/probetest"
)

// rfbOn serves a minimal RFB 3.8 desktop without authentication on a free
// loopback port: w×h pixels, pixel (x, y) coloured (x*40, y*40, 200), sent
// as one Raw rectangle in the client's 32-bit little-endian format.
func rfbOn(t *testing.T, w, h int) int {
	t.Helper()
	return probetest.Serve(t, func(c net.Conn) { serveRFB(c, w, h) })
}

func serveRFB(c net.Conn, w, h int) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	var version [12]byte
	if _, err := c.Write([]byte("RFB 003.008\n")); err != nil {
		return
	}
	if _, err := io.ReadFull(r, version[:]); err != nil {
		return
	}
	c.Write([]byte{1, 1}) // one security type: None
	if kind, err := r.ReadByte(); err != nil || kind != 1 {
		return
	}
	c.Write([]byte{0, 0, 0, 0})             // SecurityResult: OK
	if _, err := r.ReadByte(); err != nil { // ClientInit
		return
	}
	name := "scaled-out desk"
	init := binary.BigEndian.AppendUint16(nil, uint16(w))
	init = binary.BigEndian.AppendUint16(init, uint16(h))
	init = append(init, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0)
	init = binary.BigEndian.AppendUint32(init, uint32(len(name)))
	c.Write(append(init, name...))
	for {
		t, err := r.ReadByte()
		if err != nil {
			return
		}
		switch t {
		case 0: // SetPixelFormat: the client asks for what ServerInit offered
			r.Discard(19)
		case 2: // SetEncodings
			var hdr [3]byte
			io.ReadFull(r, hdr[:])
			r.Discard(4 * int(binary.BigEndian.Uint16(hdr[1:])))
		case 3: // FramebufferUpdateRequest: the whole screen, Raw
			r.Discard(9)
			msg := []byte{0, 0, 0, 1, 0, 0, 0, 0}
			msg = binary.BigEndian.AppendUint16(msg, uint16(w))
			msg = binary.BigEndian.AppendUint16(msg, uint16(h))
			msg = append(msg, 0, 0, 0, 0) // Raw
			for y := range h {
				for x := range w {
					msg = append(msg, 200, byte(y*40), byte(x*40), 0) // B, G, R, pad
				}
			}
			c.Write(msg)
		default:
			return
		}
	}
}

// checkScreenshotLink runs a grab job with the vnc module against a fake
// desktop and fetches the screenshot through the link in its result: a
// worker of its own publishes it, the api node stores and serves it.
func checkScreenshotLink(t *testing.T, ctx context.Context, apiURL, token string) {
	t.Helper()
	const w, h = 5, 3
	port := rfbOn(t, w, h)
	body := fmt.Sprintf(`{"type":"grab","options":[{"targets":["127.0.0.1"],"ports":[{"port":%d,"modules":["vnc"]}]}]}`, port)
	var created struct {
		JobID     string `json:"job_id"`
		StreamURL string `json:"stream_url"`
	}
	if code := doJSON(t, "POST", apiURL+"/v1/tasks", token, nil, body, &created); code != 200 {
		t.Fatalf("POST vnc grab task: %d", code)
	}
	events := collectJob(t, ndjson(t, ctx, created.StreamURL, token), 60*time.Second)
	var shot struct {
		Link   string `json:"link"`
		SHA256 string `json:"sha256"`
		Width  int    `json:"width"`
		Height int    `json:"height"`
		Error  string `json:"store_error"`
	}
	found := false
	for _, e := range events {
		if e.Origin.Module == ingest.ModuleGrabber && e.Origin.Type == "vnc" {
			var data struct {
				Screenshot json.RawMessage `json:"screenshot"`
			}
			if err := json.Unmarshal(e.Result.Data, &data); err != nil || json.Unmarshal(data.Screenshot, &shot) != nil {
				t.Fatalf("vnc result without a screenshot: %s", e.Result.Data)
			}
			found = true
		}
	}
	if !found || shot.Error != "" || shot.Width != w || shot.Height != h || !strings.HasPrefix(shot.Link, apiURL+"/v1/tasks/"+created.JobID+"/screenshots/") {
		t.Fatalf("screenshot %+v (found %v), want a %dx%d one linked under %s", shot, found, w, h, apiURL)
	}
	// the blob may still be on its way to the api node
	deadline := time.Now().Add(20 * time.Second)
	for {
		req, _ := http.NewRequest("GET", shot.Link, nil)
		req.Header.Set("X-Token", token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 {
			img, err := png.Decode(bytes.NewReader(b))
			if err != nil || img.Bounds().Dx() != w || img.Bounds().Dy() != h {
				t.Fatalf("served screenshot: %v %v", err, img)
			}
			r, g, bl, _ := img.At(4, 2).RGBA()
			if r>>8 != 160 || g>>8 != 80 || bl>>8 != 200 {
				t.Fatalf("pixel (4,2) = %d,%d,%d, want 160,80,200", r>>8, g>>8, bl>>8)
			}
			t.Logf("screenshot %s served by the api node (%d bytes)", shot.SHA256[:12], len(b))
			return
		}
		if resp.StatusCode != 404 || time.Now().After(deadline) {
			t.Fatalf("GET %s: %d %s", shot.Link, resp.StatusCode, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
