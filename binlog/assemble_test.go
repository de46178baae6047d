package binlog

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mlproxy/mlproxy/hlc"
)

// collector gathers what an assembler sends.
type collector struct{ txns []*Txn }

func (c *collector) send(_ context.Context, t *Txn) error {
	c.txns = append(c.txns, t)
	return nil
}

func newTestAssembler(t *testing.T, mode string, self, hub, peer uint16, maxBytes int64) (*assembler, *collector) {
	t.Helper()
	f, err := newFilter(mode, self, hub, peer)
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{}
	return newAssembler(peer, f, maxBytes, c.send, newMetrics(nil, "test"), nil), c
}

func dataRow(id int64, stamp uint64, origin uint16) Row {
	return Row{"id": id, "name": fmt.Sprintf("row-%d", id), "_mlr_hlc": stamp, "_mlr_origin": uint64(origin)}
}

func tombRow(id int64, stamp uint64, origin uint16) Row {
	return Row{"id": id, "_mlr_hlc": stamp, "_mlr_origin": uint64(origin)}
}

var ctx = context.Background()

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestAssemblerStampsAndPairs(t *testing.T) {
	a, c := newTestAssembler(t, AllToAll, 2, 0, 1, 1<<20)
	must(t, a.begin("1-1-5", time.Unix(100, 0)))
	must(t, a.rows(ctx, &rowsEvent{schema: "app", table: "t", op: Insert, rows: []Row{dataRow(1, 10, 1)}, when: 100}, Position{}))
	must(t, a.rows(ctx, &rowsEvent{schema: "app", table: "t", op: Update, rows: []Row{dataRow(1, 10, 1), dataRow(1, 11, 1)}, when: 100}, Position{}))
	// Delete of 1 with its tombstone; delete of 2 whose tombstone never comes.
	must(t, a.rows(ctx, &rowsEvent{schema: "app", table: "t", op: Delete, rows: []Row{dataRow(1, 11, 1)}, when: 100}, Position{}))
	must(t, a.rows(ctx, &rowsEvent{schema: "mlr", table: "app.t", op: Insert, rows: []Row{tombRow(1, 12, 1)}, when: 100}, Position{}))
	must(t, a.rows(ctx, &rowsEvent{schema: "app", table: "t", op: Delete, rows: []Row{dataRow(2, 5, 1)}, when: 100}, Position{}))
	// A tombstone without a delete; region-local mlr tables are dropped.
	must(t, a.rows(ctx, &rowsEvent{schema: "mlr", table: "app.t", op: Insert, rows: []Row{tombRow(3, 13, 1)}, when: 100}, Position{}))
	must(t, a.rows(ctx, &rowsEvent{schema: "mlr", table: "conflicts", op: Insert, rows: []Row{{"id": int64(1)}}, when: 100}, Position{}))
	must(t, a.rows(ctx, &rowsEvent{schema: "mlr", table: "hlc", op: Update, rows: []Row{{"id": int64(1)}, {"id": int64(1)}}, when: 100}, Position{}))
	// A table without stamp columns is not replicated.
	must(t, a.rows(ctx, &rowsEvent{schema: "app", table: "plain", op: Insert, rows: []Row{{"id": int64(1)}}, when: 100}, Position{}))
	must(t, a.rows(ctx, &rowsEvent{schema: "mysql", table: "gtid_slave_pos", op: Insert, rows: []Row{{"domain_id": uint64(1)}}, when: 100}, Position{}))
	must(t, a.commit(ctx, Position{GTID: "1-1-5", File: "binlog.000001", Pos: 900}, time.Unix(101, 0)))

	if len(c.txns) != 1 {
		t.Fatalf("sent %d txns, want 1", len(c.txns))
	}
	x := c.txns[0]
	if !x.Last || x.Piece != 0 || x.Seq != 1 || x.Source != 1 || x.Applied || x.Pos.GTID != "1-1-5" || x.Pos.Pos != 900 {
		t.Fatalf("txn header %+v", x)
	}
	want := []struct {
		op          Op
		id          int64
		stamp       uint64
		prevUnknown bool
	}{
		{Insert, 1, 10, false},
		{Update, 1, 11, false},
		{Delete, 1, 12, false},
		{Delete, 2, derivedStamp(100), false},
		{Delete, 3, 13, true},
	}
	if len(x.Changes) != len(want) {
		t.Fatalf("%d changes, want %d: %+v", len(x.Changes), len(want), x.Changes)
	}
	for i, w := range want {
		rc := x.Changes[i]
		img := rc.After
		if rc.Op == Delete {
			img = rc.Before
		}
		if rc.Op != w.op || img["id"] != w.id || rc.Stamp != w.stamp || rc.Origin != 1 || rc.PrevUnknown != w.prevUnknown {
			t.Errorf("change %d = %v id %v stamp %d origin %d prevUnknown %v; want %v id %d stamp %d",
				i, rc.Op, img["id"], rc.Stamp, rc.Origin, rc.PrevUnknown, w.op, w.id, w.stamp)
		}
	}
	if s := hlc.Timestamp(x.Changes[3].Stamp); !s.Bypass() || s.Millis() != 100*1000 {
		t.Errorf("derived stamp %x: want bypass bit and 100000 ms", uint64(s))
	}
	if len(x.Changes[4].Before) != 1 {
		t.Errorf("orphan tombstone delete Before = %v, want primary key only", x.Changes[4].Before)
	}
}

