package schema

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/mlproxy/mlproxy/config"
)

func mustExec(t testing.TB, db interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		_, err := db.ExecContext(context.Background(), s)
		require.NoError(t, err, s)
	}
}

func TestInspect(t *testing.T) {
	ctx := context.Background()
	mustExec(t, dbA,
		"CREATE DATABASE ins",
		"CREATE TABLE ins.a (id INT PRIMARY KEY)",
		"CREATE TABLE ins.b (x INT NOT NULL, y VARCHAR(10) CHARACTER SET latin1 COLLATE latin1_swedish_ci NOT NULL, u BIGINT UNSIGNED NULL, g INT AS (x + 1) VIRTUAL, h INT INVISIBLE, PRIMARY KEY (y, x))",
		"CREATE VIEW ins.v AS SELECT id FROM ins.a",
	)
	tables, err := Inspect(ctx, dbA, []config.TableRule{
		{Schema: "ins", Table: "*", Rule: "lww"},
		{Schema: "ins", Table: "b", Rule: "counter"},
		{Schema: "ins", Table: "missing"},
		{Schema: "mlr", Table: "checkpoints"},
		{Schema: "nosuchschema", Table: "*"},
	})
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrNoTable)
	assert.ErrorIs(t, err, ErrInternalSchema)
	assert.Contains(t, err.Error(), "ins.missing")
	assert.NotContains(t, err.Error(), "nosuchschema", "a wildcard over an empty or absent schema is valid: it has nothing to prepare yet")
	require.Len(t, tables, 2, "the view is not a base table")
	assert.Equal(t, "a", tables[0].Name)
	assert.Equal(t, "lww", tables[0].Rule.Rule)
	b := tables[1]
	assert.Equal(t, "counter", b.Rule.Rule, "exact rule beats wildcard")
	assert.Equal(t, []string{"y", "x"}, b.PK)
	assert.Equal(t, []Column{
		{Name: "x", DataType: "int", ColumnType: "int(11)"},
		{Name: "y", DataType: "varchar", ColumnType: "varchar(10)", Charset: "latin1", Collation: "latin1_swedish_ci"},
		{Name: "u", DataType: "bigint", ColumnType: "bigint(20) unsigned", Nullable: true, Unsigned: true},
		{Name: "g", DataType: "int", ColumnType: "int(11)", Nullable: true, Generated: true},
		{Name: "h", DataType: "int", ColumnType: "int(11)", Nullable: true, Invisible: true},
	}, b.Columns)

	_, err = ReadTable(ctx, dbA, "ins", "v")
	assert.ErrorIs(t, err, ErrNoTable)
	assert.Contains(t, err.Error(), "ins.v")
}

// applyTables inspects rules and applies them for region.
func applyTables(t testing.TB, rules []config.TableRule, regionID uint16) ([]*Table, Report, error) {
	t.Helper()
	ctx := context.Background()
	tables, err := Inspect(ctx, dbA, rules)
	require.NoError(t, err)
	rep, err := Apply(ctx, dbA, Stamping{Region: regionID}, tables, zaptest.NewLogger(t))
	return tables, rep, err
}

