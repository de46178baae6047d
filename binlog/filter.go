package binlog

import "fmt"

// Topology modes (config.Topology.Mode).
const (
	AllToAll = "all-to-all"
	Star     = "star"
	Ring     = "ring"
)

// filter decides which row changes read from one peer travel on to the
// local applier. It is the tailer's half of loop suppression:
//
//   - a region never receives a change whose origin is itself;
//   - all-to-all (and a star hub reading a spoke): only the peer's own
//     changes (Origin == peer), and transactions written by the peer's
//     applier (Applied) are dropped whole;
//   - star, a spoke reading the hub: the hub forwards, so Applied
//     transactions are kept, minus rows this region originated;
//   - ring: the same as a spoke, so changes travel round the ring until
//     they reach their origin's predecessor.
//
// The per-row rule for all-to-all is what keeps a large Applied
// transaction from leaking rows in the pieces emitted before its
// mlr.checkpoints marker is read (the applier writes the marker last).
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
func (f filter) keep(origin uint16, applied bool) bool {
	if origin == f.self {
		return false
	}
	if f.forward {
		return true
	}
	return !applied && origin == f.peer
}
