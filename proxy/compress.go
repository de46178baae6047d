package proxy

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"fmt"
	"io"
	"sync"
)

// The compressed protocol (CLIENT_COMPRESS, zlib) on the client leg: after
// authentication, every packet travels inside compressed frames, a 7-byte
// header (3 bytes compressed length, the compressed sequence id, 3 bytes
// length before compression, 0 = sent as is) and the payload. The proxy
// decompresses what the client sends into the plain packet stream it
// classifies and relays, and compresses what it sends back; the backend
// leg stays uncompressed (on the same host or network, the proxy's CPU is
// better spent elsewhere).

// minCompress is the payload size below which a frame goes uncompressed
// (MySQL's MIN_COMPRESS_LENGTH).
const minCompress = 50

// maxFrame is the largest payload of one compressed frame.
const maxFrame = 1<<24 - 1

// compState is the compressed sequence id both directions share: a
// client's command starts a new sequence, and the replies continue it.
type compState struct{ last byte }

type compReader struct {
	r       io.Reader
	st      *compState
	pending []byte
	frame   []byte
	out     bytes.Buffer
}

func (c *compReader) Read(p []byte) (int, error) {
	for len(c.pending) == 0 {
		var h [7]byte
		if _, err := io.ReadFull(c.r, h[:]); err != nil {
			return 0, err
		}
		clen := int(h[0]) | int(h[1])<<8 | int(h[2])<<16
		ulen := int(h[4]) | int(h[5])<<8 | int(h[6])<<16
		c.st.last = h[3]
		if cap(c.frame) < clen {
			c.frame = make([]byte, clen)
		}
		c.frame = c.frame[:clen]
		if _, err := io.ReadFull(c.r, c.frame); err != nil {
			return 0, err
		}
		if ulen == 0 {
			c.pending = c.frame
			continue
		}
		zr, err := zlib.NewReader(bytes.NewReader(c.frame))
		if err != nil {
			return 0, fmt.Errorf("%w: compressed frame: %v", errMalformed, err)
		}
		c.out.Reset()
		n, err := c.out.ReadFrom(io.LimitReader(zr, int64(ulen)+1))
		zr.Close()
		if err != nil || int(n) != ulen {
			return 0, fmt.Errorf("%w: compressed frame of %d bytes inflates to %d, header says %d (%v)", errMalformed, clen, n, ulen, err)
		}
		c.pending = c.out.Bytes()
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

var zlibWriters = sync.Pool{New: func() any { return zlib.NewWriter(nil) }}

type compWriter struct {
	w   io.Writer
	st  *compState
	buf bytes.Buffer
	z   bytes.Buffer
}

func (c *compWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		chunk := p[:min(len(p), maxFrame)]
		p = p[len(chunk):]
		c.st.last++
		payload, ulen := chunk, 0
		if len(chunk) >= minCompress {
			c.z.Reset()
			zw := zlibWriters.Get().(*zlib.Writer)
			zw.Reset(&c.z)
			_, _ = zw.Write(chunk)
			_ = zw.Close()
			zlibWriters.Put(zw)
			if c.z.Len() < len(chunk) {
				payload, ulen = c.z.Bytes(), len(chunk)
			}
		}
		c.buf.Reset()
		c.buf.Write([]byte{byte(len(payload)), byte(len(payload) >> 8), byte(len(payload) >> 16), c.st.last,
			byte(ulen), byte(ulen >> 8), byte(ulen >> 16)})
		c.buf.Write(payload)
		if _, err := c.w.Write(c.buf.Bytes()); err != nil {
			return total - len(p) - len(chunk), err
		}
	}
	return total, nil
}

// compress switches the wire to the compressed protocol (both ways),
// reading on through what its buffer already holds.
func (w *wire) compress() {
	st := &compState{}
	r := &compReader{r: w.raw(), st: st}
	w.r = bufio.NewReaderSize(r, bufSize)
	w.w.Reset(&compWriter{w: w.nc, st: st})
}
