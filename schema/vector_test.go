package schema

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/change"
	"github.com/mlproxy/mlproxy/config"
)

// rawMeta reads the _mlr_vv of a row (or tombstone) where cond holds; ok is
// false when there is no such row, and a NULL _mlr_vv is "".
func rawMeta(t *testing.T, table, cond string) (string, bool) {
	t.Helper()
	var m sql.NullString
	err := dbA.QueryRow("SELECT _mlr_vv FROM " + table + " WHERE " + cond).Scan(&m)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false
	}
	require.NoError(t, err)
	return m.String, true
}

// meta parses the _mlr_vv of the row (or tombstone) with id.
func meta(t *testing.T, table string, id int) change.Meta {
	t.Helper()
	raw, ok := rawMeta(t, table, "id = "+strconv.Itoa(id))
	require.True(t, ok, "%s id %d: no row", table, id)
	m, err := change.ParseMeta(raw)
	require.NoError(t, err, raw)
	return m
}

// proxySession is a session as the proxy leaves it before a write: the
// stamp to use and this region as the origin.
func proxySession(t testing.TB) *session {
	s := newSession(t)
	s.exec("SET @_mlr_origin = ?", region)
	return s
}

func (s *session) stamp(h uint64) { s.exec("SET @_mlr_hlc = ?", h) }

// applierSession is the applier's: triggers leave the metadata alone.
func applierSession(t *testing.T) *session {
	s := newSession(t)
	s.exec("SET @_mlr_apply = 1")
	return s
}

