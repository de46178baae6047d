package proxy

import (
	"fmt"
	"strings"
	"testing"
)

func TestClassify(t *testing.T) {
	cases := []struct {
		db, sql string
		kind    kind
		writes  string // fmt of the written tables
		reason  string
	}{
		{"app", "SELECT * FROM t", kindRead, "[]", ""},
		{"app", "select 1 union select 2", kindRead, "[]", ""},
		{"app", "SHOW TABLES", kindRead, "[]", ""},
		{"app", "EXPLAIN UPDATE t SET a = 1", kindRead, "[]", ""},
		{"app", "SELECT * FROM t FOR UPDATE", kindRead, "[]", ""},
		{"app", "SELECT @_mlr_hlc", kindRead, "[]", ""},
		{"app", "BEGIN", kindSession, "[]", ""},
		{"app", "SET NAMES utf8mb4", kindSession, "[]", ""},
		{"app", "SET autocommit = 0, @x = 1", kindSession, "[]", ""},
		{"app", "SET sql_log_bin = 1", kindSession, "[]", ""},
		{"app", "SET sql_log_bin = ON", kindSession, "[]", ""},
		{"app", "USE other", kindSession, "[]", ""},
		{"app", "PREPARE s FROM 'SELECT 1'", kindSession, "[]", ""},
		{"app", "CREATE TABLE t2 (a INT)", kindDDL, "[]", ""},
		{"app", "INSERT INTO t VALUES (1)", kindWrite, "[{app t}]", ""},
		{"", "INSERT INTO App.T VALUES (1)", kindWrite, "[{App T}]", ""},
		{"app", "INSERT INTO t (a) VALUES (1), (2) ON DUPLICATE KEY UPDATE a = a + 1", kindWrite, "[{app t}]", ""},
		{"app", "INSERT INTO t SELECT * FROM other.s", kindWrite, "[{app t}]", ""},
		{"app", "REPLACE INTO x.t VALUES (1)", kindWrite, "[{x t}]", ""},
		{"app", "UPDATE t SET a = 1", kindWrite, "[{app t}]", ""},
		{"app", "UPDATE t JOIN o.u ON t.id = u.id SET t.a = u.a", kindWrite, "[{app t}]", ""},
		{"app", "UPDATE t AS x JOIN u AS y ON x.id = y.id SET y.a = 1", kindWrite, "[{app u}]", ""},
		{"app", "UPDATE t, u SET a = 1", kindWrite, "[{app t} {app u}]", ""},
		{"app", "DELETE FROM t WHERE a = 1", kindWrite, "[{app t}]", ""},
		{"app", "DELETE a FROM t AS a JOIN u ON a.id = u.id", kindWrite, "[{app t}]", ""},
		{"app", "DELETE FROM t, o.u USING t JOIN o.u", kindWrite, "[{app t} {o u}]", ""},
		{"app", "LOAD DATA LOCAL INFILE 'f' INTO TABLE t", kindWrite, "[{app t}]", ""},
		{"app", "CALL p()", kindWriteUnknown, "[]", ""},
		{"app", "EXECUTE s", kindWriteUnknown, "[]", ""},
		{"app", "DO f()", kindWriteUnknown, "[]", ""},
		{"app", "INSERT INTO t VALUES (1) RETURNING id", kindWriteUnknown, "[]", ""},
		{"app", "USE o; INSERT INTO t VALUES (1)", kindWrite, "[{o t}]", ""},
		{"app", "SELECT 1; UPDATE t SET a = 1", kindWrite, "[{app t}]", ""},
		// Refused.
		{"app", "INSERT INTO mlr.checkpoints VALUES (1)", kindRefused, "[]", reasonInternalSchema},
		{"mlr", "DELETE FROM conflicts", kindRefused, "[]", reasonInternalSchema},
		{"app", "UPDATE t JOIN MLR.x SET x.a = 1", kindRefused, "[]", reasonInternalSchema},
		{"app", "DROP DATABASE mlr", kindRefused, "[]", reasonInternalSchema},
		{"app", "TRUNCATE mlr.conflicts", kindRefused, "[]", reasonInternalSchema},
		{"app", "RENAME TABLE t TO mlr.t", kindRefused, "[]", reasonInternalSchema},
		{"app", "INSERT INTO `mlr`.t VALUES (1) RETURNING a", kindRefused, "[]", reasonInternalSchema},
		{"mlr", "INSERT INTO t VALUES (1) RETURNING a", kindRefused, "[]", reasonInternalSchema},
		{"app", "SET @_mlr_hlc = 1", kindRefused, "[]", reasonStampVariable},
		{"app", "SET @`_MLR_origin` = NULL", kindRefused, "[]", reasonStampVariable},
		{"app", "SELECT @_mlr_apply := 1", kindRefused, "[]", reasonStampVariable},
		{"app", "SELECT 1 INTO @_mlr_hlc", kindRefused, "[]", reasonStampVariable},
		{"app", "SELECT 1, 2 INTO @a, @_mlr_hlc", kindRefused, "[]", reasonStampVariable},
		{"app", "PREPARE s FROM 'SET @_mlr_hlc = 1'", kindRefused, "[]", reasonStampVariable},
		{"app", "SET sql_log_bin = 0", kindRefused, "[]", reasonSQLLogBin},
		{"app", "SET @@session.sql_log_bin = OFF", kindRefused, "[]", reasonSQLLogBin},
		{"app", "SET sql_log_bin = @x", kindRefused, "[]", reasonSQLLogBin},
		{"app", "SET STATEMENT sql_log_bin=0 FOR DELETE FROM t", kindRefused, "[]", reasonSQLLogBin},
		{"app", "DROP TRIGGER _mlr_bi_t", kindRefused, "[]", reasonTrigger},
		{"app", "drop trigger if exists app.`_mlr_ad_t`", kindRefused, "[]", reasonTrigger},
		{"app", "CREATE OR REPLACE TRIGGER _mlr_bu_t BEFORE UPDATE ON t FOR EACH ROW SET @a = 1", kindRefused, "[]", reasonTrigger},
		{"app", "ALTER TABLE t DROP COLUMN _mlr_hlc", kindRefused, "[]", reasonMetadataColumn},
		{"app", "ALTER TABLE t MODIFY _mlr_origin INT", kindRefused, "[]", reasonMetadataColumn},
		{"app", "SELECT 1; SET @_mlr_hlc = 2", kindRefused, "[]", reasonStampVariable},
		// Executable comments run on the server: they are read as code.
		{"app", "/*! SET @_mlr_apply = 1 */", kindRefused, "[]", reasonStampVariable},
		{"app", "/*M! SET @_mlr_apply = 1 */", kindRefused, "[]", reasonStampVariable},
		{"app", "/*M!100400 SET @_mlr_apply = 1 */", kindRefused, "[]", reasonStampVariable},
		{"app", "/*!50000 SET sql_log_bin = 0 */", kindRefused, "[]", reasonSQLLogBin},
		{"app", "/*M! DROP TRIGGER app._mlr_bu_t */", kindRefused, "[]", reasonTrigger},
		{"app", "SELECT 1 /*M!, @_mlr_hlc := 5 */", kindRefused, "[]", reasonStampVariable},
		{"app", "UPDATE t SET a = 1 /*M!, _mlr_hlc = 5 */", kindRefused, "[]", reasonMetadataColumn},
		{"app", "/*M! UPDATE t SET a = 1 */", kindWrite, "[{app t}]", ""},
		// Nobody writes the metadata columns but mlproxy.
		{"app", "UPDATE t SET _mlr_hlc = 18446744073709551615", kindRefused, "[]", reasonMetadataColumn},
		{"app", "UPDATE t SET a = 1, `_MLR_origin` = 2", kindRefused, "[]", reasonMetadataColumn},
		{"app", "INSERT INTO t (a, _mlr_vv) VALUES (1, '{}')", kindRefused, "[]", reasonMetadataColumn},
		{"app", "INSERT INTO t SET a = 1, _mlr_hlc = 5", kindRefused, "[]", reasonMetadataColumn},
		{"app", "INSERT INTO t (a) VALUES (1) ON DUPLICATE KEY UPDATE _mlr_origin = 3", kindRefused, "[]", reasonMetadataColumn},
		{"app", "INSERT INTO t (a) VALUES (1) RETURNING a, _mlr_hlc = 1", kindRefused, "[]", reasonMetadataColumn},
		{"app", "SELECT _mlr_hlc FROM t WHERE _mlr_hlc = 5", kindRead, "[]", ""},
		// A literal the parser's value driver cannot hold classifies
		// anyway (it used to panic the process).
		{"app", "SELECT 123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890", kindRead, "[]", ""},
		{"app", "UPDATE t SET a = 123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890.5", kindWrite, "[{app t}]", ""},
		{"app", "UPDATE t SET a = 0.123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890", kindWrite, "[{app t}]", ""},
		{"app", "UPDATE t SET a = .123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890", kindWrite, "[{app t}]", ""},
		// DDL inside an executable comment, in syntax the parser cannot
		// read, is still DDL.
		{"app", "/*! TRUNCATE TABLE t NOWAIT */", kindWriteUnknown, "[]", ""},
		{"app", "/*!*/ TRUNCATE TABLE t NOWAIT", kindWriteUnknown, "[]", ""},
		{"app", "/*!999999 x */ TRUNCATE TABLE t NOWAIT", kindWriteUnknown, "[]", ""},
		{"app", "SELECT 1; TRUNCATE TABLE t NOWAIT", kindWriteUnknown, "[]", ""},
		// A trigger of the client's own that rewrites the stamp after
		// mlproxy's, in MariaDB syntax the parser cannot read.
		{"app", "/*! CREATE TRIGGER x BEFORE UPDATE ON t FOR EACH ROW FOLLOWS _mlr_bu_t SET NEW._mlr_hlc := 1 */", kindRefused, "[]", reasonMetadataColumn},
		// Not refused: other triggers, reading mlr, other @ variables.
		{"app", "DROP TRIGGER my_trigger", kindWriteUnknown, "[]", ""},
		{"app", "SELECT * FROM mlr.checkpoints", kindRead, "[]", ""},
		{"app", "SET @mlr_x = 1", kindSession, "[]", ""},
	}
	c, err := newClassifier(100, 0, func() {}, func() {})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		cl := c.classify(tc.db, tc.sql)
		if strings.Contains(tc.sql, "NOWAIT") && cl.verb != "DDL" {
			t.Errorf("classify(%q): verb %q, want DDL (checked against the DDL policy)", tc.sql, cl.verb)
		}
		if cl.kind != tc.kind || cl.reason != tc.reason || fmt.Sprint(cl.writes) != tc.writes && tc.writes != "[]" {
			t.Errorf("classify(%q, %q) = kind %d writes %v reason %q; want kind %d writes %s reason %q",
				tc.db, tc.sql, cl.kind, cl.writes, cl.reason, tc.kind, tc.writes, tc.reason)
		}
		if tc.writes == "[]" && len(cl.writes) != 0 {
			t.Errorf("classify(%q, %q) writes %v, want none", tc.db, tc.sql, cl.writes)
		}
		if cl.kind == kindRefused && (len(cl.msg) < 10 || cl.msg[:9] != "mlproxy: ") {
			t.Errorf("classify(%q): message %q does not start with mlproxy: ", tc.sql, cl.msg)
		}
	}
}

