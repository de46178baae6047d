package itest

import (
	"context"
	"database/sql"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// TestInvisibleToClients: what a client can observe after its statements
// (ROW_COUNT() after INSERT, UPDATE, DELETE, multi-statements and CALL;
// GET DIAGNOSTICS; LAST_INSERT_ID(); warnings) is the same through the
// proxy as directly, on a replicated and on a non-replicated database.
func TestInvisibleToClients(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	setup := appSetup + "CREATE DATABASE other;\nCREATE TABLE other.jt (id INT PRIMARY KEY, j JSON);\nINSERT INTO other.jt VALUES (1, '{\"a\": 1}');\n"
	for _, db := range []string{"app", "other"} {
		for _, side := range []string{"direct", "proxy"} {
			setup += fmt.Sprintf("CREATE TABLE %s.fid_%s (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(8) NOT NULL, UNIQUE KEY (v));\n", db, side)
			setup += fmt.Sprintf("CREATE PROCEDURE %s.put_%s(x VARCHAR(8)) BEGIN INSERT INTO fid_%s (v) VALUES (x), (CONCAT(x, '2')); END;\n", db, side, side)
			setup += fmt.Sprintf("CREATE PROCEDURE %s.rc_%s() SELECT ROW_COUNT();\n", db, side)
		}
	}
	c := startCluster(t, cluster.Options{Names: []string{"eu", "us"}, Setup: setup,
		Tables: appTables + "\n  - {schema: app, table: fid_direct}\n  - {schema: app, table: fid_proxy}"})
	eu := c.Regions[0]

	open := func(addr, db string) *sql.Conn {
		t.Helper()
		cfg := mysql.NewConfig()
		cfg.User, cfg.Net, cfg.Addr, cfg.DBName = "root", "tcp", addr, db
		cfg.MultiStatements = true
		pool, err := sql.Open("mysql", cfg.FormatDSN())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pool.Close() })
		conn, err := pool.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	// observe runs the script on conn against table fid_<side> and returns
	// every result it reads, one line each.
	observe := func(conn *sql.Conn, db, side string) []string {
		t.Helper()
		tbl, proc := "fid_"+side, "put_"+side
		var out []string
		q := func(stmt string) {
			stmt = strings.NewReplacer("TBL", tbl, "PROC", proc, "SIDE", side).Replace(stmt)
			rows, err := conn.QueryContext(ctx, stmt)
			if err != nil {
				out = append(out, fmt.Sprintf("%s -> error %v", stmt, err))
				return
			}
			defer rows.Close()
			for {
				cols, _ := rows.Columns()
				vals := make([]sql.NullString, len(cols))
				ptrs := make([]any, len(cols))
				for i := range vals {
					ptrs[i] = &vals[i]
				}
				for rows.Next() {
					if err := rows.Scan(ptrs...); err != nil {
						t.Fatal(err)
					}
					var b []string
					for _, v := range vals {
						b = append(b, v.String)
					}
					out = append(out, strings.Replace(stmt, tbl, "T", -1)+" -> "+strings.Join(b, "|"))
				}
				if !rows.NextResultSet() {
					break
				}
			}
		}
		exec := func(stmt string) {
			stmt = strings.NewReplacer("TBL", tbl, "PROC", proc).Replace(stmt)
			res, err := conn.ExecContext(ctx, stmt)
			if err != nil {
				out = append(out, fmt.Sprintf("%s -> error %v", strings.Replace(stmt, tbl, "T", -1), err))
				return
			}
			n, _ := res.RowsAffected()
			id, _ := res.LastInsertId()
			out = append(out, fmt.Sprintf("%s -> affected %d, insert id %d", strings.Replace(stmt, tbl, "T", -1), n, id))
		}
		exec("INSERT INTO TBL (v) VALUES ('a'), ('b')")
		q("SELECT ROW_COUNT(), LAST_INSERT_ID()")
		exec("UPDATE TBL SET v = CONCAT(v, 'x') WHERE v IN ('a', 'b')")
		q("SELECT ROW_COUNT()")
		exec("DELETE FROM TBL WHERE v = 'bx'")
		q("SELECT ROW_COUNT()")
		exec("INSERT IGNORE INTO TBL (v) VALUES ('ax'), ('c')")
		q("SHOW WARNINGS")
		q("SELECT @@warning_count, ROW_COUNT()")
		exec("INSERT IGNORE INTO TBL (v) VALUES ('ax')")
		exec("GET DIAGNOSTICS @n = NUMBER, @rc = ROW_COUNT")
		q("SELECT @n, @rc")
		exec("INSERT INTO TBL (v) VALUES ('d'); UPDATE TBL SET v = 'dd' WHERE v = 'd'")
		q("SELECT ROW_COUNT()")
		exec("CALL PROC('p')")
		q("SELECT ROW_COUNT(), LAST_INSERT_ID()")
		exec("DO 1")
		q("SELECT ROW_COUNT()")
		if db == "other" {
			// A procedure that reads the previous statement's ROW_COUNT():
			// on a database without replicated tables the proxy sends
			// nothing before the CALL. (On a replicated one the stamping
			// SET runs first, and the procedure sees its count: README.)
			exec("UPDATE TBL SET v = CONCAT(v, 'y') WHERE v IN ('ax', 'c')")
			q("CALL rc_SIDE()")
		}
		q("SELECT id, v FROM TBL ORDER BY id")
		return out
	}
	// Column metadata as the mariadb client shows it (MariaDB's extended
	// type info: a JSON column's format).
	meta := func(port string) string {
		out, err := exec.CommandContext(ctx, "mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", port, "-u", "root",
			"--column-type-info", "-t", "-e", "SELECT j FROM other.jt").CombinedOutput()
		if err != nil {
			t.Fatalf("mariadb client on port %s: %v\n%s", port, err, out)
		}
		return string(out)
	}
	_, dport, _ := strings.Cut(eu.Server.Addr(), ":")
	_, pport, _ := strings.Cut(eu.ProxyAddr, ":")
	if d, p := meta(dport), meta(pport); d != p {
		t.Errorf("column metadata differs:\ndirect:\n%s\nthrough the proxy:\n%s", d, p)
	} else if !strings.Contains(d, "json") {
		t.Errorf("the mariadb client shows no JSON format metadata even directly:\n%s", d)
	}

	for _, db := range []string{"app", "other"} {
		direct := observe(open(eu.Server.Addr(), db), db, "direct")
		proxied := observe(open(eu.ProxyAddr, db), db, "proxy")
		if len(direct) != len(proxied) {
			t.Errorf("%s: %d observations directly, %d through the proxy:\ndirect:\n%s\nproxy:\n%s", db, len(direct), len(proxied), strings.Join(direct, "\n"), strings.Join(proxied, "\n"))
			continue
		}
		for i := range direct {
			d := strings.ReplaceAll(direct[i], "direct", "SIDE")
			p := strings.ReplaceAll(proxied[i], "proxy", "SIDE")
			if d != p {
				t.Errorf("%s: directly %q, through the proxy %q", db, d, p)
			}
		}
	}
}
