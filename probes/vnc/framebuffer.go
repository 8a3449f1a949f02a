package vnc

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"strings"
	"sync"

	"trawl/probes"
)

// RFB encodings the module decodes, and the LastRect pseudo-encoding that
// lets a server end an update early.
const (
	encRaw      = 0
	encCopyRect = 1
	encRRE      = 2
	encHextile  = 5
	encZRLE     = 16
	encLastRect = -224
)

var encodingByName = map[string]int32{
	"raw": encRaw, "copyrect": encCopyRect, "rre": encRRE, "hextile": encHextile, "zrle": encZRLE,
}

// encodingIDs maps encoding names to ids; Raw is always offered last, as
// RFC 6143 §7.7 requires servers to support it.
func encodingIDs(names []string) ([]int32, error) {
	var ids []int32
	seen := map[int32]bool{}
	for _, n := range names {
		id, ok := encodingByName[strings.ToLower(strings.TrimSpace(n))]
		if !ok {
			return nil, fmt.Errorf("unknown vnc encoding %q (want zrle, hextile, rre, copyrect, raw)", n)
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// Server-to-client message types.
const (
	msgFramebufferUpdate   = 0
	msgSetColourMapEntries = 1
	msgBell                = 2
	msgServerCutText       = 3
)

// maxRects bounds the rectangles of a capture: a server sending endless
// tiny updates is stopped by this or by the byte budget.
const maxRects = 1 << 20

// maxRequests bounds the full-screen requests of a capture.
const maxRequests = 4

// The pixel format the module asks for: 32 bpp, depth 24, little-endian
// true colour, so a pixel arrives as B, G, R, padding (and a ZRLE CPIXEL
// as B, G, R).
var clientPixelFormat = [16]byte{32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0}

// capture asks for the whole framebuffer and decodes updates until every
// pixel has been painted.
func (s *session) capture(width, height int, encodings []int32, maxPixels int) (*image.RGBA, error) {
	msg := make([]byte, 0, 64)
	msg = append(msg, 0, 0, 0, 0) // SetPixelFormat
	msg = append(msg, clientPixelFormat[:]...)
	msg = append(msg, 2, 0) // SetEncodings
	msg = binary.BigEndian.AppendUint16(msg, uint16(len(encodings)+1))
	for _, e := range encodings {
		msg = binary.BigEndian.AppendUint32(msg, uint32(e))
	}
	lastRect := int32(encLastRect)
	msg = binary.BigEndian.AppendUint32(msg, uint32(lastRect))
	msg = append(msg, 3, 0, 0, 0, 0, 0) // FramebufferUpdateRequest, full, at 0,0
	msg = binary.BigEndian.AppendUint16(msg, uint16(width))
	msg = binary.BigEndian.AppendUint16(msg, uint16(height))
	if _, err := s.conn.Write(msg); err != nil {
		return nil, fmt.Errorf("cannot request the framebuffer: %w", err)
	}
	request := msg[len(msg)-10:]
	requests := 1
	s.limiter.left = int64(width)*int64(height)*8 + 1<<20

	d := &decoder{w: &s.w, fb: image.NewRGBA(image.Rect(0, 0, width, height)), cov: newCoverage(width, height)}
	for rects := 0; !d.cov.full(); {
		t := s.w.u8()
		if s.w.err != nil {
			return nil, fmt.Errorf("cannot read a server message: %w", s.w.err)
		}
		switch t {
		case msgFramebufferUpdate:
			s.w.skip(1)
			n := s.w.u16()
			for i := 0; i < n && s.w.err == nil; i++ {
				if rects++; rects > maxRects {
					return nil, fmt.Errorf("more than %d rectangles: %w", maxRects, probes.ErrProtocol)
				}
				last, err := d.rect()
				if err != nil {
					return nil, err
				}
				if last {
					break
				}
			}
			if s.w.err == nil && !d.cov.full() && requests < maxRequests {
				// the server answered with part of the screen: ask again
				requests++
				if _, err := s.conn.Write(request); err != nil {
					return nil, fmt.Errorf("cannot request the framebuffer: %w", err)
				}
			}
		case msgSetColourMapEntries:
			s.w.skip(3)
			s.w.skip(s.w.u16() * 6)
		case msgBell:
		case msgServerCutText:
			s.w.skip(3)
			n := s.w.u32()
			if n > maxReason {
				return nil, fmt.Errorf("cut text of %d bytes: %w", n, probes.ErrProtocol)
			}
			s.w.skip(int(n))
		default:
			return nil, fmt.Errorf("unknown server message type %d: %w", t, probes.ErrProtocol)
		}
		if s.w.err != nil {
			return nil, fmt.Errorf("cannot read a framebuffer update: %w", s.w.err)
		}
	}
	return d.fb, nil
}

// decoder paints rectangles into fb.
type decoder struct {
	w    *wire
	fb   *image.RGBA
	cov  *coverage
	buf  []byte
	zrle *zrleStream
}

// rect decodes one rectangle; last reports a LastRect marker.
func (d *decoder) rect() (last bool, err error) {
	x, y, w, h := d.w.u16(), d.w.u16(), d.w.u16(), d.w.u16()
	enc := int32(d.w.u32())
	if d.w.err != nil {
		return false, fmt.Errorf("cannot read a rectangle header: %w", d.w.err)
	}
	if enc == encLastRect {
		return true, nil
	}
	r := image.Rect(x, y, x+w, y+h)
	if !r.In(d.fb.Rect) {
		return false, fmt.Errorf("rectangle %v outside the %v framebuffer: %w", r, d.fb.Rect.Size(), probes.ErrProtocol)
	}
	switch enc {
	case encRaw:
		err = d.raw(r)
	case encCopyRect:
		err = d.copyRect(r)
	case encRRE:
		err = d.rre(r)
	case encHextile:
		err = d.hextile(r)
	case encZRLE:
		err = d.zrleRect(r)
	default:
		return false, fmt.Errorf("rectangle in encoding %d the module did not offer: %w", enc, probes.ErrProtocol)
	}
	if err == nil {
		err = d.w.err
	}
	if err != nil {
		return false, fmt.Errorf("cannot decode a rectangle (encoding %d): %w", enc, err)
	}
	d.cov.add(r)
	return false, nil
}

func (d *decoder) take(n int) []byte {
	if cap(d.buf) < n {
		d.buf = make([]byte, n)
	}
	d.buf = d.buf[:n]
	d.w.full(d.buf)
	return d.buf
}

// pixel reads one 4-byte pixel as RGBA.
func (d *decoder) pixel() [4]byte {
	var b [4]byte
	d.w.full(b[:])
	return [4]byte{b[2], b[1], b[0], 255}
}

func (d *decoder) fill(r image.Rectangle, c [4]byte) {
	for y := r.Min.Y; y < r.Max.Y; y++ {
		row := d.fb.Pix[d.fb.PixOffset(r.Min.X, y):d.fb.PixOffset(r.Max.X, y)]
		for i := 0; i < len(row); i += 4 {
			copy(row[i:i+4], c[:])
		}
	}
}

// paint copies 4-byte B, G, R, X pixels, row by row, into r.
func (d *decoder) paint(r image.Rectangle, src []byte) {
	i := 0
	for y := r.Min.Y; y < r.Max.Y; y++ {
		row := d.fb.Pix[d.fb.PixOffset(r.Min.X, y):d.fb.PixOffset(r.Max.X, y)]
		for o := 0; o < len(row); o += 4 {
			row[o], row[o+1], row[o+2], row[o+3] = src[i+2], src[i+1], src[i], 255
			i += 4
		}
	}
}

func (d *decoder) raw(r image.Rectangle) error {
	// row by row: a full raw frame need not sit in memory twice
	for y := r.Min.Y; y < r.Max.Y; y++ {
		src := d.take(r.Dx() * 4)
		if d.w.err != nil {
			return d.w.err
		}
		d.paint(image.Rect(r.Min.X, y, r.Max.X, y+1), src)
	}
	return nil
}

func (d *decoder) copyRect(r image.Rectangle) error {
	sx, sy := d.w.u16(), d.w.u16()
	if d.w.err != nil {
		return d.w.err
	}
	src := image.Rect(sx, sy, sx+r.Dx(), sy+r.Dy())
	if !src.In(d.fb.Rect) {
		return fmt.Errorf("copy source %v outside the framebuffer: %w", src, probes.ErrProtocol)
	}
	// rows in the order that never reads a row already overwritten
	n := r.Dx() * 4
	for i := range r.Dy() {
		row := i
		if sy < r.Min.Y {
			row = r.Dy() - 1 - i
		}
		from := d.fb.PixOffset(sx, sy+row)
		to := d.fb.PixOffset(r.Min.X, r.Min.Y+row)
		copy(d.fb.Pix[to:to+n], d.fb.Pix[from:from+n])
	}
	return nil
}

func (d *decoder) rre(r image.Rectangle) error {
	n := d.w.u32()
	bg := d.pixel()
	if d.w.err != nil {
		return d.w.err
	}
	if int64(n) > int64(r.Dx())*int64(r.Dy()) {
		return fmt.Errorf("%d subrectangles in %v: %w", n, r.Size(), probes.ErrProtocol)
	}
	d.fill(r, bg)
	for range n {
		c := d.pixel()
		x, y, w, h := d.w.u16(), d.w.u16(), d.w.u16(), d.w.u16()
		if d.w.err != nil {
			return d.w.err
		}
		sub := image.Rect(x, y, x+w, y+h).Add(r.Min)
		if !sub.In(r) {
			return fmt.Errorf("subrectangle %v outside %v: %w", sub, r, probes.ErrProtocol)
		}
		d.fill(sub, c)
	}
	return nil
}

// Hextile subencoding flags.
const (
	hextileRaw              = 1
	hextileBackground       = 2
	hextileForeground       = 4
	hextileAnySubrects      = 8
	hextileSubrectsColoured = 16
)

func (d *decoder) hextile(r image.Rectangle) error {
	var bg, fg [4]byte
	for ty := r.Min.Y; ty < r.Max.Y; ty += 16 {
		for tx := r.Min.X; tx < r.Max.X; tx += 16 {
			tile := image.Rect(tx, ty, min(tx+16, r.Max.X), min(ty+16, r.Max.Y))
			flags := d.w.u8()
			if d.w.err != nil {
				return d.w.err
			}
			if flags&hextileRaw != 0 {
				src := d.take(tile.Dx() * tile.Dy() * 4)
				if d.w.err != nil {
					return d.w.err
				}
				d.paint(tile, src)
				continue
			}
			if flags&hextileBackground != 0 {
				bg = d.pixel()
			}
			d.fill(tile, bg)
			if flags&hextileForeground != 0 {
				fg = d.pixel()
			}
			if flags&hextileAnySubrects == 0 {
				continue
			}
			n := d.w.u8()
			for range n {
				c := fg
				if flags&hextileSubrectsColoured != 0 {
					c = d.pixel()
				}
				xy, wh := d.w.u8(), d.w.u8()
				if d.w.err != nil {
					return d.w.err
				}
				sub := image.Rect(xy>>4, xy&15, xy>>4+wh>>4+1, xy&15+wh&15+1).Add(tile.Min)
				if !sub.In(tile) {
					return fmt.Errorf("hextile subrectangle %v outside %v: %w", sub, tile, probes.ErrProtocol)
				}
				d.fill(sub, c)
			}
		}
	}
	return d.w.err
}

// zrleStream is ZRLE's one zlib stream per connection: each rectangle's
// compressed bytes are appended to src, and the inflater, which ends each
// rectangle at the server's sync flush, keeps its window across them.
type zrleStream struct {
	src bytes.Buffer
	zr  io.ReadCloser
	out []byte
}

func (d *decoder) zrleRect(r image.Rectangle) error {
	n := d.w.u32()
	if d.w.err != nil {
		return d.w.err
	}
	if int64(n) > int64(r.Dx())*int64(r.Dy())*4+1<<16 {
		return fmt.Errorf("ZRLE data of %d bytes for %v: %w", n, r.Size(), probes.ErrProtocol)
	}
	if d.zrle == nil {
		d.zrle = &zrleStream{}
	}
	z := d.zrle
	z.src.Write(d.take(int(n)))
	if d.w.err != nil {
		return d.w.err
	}
	if z.zr == nil {
		zr, err := zlib.NewReader(&z.src)
		if err != nil {
			return fmt.Errorf("ZRLE stream: %v: %w", err, probes.ErrProtocol)
		}
		z.zr = zr
	}
	zd := zrleReader{z: z}
	for ty := r.Min.Y; ty < r.Max.Y; ty += 64 {
		for tx := r.Min.X; tx < r.Max.X; tx += 64 {
			tile := image.Rect(tx, ty, min(tx+64, r.Max.X), min(ty+64, r.Max.Y))
			if err := d.zrleTile(&zd, tile); err != nil {
				return err
			}
		}
	}
	return nil
}

// zrleReader reads the inflated ZRLE data.
type zrleReader struct {
	z   *zrleStream
	err error
}

func (zr *zrleReader) bytes(n int) []byte {
	if zr.err != nil {
		return nil
	}
	z := zr.z
	if cap(z.out) < n {
		z.out = make([]byte, n)
	}
	z.out = z.out[:n]
	if _, err := io.ReadFull(z.zr, z.out); err != nil {
		zr.err = fmt.Errorf("ZRLE data: %v: %w", err, probes.ErrProtocol)
		return nil
	}
	return z.out
}

func (zr *zrleReader) u8() int {
	b := zr.bytes(1)
	if b == nil {
		return 0
	}
	return int(b[0])
}

// cpixel reads a 3-byte compressed pixel (B, G, R) as RGBA.
func (zr *zrleReader) cpixel() [4]byte {
	b := zr.bytes(3)
	if b == nil {
		return [4]byte{}
	}
	return [4]byte{b[2], b[1], b[0], 255}
}

func (d *decoder) zrleTile(zr *zrleReader, tile image.Rectangle) error {
	sub := zr.u8()
	if zr.err != nil {
		return zr.err
	}
	w, h := tile.Dx(), tile.Dy()
	set := func(i int, c [4]byte) {
		o := d.fb.PixOffset(tile.Min.X+i%w, tile.Min.Y+i/w)
		copy(d.fb.Pix[o:o+4], c[:])
	}
	switch {
	case sub == 0: // raw CPIXELs
		src := zr.bytes(w * h * 3)
		for i := 0; src != nil && i < w*h; i++ {
			set(i, [4]byte{src[i*3+2], src[i*3+1], src[i*3], 255})
		}
	case sub == 1: // solid
		d.fill(tile, zr.cpixel())
	case sub >= 2 && sub <= 16: // packed palette
		var palette [16][4]byte
		for i := range sub {
			palette[i] = zr.cpixel()
		}
		bits := 4
		switch {
		case sub == 2:
			bits = 1
		case sub <= 4:
			bits = 2
		}
		rowBytes := (w*bits + 7) / 8
		packed := zr.bytes(rowBytes * h)
		for y := 0; packed != nil && y < h; y++ {
			row := packed[y*rowBytes:]
			for x := range w {
				bit := x * bits
				idx := int(row[bit/8]>>(8-bits-bit%8)) & (1<<bits - 1)
				if idx >= sub {
					return fmt.Errorf("ZRLE palette index %d of %d: %w", idx, sub, probes.ErrProtocol)
				}
				set(y*w+x, palette[idx])
			}
		}
	case sub == 128 || sub >= 130: // run-length, plain or with a palette
		var palette [127][4]byte
		size := sub - 128
		for i := range size {
			palette[i] = zr.cpixel()
		}
		for i := 0; i < w*h && zr.err == nil; {
			var c [4]byte
			run := 1
			if size == 0 {
				c = zr.cpixel()
				run = zr.runLength()
			} else {
				idx := zr.u8()
				if idx&128 != 0 {
					run = zr.runLength()
				}
				idx &= 127
				if idx >= size {
					return fmt.Errorf("ZRLE palette index %d of %d: %w", idx, size, probes.ErrProtocol)
				}
				c = palette[idx]
			}
			if zr.err == nil && i+run > w*h {
				return fmt.Errorf("ZRLE run past its tile: %w", probes.ErrProtocol)
			}
			for ; run > 0 && zr.err == nil; run-- {
				set(i, c)
				i++
			}
		}
	default:
		return fmt.Errorf("ZRLE subencoding %d: %w", sub, probes.ErrProtocol)
	}
	return zr.err
}

// runLength reads ZRLE's run length: bytes of 255 then a final byte, plus one.
func (zr *zrleReader) runLength() int {
	n := 1
	for zr.err == nil {
		b := zr.u8()
		n += b
		if b != 255 {
			break
		}
		if n > 1<<24 {
			zr.err = errors.New("ZRLE run too long")
		}
	}
	return n
}

// coverage counts the framebuffer pixels painted so far, one bit each.
type coverage struct {
	width   int
	bits    []uint64
	painted int
	total   int
}

func newCoverage(width, height int) *coverage {
	return &coverage{width: width, bits: make([]uint64, (width*height+63)/64), total: width * height}
}

func (c *coverage) add(r image.Rectangle) {
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for i := y*c.width + r.Min.X; i < y*c.width+r.Max.X; i++ {
			if c.bits[i/64]&(1<<(i%64)) == 0 {
				c.bits[i/64] |= 1 << (i % 64)
				c.painted++
			}
		}
	}
}

func (c *coverage) full() bool { return c.painted >= c.total }

var pngBuffers = &pngBufferPool{}

type pngBufferPool struct{ p sync.Pool }

func (p *pngBufferPool) Get() *png.EncoderBuffer {
	b, _ := p.p.Get().(*png.EncoderBuffer)
	return b
}

func (p *pngBufferPool) Put(b *png.EncoderBuffer) { p.p.Put(b) }

// encodePNG encodes img fast: screenshots are many and mostly flat.
func encodePNG(img image.Image) ([]byte, error) {
	var buf bytes.Buffer
	enc := png.Encoder{CompressionLevel: png.BestSpeed, BufferPool: pngBuffers}
	if err := enc.Encode(&buf, img); err != nil {
		return nil, fmt.Errorf("cannot encode the screenshot: %w", err)
	}
	return buf.Bytes(), nil
}
