package proxy

import (
	"reflect"
	"testing"
)

func TestNormalizedKey(t *testing.T) {
	same := [][2]string{
		{"SELECT c FROM sbtest1 WHERE id=5012", "SELECT c FROM sbtest1 WHERE id=77"},
		{"UPDATE sbtest3 SET k=k+1 WHERE id=10", "UPDATE sbtest3 SET k=k+1 WHERE id=99999"},
		{"INSERT INTO t (a, b) VALUES (1, 'x'), (2.5, 'it''s')", "INSERT INTO t (a, b) VALUES (3, 'y'), (1e-3, 'z')"},
		{"DELETE FROM t WHERE id BETWEEN 1 AND 100 LIMIT 5", "DELETE FROM t WHERE id BETWEEN 7 AND 8 LIMIT 50"},
		{"select * from t where h = 0x1F", "select * from t where h = 0xAB"},
		{"  /* note */ SELECT 1", "  /* note */ SELECT 2"},
	}
	if k, ok := normalizedKey("SELECT 0x FROM t"); ok && k == "SELECT ? FROM t" {
		t.Errorf("a bare 0x (a name) normalized as a number: %q", k)
	}
	for _, p := range same {
		a, okA := normalizedKey(p[0])
		b, okB := normalizedKey(p[1])
		if !okA || !okB || a != b {
			t.Errorf("%q and %q: keys %q (%v) and %q (%v); want the same", p[0], p[1], a, okA, b, okB)
		}
	}
	differ := [][2]string{
		{"INSERT INTO t1 VALUES (1)", "INSERT INTO t2 VALUES (1)"},
		{"INSERT INTO 1abc VALUES (1)", "INSERT INTO 2abc VALUES (1)"},
		{`INSERT INTO "mlr"."x" VALUES (1)`, `INSERT INTO "app"."x" VALUES (1)`}, // ANSI_QUOTES names
		{"INSERT INTO `mlr`.x VALUES (1)", "INSERT INTO `app`.x VALUES (1)"},
		{"SELECT 1 /*!50000 , @_mlr_apply := 1 */", "SELECT 1 /*!50000 , @x := 1 */"},
		{"UPDATE t SET a = 1", "UPDATE t SET _mlr_hlc = 1"},
	}
	for _, p := range differ {
		a, okA := normalizedKey(p[0])
		b, okB := normalizedKey(p[1])
		if okA && okB && a == b {
			t.Errorf("%q and %q share key %q; want different keys", p[0], p[1], a)
		}
	}
	for _, s := range []string{
		"SET @a = 1", // not DML: values can carry names
		"PREPARE p FROM 'DROP TRIGGER _mlr_bi_t'", // the text is SQL
		"CALL p('mlr')",
		"/*!50000 SET @_mlr_apply=1 */ SELECT 1", // code in a leading executable comment
		"SELECT 'a\\' , 1",                       // backslash: sql_mode decides
		"SELECT 'unterminated",
		"INSERT INTO t VALUES ('x') /* open",
		// The review's collisions: each must keep its exact text as key.
		"SELECT 1 --\r'\n; DROP TABLE app.kv; SELECT ' # '\n",
		"SELECT /*! '*/' */ ; DROP TABLE app.kv; SELECT ' # '\n",
		"SELECT /*M! '*/' */ , 2",
		"UPDATE app.1 SET v = 2",
		"SELECT @'_mlr_hlc' := 1",
		"SELECT 1 INTO @\"_mlr_hlc\"",
		"SELECT 0X1F FROM t",
		"SELECT 1 # comment",
	} {
		if k, ok := normalizedKey(s); ok && k != s {
			t.Errorf("%q normalized to %q; want the exact text as key", s, k)
		}
	}
}

// TestNormalizedKeyKeepsClass: statements that share a key classify the
// same, field for field.
func TestNormalizedKeyKeepsClass(t *testing.T) {
	c, err := newClassifier(100, 0, func() {}, func() {})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range [][2]string{
		{"INSERT INTO app.kv VALUES (1, 'a', 2)", "INSERT INTO app.kv VALUES (99, 'zz', 0)"},
		{"UPDATE kv SET v = 'x' WHERE k = 1", "UPDATE kv SET v = 'y' WHERE k = 2"},
		{"SELECT * FROM mlr.checkpoints WHERE peer_id = 1", "SELECT * FROM mlr.checkpoints WHERE peer_id = 2"},
		{"DELETE FROM mlr.conflicts WHERE id = 1", "DELETE FROM mlr.conflicts WHERE id = 5"},
	} {
		a, b := c.parse("app", p[0]), c.parse("app", p[1])
		a.text, b.text = "", ""
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%q -> %+v, %q -> %+v", p[0], a, p[1], b)
		}
		ka, _ := normalizedKey(p[0])
		kb, _ := normalizedKey(p[1])
		if ka != kb {
			t.Errorf("%q and %q: different keys %q, %q", p[0], p[1], ka, kb)
		}
	}
}

// TestUnsafeCharsetsRefused: character sets whose characters can end in a
// backslash byte are refused, so the parser and the server always agree
// on where a string ends.
func TestUnsafeCharsetsRefused(t *testing.T) {
	c, err := newClassifier(100, 0, func() {}, func() {})
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"SET NAMES gbk", "SET NAMES 'big5' COLLATE big5_bin", "SET CHARACTER SET sjis",
		"SET character_set_client = cp932", "SET @@session.character_set_client = 'gb18030'"} {
		if cl := c.classify("app", q); cl.kind != kindRefused || cl.reason != reasonCharset {
			t.Errorf("%q: %+v; want refused (%s)", q, cl, reasonCharset)
		}
	}
	for _, q := range []string{"SET NAMES utf8mb4", "SET character_set_client = latin1"} {
		if cl := c.classify("app", q); cl.kind == kindRefused {
			t.Errorf("%q refused: %s", q, cl.msg)
		}
	}
}
