package binlog

import (
	"fmt"

	"github.com/mlproxy/mlproxy/change"
)

// Topology modes (config.Topology.Mode).
const (
	AllToAll = "all-to-all"
	Star     = "star"
	Ring     = "ring"
)

// filter decides which row changes read from one peer travel on to the
// local applier. It is the tailer's half of loop suppression:
//
//   - all-to-all (and a star hub reading a spoke): only the peer's own
//     changes (Origin in the peer's region), never anything this region
//     wrote, and transactions written by the peer's applier (Applied) are
//     dropped whole: every region gets every write from its origin;
//   - star, a spoke reading the hub, and ring: the peer forwards, so
//     Applied transactions are kept whole. A forwarded version is the
//     peer's merge of several writes; its origin names only the winner, so
//     one naming this region may still carry other regions' writes, and it
//     is kept too. A version this region has already seen is recognised
//     by its vector and changes nothing (conflict.Resolve), so nothing
//     circulates more than once round a ring.
type filter struct {
	self, peer uint16
	// forward is true when Applied transactions are kept (star spoke
	// reading the hub, ring).
	forward bool
}

func newFilter(mode string, self, hub, peer uint16) (filter, error) {
	f := filter{self: self, peer: peer}
	switch mode {
	case "", AllToAll:
	case Star:
		if hub == 0 {
			return f, fmt.Errorf("binlog: topology star needs a hub region id")
		}
		// A spoke reading the hub takes what the hub forwards; the hub
		// reading a spoke (or a spoke linked to another spoke) takes only
		// that peer's own changes.
		f.forward = self != hub && peer == hub
	case Ring:
		f.forward = true
	default:
		return f, fmt.Errorf("binlog: unknown topology %q (want %s, %s or %s)", mode, AllToAll, Star, Ring)
	}
	return f, nil
}

// keep reports whether a row change with the given origin, in a
// transaction whose Applied marker is applied (as far as read), is passed on.
func (f filter) keep(origin change.Origin, applied bool) bool {
	if f.forward {
		return true
	}
	return !applied && origin.Region() == f.peer && origin.Region() != f.self
}
