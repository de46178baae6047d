package proxy

import (
	"database/sql"
	"fmt"
	"testing"
)

const benchStmt = "INSERT INTO orders (id, customer, total, note) VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE total = total + VALUES(total)"

// BenchmarkClassifyCached and BenchmarkClassifyUncached: the cost of
// classifying a statement with and without the LRU.
func BenchmarkClassifyCached(b *testing.B) {
	c, err := newClassifier(100, 0, func() {}, func() {})
	if err != nil {
		b.Fatal(err)
	}
	c.classify("app", benchStmt)
	b.ReportAllocs()
	for b.Loop() {
		if cl := c.classify("app", benchStmt); cl.kind != kindWrite {
			b.Fatal(cl.kind)
		}
	}
}

// BenchmarkClassifyVaryingLiterals: the same statement with another value
// each time (sysbench's text protocol): a cache hit on the normalized key.
func BenchmarkClassifyVaryingLiterals(b *testing.B) {
	c, err := newClassifier(100, 0, func() {}, func() {})
	if err != nil {
		b.Fatal(err)
	}
	stmts := make([]string, 1024)
	for i := range stmts {
		stmts[i] = fmt.Sprintf("SELECT c FROM sbtest1 WHERE id=%d", i*7919)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if cl := c.classify("sbtest", stmts[i%len(stmts)]); cl.kind != kindRead {
			b.Fatal(cl.kind)
		}
		i++
	}
}

func BenchmarkClassifyUncached(b *testing.B) {
	c, err := newClassifier(100, 0, func() {}, func() {})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if cl := c.parse("app", benchStmt); cl.kind != kindWrite {
			b.Fatal(cl.kind)
		}
	}
}

// BenchmarkPointSelectProxy and BenchmarkPointSelectDirect: a prepared
// primary-key lookup on one connection, through the proxy and straight to
// the server.
func BenchmarkPointSelectProxy(b *testing.B) {
	p := startProxy(b, nil)
	benchPointSelect(b, p.open(b, "app"))
}

func BenchmarkPointSelectDirect(b *testing.B) {
	benchPointSelect(b, directDB(b, "app"))
}

func benchPointSelect(b *testing.B, db *sql.DB) {
	db.SetMaxOpenConns(1)
	mustExec(b, direct, "INSERT IGNORE INTO app.rt (id, v) VALUES (424242, 'bench')")
	st, err := db.Prepare("SELECT v FROM rt WHERE id = ?")
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	b.ReportAllocs()
	for b.Loop() {
		var v string
		if err := st.QueryRow(424242).Scan(&v); err != nil || v != "bench" {
			b.Fatal(v, err)
		}
	}
}

// BenchmarkStampedInsertProxy and BenchmarkInsertDirect: a prepared insert
// into a replicated table (stamped: SET pipelined) and the same directly.
func BenchmarkStampedInsertProxy(b *testing.B) {
	p := startProxy(b, nil)
	benchInsert(b, p.open(b, "app"), "rt2")
}

func BenchmarkInsertDirect(b *testing.B) {
	benchInsert(b, directDB(b, "app"), "rt_twin")
}

func benchInsert(b *testing.B, db *sql.DB, table string) {
	db.SetMaxOpenConns(1)
	mustExec(b, direct, "DELETE FROM app."+table)
	st, err := db.Prepare(fmt.Sprintf("INSERT INTO %s (n) VALUES (?)", table))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := st.Exec(i); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNormalizedKey: the lexer pass that makes the cache key.
func BenchmarkNormalizedKey(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := normalizedKey(benchStmt); !ok {
			b.Fatal("not normalized")
		}
	}
}
