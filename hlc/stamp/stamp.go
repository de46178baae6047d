// Package stamp is the hybrid logical clock's stamp as a plain value:
// what the conflict rules compare, with no clock, storage or I/O behind it
// (package hlc issues stamps; its Timestamp is this type).
package stamp

import (
	"strconv"
	"time"
)

// Timestamp is a stamp: the high 48 bits are Unix milliseconds, the low 16
// bits a logical counter. Stamps issued by a Clock keep the counter below
// BypassBit; a stamp with BypassBit set was made by the server-side trigger
// for a write that bypassed the proxy.
type Timestamp uint64

const (
	logicalBits = 16
	// BypassBit marks stamps made by the trigger, not by a Clock.
	BypassBit = 0x8000
	// MaxLogical is the largest logical counter a Clock issues.
	MaxLogical = BypassBit - 1
)

// New builds a stamp from milliseconds and a logical counter.
func New(millis int64, logical uint16) Timestamp {
	return Timestamp(uint64(millis)<<logicalBits | uint64(logical))
}

// Millis is the physical part, Unix milliseconds.
func (t Timestamp) Millis() int64 { return int64(uint64(t) >> logicalBits) }

// Logical is the low 16 bits.
func (t Timestamp) Logical() uint16 { return uint16(t) }

// Bypass reports whether the stamp was made by the trigger for a write that
// did not go through a proxy.
func (t Timestamp) Bypass() bool { return uint16(t)&BypassBit != 0 }

// bypassMicrosMask selects the microseconds within the millisecond that a
// bypass stamp carries in its low 10 bits.
const bypassMicrosMask = 0x3FF

// String formats the stamp as "<unix millis>.<logical>", e.g.
// "1732500000123.5"; a bypass stamp prints its microseconds after a "b",
// e.g. "1732500000123.b456". The form sorts like the stamp only within one
// millisecond; compare Timestamps, not strings.
func (t Timestamp) String() string {
	if t.Bypass() {
		return strconv.FormatInt(t.Millis(), 10) + ".b" + strconv.Itoa(int(t.Logical()&bypassMicrosMask))
	}
	return strconv.FormatInt(t.Millis(), 10) + "." + strconv.Itoa(int(t.Logical()))
}

// Time is the physical part as a UTC time; a bypass stamp adds the
// microseconds it carries. The logical counter is not represented.
func (t Timestamp) Time() time.Time {
	tm := time.UnixMilli(t.Millis()).UTC()
	if t.Bypass() {
		tm = tm.Add(time.Duration(t.Logical()&bypassMicrosMask) * time.Microsecond)
	}
	return tm
}
