package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/go-mysql-org/go-mysql/mysql"
)

// The wire layer. The proxy frames packets itself instead of using
// go-mysql's packet.Conn so that it can relay a server's response physical
// packet by physical packet (header peeks only, never a whole result set or
// a whole 16 MiB+ row in memory) and keep the sequence ids exactly as the
// two ends sent them.

const (
	maxPayload = mysql.MaxPayloadLen // 0xffffff: a physical packet this long continues in the next one
	// maxCommand bounds a client command held in memory (MySQL's largest
	// max_allowed_packet is 1 GiB).
	maxCommand = 1 << 30
	// peekLen is how much of a relayed packet's payload the proxy looks at:
	// enough for an OK packet's two length-encoded integers and its status.
	peekLen = 32
	// bufSize is the size of each direction's read and write buffer.
	bufSize = 64 << 10
)

// errMalformed marks a packet that breaks the protocol; the connection is
// closed after an ERR, if one can still be sent.
var errMalformed = errors.New("malformed packet")

// wire is one end of a proxied connection with its own buffers. Reads and
// writes are not safe for concurrent use; a conn owns both of its wires.
type wire struct {
	nc net.Conn
	r  *bufio.Reader
	w  *bufio.Writer
	in bytes.Buffer // readPacket's buffer, reused
}

// keepBuffer is the largest readPacket buffer kept between packets.
const keepBuffer = 1 << 20

func newWire(nc net.Conn) *wire {
	return &wire{nc: nc, r: bufio.NewReaderSize(nc, bufSize), w: bufio.NewWriterSize(nc, bufSize)}
}

// raw is the connection a TLS layer wraps: the socket, read through the
// wire's buffer, which may already hold the start of the TLS handshake
// (clients send their ClientHello right behind the SSLRequest).
func (w *wire) raw() net.Conn { return &bufConn{Conn: w.nc, r: w.r} }

// upgrade rebinds the wire to tc, the TLS connection over raw().
func (w *wire) upgrade(tc net.Conn) {
	w.nc = tc
	w.r = bufio.NewReaderSize(tc, bufSize)
	w.w.Reset(tc)
}

// bufConn is a net.Conn whose reads go through a buffered reader.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// readHeader reads a physical packet header.
func (w *wire) readHeader() (length int, seq byte, err error) {
	var h [4]byte
	if _, err := io.ReadFull(w.r, h[:]); err != nil {
		return 0, 0, err
	}
	return int(uint32(h[0]) | uint32(h[1])<<8 | uint32(h[2])<<16), h[3], nil
}

// readPacket reads one logical packet (joining physical packets of
// maxPayload bytes) and returns its payload with the sequence ids of its
// first and last physical packets. Consecutive physical packets must carry
// consecutive sequence ids. A packet beyond limit is errMalformed.
//
// The payload is only valid until the next readPacket on w.
func (w *wire) readPacket(limit int) (payload []byte, first, last byte, err error) {
	buf := &w.in
	buf.Reset()
	if buf.Cap() > keepBuffer {
		*buf = bytes.Buffer{}
	}
	for i := 0; ; i++ {
		n, seq, err := w.readHeader()
		if err != nil {
			return nil, 0, 0, err
		}
		if i == 0 {
			first = seq
		} else if seq != last+1 {
			return nil, 0, 0, fmt.Errorf("%w: sequence id %d after %d", errMalformed, seq, last)
		}
		last = seq
		if buf.Len()+n > limit {
			return nil, 0, 0, fmt.Errorf("%w: packet larger than %d bytes", errMalformed, limit)
		}
		// ReadFrom grows the buffer as bytes arrive, so a header that lies
		// about its length costs no more memory than was really sent.
		if m, err := buf.ReadFrom(io.LimitReader(w.r, int64(n))); err != nil {
			return nil, 0, 0, err
		} else if m != int64(n) {
			return nil, 0, 0, io.ErrUnexpectedEOF
		}
		if n < maxPayload {
			return buf.Bytes(), first, last, nil
		}
	}
}

// writePacket frames payload as physical packets starting at sequence id
// seq and buffers them; it returns the sequence id of the last one. The
// caller flushes.
func (w *wire) writePacket(payload []byte, seq byte) (byte, error) {
	for {
		n := len(payload)
		if n > maxPayload {
			n = maxPayload
		}
		h := [4]byte{byte(n), byte(n >> 8), byte(n >> 16), seq}
		if _, err := w.w.Write(h[:]); err != nil {
			return seq, err
		}
		if _, err := w.w.Write(payload[:n]); err != nil {
			return seq, err
		}
		payload = payload[n:]
		if n < maxPayload {
			return seq, nil
		}
		seq++
	}
}

// relayed describes a packet copied from one wire to another.
type relayed struct {
	head   [peekLen]byte // the first bytes of the payload
	nhead  int           // valid bytes in head
	length int           // total payload length of the logical packet
	seq    byte          // sequence id of the last physical packet
}

func (p *relayed) peek() []byte { return p.head[:p.nhead] }