// TestAssemblerPiecesPairAcrossBoundary streams a delete of many rows, each
// followed by its tombstone as the trigger writes them, through a small
// bound: pieces are cut while a delete waits, and every delete still gets
// its tombstone's stamp.
func TestAssemblerPiecesPairAcrossBoundary(t *testing.T) {
	const n = 2000
	a, c := newTestAssembler(t, AllToAll, 2, 0, 1, 4096)
	must(t, a.begin("1-1-9", time.Unix(100, 0)))
	for i := int64(1); i <= n; i++ {
		must(t, a.rows(ctx, &rowsEvent{schema: "app", table: "t", op: Delete, rows: []Row{dataRow(i, 5, 1)}, when: 100}, Position{File: "f", Pos: uint32(i)}))
		must(t, a.rows(ctx, &rowsEvent{schema: "mlr", table: "app.t", op: Insert, rows: []Row{tombRow(i, 1000+uint64(i), 1)}, when: 100}, Position{File: "f", Pos: uint32(i)}))
		if a.bufBytes > 3*4096 {
			t.Fatalf("buffer holds %d bytes, bound 4096", a.bufBytes)
		}
	}
	must(t, a.commit(ctx, Position{GTID: "1-1-9"}, time.Unix(100, 0)))
	if len(c.txns) < 10 {
		t.Fatalf("%d pieces, want many", len(c.txns))
	}
	next := int64(1)
	for p, x := range c.txns {
		if x.Piece != p || x.Seq != 1 || x.Last != (p == len(c.txns)-1) {
			t.Fatalf("piece %d: Piece %d Seq %d Last %v", p, x.Piece, x.Seq, x.Last)
		}
		for _, rc := range x.Changes {
			id := rc.Before["id"].(int64)
			if id != next || rc.Stamp != 1000+uint64(id) || rc.PrevUnknown {
				t.Fatalf("piece %d: delete id %d stamp %d prevUnknown %v; want id %d stamp %d", p, id, rc.Stamp, rc.PrevUnknown, next, 1000+next)
			}
			next++
		}
	}
	if next != n+1 {
		t.Fatalf("got %d deletes, want %d", next-1, n)
	}
}

// TestAssemblerHoldBackIsBounded: deletes whose tombstones never come are
// held back at most up to twice the bound, then stamped as unpaired.
func TestAssemblerHoldBackIsBounded(t *testing.T) {
	a, c := newTestAssembler(t, AllToAll, 2, 0, 1, 4096)
	must(t, a.begin("1-1-9", time.Unix(100, 0)))
	for i := int64(1); i <= 1000; i++ {
		must(t, a.rows(ctx, &rowsEvent{schema: "app", table: "t", op: Delete, rows: []Row{dataRow(i, 5, 1)}, when: 100}, Position{}))
		if a.bufBytes > 2*4096+1024 {
			t.Fatalf("buffer holds %d bytes, bound 2*4096", a.bufBytes)
		}
	}
	// A late tombstone for a delete already stamped becomes an orphan.
	must(t, a.rows(ctx, &rowsEvent{schema: "mlr", table: "app.t", op: Insert, rows: []Row{tombRow(1, 77, 1)}, when: 100}, Position{}))
	// A tombstone for a delete still buffered pairs.
	must(t, a.rows(ctx, &rowsEvent{schema: "mlr", table: "app.t", op: Insert, rows: []Row{tombRow(1000, 78, 1)}, when: 100}, Position{}))
	must(t, a.commit(ctx, Position{}, time.Unix(100, 0)))
	var deletes, orphans int
	for _, x := range c.txns {
		for _, rc := range x.Changes {
			switch {
			case rc.PrevUnknown:
				orphans++
				if rc.Stamp != 77 {
					t.Errorf("orphan stamp %d, want 77", rc.Stamp)
				}
			case rc.Before["id"] == int64(1000):
				deletes++
				if rc.Stamp != 78 {
					t.Errorf("last delete stamp %d, want its tombstone's 78", rc.Stamp)
				}
			default:
				deletes++
				if rc.Stamp != derivedStamp(100) {
					t.Errorf("unpaired delete stamp %x, want derived", rc.Stamp)
				}
			}
		}
	}
	if deletes != 1000 || orphans != 1 {
		t.Fatalf("deletes %d orphans %d, want 1000 and 1", deletes, orphans)
	}
}