func TestApplyIdempotent(t *testing.T) {
	ctx := context.Background()
	mustExec(t, dbA,
		"CREATE DATABASE app",
		"CREATE TABLE app.users (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(20), n INT)",
		"CREATE TABLE app.nopk (a INT, b INT)",
		"CREATE TABLE app.`"+strings.Repeat("x", 60)+"` (id INT PRIMARY KEY)",
		"CREATE DATABASE `app.dot`",
		"CREATE TABLE `app.dot`.t (id INT PRIMARY KEY)",
	)
	rules := []config.TableRule{{Schema: "app", Table: "*"}, {Schema: "app.dot", Table: "t"}}
	tables, rep, err := applyTables(t, rules, region)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrNoPrimaryKey)
	assert.Contains(t, err.Error(), "app.nopk")
	assert.ErrorIs(t, err, ErrNameTooLong)
	assert.ErrorIs(t, err, ErrDotInSchema)
	assert.True(t, rep.Changed())
	changes := strings.Join(rep.Changes, "\n")
	for _, want := range []string{
		"app.users: metadata columns: ADD COLUMN `_mlr_origin` " + DefOrigin + ", ADD COLUMN `_mlr_hlc` " + DefHLC + ", ADD COLUMN `_mlr_vv` " + DefMeta,
		"app.users: created tombstone table mlr.app.users",
		"app.users: created trigger _mlr_bi_users",
		"app.users: created trigger _mlr_bu_users",
		"app.users: created trigger _mlr_ad_users",
	} {
		assert.Contains(t, changes, want)
	}
	assert.NotContains(t, changes, "app.nopk", "a table without primary key is left alone")

	// The tombstone table and the metadata columns are as specified.
	users, err := ReadTable(ctx, dbA, "app", "users")
	require.NoError(t, err)
	for _, name := range []string{ColOrigin, ColHLC, ColMeta} {
		c, ok := users.Column(name)
		require.True(t, ok, name)
		assert.True(t, metadataOK(c), "%s: %+v", name, c)
	}
	tomb, err := ReadTable(ctx, dbA, Internal, "app.users")
	require.NoError(t, err)
	assert.Equal(t, []string{"id"}, tomb.PK)
	assert.Equal(t, []string{"id", ColHLC, ColOrigin, ColMeta}, names(tomb.Columns))
	assert.Equal(t, []string{"id", "name", "n"}, names(users.UserColumns()))
	var keyCol string
	require.NoError(t, dbA.QueryRow("SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA='mlr' AND TABLE_NAME='app.users' AND INDEX_NAME <> 'PRIMARY'").Scan(&keyCol))
	assert.Equal(t, ColHLC, keyCol)

	// Second run: nothing to do (still the same refusals).
	rep, err = Apply(ctx, dbA, Stamping{Region: region}, tables, zaptest.NewLogger(t))
	assert.ErrorIs(t, err, ErrNoPrimaryKey)
	assert.False(t, rep.Changed(), rep.String())
	assert.Equal(t, "nothing to do", rep.String())

	// The table gains a column: only the BEFORE UPDATE trigger compares
	// user columns, so only it is stale; Check says so, Apply replaces it.
	mustExec(t, dbA, "ALTER TABLE app.users ADD COLUMN email VARCHAR(50)")
	ps, err := Check(ctx, dbA, nil, []config.TableRule{{Schema: "app", Table: "users"}}, Stamping{Region: region})
	require.NoError(t, err)
	require.Len(t, ps, 1, "%v", ps)
	assert.Equal(t, "app.users", ps[0].Where)
	assert.Contains(t, ps[0].Message, "trigger _mlr_bu_users is stale")
	rep, _ = Apply(ctx, dbA, Stamping{Region: region}, tables, zaptest.NewLogger(t))
	assert.Equal(t, []string{"app.users: replaced stale trigger _mlr_bu_users"}, rep.Changes)
	ps, err = Check(ctx, dbA, nil, []config.TableRule{{Schema: "app", Table: "users"}}, Stamping{Region: region})
	require.NoError(t, err)
	assert.Empty(t, ps)
}

func names(cs []Column) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Name
	}
	return out
}

// session is one connection with its own user variables.
type session struct {
	t    testing.TB
	conn *sql.Conn
}

func newSession(t testing.TB) *session {
	t.Helper()
	conn, err := dbA.Conn(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	s := &session{t, conn}
	s.exec("SET @_mlr_hlc = NULL, @_mlr_origin = NULL, @_mlr_apply = NULL")
	return s
}

func (s *session) exec(q string, args ...any) int64 {
	s.t.Helper()
	res, err := s.conn.ExecContext(context.Background(), q, args...)
	require.NoError(s.t, err, q)
	n, err := res.RowsAffected()
	require.NoError(s.t, err)
	return n
}

// stamp reads a row's (or a tombstone's) stamp; ok is false when absent.
func stamp(t *testing.T, table string, id int) (hlc uint64, origin uint16, ok bool) {
	t.Helper()
	err := dbA.QueryRow("SELECT _mlr_hlc, _mlr_origin FROM "+table+" WHERE id = ?", id).Scan(&hlc, &origin)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, 0, false
	}
	require.NoError(t, err)
	return hlc, origin, true
}

