// Package hlc is mlproxy's hybrid logical clock: stamps that follow wall
// time, never go backwards, and move past every stamp seen from a peer, so a
// write made after seeing another region's write always carries a larger
// stamp.
package hlc

import "github.com/mlproxy/mlproxy/hlc/stamp"

// Timestamp is a stamp (package stamp): the high 48 bits are Unix
// milliseconds, the low 16 bits a logical counter. Stamps issued by a
// Clock keep the counter below BypassBit; a stamp with BypassBit set was
// made by the server-side trigger for a write that bypassed the proxy.
type Timestamp = stamp.Timestamp

const (
	logicalBits = 16
	// BypassBit marks stamps made by the trigger, not by a Clock.
	BypassBit = stamp.BypassBit
	// MaxLogical is the largest logical counter a Clock issues.
	MaxLogical = stamp.MaxLogical
)

// New builds a stamp from milliseconds and a logical counter.
func New(millis int64, logical uint16) Timestamp { return stamp.New(millis, logical) }