func TestTriggersVector(t *testing.T) {
	mustExec(t, dbA,
		"CREATE DATABASE vv",
		"CREATE TABLE vv.t (id INT PRIMARY KEY, name VARCHAR(20), n INT)",
		"CREATE TABLE vv.c (id INT PRIMARY KEY, hits INT NOT NULL DEFAULT 0, v INT)",
		"CREATE TABLE vv.f (id INT PRIMARY KEY, v INT)",
	)
	_, _, err := applyTables(t, []config.TableRule{
		{Schema: "vv", Table: "t", Rule: config.RuleLWW},
		{Schema: "vv", Table: "c", Rule: config.RuleCounter, Columns: []string{"hits"}},
		{Schema: "vv", Table: "f", Rule: config.RuleFirstWriterWins},
	}, region)
	require.NoError(t, err)
	const tbl, tomb = "vv.t", "mlr.`vv.t`"

	t.Run("insert, update, no-op, delete, re-insert", func(t *testing.T) {
		s, ap := proxySession(t), applierSession(t)
		s.stamp(1000)
		s.exec("INSERT INTO vv.t (id, name, n, _mlr_vv) VALUES (1, 'a', 1, '{\"9\":1}')")
		raw, _ := rawMeta(t, tbl, "id = 1")
		assert.Equal(t, `{"1":1000}`, raw, "insert: this region's entry only, whatever the client wrote")

		// Another region's version arrives through the applier.
		ap.exec(`UPDATE vv.t SET n = 2, _mlr_hlc = 1500, _mlr_origin = 2, _mlr_vv = '{"1":1000,"2":1500}' WHERE id = 1`)
		s.stamp(2000)
		assert.EqualValues(t, 1, s.exec("UPDATE vv.t SET n = 3 WHERE id = 1"))
		assert.Equal(t, change.Vector{1: 2000, 2: 1500}, meta(t, tbl, 1).VV, "update: only this region's entry moves")
		h, o, _ := stamp(t, tbl, 1)
		assert.Equal(t, []any{uint64(2000), uint16(region)}, []any{h, o})

		s.stamp(3000)
		assert.EqualValues(t, 0, s.exec("UPDATE vv.t SET n = 3 WHERE id = 1"), "no-op update")
		assert.EqualValues(t, 0, s.exec(`UPDATE vv.t SET _mlr_hlc = 1, _mlr_origin = 9, _mlr_vv = '{"9":9}' WHERE id = 1`),
			"an update of metadata columns only changes nothing")
		assert.EqualValues(t, 0, s.exec(`INSERT INTO vv.t (id, name, n) VALUES (1, 'a', 3) ON DUPLICATE KEY UPDATE _mlr_vv = '{}'`))
		raw, _ = rawMeta(t, tbl, "id = 1")
		assert.Equal(t, `{"1":2000,"2":1500}`, raw)
		h, o, _ = stamp(t, tbl, 1)
		assert.Equal(t, []any{uint64(2000), uint16(region)}, []any{h, o})

		s.stamp(4000)
		s.exec("DELETE FROM vv.t WHERE id = 1")
		raw, _ = rawMeta(t, tomb, "id = 1")
		assert.Equal(t, `{"1":4000,"2":1500}`, raw, "the tombstone is a version: entry R = its stamp")

		s.stamp(5000)
		s.exec("INSERT INTO vv.t (id, name, n) VALUES (1, 'b', 1)")
		raw, _ = rawMeta(t, tbl, "id = 1")
		assert.Equal(t, `{"1":5000,"2":1500}`, raw, "a re-insert has seen the delete")

		// REPLACE: delete (tombstone) then insert, which inherits it.
		s.stamp(6000)
		s.exec("REPLACE INTO vv.t (id, name, n) VALUES (1, 'c', 1)")
		raw, _ = rawMeta(t, tomb, "id = 1")
		assert.Equal(t, `{"1":6000,"2":1500}`, raw)
		raw, _ = rawMeta(t, tbl, "id = 1")
		assert.Equal(t, `{"1":6001,"2":1500}`, raw, "stamped above the tombstone REPLACE just wrote")
		h, _, _ = stamp(t, tbl, 1)
		assert.Equal(t, uint64(6001), h)

		// INSERT ... ON DUPLICATE KEY UPDATE that changes the row: an update.
		s.stamp(7000)
		ap.exec(`UPDATE vv.t SET _mlr_vv = '{"1":6001,"2":1500,"3":6500}' WHERE id = 1`)
		assert.EqualValues(t, 2, s.exec("INSERT INTO vv.t (id, name, n) VALUES (1, 'd', 1) ON DUPLICATE KEY UPDATE name = VALUES(name)"))
		raw, _ = rawMeta(t, tbl, "id = 1")
		assert.Equal(t, `{"1":7000,"2":1500,"3":6500}`, raw)

		// A merge keeps the winner's stamp, which may be below this
		// region's own entry: a new local write is stamped above both,
		// so the entry only grows (on update, delete and re-insert).
		ap.exec(`UPDATE vv.t SET _mlr_hlc = 1500, _mlr_origin = 2, _mlr_vv = '{"1":9000,"2":1500}' WHERE id = 1`)
		s.stamp(8000)
		s.exec("UPDATE vv.t SET n = 9 WHERE id = 1")
		assert.Equal(t, change.Vector{1: 9001, 2: 1500}, meta(t, tbl, 1).VV, "update above the region's own entry")
		ap.exec(`UPDATE vv.t SET _mlr_hlc = 1500, _mlr_origin = 2, _mlr_vv = '{"1":9500,"2":1500}' WHERE id = 1`)
		s.exec("DELETE FROM vv.t WHERE id = 1")
		assert.Equal(t, change.Vector{1: 9501, 2: 1500}, meta(t, tomb, 1).VV, "delete above the region's own entry")
		ap.exec(`UPDATE mlr.` + "`vv.t`" + ` SET _mlr_hlc = 1500, _mlr_vv = '{"1":9900,"2":1500}' WHERE id = 1`)
		s.exec("INSERT INTO vv.t (id, name, n) VALUES (1, 'e', 1)")
		assert.Equal(t, change.Vector{1: 9901, 2: 1500}, meta(t, tbl, 1).VV, "re-insert above the tombstone's own entry")
	})

	t.Run("legacy rows", func(t *testing.T) {
		s, ap := proxySession(t), applierSession(t)
		// Written before version vectors: _mlr_vv NULL.
		ap.exec("INSERT INTO vv.t (id, name, n, _mlr_hlc, _mlr_origin) VALUES (10, 'x', 1, 500, 3), (11, 'y', 1, 0, 0), (12, 'z', 1, 700, 2)")
		s.stamp(1000)
		s.exec("UPDATE vv.t SET n = 2 WHERE id IN (10, 11)")
		raw, _ := rawMeta(t, tbl, "id = 10")
		assert.Equal(t, `{"3":500,"1":1000}`, raw)
		raw, _ = rawMeta(t, tbl, "id = 11")
		assert.Equal(t, `{"1":1000}`, raw, "a row never stamped has seen nothing")
		s.exec("DELETE FROM vv.t WHERE id = 12")
		raw, _ = rawMeta(t, tomb, "id = 12")
		assert.Equal(t, `{"2":700,"1":1000}`, raw)

		// A tombstone from before version vectors counts as its writer's entry.
		ap.exec("INSERT INTO mlr.`vv.t` (id, _mlr_hlc, _mlr_origin) VALUES (13, 800, 2)")
		s.stamp(2000)
		s.exec("INSERT INTO vv.t (id, name, n) VALUES (13, 'w', 1)")
		raw, _ = rawMeta(t, tbl, "id = 13")
		assert.Equal(t, `{"2":800,"1":2000}`, raw)
	})

	t.Run("bypass writes", func(t *testing.T) {
		s := newSession(t) // no @_mlr_hlc: a DBA at the server
		s.exec("INSERT INTO vv.t (id, name, n) VALUES (20, 'x', 1)")
		h1, _, _ := stamp(t, tbl, 20)
		assert.NotZero(t, h1&0x8000)
		assert.Equal(t, change.Vector{region: h1}, meta(t, tbl, 20).VV)
		s.exec("UPDATE vv.t SET n = 2 WHERE id = 20")
		h2, _, _ := stamp(t, tbl, 20)
		assert.Greater(t, h2, h1)
		assert.Equal(t, change.Vector{region: h2}, meta(t, tbl, 20).VV)
		s.exec("DELETE FROM vv.t WHERE id = 20")
		h3, _, _ := stamp(t, tomb, 20)
		assert.Greater(t, h3, h2)
		assert.Equal(t, change.Vector{region: h3}, meta(t, tomb, 20).VV)
		s.exec("INSERT INTO vv.t (id, name, n) VALUES (20, 'y', 1)")
		s.exec("REPLACE INTO vv.t (id, name, n) VALUES (20, 'z', 1)")
		h4, _, _ := stamp(t, tomb, 20)
		h5, _, _ := stamp(t, tbl, 20)
		assert.Greater(t, h5, h4, "the row a REPLACE inserts is newer than the tombstone of the row it deleted")
		assert.NotZero(t, h4&h5&0x8000)
		assert.Equal(t, change.Vector{region: h5}, meta(t, tbl, 20).VV)
	})

	t.Run("applier session", func(t *testing.T) {
		ap := applierSession(t)
		ap.exec(`INSERT INTO vv.t (id, name, n, _mlr_hlc, _mlr_origin, _mlr_vv) VALUES (30, 'x', 1, 42, 2, '{"2":42}')`)
		raw, _ := rawMeta(t, tbl, "id = 30")
		assert.Equal(t, `{"2":42}`, raw, "kept as the applier wrote it")
		ap.exec(`UPDATE vv.t SET _mlr_vv = '{"2":42,"3":7}' WHERE id = 30`)
		raw, _ = rawMeta(t, tbl, "id = 30")
		assert.Equal(t, `{"2":42,"3":7}`, raw)
		ap.exec("DELETE FROM vv.t WHERE id = 30")
		_, ok := rawMeta(t, tomb, "id = 30")
		assert.False(t, ok)
	})

	t.Run("counter: the tombstone keeps the values", func(t *testing.T) {
		s := proxySession(t)
		s.stamp(1000)
		s.exec("INSERT INTO vv.c (id, hits, v) VALUES (1, 5, 1)")
		s.stamp(2000)
		s.exec("UPDATE vv.c SET hits = hits + 2 WHERE id = 1")
		raw, _ := rawMeta(t, "vv.c", "id = 1")
		assert.Equal(t, `{"1":2000}`, raw, "rows carry no values")
		s.stamp(3000)
		s.exec("DELETE FROM vv.c WHERE id = 1")
		raw, _ = rawMeta(t, "mlr.`vv.c`", "id = 1")
		assert.Equal(t, `{"1":3000,"m":{"hits":7}}`, raw)
		m := meta(t, "mlr.`vv.c`", 1)
		assert.Equal(t, map[string]any{"hits": "7"}, m.Values)
		s.stamp(4000)
		s.exec("INSERT INTO vv.c (id, hits, v) VALUES (1, 1, 1)")
		raw, _ = rawMeta(t, "vv.c", "id = 1")
		assert.Equal(t, `{"1":4000}`, raw, "the re-insert inherits the vector, not the values")
		var hits int
		require.NoError(t, dbA.QueryRow("SELECT hits FROM vv.c WHERE id = 1").Scan(&hits))
		assert.Equal(t, 1, hits, "counters are not clamped")
	})

	t.Run("first-writer-wins: the lineage's birth", func(t *testing.T) {
		s, ap := proxySession(t), applierSession(t)
		// A session stamp far in the past (stale, or set low to win
		// first-writer-wins) gives no birth earlier than the server's
		// clock minus the max offset.
		before := uint64(time.Now().Add(-config.DefaultMaxOffset-time.Second).UnixMilli()) << 16
		s.stamp(1000)
		s.exec("INSERT INTO vv.f (id, v) VALUES (1, 1)")
		b0 := meta(t, "vv.f", 1).Birth.Stamp
		after := uint64(time.Now().Add(time.Second).UnixMilli()) << 16
		assert.True(t, b0 >= before && b0 <= after, "birth %d: want the server's clock minus the max offset, not the session's stamp 1000", b0)
		raw, _ := rawMeta(t, "vv.f", "id = 1")
		assert.Equal(t, fmt.Sprintf(`{"1":1000,"b":[%d,1]}`, b0), raw)
		s.stamp(2000)
		s.exec("UPDATE vv.f SET v = 2 WHERE id = 1")
		raw, _ = rawMeta(t, "vv.f", "id = 1")
		assert.Equal(t, fmt.Sprintf(`{"1":2000,"b":[%d,1]}`, b0), raw, "carried unchanged")
		s.stamp(3000)
		s.exec("DELETE FROM vv.f WHERE id = 1")
		raw, _ = rawMeta(t, "mlr.`vv.f`", "id = 1")
		assert.Equal(t, fmt.Sprintf(`{"1":3000,"b":[%d,1]}`, b0), raw)
		s.stamp(4000)
		s.exec("INSERT INTO vv.f (id, v) VALUES (1, 3)")
		m := meta(t, "vv.f", 1)
		assert.Equal(t, change.Birth{Stamp: b0, Origin: 1}, m.Birth, "a re-insert continues the lineage")
		assert.Equal(t, change.Vector{1: 4000}, m.VV)
		s.stamp(4500)
		s.exec("REPLACE INTO vv.f (id, v) VALUES (1, 4)")
		raw, _ = rawMeta(t, "vv.f", "id = 1")
		assert.Equal(t, fmt.Sprintf(`{"1":4501,"b":[%d,1]}`, b0), raw, "REPLACE continues the lineage too")

		// Legacy rows: their own stamp is the best birth known.
		ap.exec("INSERT INTO vv.f (id, v, _mlr_hlc, _mlr_origin) VALUES (2, 1, 500, 3), (3, 1, 600, 2)")
		s.stamp(5000)
		s.exec("UPDATE vv.f SET v = 2 WHERE id = 2")
		raw, _ = rawMeta(t, "vv.f", "id = 2")
		assert.Equal(t, `{"3":500,"1":5000,"b":[500,3]}`, raw)
		s.exec("DELETE FROM vv.f WHERE id = 3")
		raw, _ = rawMeta(t, "mlr.`vv.f`", "id = 3")
		assert.Equal(t, `{"2":600,"1":5000,"b":[600,2]}`, raw)
	})

	t.Run("the driver returns TEXT as bytes", func(t *testing.T) {
		var v any
		require.NoError(t, dbA.QueryRow("SELECT _mlr_vv FROM vv.t WHERE id = 1").Scan(&v))
		assert.IsType(t, []byte(nil), v)
		m, err := change.ParseMeta(v)
		require.NoError(t, err)
		assert.NotEmpty(t, m.VV)
	})
}