func TestTriggersStamp(t *testing.T) {
	mustExec(t, dbA,
		"CREATE DATABASE st",
		"CREATE TABLE st.t (id INT PRIMARY KEY, name VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci, n INT, twice INT AS (n * 2) VIRTUAL)",
		"CREATE TABLE st.plain (id INT PRIMARY KEY, v VARCHAR(10))",
	)
	_, _, err := applyTables(t, []config.TableRule{{Schema: "st", Table: "t"}, {Schema: "st", Table: "plain"}}, region)
	require.NoError(t, err)
	const tbl, tomb = "st.t", "mlr.`st.t`"

	t.Run("proxy stamps", func(t *testing.T) {
		s := newSession(t)
		s.exec("SET @_mlr_hlc = 1000, @_mlr_origin = 7")
		assert.EqualValues(t, 1, s.exec("INSERT INTO st.t (id, name, n) VALUES (1, 'alice', 1)"))
		h, o, _ := stamp(t, tbl, 1)
		assert.Equal(t, uint64(1000), h)
		assert.Equal(t, uint16(region), o, "the origin is this region, whatever the session set")

		s.exec("SET @_mlr_hlc = 2000")
		assert.EqualValues(t, 0, s.exec("UPDATE st.t SET name = 'alice', n = 1 WHERE id = 1"), "no-op update changes no row")
		h, _, _ = stamp(t, tbl, 1)
		assert.Equal(t, uint64(1000), h, "a no-op update keeps the stamp")

		// Equal under the _ci collation, but a change all the same.
		assert.EqualValues(t, 1, s.exec("UPDATE st.t SET name = 'ALICE' WHERE id = 1"))
		h, o, _ = stamp(t, tbl, 1)
		assert.Equal(t, uint64(2000), h)
		assert.Equal(t, uint16(region), o)

		s.exec("SET @_mlr_hlc = 3000, @_mlr_origin = 9")
		assert.EqualValues(t, 1, s.exec("DELETE FROM st.t WHERE id = 1"))
		h, o, ok := stamp(t, tomb, 1)
		require.True(t, ok, "delete writes a tombstone")
		assert.Equal(t, uint64(3000), h)
		assert.Equal(t, uint16(region), o)

		// Re-insert and delete again: the tombstone moves forward.
		s.exec("SET @_mlr_hlc = 4000")
		s.exec("INSERT INTO st.t (id, name, n) VALUES (1, 'b', 2)")
		s.exec("SET @_mlr_hlc = 5000")
		s.exec("DELETE FROM st.t WHERE id = 1")
		h, _, _ = stamp(t, tomb, 1)
		assert.Equal(t, uint64(5000), h)
	})

	t.Run("bypass stamps", func(t *testing.T) {
		s := newSession(t)
		before := uint64(time.Now().Add(-2 * time.Second).UnixMilli())
		s.exec("INSERT INTO st.t (id, name, n) VALUES (2, 'x', 1)")
		after := uint64(time.Now().Add(2 * time.Second).UnixMilli())
		h1, o, _ := stamp(t, tbl, 2)
		assert.NotZero(t, h1&0x8000, "bypass bit")
		assert.Less(t, h1&0x7fff, uint64(1000), "low bits are microseconds within the millisecond")
		assert.Equal(t, uint16(region), o)
		assert.True(t, h1>>16 >= before && h1>>16 <= after, "stamp %d ms not within [%d, %d]", h1>>16, before, after)

		s.exec("UPDATE st.t SET n = 2 WHERE id = 2")
		h2, _, _ := stamp(t, tbl, 2)
		assert.Greater(t, h2, h1)
		assert.NotZero(t, h2&0x8000)

		// A row stamped in the future (a peer's clock ahead): a bypass
		// update still makes a newer version, OLD + 1 with the bypass bit.
		future := (after + 3_600_000) << 16
		s.exec("SET @_mlr_apply = 1")
		s.exec("UPDATE st.t SET _mlr_hlc = ? WHERE id = 2", future)
		s.exec("SET @_mlr_apply = NULL")
		s.exec("UPDATE st.t SET n = 3 WHERE id = 2")
		h3, _, _ := stamp(t, tbl, 2)
		assert.Equal(t, (future+1)|0x8000, h3)

		s.exec("DELETE FROM st.t WHERE id = 2")
		h4, o, ok := stamp(t, tomb, 2)
		require.True(t, ok)
		assert.Greater(t, h4, h3)
		assert.NotZero(t, h4&0x8000)
		assert.Equal(t, uint16(region), o)
	})

	t.Run("applier session", func(t *testing.T) {
		s := newSession(t)
		s.exec("SET @_mlr_apply = 1, @_mlr_hlc = 999, @_mlr_origin = 8")
		s.exec("INSERT INTO st.t (id, name, n, _mlr_hlc, _mlr_origin) VALUES (3, 'c', 1, 42, 3)")
		h, o, _ := stamp(t, tbl, 3)
		assert.Equal(t, uint64(42), h)
		assert.Equal(t, uint16(3), o)
		s.exec("UPDATE st.t SET n = 5, _mlr_hlc = 43, _mlr_origin = 4 WHERE id = 3")
		h, o, _ = stamp(t, tbl, 3)
		assert.Equal(t, uint64(43), h)
		assert.Equal(t, uint16(4), o)
		s.exec("DELETE FROM st.t WHERE id = 3")
		_, _, ok := stamp(t, tomb, 3)
		assert.False(t, ok, "the applier writes its own tombstones")
	})

	t.Run("app SQL without column lists", func(t *testing.T) {
		s := newSession(t)
		s.exec("INSERT INTO st.plain VALUES (1, 'a')")
		s.exec("INSERT INTO st.t VALUES (4, 'd', 1, DEFAULT)")
		rows, err := dbA.Query("SELECT * FROM st.plain")
		require.NoError(t, err)
		cols, err := rows.Columns()
		require.NoError(t, err)
		rows.Close()
		assert.Equal(t, []string{"id", "v"}, cols)
		h, _, _ := stamp(t, "st.plain", 1)
		assert.NotZero(t, h)
	})
}