func TestFilterTopologies(t *testing.T) {
	// Region 2 reads peer 1. Rows: origin 1 (the peer's), 2 (self), 3 (other).
	cases := []struct {
		mode      string
		self, hub uint16
		applied   bool
		want      []uint16
	}{
		{AllToAll, 2, 0, false, []uint16{1}},
		{AllToAll, 2, 0, true, nil},
		// Forwarding peers keep everything: a forwarded version naming
		// this region may carry other regions' writes merged in.
		{Ring, 2, 0, false, []uint16{1, 2, 3}},
		{Ring, 2, 0, true, []uint16{1, 2, 3}},
		{Star, 2, 1, true, []uint16{1, 2, 3}}, // spoke reading the hub
		{Star, 2, 2, true, nil},               // hub reading a spoke: not its forwards
		{Star, 2, 2, false, []uint16{1}},
	}
	// The marker is a row of mlr.checkpoints (serial apply) or of
	// mlr.markers (a parallel apply worker's).
	for _, tc := range cases {
		for _, marker := range []string{"checkpoints", "markers"} {
			t.Run(fmt.Sprintf("%s/hub%d/applied=%v/%s", tc.mode, tc.hub, tc.applied, marker), func(t *testing.T) {
				a, c := newTestAssembler(t, tc.mode, tc.self, tc.hub, 1, 1<<20)
				must(t, a.begin("1-1-1", time.Unix(1, 0)))
				for i, o := range []uint16{1, 2, 3} {
					must(t, a.rows(ctx, &rowsEvent{schema: "app", table: "t", op: Insert, rows: []Row{dataRow(int64(i), 1, o)}}, Position{}))
				}
				if tc.applied {
					must(t, a.rows(ctx, &rowsEvent{schema: "mlr", table: marker, op: Update,
						rows: []Row{{"peer_id": uint64(3)}, {"peer_id": uint64(3)}}}, Position{}))
				}
				must(t, a.commit(ctx, Position{}, time.Unix(1, 0)))
				if len(c.txns) != 1 {
					t.Fatalf("%d txns, want 1 (empty txns are still sent for progress)", len(c.txns))
				}
				x := c.txns[0]
				var got []uint16
				for _, rc := range x.Changes {
					got = append(got, rc.Origin.Region())
				}
				if fmt.Sprint(got) != fmt.Sprint(tc.want) {
					t.Fatalf("origins kept %v, want %v", got, tc.want)
				}
				if x.Applied != tc.applied || (tc.applied && x.ForwardedFrom != 3) {
					t.Fatalf("Applied %v ForwardedFrom %d", x.Applied, x.ForwardedFrom)
				}
			})
		}
	}
}