func TestTriggersClamp(t *testing.T) {
	mustExec(t, dbA,
		"CREATE DATABASE cl",
		"CREATE TABLE cl.mx (id INT PRIMARY KEY, hi INT NULL, d DECIMAL(10,2) NULL, at DATETIME(6) NULL, u BIGINT UNSIGNED NULL, f DOUBLE NULL, s VARCHAR(10) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NULL, `odd 'na\"me` INT NULL, v INT)",
		"CREATE TABLE cl.mn (id INT PRIMARY KEY, lo INT NULL, tm TIME(3) NULL, v INT)",
	)
	_, _, err := applyTables(t, []config.TableRule{
		{Schema: "cl", Table: "mx", Rule: config.RuleMax, Columns: []string{"hi", "d", "at", "u", "f", "s", "odd 'na\"me"}},
		{Schema: "cl", Table: "mn", Rule: config.RuleMin, Columns: []string{"lo", "tm"}},
	}, region)
	require.NoError(t, err)
	row := func(q string, dest ...any) {
		t.Helper()
		require.NoError(t, dbA.QueryRow(q).Scan(dest...))
	}

	t.Run("max", func(t *testing.T) {
		s := proxySession(t)
		s.stamp(1000)
		s.exec("INSERT INTO cl.mx (id, hi, d, at, u, f, s, `odd 'na\"me`, v) VALUES (1, 9, 9.50, '2024-05-01 00:00:00.5', 18446744073709551000, 2.5, 'b', 9, 1)")
		s.stamp(2000)
		assert.EqualValues(t, 0, s.exec("UPDATE cl.mx SET hi = 3, d = 1, at = '2020-01-01', u = 1, f = -1, s = 'a', `odd 'na\"me` = 1 WHERE id = 1"),
			"lowering a max column is no change")
		assert.EqualValues(t, 1, s.exec("UPDATE cl.mx SET hi = 10, s = 'B', v = 2 WHERE id = 1"))
		var hi int
		var s1 string
		row("SELECT hi, s FROM cl.mx WHERE id = 1", &hi, &s1)
		assert.Equal(t, 10, hi)
		assert.Equal(t, "B", s1, "'B' = 'b' under the column's collation: the write stands")
		assert.EqualValues(t, 0, s.exec("UPDATE cl.mx SET hi = NULL WHERE id = 1"), "NULL is lowest")
		s.stamp(3000)
		s.exec("DELETE FROM cl.mx WHERE id = 1")
		raw, _ := rawMeta(t, "mlr.`cl.mx`", "id = 1")
		assert.Contains(t, raw, `"m":{"hi":10,"d":9.50,"at":"2024-05-01 00:00:00.500000","u":18446744073709551000,"f":2.5,"s":"B","odd 'na\"me":9}`)

		// Re-inserted lower: the deleted values hold, compared as numbers,
		// decimals and datetimes, not as text ("10" < "9" as text).
		s.stamp(4000)
		s.exec("INSERT INTO cl.mx (id, hi, d, at, u, f, s, `odd 'na\"me`, v) VALUES (1, 9, 10.25, '2024-04-30', 5, 10, 'a', NULL, 1)")
		var d, at, u, odd string
		var f float64
		row("SELECT hi, d, at, u, f, s, `odd 'na\"me` FROM cl.mx WHERE id = 1", &hi, &d, &at, &u, &f, &s1, &odd)
		assert.Equal(t, []any{10, "10.25", "2024-05-01 00:00:00.500000", "18446744073709551000", 10.0, "B", "9"},
			[]any{hi, d, at, u, f, s1, odd})
		raw, _ = rawMeta(t, "cl.mx", "id = 1")
		assert.NotContains(t, raw, `"m"`)
		s.stamp(4500)
		s.exec("REPLACE INTO cl.mx (id, hi, v) VALUES (1, 1, 1)")
		row("SELECT hi, d FROM cl.mx WHERE id = 1", &hi, &d)
		assert.Equal(t, []any{10, "10.25"}, []any{hi, d}, "a REPLACE cannot lower the row it replaces either")

		// A NULL at delete time is a JSON null in "m": lowest.
		s.stamp(5000)
		s.exec("INSERT INTO cl.mx (id, v) VALUES (2, 1)")
		s.exec("DELETE FROM cl.mx WHERE id = 2")
		raw, _ = rawMeta(t, "mlr.`cl.mx`", "id = 2")
		assert.Contains(t, raw, `"hi":null`)
		s.exec("INSERT INTO cl.mx (id, hi, v) VALUES (2, -5, 1)")
		var hiN sql.NullInt64
		row("SELECT hi FROM cl.mx WHERE id = 2", &hiN)
		assert.Equal(t, sql.NullInt64{Int64: -5, Valid: true}, hiN)
	})

	t.Run("min", func(t *testing.T) {
		s, ap := proxySession(t), applierSession(t)
		s.stamp(1000)
		s.exec("INSERT INTO cl.mn (id, lo, tm, v) VALUES (1, 5, '10:00:00.250', 1)")
		s.stamp(2000)
		assert.EqualValues(t, 0, s.exec("UPDATE cl.mn SET lo = 7, tm = '11:00' WHERE id = 1"), "raising a min column is no change")
		assert.EqualValues(t, 1, s.exec("UPDATE cl.mn SET lo = 4 WHERE id = 1"))
		s.stamp(3000)
		s.exec("DELETE FROM cl.mn WHERE id = 1")
		raw, _ := rawMeta(t, "mlr.`cl.mn`", "id = 1")
		assert.Equal(t, `{"1":3000,"m":{"lo":4,"tm":"10:00:00.250"}}`, raw)
		s.stamp(4000)
		s.exec("INSERT INTO cl.mn (id, lo, tm, v) VALUES (1, 10, '9:00', 1)")
		var lo int
		var tm string
		row("SELECT lo, tm FROM cl.mn WHERE id = 1", &lo, &tm)
		assert.Equal(t, 4, lo, "10 > 4 as numbers")
		assert.Equal(t, "09:00:00.000", tm, "9:00 < 10:00 as times")

		// NULL is lowest: min(NULL, x) = NULL, on update and on re-insert.
		s.stamp(5000)
		assert.EqualValues(t, 1, s.exec("UPDATE cl.mn SET lo = NULL WHERE id = 1"))
		assert.EqualValues(t, 0, s.exec("UPDATE cl.mn SET lo = 1 WHERE id = 1"))
		s.exec("DELETE FROM cl.mn WHERE id = 1")
		s.exec("INSERT INTO cl.mn (id, lo, v) VALUES (1, 3, 1)")
		var loN sql.NullInt64
		row("SELECT lo FROM cl.mn WHERE id = 1", &loN)
		assert.False(t, loN.Valid, "the deleted NULL holds")

		// No value in the tombstone (an applier's, or one from before
		// version vectors): the insert stands.
		ap.exec(`INSERT INTO mlr.` + "`cl.mn`" + ` (id, _mlr_hlc, _mlr_origin, _mlr_vv) VALUES (2, 100, 2, '{"2":100}'), (3, 100, 2, NULL)`)
		s.exec("INSERT INTO cl.mn (id, lo, v) VALUES (2, 8, 1), (3, 9, 1)")
		row("SELECT lo FROM cl.mn WHERE id = 2", &lo)
		assert.Equal(t, 8, lo)
		row("SELECT lo FROM cl.mn WHERE id = 3", &lo)
		assert.Equal(t, 9, lo)
	})
}

