package vnc

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"image"
	"image/color"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// fakeVNC is an in-process RFB server: it speaks the version, security
// and init phases as configured and encodes Frame in the first encoding
// of the client's list it knows (or Force).
type fakeVNC struct {
	Version    string // the 12-byte ProtocolVersion
	Types      []byte // offered types; in 3.3 Types[0] is the server's pick
	Reason     string // sent instead of types
	NoneResult uint32 // 3.8 SecurityResult for None
	NoneReason string
	Name       string
	Frame      *image.RGBA
	Split      bool  // send the frame as two updates, the second after a LastRect
	Force      int32 // encode in this encoding whatever the client offers (0: none)
	Subtypes   []uint32
	// TightTunnels and TightAuths are the Tight type's capability lists;
	// gotTunnel is the tunnel the client chose (-1: none).
	TightTunnels, TightAuths []tightCap
	Hold                     time.Duration // wait before the version (to overlap connections)
	// Truncate closes after this many bytes of the server's output (0: never).
	Truncate int

	gotTunnel                    atomic.Int64
	port                         int
	accepted                     atomic.Int64
	choseAuth, sentAfterTypes    atomic.Bool
	shared, leftPolitely         atomic.Int64
	gotPixelFormat, gotEncodings atomic.Value
}

func startFake(t testing.TB, f *fakeVNC) *fakeVNC {
	t.Helper()
	if f.Version == "" {
		f.Version = "RFB 003.008\n"
	}
	f.port = serve(t, func(c net.Conn) {
		f.accepted.Add(1)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		var w io.Writer = c
		if f.Truncate > 0 {
			w = &truncWriter{c: c, left: f.Truncate}
		}
		f.handle(c, w)
	})
	return f
}

// truncWriter closes the connection once left bytes went out.
type truncWriter struct {
	c    net.Conn
	left int
}

func (tw *truncWriter) Write(p []byte) (int, error) {
	if len(p) >= tw.left {
		n, _ := tw.c.Write(p[:tw.left])
		tw.left = 0
		tw.c.Close()
		return n, io.ErrClosedPipe
	}
	tw.left -= len(p)
	return tw.c.Write(p)
}

// tightCap is one Tight capability: code, vendor, signature.
type tightCap struct {
	Code      int32
	Vendor    string // 4 bytes
	Signature string // 8 bytes
}

func tightCaps(caps []tightCap) []byte {
	msg := u32(uint32(len(caps)))
	for _, c := range caps {
		msg = append(append(append(msg, u32(uint32(c.Code))...), c.Vendor...), c.Signature...)
	}
	return msg
}

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func text(s string) []byte { return append(u32(uint32(len(s))), s...) }

func (f *fakeVNC) handle(c net.Conn, w io.Writer) {
	time.Sleep(f.Hold)
	if _, err := w.Write([]byte(f.Version)); err != nil {
		return
	}
	var cv [12]byte
	if _, err := io.ReadFull(c, cv[:]); err != nil {
		return
	}
	minor := int(cv[10] - '0')
	var one [1]byte
	if minor == 3 {
		if f.Reason != "" {
			_, _ = w.Write(append(u32(0), text(f.Reason)...))
			return
		}
		_, _ = w.Write(u32(uint32(f.Types[0])))
		if f.Types[0] != secNone {
			if f.Types[0] == secVNCAuth {
				_, _ = w.Write(bytes.Repeat([]byte{0xab}, 16))
			}
			if n, _ := c.Read(one[:]); n > 0 {
				f.sentAfterTypes.Store(true)
			} else {
				f.leftPolitely.Add(1)
			}
			return
		}
	} else {
		if f.Reason != "" {
			_, _ = w.Write(append([]byte{0}, text(f.Reason)...))
			return
		}
		if _, err := w.Write(append([]byte{byte(len(f.Types))}, f.Types...)); err != nil {
			return
		}
		if _, err := io.ReadFull(c, one[:]); err != nil {
			f.leftPolitely.Add(1)
			return
		}
		switch one[0] {
		case secNone:
			if minor >= 8 {
				msg := u32(f.NoneResult)
				if f.NoneResult != 0 {
					msg = append(msg, text(f.NoneReason)...)
				}
				if _, err := w.Write(msg); err != nil || f.NoneResult != 0 {
					return
				}
			}
		case secVeNCrypt:
			_, _ = w.Write([]byte{0, 2})
			var v [2]byte
			if _, err := io.ReadFull(c, v[:]); err != nil || v != [2]byte{0, 2} {
				return
			}
			msg := []byte{0, byte(len(f.Subtypes))}
			for _, s := range f.Subtypes {
				msg = append(msg, u32(s)...)
			}
			_, _ = w.Write(msg)
			if n, _ := c.Read(one[:]); n > 0 {
				f.sentAfterTypes.Store(true)
			}
			return
		case secTight:
			f.gotTunnel.Store(-1)
			if _, err := w.Write(tightCaps(f.TightTunnels)); err != nil {
				return
			}
			if len(f.TightTunnels) > 0 {
				var tun [4]byte
				if _, err := io.ReadFull(c, tun[:]); err != nil {
					return
				}
				f.gotTunnel.Store(int64(binary.BigEndian.Uint32(tun[:])))
			}
			_, _ = w.Write(tightCaps(f.TightAuths))
			if n, _ := c.Read(one[:]); n > 0 {
				f.sentAfterTypes.Store(true) // an authentication choice
			}
			return
		default:
			f.choseAuth.Store(true)
			return
		}
	}
	if _, err := io.ReadFull(c, one[:]); err != nil {
		return
	}
	f.shared.Store(int64(one[0]))
	b := f.Frame.Rect.Size()
	init := binary.BigEndian.AppendUint16(nil, uint16(b.X))
	init = binary.BigEndian.AppendUint16(init, uint16(b.Y))
	// the server's native format: 16 bpp RGB565 big-endian
	init = append(init, 16, 16, 1, 1, 0, 31, 0, 63, 0, 31, 11, 5, 0, 0, 0, 0)
	init = append(init, text(f.Name)...)
	if _, err := w.Write(init); err != nil {
		return
	}
	f.serveFrames(c, w)
}

