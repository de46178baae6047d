package replicator

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mlproxy/mlproxy/binlog"
)

// relay is the bounded queue between a link's tailer and its applier: at
// most maxTxns transactions (or pieces of large ones) and maxBytes bytes
// of row images wait in it. One entry larger than maxBytes still passes
// when the queue is empty (the tailer streams large transactions in
// pieces, so an entry is at most about a piece). When the relay is full
// the tailer waits in its send; the applier's lag grows meanwhile, and
// mlproxy_relay_txns and mlproxy_relay_bytes show why.
//
// The queue itself is a buffered channel that the applier drains as it
// likes (it batches what is already waiting); a forwarder between the
// tailer and that channel keeps the byte bound by counting what the
// applier has taken (what left the channel, oldest first).
type relay struct {
	in       chan *binlog.Txn // the tailer sends here; closed when it stops
	out      chan *binlog.Txn // the applier receives here; closed after in is drained
	maxBytes int64
	txns     prometheus.Gauge
	bytes    prometheus.Gauge
}

// relayPoll is how often a relay that is full by bytes looks whether the
// applier took something.
const relayPoll = time.Millisecond

func newRelay(maxTxns int, maxBytes int64, txns, bytes prometheus.Gauge) *relay {
	return &relay{
		in:       make(chan *binlog.Txn),
		out:      make(chan *binlog.Txn, max(1, maxTxns)),
		maxBytes: max(1, maxBytes),
		txns:     txns,
		bytes:    bytes,
	}
}

// run forwards from in to out in order, keeping the bounds, until in is
// closed (then it closes out; the applier takes what is left) or ctx ends
// (what is queued is dropped: the link resumes from the applier's
// checkpoint).
func (r *relay) run(ctx context.Context) {
	defer close(r.out)
	defer func() { r.txns.Set(0); r.bytes.Set(0) }()
	var sizes []int64 // of the entries in out, oldest first
	var queued int64  // their sum
	taken := func() { // forget the entries the applier has taken
		for len(sizes) > len(r.out) {
			queued -= sizes[0]
			sizes = sizes[1:]
		}
		r.txns.Set(float64(len(sizes)))
		r.bytes.Set(float64(queued))
	}
	tick := time.NewTicker(time.Second) // keeps the gauges current while idle
	defer tick.Stop()
	for {
		var t *binlog.Txn
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			taken()
			continue
		case next, ok := <-r.in:
			if !ok {
				return
			}
			t = next
		}
		for taken(); len(sizes) > 0 && queued+t.Size > r.maxBytes; taken() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(relayPoll):
			}
		}
		select {
		case <-ctx.Done():
			return
		case r.out <- t:
			sizes = append(sizes, t.Size)
			queued += t.Size
		}
		r.txns.Set(float64(len(sizes)))
		r.bytes.Set(float64(queued))
	}
}