func TestApplyMigratesToVectors(t *testing.T) {
	ctx := context.Background()
	mustExec(t, dbA, "CREATE DATABASE mig", "CREATE TABLE mig.t (id INT PRIMARY KEY, v INT)")
	rules := []config.TableRule{{Schema: "mig", Table: "t"}}
	_, _, err := applyTables(t, rules, region)
	require.NoError(t, err)

	// The shapes of the release before version vectors, with data in them.
	mustExec(t, dbA,
		"ALTER TABLE mlr.`mig.t` DROP COLUMN _mlr_vv",
		"ALTER TABLE mig.t DROP COLUMN _mlr_vv",
		"ALTER TABLE mlr.checkpoints DROP COLUMN batches",
		"INSERT INTO mlr.`mig.t` (id, _mlr_hlc, _mlr_origin) VALUES (1, 100, 2)",
		"INSERT INTO mlr.checkpoints (peer_id, peer_name, txns) VALUES (77, 'old', 5)",
	)
	t.Cleanup(func() { mustExec(t, dbA, "DELETE FROM mlr.checkpoints WHERE peer_id = 77") })
	ps, err := Check(ctx, dbA, nil, rules, Stamping{Region: region})
	require.NoError(t, err)
	ps = findProblem(t, ps, Error, "mig.t", "metadata column _mlr_vv is missing")
	ps = findProblem(t, ps, Error, "mig.t", "tombstone table mlr.mig.t has no _mlr_vv column")
	ps = findProblem(t, ps, Error, "mlr.checkpoints", "no column batches")
	assert.Empty(t, ps, problemList(ps))

	// The columns are added; the tombstones and checkpoints kept.
	_, rep, err := applyTables(t, rules, region)
	require.NoError(t, err)
	assert.Equal(t, []string{
		"mlr: added column batches to table mlr.checkpoints",
		"mig.t: metadata columns: ADD COLUMN `_mlr_vv` " + DefMeta,
		"mig.t: tombstone table mlr.mig.t: ADD COLUMN `_mlr_vv` " + DefTombstoneMeta,
	}, rep.Changes, "triggers generated for the full shape were already current")

	tomb, err := ReadTable(ctx, dbA, Internal, "mig.t")
	require.NoError(t, err)
	assert.Equal(t, []string{"id", ColHLC, ColOrigin, ColMeta}, names(tomb.Columns))
	h, o, ok := stamp(t, "mlr.`mig.t`", 1)
	assert.True(t, ok, "tombstones kept")
	assert.Equal(t, []any{uint64(100), uint16(2)}, []any{h, o})
	var txns, batches uint64
	require.NoError(t, dbA.QueryRow("SELECT txns, batches FROM mlr.checkpoints WHERE peer_id = 77").Scan(&txns, &batches))
	assert.Equal(t, []uint64{5, 0}, []uint64{txns, batches})
	var after string
	require.NoError(t, dbA.QueryRow(`SELECT c2.COLUMN_NAME FROM information_schema.COLUMNS c1 JOIN information_schema.COLUMNS c2
  ON c2.TABLE_SCHEMA = c1.TABLE_SCHEMA AND c2.TABLE_NAME = c1.TABLE_NAME AND c2.ORDINAL_POSITION = c1.ORDINAL_POSITION - 1
WHERE c1.TABLE_SCHEMA = 'mlr' AND c1.TABLE_NAME = 'checkpoints' AND c1.COLUMN_NAME = 'batches'`).Scan(&after))
	assert.Equal(t, "txns", after, "where a fresh CREATE puts it")

	_, rep, err = applyTables(t, rules, region)
	require.NoError(t, err)
	assert.False(t, rep.Changed(), rep.String())
	ps, err = Check(ctx, dbA, nil, rules, Stamping{Region: region})
	require.NoError(t, err)
	assert.Empty(t, ps, problemList(ps))

	// Triggers of the release before (v1 marker) are replaced.
	tables, err := Inspect(ctx, dbA, rules)
	require.NoError(t, err)
	for _, stmt := range v1Triggers(tables[0], region) {
		mustExec(t, dbA, "CREATE OR REPLACE"+strings.TrimPrefix(stmt, "CREATE"))
	}
	_, rep, err = applyTables(t, rules, region)
	require.NoError(t, err)
	assert.Equal(t, []string{
		"mig.t: replaced stale trigger _mlr_bi_t",
		"mig.t: replaced stale trigger _mlr_bu_t",
		"mig.t: replaced stale trigger _mlr_ad_t",
	}, rep.Changes)
}