// serveFrames answers SetPixelFormat, SetEncodings and update requests.
func (f *fakeVNC) serveFrames(c net.Conn, w io.Writer) {
	var encs []int32
	var zw *zlibStream
	for {
		var t [1]byte
		if _, err := io.ReadFull(c, t[:]); err != nil {
			return
		}
		switch t[0] {
		case 0:
			var pf [19]byte
			if _, err := io.ReadFull(c, pf[:]); err != nil {
				return
			}
			f.gotPixelFormat.Store(pf[3:])
		case 2:
			var h [3]byte
			if _, err := io.ReadFull(c, h[:]); err != nil {
				return
			}
			n := int(binary.BigEndian.Uint16(h[1:]))
			raw := make([]byte, 4*n)
			if _, err := io.ReadFull(c, raw); err != nil {
				return
			}
			encs = encs[:0]
			for i := range n {
				encs = append(encs, int32(binary.BigEndian.Uint32(raw[4*i:])))
			}
			f.gotEncodings.Store(append([]int32(nil), encs...))
		case 3:
			var req [9]byte
			if _, err := io.ReadFull(c, req[:]); err != nil {
				return
			}
			enc := f.Force
			if enc == 0 {
				enc = pickEncoding(encs)
			}
			if enc == encZRLE && zw == nil {
				zw = newZlibStream()
			}
			fr := f.Frame.Rect
			if !f.Split {
				msg := []byte{0, 0, 0, 1}
				msg = appendRect(msg, f.Frame, fr, enc, zw)
				if _, err := w.Write(msg); err != nil {
					return
				}
				continue
			}
			// top half, then a LastRect ending the update early; the
			// bottom half comes in a second update
			top := image.Rect(0, 0, fr.Dx(), fr.Dy()/2)
			msg := []byte{0, 0, 0xff, 0xff}
			msg = appendRect(msg, f.Frame, top, enc, zw)
			msg = append(msg, 0, 0, 0, 0, 0, 0, 0, 0)
			msg = binary.BigEndian.AppendUint32(msg, uint32(0xffffff20)) // -224
			msg = append(msg, 0, 0, 0, 1)
			bottom := image.Rect(0, fr.Dy()/2, fr.Dx(), fr.Dy())
			if enc == encCopyRect {
				// the bottom half repeats the top: copy it
				msg = appendRectHeader(msg, bottom, encCopyRect)
				msg = binary.BigEndian.AppendUint16(msg, 0)
				msg = binary.BigEndian.AppendUint16(msg, 0)
			} else {
				msg = appendRect(msg, f.Frame, bottom, enc, zw)
			}
			if _, err := w.Write(msg); err != nil {
				return
			}
		default:
			return
		}
	}
}