// writeError marks a failure to write to the destination of a relay (as
// opposed to reading its source), so the caller knows which end broke.
type writeError struct{ err error }

func (e *writeError) Error() string { return "write: " + e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// relayPacket copies one logical packet from src to dst (dst may be nil to
// discard it) without holding more than a buffer of it, remembering its
// first bytes. Errors writing to dst are *writeError; others come from src.
func relayPacket(src *wire, dst *bufio.Writer) (relayed, error) {
	var p relayed
	for i := 0; ; i++ {
		n, seq, err := src.readHeader()
		if err != nil {
			return p, err
		}
		p.seq = seq
		if i == 0 {
			m := min(n, peekLen)
			b, err := src.r.Peek(m)
			if err != nil {
				return p, err
			}
			p.nhead = copy(p.head[:], b)
		}
		p.length += n
		if dst == nil {
			if _, err := src.r.Discard(n); err != nil {
				return p, err
			}
		} else {
			h := [4]byte{byte(n), byte(n >> 8), byte(n >> 16), seq}
			if _, err := dst.Write(h[:]); err != nil {
				return p, &writeError{err}
			}
			// Copy through the reader's own buffer: no allocation.
			for left := n; left > 0; {
				b, err := src.r.Peek(min(left, bufSize))
				if len(b) == 0 && err != nil {
					return p, err
				}
				if _, err := dst.Write(b); err != nil {
					return p, &writeError{err}
				}
				_, _ = src.r.Discard(len(b))
				left -= len(b)
			}
		}
		if n < maxPayload {
			return p, nil
		}
	}
}

// isEOF reports whether a packet with this first byte and length is an EOF
// packet (and not a row or column definition starting with 0xfe).
func isEOF(head []byte, length int) bool {
	return len(head) > 0 && head[0] == mysql.EOF_HEADER && length < 9
}

// eofStatus returns the status flags of an EOF packet.
func eofStatus(head []byte) uint16 {
	if len(head) < 5 {
		return 0
	}
	return binary.LittleEndian.Uint16(head[3:5])
}

// okStatus returns the status flags of an OK packet, or ok=false if the
// packet is too short to hold them.
func okStatus(head []byte) (uint16, bool) {
	pos := 1
	for range 2 { // affected rows, last insert id
		_, n, ok := lenenc(head[pos:])
		if !ok {
			return 0, false
		}
		pos += n
	}
	if len(head) < pos+2 {
		return 0, false
	}
	return binary.LittleEndian.Uint16(head[pos:]), true
}

// lenenc decodes a length-encoded integer and returns it with its size.
func lenenc(b []byte) (v uint64, n int, ok bool) {
	if len(b) == 0 {
		return 0, 0, false
	}
	switch b[0] {
	case 0xfc:
		if len(b) < 3 {
			return 0, 0, false
		}
		return uint64(binary.LittleEndian.Uint16(b[1:])), 3, true
	case 0xfd:
		if len(b) < 4 {
			return 0, 0, false
		}
		return uint64(b[1]) | uint64(b[2])<<8 | uint64(b[3])<<16, 4, true
	case 0xfe:
		if len(b) < 9 {
			return 0, 0, false
		}
		return binary.LittleEndian.Uint64(b[1:]), 9, true
	case 0xfb, 0xff:
		return 0, 0, false
	default:
		return uint64(b[0]), 1, true
	}
}

// errPacket builds an ERR packet payload. state is the 5-character SQLSTATE.
func errPacket(code uint16, state, msg string) []byte {
	b := make([]byte, 0, 9+len(msg))
	b = append(b, mysql.ERR_HEADER, byte(code), byte(code>>8), '#')
	b = append(b, state[:5]...)
	return append(b, msg...)
}

// sqlError is an error the proxy reports to a client as an ERR packet.
type sqlError struct {
	code  uint16
	state string
	msg   string
}

func (e *sqlError) Error() string { return fmt.Sprintf("ERROR %d (%s): %s", e.code, e.state, e.msg) }

func (e *sqlError) packet() []byte { return errPacket(e.code, e.state, e.msg) }

// MySQL error codes the proxy sends itself.
const (
	erConCount   = 1040 // ER_CON_COUNT_ERROR
	erUnknownCom = 1047 // ER_UNKNOWN_COM_ERROR
	erUnknown    = 1105 // ER_UNKNOWN_ERROR
	erOutOfOrder = 1156 // ER_NET_PACKETS_OUT_OF_ORDER
	erMalformed  = 1835 // ER_MALFORMED_PACKET
	erNetRead    = 1158 // ER_NET_READ_ERROR
	erReadOnly   = 1290 // ER_OPTION_PREVENTS_STATEMENT (what read_only returns)
)

// The proxy never sends client-range codes (2000-2999: CR_SERVER_LOST and
// the like), which clients raise themselves and some report as a malformed
// packet when a server sends them: a backend it cannot reach, or lost, is
// a server-range code with SQLSTATE 08S01 (communication link failure).
const (
	erBackendUnreachable = erUnknown // with 08S01
	erBackendLost        = erNetRead // with 08S01
)