func TestAppTriggersCoexist(t *testing.T) {
	mustExec(t, dbA,
		"CREATE DATABASE apt",
		"CREATE TABLE apt.tags (k VARCHAR(10) NOT NULL, seq INT NOT NULL, touched INT NOT NULL DEFAULT 0, PRIMARY KEY (k, seq))",
		"CREATE TABLE apt.audit (id INT AUTO_INCREMENT PRIMARY KEY, what VARCHAR(20))",
		"CREATE TRIGGER apt.tags_bi BEFORE INSERT ON apt.tags FOR EACH ROW SET NEW.touched = NEW.touched + 1",
		"CREATE TRIGGER apt.tags_ad AFTER DELETE ON apt.tags FOR EACH ROW INSERT INTO apt.audit (what) VALUES ('deleted')",
	)
	_, _, err := applyTables(t, []config.TableRule{{Schema: "apt", Table: "tags"}}, region)
	require.NoError(t, err)
	s := newSession(t)
	s.exec("SET @_mlr_hlc = 777, @_mlr_origin = 2")
	s.exec("INSERT INTO apt.tags (k, seq) VALUES ('a', 1)")
	var touched int
	var h uint64
	require.NoError(t, dbA.QueryRow("SELECT touched, _mlr_hlc FROM apt.tags WHERE k = 'a' AND seq = 1").Scan(&touched, &h))
	assert.Equal(t, 1, touched, "the application's trigger still runs")
	assert.Equal(t, uint64(777), h)
	s.exec("DELETE FROM apt.tags WHERE k = 'a'")
	var audits, tombs int
	require.NoError(t, dbA.QueryRow("SELECT COUNT(*) FROM apt.audit").Scan(&audits))
	// The session still holds stamp 777, the deleted version's own: the
	// delete is stamped just above the version it replaces.
	require.NoError(t, dbA.QueryRow("SELECT COUNT(*) FROM mlr.`apt.tags` WHERE k = 'a' AND seq = 1 AND _mlr_hlc = 778").Scan(&tombs))
	assert.Equal(t, 1, audits)
	assert.Equal(t, 1, tombs)
}

func TestApplyTombstoneTableFollowsKey(t *testing.T) {
	ctx := context.Background()
	mustExec(t, dbA, "CREATE DATABASE tk", "CREATE TABLE tk.t (id INT PRIMARY KEY, v INT)")
	rules := []config.TableRule{{Schema: "tk", Table: "t"}}
	_, _, err := applyTables(t, rules, region)
	require.NoError(t, err)

	// The key's type widens while no tombstone exists: recreated.
	mustExec(t, dbA, "ALTER TABLE tk.t MODIFY id BIGINT NOT NULL")
	_, rep, err := applyTables(t, rules, region)
	require.NoError(t, err)
	assert.Equal(t, []string{
		"tk.t: dropped empty stale tombstone table mlr.tk.t (column id differs from the table's primary key column)",
		"tk.t: created tombstone table mlr.tk.t",
	}, rep.Changes)
	tomb, err := ReadTable(ctx, dbA, Internal, "tk.t")
	require.NoError(t, err)
	assert.Equal(t, "bigint(20)", tomb.Columns[0].ColumnType)

	// With tombstones in it, Apply refuses to drop them and says why.
	mustExec(t, dbA, "INSERT INTO tk.t (id, v) VALUES (1, 1)", "DELETE FROM tk.t WHERE id = 1",
		"ALTER TABLE tk.t MODIFY id BIGINT UNSIGNED NOT NULL")
	_, rep, err = applyTables(t, rules, region)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "schema apply tk.t: tombstone table mlr.tk.t is stale")
	assert.Contains(t, err.Error(), "holds 1 tombstones")
	assert.False(t, rep.Changed())
}