func pickEncoding(offered []int32) int32 {
	for _, e := range offered {
		switch e {
		case encRaw, encRRE, encHextile, encZRLE:
			return e
		}
	}
	return encRaw
}

func appendRectHeader(b []byte, r image.Rectangle, enc int32) []byte {
	for _, v := range []int{r.Min.X, r.Min.Y, r.Dx(), r.Dy()} {
		b = binary.BigEndian.AppendUint16(b, uint16(v))
	}
	return binary.BigEndian.AppendUint32(b, uint32(enc))
}

// pix is a pixel in the module's requested format: B, G, R, 0.
func pix(img *image.RGBA, x, y int) []byte {
	c := img.RGBAAt(x, y)
	return []byte{c.B, c.G, c.R, 0}
}

func appendRect(b []byte, img *image.RGBA, r image.Rectangle, enc int32, zw *zlibStream) []byte {
	if enc == encCopyRect {
		enc = encRaw // CopyRect needs something on screen to copy from first
	}
	b = appendRectHeader(b, r, enc)
	switch enc {
	case encRaw:
		for y := r.Min.Y; y < r.Max.Y; y++ {
			for x := r.Min.X; x < r.Max.X; x++ {
				b = append(b, pix(img, x, y)...)
			}
		}
	case encRRE:
		bg := img.RGBAAt(r.Min.X, r.Min.Y)
		var subs []byte
		n := 0
		for y := r.Min.Y; y < r.Max.Y; y++ {
			for x := r.Min.X; x < r.Max.X; x++ {
				if img.RGBAAt(x, y) != bg {
					n++
					subs = append(subs, pix(img, x, y)...)
					for _, v := range []int{x - r.Min.X, y - r.Min.Y, 1, 1} {
						subs = binary.BigEndian.AppendUint16(subs, uint16(v))
					}
				}
			}
		}
		b = append(b, u32(uint32(n))...)
		b = append(b, pix(img, r.Min.X, r.Min.Y)...)
		b = append(b, subs...)
	case encHextile:
		b = appendHextile(b, img, r)
	case encZRLE:
		data := zw.compress(zrleTiles(img, r))
		b = append(b, u32(uint32(len(data)))...)
		b = append(b, data...)
	}
	return b
}

// appendHextile sends tiles in turn as raw, as background + coloured
// subrectangles, and as background + foreground subrectangles.
func appendHextile(b []byte, img *image.RGBA, r image.Rectangle) []byte {
	i := 0
	for ty := r.Min.Y; ty < r.Max.Y; ty += 16 {
		for tx := r.Min.X; tx < r.Max.X; tx += 16 {
			tile := image.Rect(tx, ty, min(tx+16, r.Max.X), min(ty+16, r.Max.Y))
			bg := img.RGBAAt(tx, ty)
			var others []image.Point
			colours := map[color.RGBA]bool{}
			for y := tile.Min.Y; y < tile.Max.Y; y++ {
				for x := tile.Min.X; x < tile.Max.X; x++ {
					if c := img.RGBAAt(x, y); c != bg {
						others = append(others, image.Pt(x, y))
						colours[c] = true
					}
				}
			}
			i++
			switch {
			case i%3 == 0 || len(others) > 255:
				b = append(b, hextileRaw)
				for y := tile.Min.Y; y < tile.Max.Y; y++ {
					for x := tile.Min.X; x < tile.Max.X; x++ {
						b = append(b, pix(img, x, y)...)
					}
				}
			case len(colours) == 1 && i%3 == 1:
				b = append(b, hextileBackground|hextileForeground|hextileAnySubrects)
				b = append(b, pix(img, tx, ty)...)
				b = append(b, pix(img, others[0].X, others[0].Y)...)
				b = append(b, byte(len(others)))
				for _, p := range others {
					b = append(b, byte((p.X-tx)<<4|(p.Y-ty)), 0)
				}
			default:
				flags := byte(hextileBackground)
				if len(others) > 0 {
					flags |= hextileAnySubrects | hextileSubrectsColoured
				}
				b = append(b, flags)
				b = append(b, pix(img, tx, ty)...)
				if len(others) > 0 {
					b = append(b, byte(len(others)))
					for _, p := range others {
						b = append(b, pix(img, p.X, p.Y)...)
						b = append(b, byte((p.X-tx)<<4|(p.Y-ty)), 0)
					}
				}
			}
		}
	}
	return b
}