// TestVectorSize measures _mlr_vv for a row every one of three regions has
// written, with stamps of today.
func TestVectorSize(t *testing.T) {
	mustExec(t, dbA, "CREATE DATABASE sz", "CREATE TABLE sz.t (id INT PRIMARY KEY, v INT)", "CREATE TABLE sz.f (id INT PRIMARY KEY, v INT)")
	_, _, err := applyTables(t, []config.TableRule{{Schema: "sz", Table: "t"}, {Schema: "sz", Table: "f", Rule: config.RuleFirstWriterWins}}, region)
	require.NoError(t, err)
	now := uint64(time.Now().UnixMilli()) << 16
	s, ap := proxySession(t), applierSession(t)
	for _, tbl := range []string{"sz.t", "sz.f"} {
		s.stamp(now)
		s.exec("INSERT INTO " + tbl + " (id, v) VALUES (1, 1)")
		var m string
		require.NoError(t, dbA.QueryRow("SELECT _mlr_vv FROM "+tbl+" WHERE id = 1").Scan(&m))
		// Regions 2 and 3 wrote later versions, applied here.
		m = strings.TrimSuffix(m, "}") + fmt.Sprintf(`,"2":%d,"3":%d}`, now+65536, now+2*65536)
		ap.exec("UPDATE "+tbl+" SET v = 2, _mlr_vv = ? WHERE id = 1", m)
		s.stamp(now + 3*65536)
		s.exec("UPDATE " + tbl + " SET v = 3 WHERE id = 1")
		var n int
		require.NoError(t, dbA.QueryRow("SELECT _mlr_vv, LENGTH(_mlr_vv) FROM "+tbl+" WHERE id = 1").Scan(&m, &n))
		assert.Len(t, meta(t, tbl, 1).VV, 3)
		t.Logf("%s: _mlr_vv of a row seen by 3 regions: %d bytes: %s", tbl, n, m)
	}
}

// v1Triggers are the triggers of the release before version vectors (the
// v1 marker), to measure and to migrate from.
func v1Triggers(t *Table, regionID uint16) []string {
	origin := fmt.Sprintf("COALESCE(@_mlr_origin, %d)", regionID)
	hlc, origCol := Quote(ColHLC), Quote(ColOrigin)
	newer := func(prev string) string {
		return fmt.Sprintf("IF(@_mlr_hlc IS NULL, GREATEST(%s, (%s + 1) | 0x8000), GREATEST(@_mlr_hlc, %s + 1))",
			BypassStampSQL, prev, prev)
	}
	after := newer("OLD." + hlc)
	pkMatch := make([]string, 0, len(t.PK))
	for _, c := range t.PK {
		pkMatch = append(pkMatch, Quote(c)+" = NEW."+Quote(c))
	}
	tomb := fmt.Sprintf("COALESCE((SELECT %s FROM %s WHERE %s), 0)", hlc, t.TombstoneQualifiedName(), strings.Join(pkMatch, " AND "))
	bi := "BEGIN\n  /* mlproxy trigger v1 0000000000000000 */\n  IF COALESCE(@_mlr_apply, 0) = 0 THEN\n" +
		fmt.Sprintf("    SET NEW.%s = %s,\n        NEW.%s = %s;\n", hlc, newer(tomb), origCol, origin) +
		"  END IF;\nEND"
	var same []string
	for _, c := range t.UserColumns() {
		n, o := "NEW."+Quote(c.Name), "OLD."+Quote(c.Name)
		if c.textual() {
			n, o = "CAST("+n+" AS BINARY)", "CAST("+o+" AS BINARY)"
		}
		same = append(same, n+" <=> "+o)
	}
	bu := "BEGIN\n  /* mlproxy trigger v1 0000000000000000 */\n  IF COALESCE(@_mlr_apply, 0) = 0 AND NOT (" + strings.Join(same, " AND ") + ") THEN\n" +
		fmt.Sprintf("    SET NEW.%s = %s,\n        NEW.%s = %s;\n", hlc, after, origCol, origin) +
		"  END IF;\nEND"
	cols, vals := []string{}, []string{}
	for _, c := range t.PK {
		cols = append(cols, Quote(c))
		vals = append(vals, "OLD."+Quote(c))
	}
	cols = append(cols, hlc, origCol)
	vals = append(vals, after, origin)
	ad := "BEGIN\n  /* mlproxy trigger v1 0000000000000000 */\n  IF COALESCE(@_mlr_apply, 0) = 0 THEN\n" +
		fmt.Sprintf("    INSERT INTO %s (%s)\n    VALUES (%s)\n", t.TombstoneQualifiedName(), strings.Join(cols, ", "), strings.Join(vals, ", ")) +
		fmt.Sprintf("    ON DUPLICATE KEY UPDATE %s = VALUES(%s), %s = VALUES(%s);\n", hlc, hlc, origCol, origCol) +
		"  END IF;\nEND"
	var out []string
	for _, tr := range []Trigger{
		{Name: TriggerBeforeInsert + t.Name, Timing: "BEFORE", Event: "INSERT", Body: bi},
		{Name: TriggerBeforeUpdate + t.Name, Timing: "BEFORE", Event: "UPDATE", Body: bu},
		{Name: TriggerAfterDelete + t.Name, Timing: "AFTER", Event: "DELETE", Body: ad},
	} {
		out = append(out, tr.CreateSQL(t))
	}
	return out
}

