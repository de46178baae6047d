package binlog

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	dto "github.com/prometheus/client_model/go"

	"github.com/mlproxy/mlproxy/hlc"
)

// gtidSeq returns the sequence number of domain 1 in a MariaDB GTID position.
func gtidSeq(t *testing.T, pos string) uint64 {
	t.Helper()
	set, err := mysql.ParseMariadbGTIDSet(pos)
	if err != nil {
		t.Fatalf("parse GTID %q: %v", pos, err)
	}
	g, ok := set.(*mysql.MariadbGTIDSet).Sets[peerID]
	if !ok {
		t.Fatalf("GTID %q has no domain %d", pos, peerID)
	}
	return g.SequenceNumber
}

func TestInsertUpdateDelete(t *testing.T) {
	db := openPeer(t)
	createReplicated(t, db, "app1", "t", "id", "INT", "name VARCHAR(64), n BIGINT, u INT UNSIGNED, d DECIMAL(10,2)")
	r := startTailer(t, tailOpts{}, Checkpoint{})
	r.waitReady(t)

	s := newSession(t, db)
	// A stamp above 2^63 shows BIGINT UNSIGNED decodes as uint64.
	const big = uint64(1)<<63 | 12345
	s.stamp(big, 1)
	s.exec("INSERT INTO app1.t (id, name, n, u, d) VALUES (1, 'alpha', -5, 4000000000, 12.50)")
	stampUpd := uint64(hlc.New(time.Now().UnixMilli(), 3))
	s.stamp(stampUpd, 1)
	s.exec("UPDATE app1.t SET name = 'beta' WHERE id = 1")
	stampDel := stampUpd + 1
	s.stamp(stampDel, 1)
	s.exec("DELETE FROM app1.t WHERE id = 1")

	ins := r.nextData(t)
	if len(ins.Changes) != 1 || ins.Changes[0].Op != Insert {
		t.Fatalf("insert txn: %+v", ins)
	}
	c := ins.Changes[0]
	if c.Schema != "app1" || c.Table != "t" || c.Before != nil {
		t.Fatalf("insert change %s.%s before %v", c.Schema, c.Table, c.Before)
	}
	want := Row{"id": int64(1), "name": "alpha", "n": int64(-5), "u": uint64(4000000000), "d": "12.50",
		"_mlr_hlc": big, "_mlr_origin": uint64(1)}
	if fmt.Sprint(c.After) != fmt.Sprint(want) {
		t.Fatalf("insert after image %#v, want %#v", c.After, want)
	}
	if c.Stamp != big || c.Origin != 1 {
		t.Fatalf("insert stamp %d origin %d, want %d 1", c.Stamp, c.Origin, big)
	}
	if ins.Source != peerID || !ins.Last || ins.Piece != 0 || ins.Applied || ins.Pos.File == "" || ins.Pos.Pos == 0 || ins.Size <= 0 {
		t.Fatalf("insert txn header %+v", ins)
	}

	upd := r.nextData(t)
	c = upd.Changes[0]
	if len(upd.Changes) != 1 || c.Op != Update || c.Before["name"] != "alpha" || c.After["name"] != "beta" ||
		c.Before["_mlr_hlc"] != big || c.Stamp != stampUpd || c.Origin != 1 {
		t.Fatalf("update change %v before %v after %v stamp %d", c.Op, c.Before, c.After, c.Stamp)
	}

	del := r.nextData(t)
	c = del.Changes[0]
	if len(del.Changes) != 1 || c.Op != Delete || c.After != nil || c.Before["name"] != "beta" ||
		c.Stamp != stampDel || c.Origin != 1 || c.PrevUnknown {
		t.Fatalf("delete: %d changes; change %v before %v stamp %d (want %d) origin %d", len(del.Changes), c.Op, c.Before, c.Stamp, stampDel, c.Origin)
	}

	// Positions and Seq only go forward; GTIDs are this peer's domain.
	if !(gtidSeq(t, ins.Pos.GTID) < gtidSeq(t, upd.Pos.GTID) && gtidSeq(t, upd.Pos.GTID) < gtidSeq(t, del.Pos.GTID)) {
		t.Fatalf("GTIDs out of order: %s %s %s", ins.Pos.GTID, upd.Pos.GTID, del.Pos.GTID)
	}
	if !(ins.Seq < upd.Seq && upd.Seq < del.Seq) || ins.Pos.Pos >= upd.Pos.Pos {
		t.Fatalf("Seq/Pos out of order: %d %d %d / %d %d", ins.Seq, upd.Seq, del.Seq, ins.Pos.Pos, upd.Pos.Pos)
	}
	// Status follows right after the send.
	deadline := time.Now().Add(hangGuard)
	for st := r.tl.Status(); st.Position != del.Pos; st = r.tl.Status() {
		if time.Now().After(deadline) {
			t.Fatalf("status %+v, want position %+v", st, del.Pos)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := r.tl.Status(); !st.Connected || st.LastEvent.IsZero() || st.LastError != nil {
		t.Fatalf("status %+v, want connected", st)
	}
}

// TestBypassWrite: a write without the proxy's variables is stamped by the
// trigger with the bypass bit.
func TestBypassWrite(t *testing.T) {
	db := openPeer(t)
	createReplicated(t, db, "app2", "t", "id", "INT", "v INT")
	r := startTailer(t, tailOpts{}, Checkpoint{})
	r.waitReady(t)
	if _, err := db.Exec("INSERT INTO app2.t VALUES (1, 1)"); err != nil {
		t.Fatal(err)
	}
	c := r.nextData(t).Changes[0]
	if !hlc.Timestamp(c.Stamp).Bypass() || c.Origin != peerID {
		t.Fatalf("bypass insert stamp %x origin %d: want bypass bit and origin %d", c.Stamp, c.Origin, peerID)
	}
}

func TestTransactionsStayWholeAndRollbacksNeverAppear(t *testing.T) {
	db := openPeer(t)
	createReplicated(t, db, "app3", "t", "id", "INT", "v INT")
	r := startTailer(t, tailOpts{}, Checkpoint{})
	r.waitReady(t)
	s := newSession(t, db)
	s.stamp(100<<16, 1)
	s.exec("BEGIN")
	s.exec("INSERT INTO app3.t VALUES (1, 1), (2, 2)")
	s.exec("INSERT INTO app3.t VALUES (3, 3)")
	s.exec("UPDATE app3.t SET v = v + 10")
	s.exec("DELETE FROM app3.t WHERE id = 2")
	s.exec("COMMIT")
	s.exec("BEGIN")
	s.exec("INSERT INTO app3.t VALUES (50, 50)")
	s.exec("ROLLBACK")
	s.exec("INSERT INTO app3.t VALUES (4, 4)")

	x := r.nextData(t)
	var ops []string
	for _, c := range x.Changes {
		ops = append(ops, c.Op.String())
	}
	if got := strings.Join(ops, ","); got != "insert,insert,insert,update,update,update,delete" {
		t.Fatalf("multi-statement transaction arrived as %s in one Txn", got)
	}
	y := r.nextData(t)
	if len(y.Changes) != 1 || y.Changes[0].After["id"] != int64(4) {
		t.Fatalf("after a rollback, next transaction is %+v, want the insert of 4", y.Changes)
	}
	if y.Seq != x.Seq+1 {
		t.Fatalf("Seq %d after %d: a transaction between them was emitted", y.Seq, x.Seq)
	}
}

// TestResumeFromCheckpoint stops a tailer part way and resumes from the
// last Txn's position, by GTID and by file/position: every source
// transaction arrives exactly once.
func TestResumeFromCheckpoint(t *testing.T) {
	for _, byGTID := range []bool{true, false} {
		t.Run(fmt.Sprintf("gtid=%v", byGTID), func(t *testing.T) {
			db := openPeer(t)
			schemaName := fmt.Sprintf("app4%v", byGTID)
			createReplicated(t, db, schemaName, "t", "id", "INT", "v INT")
			r := startTailer(t, tailOpts{}, Checkpoint{})
			r.waitReady(t)
			const n = 12
			for i := 1; i <= n; i++ {
				if _, err := db.Exec(fmt.Sprintf("INSERT INTO `%s`.t VALUES (%d, %d)", schemaName, i, i)); err != nil {
					t.Fatal(err)
				}
			}
			seen := map[int64]string{}
			var last *Txn
			for len(seen) < 5 {
				last = r.nextData(t)
				seen[last.Changes[0].After["id"].(int64)] = last.Pos.GTID
			}
			r.stop(t)

			cp := Checkpoint{GTID: last.Pos.GTID, File: last.Pos.File, Pos: last.Pos.Pos}
			if !byGTID {
				cp.GTID = ""
			}
			r2 := startTailer(t, tailOpts{}, cp)
			for len(seen) < n {
				x := r2.next(t)
				for _, c := range x.Changes {
					id := c.After["id"].(int64)
					if g, dup := seen[id]; dup {
						t.Fatalf("row %d emitted again after resume (first at %s, again at %s)", id, g, x.Pos.GTID)
					}
					seen[id] = x.Pos.GTID
				}
				if x.Seq == 1 && gtidSeq(t, x.Pos.GTID) != gtidSeq(t, last.Pos.GTID)+1 {
					t.Fatalf("first transaction after resume is %s, want the one after %s", x.Pos.GTID, last.Pos.GTID)
				}
			}
			for i := int64(1); i <= n; i++ {
				if _, ok := seen[i]; !ok {
					t.Fatalf("row %d skipped", i)
				}
			}
		})
	}
}

func TestAlterAddColumnMidStream(t *testing.T) {
	db := openPeer(t)
	createReplicated(t, db, "app5", "t", "id", "INT", "v INT")
	r := startTailer(t, tailOpts{}, Checkpoint{})
	r.waitReady(t)
	for _, q := range []string{
		"INSERT INTO app5.t VALUES (1, 1)",
		"ALTER TABLE app5.t ADD COLUMN extra VARCHAR(10) NOT NULL DEFAULT 'x' AFTER id",
		"INSERT INTO app5.t (id, extra, v) VALUES (2, 'y', 2)",
		"UPDATE app5.t SET v = 10 WHERE id = 1",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	a := r.nextData(t).Changes[0].After
	if _, has := a["extra"]; has || a["v"] != int64(1) {
		t.Fatalf("before ALTER: %v", a)
	}
	b := r.nextData(t).Changes[0].After
	if b["extra"] != "y" || b["v"] != int64(2) || b["id"] != int64(2) {
		t.Fatalf("after ALTER: insert image %v, want extra=y v=2", b)
	}
	u := r.nextData(t).Changes[0]
	if u.Before["extra"] != "x" || u.After["v"] != int64(10) || u.Before["v"] != int64(1) {
		t.Fatalf("after ALTER: update before %v after %v", u.Before, u.After)
	}
}

// TestLargeDeleteInPieces deletes 20000 rows in one transaction through a
// small memory bound: the transaction arrives in several pieces, in order,
// and every delete carries its tombstone's stamp.
func TestLargeDeleteInPieces(t *testing.T) {
	const n = 20000
	db := openPeer(t)
	createReplicated(t, db, "app6", "t", "id", "INT", "pad VARCHAR(40)")
	if _, err := db.Exec(fmt.Sprintf("INSERT INTO app6.t SELECT seq, REPEAT('p', 30) FROM app6.seq_1_to_%d", n)); err != nil {
		t.Fatal(err)
	}
	r := startTailer(t, tailOpts{maxTxnBytes: 256 << 10}, Checkpoint{})
	r.waitReady(t)
	s := newSession(t, db)
	const stamp = uint64(777) << 16
	s.stamp(stamp, 1)
	s.exec("DELETE FROM app6.t")

	var pieces []*Txn
	for {
		x := r.next(t)
		if len(pieces) == 0 && len(x.Changes) == 0 && x.Last {
			continue // an earlier empty transaction
		}
		pieces = append(pieces, x)
		if x.Last {
			break
		}
	}
	if len(pieces) < 3 {
		t.Fatalf("%d pieces, want several for a %d-row delete with a 256KiB bound", len(pieces), n)
	}
	seen := make(map[int64]bool, n)
	for i, p := range pieces {
		if p.Piece != i || p.Seq != pieces[0].Seq {
			t.Fatalf("piece %d has Piece %d Seq %d (first Seq %d)", i, p.Piece, p.Seq, pieces[0].Seq)
		}
		if p.Size > 2*(256<<10) {
			t.Fatalf("piece %d holds %d bytes", i, p.Size)
		}
		for _, c := range p.Changes {
			id := c.Before["id"].(int64)
			if c.Op != Delete || c.Schema != "app6" || c.Stamp != stamp || c.Origin != 1 || c.PrevUnknown || seen[id] {
				t.Fatalf("piece %d: %v of %s.%s id %d stamp %d origin %d prevUnknown %v dup %v",
					i, c.Op, c.Schema, c.Table, id, c.Stamp, c.Origin, c.PrevUnknown, seen[id])
			}
			seen[id] = true
		}
	}
	if len(seen) != n {
		t.Fatalf("%d deletes arrived, want %d", len(seen), n)
	}
}

// TestDeleteWithoutTombstoneGetsDerivedStamp: a delete whose trigger did
// not write a tombstone carries the stamp derived from its event. (MariaDB
// does not log foreign-key cascades in the binlog at all, so the case
// internals.md names cannot be produced that way; a table whose AFTER
// DELETE trigger is missing can.)
func TestDeleteWithoutTombstoneGetsDerivedStamp(t *testing.T) {
	db := openPeer(t)
	createReplicated(t, db, "app7", "parent", "id", "INT", "v INT")
	createReplicated(t, db, "app7", "child", "id", "INT", "v INT")
	if _, err := db.Exec("DROP TRIGGER app7._mlr_ad_child; INSERT INTO app7.parent VALUES (1, 1); INSERT INTO app7.child VALUES (10, 1), (11, 1)"); err != nil {
		t.Fatal(err)
	}
	r := startTailer(t, tailOpts{}, Checkpoint{})
	r.waitReady(t)
	s := newSession(t, db)
	s.stamp(999<<16, 1)
	s.exec("BEGIN")
	s.exec("DELETE FROM app7.parent WHERE id = 1")
	s.exec("DELETE FROM app7.child")
	s.exec("COMMIT")
	x := r.nextData(t)
	var children int
	for _, c := range x.Changes {
		switch c.Table {
		case "parent":
			if c.Stamp != 999<<16 {
				t.Errorf("parent delete stamp %d, want its tombstone's", c.Stamp)
			}
		case "child":
			children++
			ts := hlc.Timestamp(c.Stamp)
			// Derived from the delete event's second (which may be the
			// second before the commit's), but above the deleted version.
			d := x.Timestamp.Unix()*1000 - ts.Millis()
			prev, _ := toUint64(c.Before["_mlr_hlc"])
			if !ts.Bypass() || c.Stamp <= prev || (c.Stamp != (prev+1)|hlc.BypassBit && (ts.Logical() != hlc.BypassBit || d < 0 || d > 1000)) || c.Origin != peerID {
				t.Errorf("unpaired delete stamp %x origin %d: want derived from %v", c.Stamp, c.Origin, x.Timestamp)
			}
		}
	}
	if children != 2 || len(x.Changes) != 3 {
		t.Fatalf("%d unpaired deletes in %d changes, want 2 in 3: %+v", children, len(x.Changes), x.Changes)
	}
}

// TestAppliedTransactionsPerTopology writes an applier-style transaction
// (rows stamped by other regions plus the mlr.checkpoints marker) and a
// plain client write, and reads them as region 2 under each topology.
func TestAppliedTransactionsPerTopology(t *testing.T) {
	db := openPeer(t)
	createReplicated(t, db, "app8", "t", "id", "INT", "v INT")
	var gtid string
	if err := db.QueryRow("SELECT @@gtid_binlog_pos").Scan(&gtid); err != nil {
		t.Fatal(err)
	}
	s := newSession(t, db)
	s.exec("SET @_mlr_apply = 1")
	s.exec("BEGIN")
	s.exec("INSERT INTO app8.t (id, v, _mlr_hlc, _mlr_origin) VALUES (1, 1, 500, 3), (2, 2, 501, 2)")
	s.exec("INSERT INTO mlr.checkpoints (peer_id, peer_name, gtid) VALUES (3, 'c', '3-3-1') ON DUPLICATE KEY UPDATE gtid = VALUES(gtid)")
	s.exec("COMMIT")
	s.exec("SET @_mlr_apply = NULL")
	s.stamp(600, 1)
	s.exec("INSERT INTO app8.t VALUES (3, 3)")

	cases := []struct {
		name      string
		topology  string
		self, hub uint16
		applied   []int64 // ids kept from the applied transaction
	}{
		{"all-to-all", AllToAll, 2, 0, nil},
		{"ring", Ring, 2, 0, []int64{1, 2}},
		{"star-spoke", Star, 2, 1, []int64{1, 2}},
		{"star-hub", Star, 2, 2, nil},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := startTailer(t, tailOpts{topology: tc.topology, self: tc.self, hub: tc.hub, serverID: uint32(2000 + i)},
				Checkpoint{GTID: gtid})
			var x *Txn
			for {
				x = r.next(t)
				if x.Applied {
					break
				}
				if len(x.Changes) > 0 {
					t.Fatalf("a data transaction before the applied one: %+v", x.Changes)
				}
			}
			var ids []int64
			for _, c := range x.Changes {
				ids = append(ids, c.After["id"].(int64))
			}
			if fmt.Sprint(ids) != fmt.Sprint(tc.applied) || x.ForwardedFrom != 3 || !x.Last {
				t.Fatalf("applied txn kept ids %v (want %v), ForwardedFrom %d", ids, tc.applied, x.ForwardedFrom)
			}
			y := r.next(t)
			if y.Applied || len(y.Changes) != 1 || y.Changes[0].After["id"] != int64(3) || y.Seq != x.Seq+1 {
				t.Fatalf("client write after the applied txn: %+v", y)
			}
		})
	}
}

// TestPeerRestart kills the peer server between transactions and restarts
// it: the tailer reconnects by itself and continues with no gap and no
// duplicate.
func TestPeerRestart(t *testing.T) {
	db := openPeer(t)
	createReplicated(t, db, "app9", "t", "id", "INT", "v INT")
	r := startTailer(t, tailOpts{}, Checkpoint{})
	r.waitReady(t)
	insert := func(from, to int) {
		for i := from; i <= to; i++ {
			if _, err := db.Exec(fmt.Sprintf("INSERT INTO app9.t VALUES (%d, %d)", i, i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	insert(1, 5)
	var lastSeq uint64
	got := map[int64]bool{}
	read := func(upto int) {
		for len(got) < upto {
			x := r.next(t)
			if x.Seq != lastSeq+1 && lastSeq != 0 {
				t.Fatalf("Seq %d after %d", x.Seq, lastSeq)
			}
			lastSeq = x.Seq
			for _, c := range x.Changes {
				id := c.After["id"].(int64)
				if got[id] {
					t.Fatalf("row %d emitted twice", id)
				}
				got[id] = true
			}
		}
	}
	read(5)
	if err := peerSrv.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := peerSrv.Restart(); err != nil {
		t.Fatal(err)
	}
	insert(6, 10)
	read(10)
	for i := int64(1); i <= 10; i++ {
		if !got[i] {
			t.Fatalf("row %d missing", i)
		}
	}
	if st := r.tl.Status(); st.Retries == 0 {
		t.Fatalf("status %+v: no retry recorded across a restart", st)
	}
}

// TestNetworkCutMidTransaction resets the link while a large transaction
// is being streamed in pieces: the tailer re-reads it from the position
// after the last whole transaction and sends only the pieces not yet sent.
func TestNetworkCutMidTransaction(t *testing.T) {
	// Large enough (about 16 MB of events) that most of it is still unread
	// in the peer and the cut sockets when the link is cut.
	const n = 30000
	db := openPeer(t)
	createReplicated(t, db, "app10", "t", "id", "INT", "pad VARCHAR(600)")
	if _, err := db.Exec(fmt.Sprintf("INSERT INTO app10.t SELECT seq, REPEAT('q', 500) FROM app10.seq_1_to_%d", n)); err != nil {
		t.Fatal(err)
	}
	proxy := newCutProxy(t, peerSrv.Addr())
	r := startTailer(t, tailOpts{addr: proxy.addr(), maxTxnBytes: 64 << 10}, Checkpoint{})
	r.waitReady(t)
	s := newSession(t, db)
	s.stamp(4242<<16, 1)
	s.exec("DELETE FROM app10.t")

	var first *Txn
	for first == nil || len(first.Changes) == 0 {
		first = r.next(t)
	}
	if first.Last {
		t.Fatalf("the delete arrived whole; want pieces")
	}
	// The tailer is now blocked sending the next piece, with at most its
	// event buffer read ahead: cut while most of the transaction is unread.
	proxy.cut()
	seen := map[int64]bool{}
	pieces := []*Txn{first}
	for !pieces[len(pieces)-1].Last {
		pieces = append(pieces, r.next(t))
	}
	for i, p := range pieces {
		if p.Piece != i || p.Seq != first.Seq {
			t.Fatalf("piece %d: Piece %d Seq %d", i, p.Piece, p.Seq)
		}
		for _, c := range p.Changes {
			id := c.Before["id"].(int64)
			if seen[id] || c.Stamp != 4242<<16 {
				t.Fatalf("delete of %d: duplicate %v, stamp %d", id, seen[id], c.Stamp)
			}
			seen[id] = true
		}
	}
	if len(seen) != n {
		t.Fatalf("%d deletes, want %d", len(seen), n)
	}
	if st := r.tl.Status(); st.Retries == 0 {
		t.Fatalf("status %+v: the cut caused no reconnect", st)
	}
	if v := counterValue(t, r.tl.m.resumed); v == 0 {
		t.Fatalf("no piece was re-read and held back: the cut did not land inside the transaction")
	}
}

func TestStatementFormatPeerIsFatal(t *testing.T) {
	r := startTailer(t, tailOpts{srv: stmtSrv, name: "region-stmt"}, Checkpoint{})
	select {
	case err := <-r.done:
		if !errors.Is(err, ErrNotRowFormat) || !strings.Contains(err.Error(), "region-stmt") {
			t.Fatalf("Run returned %v, want ErrNotRowFormat naming the peer", err)
		}
		r.finished = true
	case x := <-r.out:
		t.Fatalf("a statement-format peer sent %+v", x)
	case <-time.After(hangGuard):
		t.Fatalf("Run did not stop on a statement-format peer")
	}
}

// TestStatementLoggedSessionIsFatal: one session switched to statement
// logging on an otherwise row-format peer is caught in the stream.
func TestStatementLoggedSessionIsFatal(t *testing.T) {
	db := openPeer(t)
	createReplicated(t, db, "app11", "plain", "id", "INT", "v INT")
	r := startTailer(t, tailOpts{name: "region-mixed"}, Checkpoint{})
	r.waitReady(t)
	s := newSession(t, db)
	s.exec("SET SESSION binlog_format = 'STATEMENT'")
	s.exec("INSERT INTO app11.plain (id, v) VALUES (1, 1)")
	for {
		select {
		case err := <-r.done:
			if !errors.Is(err, ErrNotRowFormat) || !strings.Contains(err.Error(), "region-mixed") {
				t.Fatalf("Run returned %v, want ErrNotRowFormat naming the peer", err)
			}
			r.finished = true
			return
		case x := <-r.out:
			if len(x.Changes) > 0 {
				t.Fatalf("a statement-logged write came through: %+v", x)
			}
		case <-time.After(hangGuard):
			t.Fatalf("Run did not stop on a statement-logged write")
		}
	}
}

// TestUnreachablePeerKeepsRetrying: a peer that is down at start is not
// fatal; Status shows the link down with the error, retries grow, and the
// tailer connects once the peer is reachable.
func TestUnreachablePeerKeepsRetrying(t *testing.T) {
	proxy := newCutProxy(t, peerSrv.Addr())
	proxy.setRefuse(true)
	r := startTailer(t, tailOpts{addr: proxy.addr(), name: "region-down"}, Checkpoint{})
	deadline := time.Now().Add(hangGuard)
	for {
		st := r.tl.Status()
		if st.Retries >= 3 {
			if st.Connected || st.LastError == nil || !strings.Contains(st.LastError.Error(), "region-down") {
				t.Fatalf("status while unreachable: %+v", st)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no retries recorded: %+v", st)
		}
		select {
		case err := <-r.done:
			t.Fatalf("Run returned on an unreachable peer: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	proxy.setRefuse(false)
	r.waitReady(t)
	if st := r.tl.Status(); st.LastError != nil {
		t.Fatalf("status after connecting still has error %v", st.LastError)
	}
}

func counterValue(t *testing.T, c interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