// TestAssemblerReplaySkipsSentPieces: a transaction broken off after some
// pieces were sent is re-read whole; only the pieces not yet sent go out.
func TestAssemblerReplaySkipsSentPieces(t *testing.T) {
	a, c := newTestAssembler(t, AllToAll, 2, 0, 1, 2048)
	feed := func(upto int64) error {
		if err := a.begin("1-1-7", time.Unix(5, 0)); err != nil {
			return err
		}
		for i := int64(1); i <= upto; i++ {
			if err := a.rows(ctx, &rowsEvent{schema: "app", table: "t", op: Insert, rows: []Row{dataRow(i, 1, 1)}}, Position{}); err != nil {
				return err
			}
		}
		return nil
	}
	must(t, feed(100))
	sent := len(c.txns)
	if sent < 2 {
		t.Fatalf("only %d pieces before the cut", sent)
	}
	a.abort()
	must(t, feed(300))
	must(t, a.commit(ctx, Position{GTID: "1-1-7"}, time.Unix(5, 0)))
	next := int64(1)
	for p, x := range c.txns {
		if x.Piece != p || x.Seq != 1 {
			t.Fatalf("txn %d: Piece %d Seq %d", p, x.Piece, x.Seq)
		}
		for _, rc := range x.Changes {
			if rc.After["id"] != next {
				t.Fatalf("piece %d: id %v, want %d (duplicate or gap)", p, rc.After["id"], next)
			}
			next++
		}
	}
	if next != 301 || !c.txns[len(c.txns)-1].Last {
		t.Fatalf("got %d rows, want 300 ending with Last", next-1)
	}

	// A different transaction at the same Seq after a cut is refused.
	b, _ := newTestAssembler(t, AllToAll, 2, 0, 1, 2048)
	a = b
	c = &collector{}
	a.send = c.send
	must(t, feed(100))
	a.abort()
	if err := a.begin("1-1-8", time.Unix(5, 0)); !errors.Is(err, ErrReplayDiverged) {
		t.Fatalf("begin of another txn after a partial one: %v, want ErrReplayDiverged", err)
	}
}

func TestClassifyQuery(t *testing.T) {
	cases := map[string]queryKind{
		"BEGIN":                                 queryBegin,
		"COMMIT":                                queryCommit,
		"ROLLBACK":                              queryRollback,
		"ROLLBACK TO SAVEPOINT a":               queryIgnore,
		"SAVEPOINT a":                           queryIgnore,
		"/* c */ insert into t values (1)":      queryDML,
		"UPDATE t SET a=1":                      queryDML,
		"-- x\nDELETE FROM t":                   queryDML,
		"LOAD DATA INFILE 'x' INTO TABLE t":     queryDML,
		"ALTER TABLE t ADD COLUMN c INT":        queryOther,
		"CREATE TABLE t (id INT)":               queryOther,
		"XA PREPARE 'x'":                        queryXA,
		"/*!40000 ALTER TABLE t ENABLE KEYS */": queryOther,
	}
	for q, want := range cases {
		if got, _ := classifyQuery(q); got != want {
			t.Errorf("classifyQuery(%q) = %d, want %d", q, got, want)
		}
	}
}

// TestDDLInsideExecutableComments: DDL a client wraps in an executable
// comment runs on the server and is logged as written; the own-binlog
// watch must still see it as DDL.
func TestDDLInsideExecutableComments(t *testing.T) {
	for _, q := range []string{
		"/*! TRUNCATE TABLE kv NOWAIT */",
		"/*M!100000 DROP TABLE kv WAIT 1 */",
		"/* plain */ /*!50000 ALTER TABLE kv NOWAIT ADD COLUMN z INT */",
		"/*!RENAME TABLE kv TO kv_o, kv_x TO kv*/",
		"/*!*/ CREATE TABLE zz.d (id INT PRIMARY KEY)",
		"/*! */ /* plain */ TRUNCATE TABLE kv",
	} {
		if got := strings.TrimSpace(skipComments(q)); !ddlVerb.MatchString(got) {
			t.Errorf("skipComments(%q) = %q: not seen as DDL", q, got)
		}
	}
	if got := skipComments("/* DROP TABLE kv */ SELECT 1"); ddlVerb.MatchString(got) {
		t.Errorf("a plain comment read as code: %q", got)
	}
	if k, _ := classifyQuery("/*!*/ UPDATE kv SET v = 1"); k != queryDML {
		t.Errorf("a statement-format UPDATE behind an empty executable comment: kind %d, want DML (refused as not row format)", k)
	}
}

func TestServerIDDerivation(t *testing.T) {
	seen := map[uint32]bool{}
	for _, self := range []uint16{1, 2, 999, 1000, 32767} {
		for _, peer := range []uint16{1, 2, 999, 1000, 32767} {
			if self == peer {
				continue
			}
			id := Config{Self: self, Peer: peerCfg("p", peer)}.ServerID()
			if seen[id] || id < 1000000 {
				t.Fatalf("server id %d for self %d peer %d clashes or is small", id, self, peer)
			}
			seen[id] = true
		}
	}
}
