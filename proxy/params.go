package proxy

import (
	"encoding/binary"
	"math"
	"strconv"

	"github.com/go-mysql-org/go-mysql/mysql"
)

// paramValue is one parameter of a COM_STMT_EXECUTE, read as a key: an
// integer as its digits, a string as its bytes. ok is false for a value
// the proxy does not read as a key (a float, a date, data sent apart with
// COM_STMT_SEND_LONG_DATA).
type paramValue struct {
	text string
	null bool
	ok   bool
}

// execParams reads the n parameters of a COM_STMT_EXECUTE packet p. types
// are the parameter types the statement was last executed with (a client
// sends them only when they change); it returns the types in force. A
// packet it cannot read returns nil values (the keys are then unknown;
// the server, which reads the packet too, answers the client).
func execParams(p []byte, n int, types []byte) ([]paramValue, []byte) {
	// 0x17, statement id (4), flags (1), iteration count (4).
	const head = 10
	if n == 0 || len(p) < head {
		return nil, types
	}
	pos := head
	nullMap := (n + 7) / 8
	if len(p) < pos+nullMap+1 {
		return nil, types
	}
	nulls := p[pos : pos+nullMap]
	pos += nullMap
	if p[pos] != 0 { // new parameters bound: their types follow
		pos++
		if len(p) < pos+2*n {
			return nil, types
		}
		types = append(types[:0], p[pos:pos+2*n]...)
		pos += 2 * n
	} else {
		pos++
	}
	if len(types) != 2*n {
		return nil, types
	}
	vals := make([]paramValue, n)
	for i := range n {
		if nulls[i/8]&(1<<(i%8)) != 0 {
			vals[i] = paramValue{null: true, ok: true}
			continue
		}
		t, unsigned := types[2*i], types[2*i+1]&0x80 != 0
		size := fixedSize(t)
		switch {
		case size > 0:
			if len(p) < pos+size {
				return nil, types
			}
			vals[i] = intParam(t, p[pos:pos+size], unsigned)
			pos += size
		case size == 0: // MYSQL_TYPE_NULL
			vals[i] = paramValue{null: true, ok: true}
		case t == mysql.MYSQL_TYPE_DATE || t == mysql.MYSQL_TYPE_DATETIME ||
			t == mysql.MYSQL_TYPE_TIMESTAMP || t == mysql.MYSQL_TYPE_TIME:
			if len(p) < pos+1 || len(p) < pos+1+int(p[pos]) {
				return nil, types
			}
			pos += 1 + int(p[pos])
		default: // length-encoded: strings, blobs, decimals, ...
			b, isNull, m, ok := lenencString(p[pos:])
			if !ok {
				return nil, types
			}
			pos += m
			switch t {
			case mysql.MYSQL_TYPE_VARCHAR, mysql.MYSQL_TYPE_VAR_STRING, mysql.MYSQL_TYPE_STRING,
				mysql.MYSQL_TYPE_TINY_BLOB, mysql.MYSQL_TYPE_BLOB, mysql.MYSQL_TYPE_MEDIUM_BLOB, mysql.MYSQL_TYPE_LONG_BLOB,
				mysql.MYSQL_TYPE_DECIMAL, mysql.MYSQL_TYPE_NEWDECIMAL:
				// A decimal parameter's text is its digits, as a string key's.
				vals[i] = paramValue{text: string(b), null: isNull, ok: true}
			}
		}
	}
	return vals, types
}

// fixedSize is the size of a fixed-width binary parameter of type t: 0 for
// NULL, -1 for the other types.
func fixedSize(t byte) int {
	switch t {
	case mysql.MYSQL_TYPE_NULL:
		return 0
	case mysql.MYSQL_TYPE_TINY:
		return 1
	case mysql.MYSQL_TYPE_SHORT, mysql.MYSQL_TYPE_YEAR:
		return 2
	case mysql.MYSQL_TYPE_LONG, mysql.MYSQL_TYPE_INT24, mysql.MYSQL_TYPE_FLOAT:
		return 4
	case mysql.MYSQL_TYPE_LONGLONG, mysql.MYSQL_TYPE_DOUBLE:
		return 8
	}
	return -1
}

// intParam reads a fixed-width parameter: integers as keys, floats not.
func intParam(t byte, b []byte, unsigned bool) paramValue {
	var u uint64
	var s int64
	switch len(b) {
	case 1:
		u, s = uint64(b[0]), int64(int8(b[0]))
	case 2:
		v := binary.LittleEndian.Uint16(b)
		u, s = uint64(v), int64(int16(v))
	case 4:
		v := binary.LittleEndian.Uint32(b)
		u, s = uint64(v), int64(int32(v))
	case 8:
		v := binary.LittleEndian.Uint64(b)
		u, s = v, int64(v)
	}
	switch {
	case t == mysql.MYSQL_TYPE_FLOAT || t == mysql.MYSQL_TYPE_DOUBLE:
		f := math.Float64frombits(u)
		if t == mysql.MYSQL_TYPE_FLOAT {
			f = float64(math.Float32frombits(uint32(u)))
		}
		if f == math.Trunc(f) && math.Abs(f) < 1e15 {
			return paramValue{text: strconv.FormatInt(int64(f), 10), ok: true}
		}
		return paramValue{}
	case unsigned:
		return paramValue{text: strconv.FormatUint(u, 10), ok: true}
	}
	return paramValue{text: strconv.FormatInt(s, 10), ok: true}
}

// lenencString reads a length-encoded string from the start of b (go-mysql's
// LengthEncodedString indexes past the end of a short packet): the bytes,
// whether it is the NULL marker, and how many bytes it took; ok is false
// when b is too short. The length is lenenc's.
func lenencString(b []byte) (s []byte, null bool, n int, ok bool) {
	if len(b) > 0 && b[0] == 0xfb {
		return nil, true, 1, true
	}
	size, m, ok := lenenc(b)
	if !ok || size > uint64(len(b)-m) {
		return nil, false, 0, false
	}
	return b[m : m+int(size)], false, m + int(size), true
}