func TestClassifyCacheKeyIncludesDatabase(t *testing.T) {
	hits, misses := 0, 0
	c, err := newClassifier(100, 0, func() { hits++ }, func() { misses++ })
	if err != nil {
		t.Fatal(err)
	}
	a := c.classify("a", "INSERT INTO t VALUES (1)")
	b := c.classify("b", "INSERT INTO t VALUES (1)")
	if fmt.Sprint(a.writes) != "[{a t}]" || fmt.Sprint(b.writes) != "[{b t}]" {
		t.Fatalf("writes under a: %v, under b: %v", a.writes, b.writes)
	}
	c.classify("a", "INSERT INTO t VALUES (1)")
	if hits != 1 || misses != 2 {
		t.Fatalf("hits %d misses %d, want 1 and 2", hits, misses)
	}
}

func TestUsesTrackedPerStatement(t *testing.T) {
	c, err := newClassifier(10, 0, func() {}, func() {})
	if err != nil {
		t.Fatal(err)
	}
	cl := c.classify("", "SELECT 1; USE a; USE b; CALL p()")
	if fmt.Sprintf("%q", cl.uses) != `["" "a" "b" ""]` || !cl.calls {
		t.Fatalf("uses %q calls %v", cl.uses, cl.calls)
	}
}

// TestCacheBoundedInBytes: statements of 16 KiB each (the longest cached)
// fill a cache allowed 10,000 entries but 256 KiB: it keeps what fits,
// dropping the least recently used, and its count of bytes is exact.
func TestCacheBoundedInBytes(t *testing.T) {
	const limit = 256 << 10
	c, err := newClassifier(10000, limit, func() {}, func() {})
	if err != nil {
		t.Fatal(err)
	}
	long := func(i int) string {
		return fmt.Sprintf("SELECT c%d, %s", i, strings.Repeat("a, ", (maxCachedLen-64)/3))
	}
	for i := 0; i < 200; i++ {
		c.classify("db", long(i))
		if b := c.bytes.Load(); b > limit {
			t.Fatalf("after %d statements the cache holds %d bytes, over its %d", i+1, b, limit)
		}
	}
	n := int64(c.cache.Len())
	one := c.bytes.Load() / max(n, 1)
	if n*one > limit || (n+1)*one <= limit {
		t.Errorf("cache holds %d entries of %d bytes within %d; it should keep as many as fit", n, one, limit)
	}
	var sum int64
	for _, k := range c.cache.Keys() {
		v, _ := c.cache.Peek(k)
		sum += cost(k, v)
	}
	if sum != c.bytes.Load() {
		t.Errorf("entries cost %d bytes, the cache counts %d", sum, c.bytes.Load())
	}
	// The most recent statement is a hit, the first long gone.
	if !c.cache.Contains("db\x00" + mustKey(t, long(199))) {
		t.Error("the most recently classified statement is not cached")
	}
	if c.cache.Contains("db\x00" + mustKey(t, long(0))) {
		t.Error("the least recently used statement is still cached over the byte bound")
	}
}