func TestPlanRunsOnServer(t *testing.T) {
	// The helpers' SQL is valid on the real server, argument order included.
	ctx := context.Background()
	mustExec(t, dbA, "CREATE DATABASE pl", "CREATE TABLE pl.t (k VARCHAR(5) NOT NULL, id INT NOT NULL, v TEXT, PRIMARY KEY (id, k))")
	tables, _, err := applyTables(t, []config.TableRule{{Schema: "pl", Table: "t"}}, region)
	require.NoError(t, err)
	p := tables[0].Plan()
	s := newSession(t)
	s.exec("SET @_mlr_apply = 1")
	assert.EqualValues(t, 1, s.exec(p.Insert, "a", 1, "one", 100, 2, `{"2":100}`))
	assert.EqualValues(t, 1, s.exec(p.UpdateByPK, "a", 2, "two", 101, 3, `{"2":100,"3":101}`, 1, "a"))
	var v, m string
	var h uint64
	var o uint16
	var k string
	var id int
	tx, err := s.conn.BeginTx(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, tx.QueryRow(p.SelectVersion, 2, "a").Scan(&k, &id, &v, &h, &o, &m))
	require.NoError(t, tx.Commit())
	assert.Equal(t, []any{"a", 2, "two", uint64(101), uint16(3), `{"2":100,"3":101}`}, []any{k, id, v, h, o, m})
	assert.EqualValues(t, 2, s.exec(p.Replace, "a", 2, "deux", 102, 3, `{"3":102}`), "REPLACE of an existing row: delete + insert")
	assert.EqualValues(t, 1, s.exec(p.DeleteByPK, 2, "a"))
	assert.EqualValues(t, 1, s.exec(p.UpsertTombstone, 2, "a", 103, 3, `{"3":103}`))
	assert.EqualValues(t, 2, s.exec(p.UpsertTombstone, 2, "a", 104, 4, `{"3":103,"4":104}`), "upsert moves the stamp")
	require.NoError(t, dbA.QueryRow(p.SelectTombstone, 2, "a").Scan(&h, &o, &m))
	assert.Equal(t, uint64(104), h)
	assert.Equal(t, `{"3":103,"4":104}`, m)
	assert.EqualValues(t, 0, s.exec(p.GCTombstones, 104, 10))
	assert.EqualValues(t, 1, s.exec(p.GCTombstones, 105, 10))
	assert.EqualValues(t, 0, s.exec(p.DeleteTombstone, 2, "a"))
}

// TestStampAboveReplacedVersion: the proxy takes a stamp before the
// statement waits for a row lock, so sessions can commit in the opposite
// order of their stamps. The version a write leaves must still be stamped
// above the version it replaced (row or tombstone), or the region would
// keep a row that last-writer-wins elsewhere rejects.
func TestStampAboveReplacedVersion(t *testing.T) {
	mustExec(t, dbA, "CREATE DATABASE race", "CREATE TABLE race.t (id INT PRIMARY KEY, v INT)")
	_, _, err := applyTables(t, []config.TableRule{{Schema: "race", Table: "t"}}, region)
	require.NoError(t, err)
	early, late := newSession(t), newSession(t)
	stamp := func(q string) (h uint64) {
		require.NoError(t, dbA.QueryRow(q).Scan(&h))
		return h
	}

	early.exec("SET @_mlr_hlc = 1000, @_mlr_origin = 1")
	late.exec("SET @_mlr_hlc = 2000, @_mlr_origin = 2")
	late.exec("INSERT INTO race.t VALUES (1, 1)")
	early.exec("UPDATE race.t SET v = 2 WHERE id = 1") // commits after the newer stamp
	assert.Equal(t, uint64(2001), stamp("SELECT _mlr_hlc FROM race.t WHERE id = 1"), "update above the row it replaced")

	late.exec("SET @_mlr_hlc = 3000, @_mlr_origin = 2")
	late.exec("DELETE FROM race.t WHERE id = 1")
	early.exec("INSERT INTO race.t VALUES (1, 3)") // early still holds stamp 1000
	assert.Equal(t, uint64(3001), stamp("SELECT _mlr_hlc FROM race.t WHERE id = 1"), "insert above the key's tombstone")

	early.exec("SET @_mlr_hlc = 5000, @_mlr_origin = 1")
	early.exec("UPDATE race.t SET v = 4 WHERE id = 1")
	assert.Equal(t, uint64(5000), stamp("SELECT _mlr_hlc FROM race.t WHERE id = 1"), "a fresh, larger stamp is kept as is")
}