// BenchmarkTriggerWriteCost times single-row writes through the vector
// triggers, the previous (v1) triggers and no triggers, interleaved
// statement by statement so that the machine's noise hits all alike, and
// reports the ratios (b.N writes per table and phase).
func BenchmarkTriggerWriteCost(b *testing.B) {
	t, n := b, b.N
	ctx := context.Background()
	mustExec(t, dbA, "DROP DATABASE IF EXISTS cost", "CREATE DATABASE cost",
		"CREATE TABLE cost.v2 (id INT PRIMARY KEY, name VARCHAR(20), n INT)",
		"CREATE TABLE cost.fww (id INT PRIMARY KEY, name VARCHAR(20), n INT)",
		"CREATE TABLE cost.v1 (id INT PRIMARY KEY, name VARCHAR(20), n INT)",
		"CREATE TABLE cost.none (id INT PRIMARY KEY, name VARCHAR(20), n INT)")
	tables, _, err := applyTables(t, []config.TableRule{
		{Schema: "cost", Table: "v2"}, {Schema: "cost", Table: "v1"},
		{Schema: "cost", Table: "fww", Rule: config.RuleFirstWriterWins},
	}, region)
	require.NoError(t, err)
	for _, tb := range tables {
		if tb.Name == "v1" {
			rt, err := ReadTable(ctx, dbA, "cost", "v1")
			require.NoError(t, err)
			for _, stmt := range v1Triggers(rt, region) {
				mustExec(t, dbA, "CREATE OR REPLACE"+strings.TrimPrefix(stmt, "CREATE"))
			}
		}
	}
	names := []string{"none", "v1", "v2", "fww"}
	s := proxySession(t)
	for _, tb := range names {
		s.exec("INSERT INTO cost." + tb + " (id, name, n) VALUES (1, 'x', 0)")
	}
	for _, phase := range []string{"updates", "updates in one transaction", "inserts"} {
		took := map[string]time.Duration{}
		if phase == "updates in one transaction" {
			s.exec("BEGIN")
		}
		for i := 1; i <= n; i++ {
			s.stamp(uint64(1000 + i))
			for _, tb := range names {
				q, args := "UPDATE cost."+tb+" SET n = ? WHERE id = 1", []any{i}
				if phase == "inserts" {
					q, args = "INSERT INTO cost."+tb+" (id, name, n) VALUES (?, 'x', 0)", []any{i + 1}
				}
				start := time.Now()
				s.exec(q, args...)
				took[tb] += time.Since(start)
			}
		}
		if phase == "updates in one transaction" {
			s.exec("COMMIT")
		}
		key := strings.ReplaceAll(phase, " ", "_")
		b.ReportMetric(float64(took["v2"])/float64(took["v1"]), key+":v2/v1")
		b.ReportMetric(float64(took["v2"])/float64(took["none"]), key+":v2/none")
		b.ReportMetric(float64(took["fww"])/float64(took["v1"]), key+":fww/v1")
	}
}

func TestApplyRefusesUnknownRuleColumn(t *testing.T) {
	mustExec(t, dbA, "CREATE DATABASE rc", "CREATE TABLE rc.t (id INT PRIMARY KEY, hits INT)")
	rules := []config.TableRule{{Schema: "rc", Table: "t", Rule: config.RuleCounter, Columns: []string{"hits", "misses"}}}
	_, rep, err := applyTables(t, rules, region)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `schema apply rc.t: rule counter names column "misses"`)
	assert.False(t, rep.Changed() && strings.Contains(rep.String(), "rc.t"), rep.String())
	ps, err := Check(context.Background(), dbA, nil, rules, Stamping{Region: region})
	require.NoError(t, err)
	ps = findProblem(t, ps, Error, "rc.t", `rule counter names column "misses"`)
	ps = findProblem(t, ps, Error, "rc.t", "_mlr_hlc is missing")
	ps = findProblem(t, ps, Error, "rc.t", "_mlr_origin is missing")
	ps = findProblem(t, ps, Error, "rc.t", "_mlr_vv is missing")
	assert.Empty(t, ps, problemList(ps))
}

// sessionAs is one session on server A as user (password pw), in db.
func sessionAs(t *testing.T, user, pw, db string) *sql.DB {
	t.Helper()
	c := mysql.NewConfig()
	c.User, c.Passwd, c.Net, c.Addr, c.DBName = user, pw, "tcp", srvA.Addr(), db
	s, err := sql.Open("mysql", c.FormatDSN())
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	s.SetMaxOpenConns(1) // what one statement sets, the next sees
	return s
}

// TestTriggersRefuseForgery: an application account (DML on its own
// database, nothing else) cannot skip stamping, choose its origin, or
// stamp a write into the future, whatever session variables (or session
// clock) it sets; only mlproxy's own account, matched byte for byte,
// writes versions as it carries them.
func TestTriggersRefuseForgery(t *testing.T) {
	mustExec(t, dbA,
		"CREATE DATABASE forge",
		"CREATE TABLE forge.t (id INT PRIMARY KEY, v INT)",
		"CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'app-pw'",
		"GRANT SELECT, INSERT, UPDATE, DELETE ON forge.* TO 'app'@'%'",
	)
	_, _, err := applyTables(t, []config.TableRule{{Schema: "forge", Table: "t"}}, region)
	require.NoError(t, err)
	app := sessionAs(t, "app", "app-pw", "forge")
	exec := func(q string, args ...any) error { _, err := app.Exec(q, args...); return err }

	now := uint64(time.Now().UnixMilli()) << 16
	// The applier's flag and another region's origin, from a client.
	require.NoError(t, exec("SET @_mlr_apply = 1, @_mlr_origin = 2, @_mlr_hlc = ?", now))
	require.NoError(t, exec("INSERT INTO forge.t (id, v) VALUES (1, 1)"))
	h, o, _ := stamp(t, "forge.t", 1)
	assert.Equal(t, now, h, "stamped although the session set @_mlr_apply")
	assert.Equal(t, uint16(region), o, "the origin is this region's")
	assert.Equal(t, change.Vector{region: now}, meta(t, "forge.t", 1).VV)
	require.NoError(t, exec("DELETE FROM forge.t WHERE id = 1"))
	_, _, ok := stamp(t, "mlr.`forge.t`", 1)
	assert.True(t, ok, "a delete with @_mlr_apply from a client still leaves its tombstone")

	// A stamp a day ahead of the server's clock is refused, with a clear
	// error, and changes nothing.
	future := uint64(time.Now().Add(24*time.Hour).UnixMilli()) << 16
	require.NoError(t, exec("SET @_mlr_hlc = ?", future))
	err = exec("INSERT INTO forge.t (id, v) VALUES (2, 2)")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "ahead of the server's clock")
	_, _, ok = stamp(t, "forge.t", 2)
	assert.False(t, ok)
	// A stamp near the clock is fine.
	require.NoError(t, exec("SET @_mlr_hlc = ?", uint64(time.Now().UnixMilli())<<16))
	require.NoError(t, exec("INSERT INTO forge.t (id, v) VALUES (2, 2)"))

	// The session's own clock (SET timestamp moves NOW()) moves neither
	// the bound nor a bypass stamp: the triggers read the server's clock.
	require.NoError(t, exec("SET timestamp = UNIX_TIMESTAMP() + 2*86400, @_mlr_hlc = ?", future))
	err = exec("INSERT INTO forge.t (id, v) VALUES (4, 4)")
	require.Error(t, err, "a day-ahead stamp under a session clock set two days ahead")
	assert.Contains(t, err.Error(), "ahead of the server's clock")
	require.NoError(t, exec("SET @_mlr_hlc = NULL"))
	err = exec("INSERT INTO forge.t (id, v) VALUES (4, 4)")
	require.Error(t, err, "a bypass write under a session clock two days ahead")
	assert.Contains(t, err.Error(), "this session's clock (SET timestamp) is more than")
	_, _, ok = stamp(t, "forge.t", 4)
	assert.False(t, ok)
	require.NoError(t, exec("SET timestamp = DEFAULT"))
	require.NoError(t, exec("INSERT INTO forge.t (id, v) VALUES (4, 4)"))
	h, _, _ = stamp(t, "forge.t", 4)
	assert.InDelta(t, time.Now().UnixMilli(), int64(h>>16), 60_000, "a bypass stamp is the server's time, got %s", time.UnixMilli(int64(h>>16)))
	// A REPLACE with the session's clock set behind: its two triggers
	// agree on the stamp, the row above the tombstone of the row it
	// replaced.
	require.NoError(t, exec("SET timestamp = UNIX_TIMESTAMP() - 3600"))
	require.NoError(t, exec("REPLACE INTO forge.t (id, v) VALUES (4, 5)"))
	require.NoError(t, exec("SET timestamp = DEFAULT"))
	live, _, _ := stamp(t, "forge.t", 4)
	tomb, _, _ := stamp(t, "mlr.`forge.t`", 4)
	assert.Greater(t, live, tomb, "the row a REPLACE inserts is newer than the tombstone of the row it deleted")

	// An account whose name differs from mlproxy's only in case does not
	// pass for it (USER() compares case-insensitively).
	mustExec(t, dbA, "CREATE USER IF NOT EXISTS 'Root'@'%' IDENTIFIED BY 'rt-pw'", "GRANT SELECT, INSERT, UPDATE, DELETE ON forge.* TO 'Root'@'%'")
	t.Cleanup(func() { mustExec(t, dbA, "DROP USER IF EXISTS 'Root'@'%'") })
	lookalike := sessionAs(t, "Root", "rt-pw", "forge")
	_, err = lookalike.Exec("SET @_mlr_apply = 1")
	require.NoError(t, err)
	_, err = lookalike.Exec("INSERT INTO forge.t (id, v, _mlr_hlc, _mlr_origin, _mlr_vv) VALUES (5, 5, 77, 2, '{\"2\":77}')")
	require.NoError(t, err)
	h, o, _ = stamp(t, "forge.t", 5)
	assert.NotEqual(t, uint64(77), h, "an account named like mlproxy's but for case wrote its own stamp")
	assert.Equal(t, uint16(region), o)

	// The same flag from mlproxy's own account (root here) writes as given.
	ap := applierSession(t)
	ap.exec("INSERT INTO forge.t (id, v, _mlr_hlc, _mlr_origin, _mlr_vv) VALUES (3, 3, 77, 2, '{\"2\":77}')")
	h, o, _ = stamp(t, "forge.t", 3)
	assert.Equal(t, []any{uint64(77), uint16(2)}, []any{h, o})
}