func cpix(c color.RGBA) []byte { return []byte{c.B, c.G, c.R} }

// zrleTiles is the uncompressed ZRLE data of r: each 64×64 tile solid when
// it has one colour, else in turn raw, packed palette, plain RLE and
// palette RLE (falling back to raw when a palette would not fit).
func zrleTiles(img *image.RGBA, r image.Rectangle) []byte {
	var b []byte
	i := 0
	for ty := r.Min.Y; ty < r.Max.Y; ty += 64 {
		for tx := r.Min.X; tx < r.Max.X; tx += 64 {
			tile := image.Rect(tx, ty, min(tx+64, r.Max.X), min(ty+64, r.Max.Y))
			var px []color.RGBA
			index := map[color.RGBA]int{}
			var palette []color.RGBA
			for y := tile.Min.Y; y < tile.Max.Y; y++ {
				for x := tile.Min.X; x < tile.Max.X; x++ {
					c := img.RGBAAt(x, y)
					px = append(px, c)
					if _, ok := index[c]; !ok {
						index[c] = len(palette)
						palette = append(palette, c)
					}
				}
			}
			i++
			mode := i % 4
			switch {
			case len(palette) == 1:
				b = append(b, 1)
				b = append(b, cpix(palette[0])...)
				continue
			case mode == 1 && len(palette) > 16, mode == 3 && len(palette) > 127:
				mode = 0
			}
			switch mode {
			case 0:
				b = append(b, 0)
				for _, c := range px {
					b = append(b, cpix(c)...)
				}
			case 1:
				b = append(b, byte(len(palette)))
				for _, c := range palette {
					b = append(b, cpix(c)...)
				}
				bits := 4
				if len(palette) == 2 {
					bits = 1
				} else if len(palette) <= 4 {
					bits = 2
				}
				w := tile.Dx()
				for y := range tile.Dy() {
					row := make([]byte, (w*bits+7)/8)
					for x := range w {
						bit := x * bits
						row[bit/8] |= byte(index[px[y*w+x]] << (8 - bits - bit%8))
					}
					b = append(b, row...)
				}
			case 2, 3:
				if mode == 2 {
					b = append(b, 128)
				} else {
					b = append(b, byte(128+len(palette)))
					for _, c := range palette {
						b = append(b, cpix(c)...)
					}
				}
				for j := 0; j < len(px); {
					run := 1
					for j+run < len(px) && px[j+run] == px[j] {
						run++
					}
					if mode == 2 {
						b = append(b, cpix(px[j])...)
						b = appendRun(b, run)
					} else if run == 1 {
						b = append(b, byte(index[px[j]]))
					} else {
						b = append(b, byte(index[px[j]]|128))
						b = appendRun(b, run)
					}
					j += run
				}
			}
		}
	}
	return b
}

func appendRun(b []byte, run int) []byte {
	for run -= 1; run >= 255; run -= 255 {
		b = append(b, 255)
	}
	return append(b, byte(run))
}

// zlibStream is one zlib stream over a connection, sync-flushed per
// rectangle as RFB servers do.
type zlibStream struct {
	buf bytes.Buffer
	zw  *zlib.Writer
}

func newZlibStream() *zlibStream {
	z := &zlibStream{}
	z.zw = zlib.NewWriter(&z.buf)
	return z
}

func (z *zlibStream) compress(p []byte) []byte {
	z.buf.Reset()
	_, _ = z.zw.Write(p)
	_ = z.zw.Flush()
	return bytes.Clone(z.buf.Bytes())
}

// testFrame is width×height of flat colour regions with a gradient block,
// so every encoding's every path has something to do; its bottom half
// repeats its top half (for CopyRect).
func testFrame(width, height int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	palette := []color.RGBA{{255, 0, 0, 255}, {0, 128, 0, 255}, {0, 0, 255, 255}, {250, 250, 250, 255}, {10, 20, 30, 255}}
	half := height / 2
	for y := range height {
		sy := y % half
		for x := range width {
			c := palette[(x/9+sy/7)%len(palette)]
			switch {
			case x >= 64 && sy < 20:
				c = color.RGBA{uint8(x * 2), uint8(sy * 11), 77, 255}
			case x < 32 && sy < 16:
				c = palette[0] // a flat corner: solid tiles and plain hextile
				if x == 5 && sy == 5 || x == 9 && sy == 2 {
					c = palette[2]
				}
			}
			img.SetRGBA(x, y, c)
		}
	}
	return img
}