func mustKey(t *testing.T, sql string) string {
	t.Helper()
	if n, ok := normalizedKey(sql); ok {
		return n
	}
	return sql
}

// TestPrepareTextParsedSafely: the text of a PREPARE is parsed too; a
// literal that panics the parser's value driver there must not end the
// client's connection, and DDL hidden in it is still seen.
func TestPrepareTextParsedSafely(t *testing.T) {
	c, err := newClassifier(100, 0, func() {}, func() {})
	if err != nil {
		t.Fatal(err)
	}
	lit := strings.Repeat("1234567890", 9)
	for _, q := range []string{
		"PREPARE s FROM 'SELECT " + lit + "'",
		"PREPARE s FROM 'UPDATE t SET a = 0." + lit + "'",
	} {
		if cl := c.classify("app", q); cl.kind != kindSession {
			t.Errorf("classify(%q) = kind %d, want a session statement", q, cl.kind)
		}
	}
	for _, q := range []string{
		"PREPARE s FROM '/*! TRUNCATE TABLE t NOWAIT */'",
		"PREPARE s FROM '/*M!100000 DROP TABLE t WAIT 1 */'",
		"PREPARE s FROM '/*!*/ TRUNCATE TABLE t NOWAIT'",
		"ALTER TABLE other.x ADD y INT; PREPARE s FROM '/*! TRUNCATE TABLE t NOWAIT */'",
		"PREPARE s FROM '/*! TRUNCATE TABLE t NOWAIT */'; ALTER TABLE other.x ADD y INT",
	} {
		cl := c.classify("app", q)
		found := false
		for _, txt := range cl.ddlTexts {
			found = found || strings.Contains(txt, "truncate table t") || strings.Contains(txt, "drop table t")
		}
		if !found {
			t.Errorf("classify(%q) = kind %d ddlTexts %q: the prepared DDL is not given to the DDL policy", q, cl.kind, cl.ddlTexts)
		}
	}
	// Statements an application prepares that the parser reads are
	// judged by what they are, not by their first word.
	for _, q := range []string{
		"PREPARE s FROM 'CREATE TEMPORARY TABLE tmp (id INT)'",
		"PREPARE s FROM 'DROP TEMPORARY TABLE IF EXISTS tmp'",
		"PREPARE s FROM 'SELECT /*! 1 */ FROM t WHERE a = ?'",
	} {
		if cl := c.classify("app", q); len(cl.ddlTexts) > 0 || len(cl.ddl) > 0 {
			t.Errorf("classify(%q) = ddl %v ddlTexts %q: an ordinary prepared statement taken for DDL", q, cl.ddl, cl.ddlTexts)
		}
	}
}

func TestSplitStatements(t *testing.T) {
	got := splitStatements("SELECT 'a;b', \"c;d\", `e;f`, 'g\\';h' /* i;j */; /*! TRUNCATE t */; DROP TABLE x")
	want := []string{"SELECT 'a;b', \"c;d\", `e;f`, 'g\\';h' /* i;j */", " /*! TRUNCATE t */", " DROP TABLE x"}
	if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
		t.Errorf("splitStatements = %q, want %q", got, want)
	}
}