// TestLegacyCountersAttributed: counter rows written before version
// vectors are attributed to the region that wrote them when schema apply
// upgrades the table, so no region counts another's value as its own.
func TestLegacyCountersAttributed(t *testing.T) {
	mustExec(t, dbA,
		"CREATE DATABASE legacy",
		"CREATE TABLE legacy.c (id INT PRIMARY KEY, n INT)",
		"ALTER TABLE legacy.c ADD COLUMN _mlr_origin SMALLINT UNSIGNED NOT NULL DEFAULT 0 INVISIBLE, ADD COLUMN _mlr_hlc BIGINT UNSIGNED NOT NULL DEFAULT 0 INVISIBLE",
		"INSERT INTO legacy.c (id, n, _mlr_origin, _mlr_hlc) VALUES (1, 10, 2, 500), (2, 7, 1, 600), (3, NULL, 3, 700)",
	)
	rules := []config.TableRule{{Schema: "legacy", Table: "c", Rule: config.RuleCounter, Columns: []string{"n"}}}
	_, rep, err := applyTables(t, rules, region)
	require.NoError(t, err)
	assert.Contains(t, rep.String(), "attributed 2 counter rows")
	m := meta(t, "legacy.c", 1)
	assert.Equal(t, change.Vector{2: 500}, m.VV)
	assert.Equal(t, map[string]map[uint16]string{"n": {2: "10"}}, m.Contrib, "region 2's value is region 2's")
	raw, _ := rawMeta(t, "legacy.c", "id = 2")
	assert.Equal(t, "", raw, "this region's own legacy row needs nothing")
	assert.Equal(t, map[string]map[uint16]string{"n": {3: "0"}}, meta(t, "legacy.c", 3).Contrib)
	_, rep, err = applyTables(t, rules, region)
	require.NoError(t, err)
	assert.NotContains(t, rep.String(), "attributed", "idempotent")
}

// TestPrimaryKeyMoveLeavesTombstone: an update that changes the primary
// key leaves the old key's tombstone, a version every region applies as a
// delete of that key.
func TestPrimaryKeyMoveLeavesTombstone(t *testing.T) {
	mustExec(t, dbA, "CREATE DATABASE mv", "CREATE TABLE mv.t (id INT PRIMARY KEY, v INT)")
	_, _, err := applyTables(t, []config.TableRule{{Schema: "mv", Table: "t"}}, region)
	require.NoError(t, err)
	s := proxySession(t)
	s.stamp(1000)
	s.exec("INSERT INTO mv.t (id, v) VALUES (1, 1)")
	s.stamp(2000)
	assert.EqualValues(t, 1, s.exec("UPDATE mv.t SET id = 2 WHERE id = 1"))
	h, _, ok := stamp(t, "mlr.`mv.t`", 1)
	require.True(t, ok, "the old key's tombstone")
	assert.Equal(t, uint64(2000), h)
	assert.Equal(t, change.Vector{region: 2000}, meta(t, "mlr.`mv.t`", 1).VV)
	assert.Equal(t, change.Vector{region: 2000}, meta(t, "mv.t", 2).VV)
	s.stamp(3000)
	s.exec("UPDATE mv.t SET v = 5 WHERE id = 2")
	h, _, _ = stamp(t, "mlr.`mv.t`", 2)
	assert.Zero(t, h, "an update that keeps the key leaves no tombstone")
}

// TestDamage: a replicated table that lost a stamping trigger or a
// metadata column (DDL the proxy could not see) is reported with what is
// missing; schema apply repairs it; a dropped table is not damage.
func TestDamage(t *testing.T) {
	mustExec(t, dbA, "CREATE DATABASE dmg", "CREATE TABLE dmg.a (id INT PRIMARY KEY, v INT)", "CREATE TABLE dmg.b (id INT PRIMARY KEY, v INT)")
	rules := []config.TableRule{{Schema: "dmg", Table: "*"}}
	tables, _, err := applyTables(t, rules, region)
	require.NoError(t, err)
	ctx := context.Background()
	d, err := Damage(ctx, dbA, tables)
	require.NoError(t, err)
	assert.Empty(t, d)

	mustExec(t, dbA, "DROP TRIGGER dmg._mlr_bu_a", "ALTER TABLE dmg.b DROP COLUMN _mlr_vv")
	d, err = Damage(ctx, dbA, tables)
	require.NoError(t, err)
	assert.Contains(t, d["dmg.a"], "changed outside the proxy (missing trigger _mlr_bu_a)")
	assert.Contains(t, d["dmg.b"], "changed outside the proxy (missing column _mlr_vv)")
	assert.Len(t, d, 2)

	_, _, err = applyTables(t, rules, region)
	require.NoError(t, err)
	mustExec(t, dbA, "DROP TABLE dmg.b")
	d, err = Damage(ctx, dbA, tables)
	require.NoError(t, err)
	assert.Empty(t, d, "repaired, and a dropped table is not damaged")

	// A table created later under the wildcard, never prepared; one
	// without a primary key.
	mustExec(t, dbA, "CREATE TABLE dmg.c (id INT PRIMARY KEY)", "CREATE TABLE dmg.nopk (v INT)")
	later, err := Inspect(ctx, dbA, rules)
	require.NoError(t, err)
	d, err = Damage(ctx, dbA, later)
	require.NoError(t, err)
	assert.Contains(t, d["dmg.c"], "never prepared for replication")
	assert.Contains(t, d["dmg.nopk"], "no primary key")
}

// BenchmarkTriggerParts splits the cost of a stamped UPDATE through the
// BEFORE UPDATE trigger into its parts: each table's trigger adds one part
// to the previous one's (hand-written after the generated trigger's
// pieces; the last table carries the generated trigger itself), and the
// updates run interleaved statement by statement. It reports the
// microseconds each part adds per update, and what the guard and clock
// checks cost in their earlier shape (one IF each, every expression
// prepared on every row) against their present one.
func BenchmarkTriggerParts(b *testing.B) {
	const cols = "(id INT PRIMARY KEY, k INT NOT NULL, c CHAR(120) NOT NULL, pad CHAR(60) NOT NULL)"
	guard := `_mlr: BEGIN
  IF @_mlr_apply = 1 THEN
    IF CAST(SUBSTRING_INDEX(USER(), '@', 1) AS BINARY) = CAST('root' AS BINARY) THEN LEAVE _mlr; END IF;
  END IF;
  %s
END`
	clock := `IF @_mlr_hlc IS NULL THEN
    IF NOW(6) > SYSDATE(6) + INTERVAL 500000 MICROSECOND THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'session clock ahead'; END IF;
  ELSEIF CAST(@_mlr_hlc AS UNSIGNED) > ((FLOOR(UNIX_TIMESTAMP(SYSDATE(6))*1000) + 500) << 16) | 0xFFFF THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'ahead';
  END IF;`
	changed := "NOT (NEW.id <=> OLD.id AND NEW.k <=> OLD.k AND CAST(NEW.c AS BINARY) <=> CAST(OLD.c AS BINARY) AND CAST(NEW.pad AS BINARY) <=> CAST(OLD.pad AS BINARY))"
	hlc := fmt.Sprintf("GREATEST(CAST(@_mlr_hlc AS UNSIGNED), GREATEST(OLD._mlr_hlc, COALESCE(CAST(JSON_VALUE(COALESCE(OLD._mlr_vv, '{}'), '$.\"%d\"') AS UNSIGNED), 0)) + 1)", region)
	origin := fmt.Sprintf("SET NEW._mlr_origin = %d;", region)
	parts := []struct{ name, body string }{
		{"empty trigger", "BEGIN END"},
		{"applier guard", fmt.Sprintf(guard, origin)},
		{"clock checks", fmt.Sprintf(guard, clock+" "+origin)},
		{"row compare", fmt.Sprintf(guard, clock+" IF "+changed+" THEN "+origin+" END IF;")},
		{"stamp above the vector", fmt.Sprintf(guard, clock+" IF "+changed+" THEN SET NEW._mlr_hlc = "+hlc+"; "+origin+" END IF;")},
	}
	// The guard and clock checks as generated before (same semantics).
	earlier := fmt.Sprintf(`BEGIN IF NOT (COALESCE(@_mlr_apply, 0) = 1 AND CAST(SUBSTRING_INDEX(USER(), '@', 1) AS BINARY) = CAST('root' AS BINARY)) THEN
  IF @_mlr_hlc IS NOT NULL AND CAST(@_mlr_hlc AS UNSIGNED) > ((FLOOR(UNIX_TIMESTAMP(SYSDATE(6))*1000) + 500) << 16) | 0xFFFF THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'ahead';
  END IF;
  IF @_mlr_hlc IS NULL AND NOW(6) > SYSDATE(6) + INTERVAL 500000 MICROSECOND THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'session clock ahead';
  END IF;
  %s
END IF; END`, origin)
	parts = append(parts, struct{ name, body string }{"earlier guard and clock checks", earlier})
	// Commits without waiting for the disk: the parts' CPU, not fsync's
	// noise (restored after).
	var flush, syncBinlog int
	require.NoError(b, dbA.QueryRow("SELECT @@innodb_flush_log_at_trx_commit, @@sync_binlog").Scan(&flush, &syncBinlog))
	mustExec(b, dbA, "SET GLOBAL innodb_flush_log_at_trx_commit = 2", "SET GLOBAL sync_binlog = 0")
	defer mustExec(b, dbA, fmt.Sprintf("SET GLOBAL innodb_flush_log_at_trx_commit = %d", flush), fmt.Sprintf("SET GLOBAL sync_binlog = %d", syncBinlog))
	mustExec(b, dbA, "DROP DATABASE IF EXISTS parts", "CREATE DATABASE parts", "CREATE TABLE parts.none "+cols, "CREATE TABLE parts.generated "+cols)
	names := []string{"none"}
	for i, p := range parts {
		name := fmt.Sprintf("p%d", i)
		mustExec(b, dbA, "CREATE TABLE parts."+name+" "+cols,
			"ALTER TABLE parts."+name+" ADD COLUMN _mlr_origin "+DefOrigin+", ADD COLUMN _mlr_hlc "+DefHLC+", ADD COLUMN _mlr_vv "+DefMeta,
			"CREATE TRIGGER parts."+name+"_bu BEFORE UPDATE ON parts."+name+" FOR EACH ROW "+p.body)
		names = append(names, name)
	}
	_, _, err := applyTables(b, []config.TableRule{{Schema: "parts", Table: "generated"}}, region)
	require.NoError(b, err)
	names = append(names, "generated")
	s := proxySession(b)
	for _, tb := range names {
		s.exec("INSERT INTO parts." + tb + " (id, k, c, pad) VALUES (1, 0, 'c', 'pad')")
	}
	took := map[string]time.Duration{}
	for i := 1; i <= b.N; i++ {
		s.stamp(uint64(1000 + i))
		for _, tb := range names {
			start := time.Now()
			s.exec("UPDATE parts."+tb+" SET k = ? WHERE id = 1", i)
			took[tb] += time.Since(start)
		}
	}
	us := func(tb string) float64 { return float64(took[tb].Microseconds()) / float64(b.N) }
	b.ReportMetric(us("none"), "none:µs/update")
	prev := "none"
	for i, p := range parts[:len(parts)-1] {
		name := fmt.Sprintf("p%d", i)
		b.ReportMetric(us(name)-us(prev), strings.ReplaceAll(p.name, " ", "_")+":+µs")
		prev = name
	}
	b.ReportMetric(us("generated")-us(prev), "new_vector_and_rest:+µs")
	b.ReportMetric(us("generated"), "generated:µs/update")
	// The earlier guard and clock checks against the present ones (p2).
	b.ReportMetric(us(fmt.Sprintf("p%d", len(parts)-1))-us("p2"), "earlier_guard_and_clock_vs_present:+µs")
}
