package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	gmysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/dbtest"
)

func tlsProxy(t *testing.T, backendTLS bool) *testProxy {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	return startProxy(t, func(c *Config) {
		c.ClientTLS = &tls.Config{Certificates: []tls.Certificate{tlsCert}, MinVersion: tls.VersionTLS12}
		if backendTLS {
			c.BackendTLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		} else {
			c.Backend.TLS = &config.TLSClient{InsecureSkipVerify: true}
		}
	})
}

// mariadbCLI runs the mariadb client through the proxy.
func mariadbCLI(t *testing.T, p *testProxy, args ...string) (string, error) {
	t.Helper()
	all := append([]string{"--no-defaults", "-h127.0.0.1", "-P", p.port(), "--batch", "--skip-column-names"}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "mariadb", all...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func TestMariadbCLI(t *testing.T) {
	p := startProxy(t, nil)
	out, err := mariadbCLI(t, p, "-uroot", "app", "-e",
		"INSERT INTO rt (v) VALUES ('cli'); SELECT v FROM rt WHERE v = 'cli'; SELECT DATABASE(); SHOW WARNINGS")
	if err != nil || out != "cli\napp" {
		t.Fatalf("mariadb -e: %v\n%s", err, out)
	}
	if _, o := stampOfV(t, "rt", "cli"); o != testRegion {
		t.Fatal("write from the mariadb CLI not stamped")
	}
	out, err = mariadbCLI(t, p, "-uroot", "-e", "INSERT INTO mlr.checkpoints VALUES (9, 'cli')")
	if err == nil || !strings.Contains(out, "ERROR 1105 (HY000)") || !strings.Contains(out, "mlproxy: ") {
		t.Fatalf("refused statement via CLI: %v\n%s", err, out)
	}
	out, err = mariadbCLI(t, p, "-upw", "-pwrong", "-e", "SELECT 1")
	if err == nil || !strings.Contains(out, "ERROR 1045 (28000)") {
		t.Fatalf("wrong password via CLI: %v\n%s", err, out)
	}
	out, err = mariadbCLI(t, p, "-ued", "-pedpw", "app", "-e", "SELECT CURRENT_USER()")
	if err != nil || out != "ed@%" {
		t.Fatalf("ed25519 user via CLI: %v\n%s", err, out)
	}
	// LOAD DATA LOCAL INFILE through the CLI.
	f := filepath.Join(t.TempDir(), "rows.tsv")
	if err := os.WriteFile(f, []byte("cli-load1\t1\ncli-load2\t2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = mariadbCLI(t, p, "-uroot", "--local-infile=1", "app", "-e",
		fmt.Sprintf("LOAD DATA LOCAL INFILE '%s' INTO TABLE rt (v, n); SELECT COUNT(*) FROM rt WHERE v LIKE 'cli-load%%'", f))
	if err != nil || out != "2" {
		t.Fatalf("LOAD DATA LOCAL via CLI: %v\n%s", err, out)
	}
}

func TestTLS(t *testing.T) {
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, backendTLS := range []bool{true, false} {
		t.Run(fmt.Sprintf("BackendTLS=%v", backendTLS), func(t *testing.T) {
			p := tlsProxy(t, backendTLS)
			out, err := mariadbCLI(t, p, "-utlsuser", "-ptlspw", "--ssl", "--ssl-ca="+caFile, "-e",
				"SELECT CURRENT_USER(); SHOW STATUS LIKE 'Ssl_cipher'")
			if err != nil || !strings.HasPrefix(out, "tlsuser@%\nSsl_cipher\t") || strings.HasSuffix(out, "\t") {
				t.Fatalf("REQUIRE SSL user over TLS: %v\n%s", err, out)
			}
			// Without TLS on the client leg the server refuses the account
			// itself, unless the backend leg is TLS anyway.
			out, err = mariadbCLI(t, p, "-utlsuser", "-ptlspw", "--skip-ssl", "-e", "SELECT CURRENT_USER()")
			if backendTLS {
				if err != nil || out != "tlsuser@%" {
					t.Fatalf("REQUIRE SSL user with TLS backend leg only: %v\n%s", err, out)
				}
			} else if err == nil || !strings.Contains(out, "ERROR 1045 (28000)") {
				t.Fatalf("REQUIRE SSL user without TLS: %v\n%s", err, out)
			}
			// The Go driver over TLS, with prepared statements.
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(certPEM)
			name := fmt.Sprintf("proxytest%v", backendTLS)
			if err := mysql.RegisterTLSConfig(name, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}); err != nil {
				t.Fatal(err)
			}
			d, err := sql.Open("mysql", p.dsn("tlsuser", "tlspw", "app", func(c *mysql.Config) { c.TLSConfig = name }))
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			v := fmt.Sprintf("tls-%v", backendTLS)
			mustExec(t, d, "INSERT INTO rt (v) VALUES (?)", v)
			if _, o := stampOfV(t, "rt", v); o != testRegion {
				t.Fatal("write over TLS not stamped")
			}
		})
	}
}

// rawConn is a go-mysql client through the proxy, for crafting packets.
func rawConn(t *testing.T, p *testProxy, user, pass, db string) *client.Conn {
	t.Helper()
	c, err := client.Connect(p.Addr().String(), user, pass, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// changeUser sends COM_CHANGE_USER naming a plugin the account does not
// use, so the server answers with an auth switch carrying a fresh scramble,
// and answers it with mysql_native_password.
func changeUser(c *client.Conn, user, pass, db string) error {
	payload := []byte{0, 0, 0, 0, gmysql.COM_CHANGE_USER}
	payload = append(payload, user...)
	payload = append(payload, 0, 0) // user terminator, empty auth data
	payload = append(payload, db...)
	payload = append(payload, 0, 33, 0) // db terminator, utf8_general_ci
	payload = append(payload, "mlproxy_test_plugin"...)
	payload = append(payload, 0, 0) // plugin terminator, no connection attributes
	c.ResetSequence()
	if err := c.WritePacket(payload); err != nil {
		return err
	}
	for {
		p, err := c.ReadPacket()
		if err != nil {
			return err
		}
		switch p[0] {
		case gmysql.OK_HEADER:
			return nil
		case gmysql.ERR_HEADER:
			return c.HandleErrorPacket(p)
		case gmysql.EOF_HEADER:
			plugin, rest, _ := strings.Cut(string(p[1:]), "\x00")
			if plugin != gmysql.AUTH_NATIVE_PASSWORD {
				return fmt.Errorf("unexpected auth switch to %s", plugin)
			}
			scramble := []byte(strings.TrimSuffix(rest, "\x00"))
			reply := append([]byte{0, 0, 0, 0}, gmysql.CalcNativePassword(scramble, []byte(pass))...)
			if err := c.WritePacket(reply); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unexpected packet 0x%02x", p[0])
		}
	}
}

func TestChangeUserAndResetConnection(t *testing.T) {
	p := startProxy(t, nil)
	c := rawConn(t, p, "root", "", "")
	if _, err := c.Execute("SET @v = 5"); err != nil {
		t.Fatal(err)
	}
	// Wrong password: the server's 1045.
	err := changeUser(c, "pw", "wrong", "app")
	var me *gmysql.MyError
	if !errors.As(err, &me) || me.Code != 1045 {
		t.Fatalf("change user with wrong password: %v", err)
	}
	c = rawConn(t, p, "root", "", "")
	if _, err := c.Execute("SET @v = 5"); err != nil {
		t.Fatal(err)
	}
	if err := changeUser(c, "pw", "secret", "app"); err != nil {
		t.Fatalf("change user: %v", err)
	}
	r, err := c.Execute("SELECT CURRENT_USER(), DATABASE(), @v IS NULL")
	if err != nil {
		t.Fatal(err)
	}
	if u, _ := r.GetString(0, 0); u != "pw@%" {
		t.Fatalf("user after change user = %q", u)
	}
	if d, _ := r.GetString(0, 1); d != "app" {
		t.Fatalf("database after change user = %q", d)
	}
	if n, _ := r.GetInt(0, 2); n != 1 {
		t.Fatal("session variable survived change user")
	}
	// Unqualified write after the change: the proxy tracked the database.
	if _, err := c.Execute("INSERT INTO rt (v) VALUES ('changed-user')"); err != nil {
		t.Fatal(err)
	}
	if _, o := stampOfV(t, "rt", "changed-user"); o != testRegion {
		t.Fatal("write after change user not stamped")
	}

	// COM_RESET_CONNECTION clears session state and prepared statements.
	st, err := c.Prepare("INSERT INTO rt (v) VALUES (?)")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Execute("SET @v = 6"); err != nil {
		t.Fatal(err)
	}
	c.ResetSequence()
	if err := c.WritePacket([]byte{0, 0, 0, 0, gmysql.COM_RESET_CONNECTION}); err != nil {
		t.Fatal(err)
	}
	if pkt, err := c.ReadPacket(); err != nil || pkt[0] != gmysql.OK_HEADER {
		t.Fatalf("reset connection: %v %x", err, pkt)
	}
	if r, err = c.Execute("SELECT @v IS NULL"); err != nil {
		t.Fatal(err)
	}
	if n, _ := r.GetInt(0, 0); n != 1 {
		t.Fatal("session variable survived COM_RESET_CONNECTION")
	}
	if _, err := st.Execute("after-reset"); err == nil {
		t.Fatal("prepared statement survived COM_RESET_CONNECTION")
	}
	// Prepared writes after a reset are stamped again (the SET is re-sent).
	if _, err := c.Execute("INSERT INTO rt (v) VALUES (?)", "after-reset2"); err != nil {
		t.Fatal(err)
	}
	if _, o := stampOfV(t, "rt", "after-reset2"); o != testRegion {
		t.Fatal("prepared write after reset not stamped")
	}
	// Other commands: ping, statistics, set option, field list, init db.
	if err := c.Ping(); err != nil {
		t.Fatal(err)
	}
	c.ResetSequence()
	if err := c.WritePacket([]byte{0, 0, 0, 0, gmysql.COM_STATISTICS}); err != nil {
		t.Fatal(err)
	}
	if pkt, err := c.ReadPacket(); err != nil || !strings.HasPrefix(string(pkt), "Uptime: ") {
		t.Fatalf("statistics: %v %q", err, pkt)
	}
	c.ResetSequence()
	if err := c.WritePacket([]byte{0, 0, 0, 0, gmysql.COM_SET_OPTION, 1, 0}); err != nil { // multi-statements off
		t.Fatal(err)
	}
	if pkt, err := c.ReadPacket(); err != nil || pkt[0] == gmysql.ERR_HEADER {
		t.Fatalf("set option: %v %x", err, pkt)
	}
	if _, err := c.Execute("SELECT 1; SELECT 2"); err == nil {
		t.Fatal("multi-statement accepted after COM_SET_OPTION turned them off")
	}
	dc, err := client.Connect(srv.Addr(), "root", "", "app")
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	want, err := dc.FieldList("rt", "")
	if err != nil {
		t.Fatal(err)
	}
	if fs, err := c.FieldList("rt", ""); err != nil || len(fs) != len(want) {
		t.Fatalf("field list: %d fields, %v; direct %d", len(fs), err, len(want))
	}
	if _, err := c.FieldList("no_such_table", ""); err == nil {
		t.Fatal("field list of a missing table succeeded")
	}
	if err := c.UseDB("mlr"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Execute("INSERT INTO checkpoints VALUES (1, 'x')"); err == nil || !strings.Contains(err.Error(), "mlproxy: ") {
		t.Fatalf("unqualified write to mlr after COM_INIT_DB: %v", err)
	}
}

// TestCursorFetch runs a prepared SELECT with a read-only cursor
// (COM_STMT_EXECUTE with a cursor flag, then COM_STMT_FETCH).
func TestCursorFetch(t *testing.T) {
	p := startProxy(t, nil)
	c := rawConn(t, p, "root", "", "app")
	// PREPARE
	c.ResetSequence()
	q := "SELECT seq FROM seq_1_to_10"
	if err := c.WritePacket(append([]byte{0, 0, 0, 0, gmysql.COM_STMT_PREPARE}, q...)); err != nil {
		t.Fatal(err)
	}
	ok, err := c.ReadPacket()
	if err != nil || ok[0] != 0 {
		t.Fatalf("prepare: %v %x", err, ok)
	}
	id := ok[1:5]
	for i := 0; i < 2; i++ { // one column definition, EOF
		if _, err := c.ReadPacket(); err != nil {
			t.Fatal(err)
		}
	}
	// EXECUTE with CURSOR_TYPE_READ_ONLY, no parameters.
	c.ResetSequence()
	exec := append([]byte{0, 0, 0, 0, gmysql.COM_STMT_EXECUTE}, id...)
	exec = append(exec, 1, 1, 0, 0, 0)
	if err := c.WritePacket(exec); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ { // column count, definition, EOF (cursor open)
		pkt, err := c.ReadPacket()
		if err != nil {
			t.Fatal(err)
		}
		if i == 2 && (pkt[0] != 0xfe || pkt[3]&byte(gmysql.SERVER_STATUS_CURSOR_EXISTS) == 0) {
			t.Fatalf("no cursor: %x", pkt)
		}
	}
	rows := 0
	for {
		c.ResetSequence()
		fetch := append([]byte{0, 0, 0, 0, gmysql.COM_STMT_FETCH}, id...)
		fetch = append(fetch, 4, 0, 0, 0)
		if err := c.WritePacket(fetch); err != nil {
			t.Fatal(err)
		}
		last := false
		for {
			pkt, err := c.ReadPacket()
			if err != nil {
				t.Fatal(err)
			}
			if pkt[0] == 0xfe && len(pkt) < 9 {
				last = pkt[3]&byte(gmysql.SERVER_STATUS_LAST_ROW_SEND) != 0
				break
			}
			rows++
		}
		if last {
			break
		}
	}
	if rows != 10 {
		t.Fatalf("fetched %d rows, want 10", rows)
	}
	// The connection is in step afterwards.
	if _, err := c.Execute("SELECT 1"); err != nil {
		t.Fatal(err)
	}
}

func TestBackendKilledMidQuery(t *testing.T) {
	p := startProxy(t, nil)
	db := p.open(t, "")
	ctx := context.Background()
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var id int64
	if err := c.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		var x int
		done <- c.QueryRowContext(ctx, "SELECT SLEEP(5)").Scan(&x)
	}()
	// Wait until the server runs it, then kill the backend connection.
	for {
		var n int
		if err := direct.QueryRow("SELECT COUNT(*) FROM information_schema.processlist WHERE id = ? AND info LIKE 'SELECT SLEEP%'", id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mustExec(t, direct, fmt.Sprintf("KILL %d", id))
	if err := <-done; err == nil {
		t.Fatal("query on a killed backend connection succeeded")
	}
	// New clients are still served.
	var one int
	if err := p.open(t, "").QueryRow("SELECT 1").Scan(&one); err != nil {
		t.Fatalf("after a killed backend: %v", err)
	}
}

func TestBackendUnreachable(t *testing.T) {
	port, err := dbtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := startProxy(t, func(c *Config) { c.Backend.Addr = addr })
	err = p.open(t, "").Ping()
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != erBackendUnreachable || me.SQLState != [5]byte{'0', '8', 'S', '0', '1'} || !strings.Contains(me.Message, addr) {
		t.Fatalf("unreachable backend: %v", err)
	}
}

func TestMaxConnections(t *testing.T) {
	p := startProxy(t, func(c *Config) { c.MaxConnections = 2 })
	db := p.open(t, "")
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.PingContext(ctx); err != nil {
			t.Fatal(err)
		}
	}
	other := p.open(t, "")
	err := other.Ping()
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1040 {
		t.Fatalf("third connection: %v, want 1040 Too many connections", err)
	}
}

// TestPreparedStatementsBoundedByServer: the server's
// max_prepared_stmt_count bounds a connection's prepared statements; past
// it the client gets the server's own error (1461), the proxy keeps no
// entry for a statement the server refused, and closing one makes room.
func TestPreparedStatementsBoundedByServer(t *testing.T) {
	root, err := srv.Open("")
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	var was int
	if err := root.QueryRow("SELECT @@GLOBAL.max_prepared_stmt_count").Scan(&was); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Exec("SET GLOBAL max_prepared_stmt_count = 3"); err != nil {
		t.Fatal(err)
	}
	defer root.Exec("SET GLOBAL max_prepared_stmt_count = " + strconv.Itoa(was))
	p := startProxy(t, nil)
	ctx := context.Background()
	c, err := p.open(t, "").Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var stmts []*sql.Stmt
	for i := 0; i < 3; i++ {
		st, err := c.PrepareContext(ctx, "SELECT ? + "+strconv.Itoa(i))
		if err != nil {
			t.Fatalf("prepare %d of 3: %v", i+1, err)
		}
		stmts = append(stmts, st)
	}
	_, err = c.PrepareContext(ctx, "SELECT ? + 99")
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1461 {
		t.Fatalf("a 4th prepared statement with max_prepared_stmt_count = 3: %v; want the server's 1461", err)
	}
	held := func() int {
		p.mu.Lock()
		defer p.mu.Unlock()
		n := 0
		for cn := range p.conns {
			n += len(cn.stmts)
		}
		return n
	}
	if n := held(); n != 3 {
		t.Errorf("the proxy holds %d prepared statements; the server holds 3", n)
	}
	stmts[0].Close()
	st, err := c.PrepareContext(ctx, "SELECT ? + 100")
	if err != nil {
		t.Fatalf("prepare after closing one: %v", err)
	}
	var v int
	if err := st.QueryRowContext(ctx, 1).Scan(&v); err != nil || v != 101 {
		t.Fatalf("execute: %d, %v", v, err)
	}
	if n := held(); n != 3 {
		t.Errorf("after closing one and preparing another the proxy holds %d prepared statements; want 3", n)
	}
}

// TestBadInput sends garbage, truncated handshakes and out-of-order
// packets; each such connection closes and the proxy keeps serving.
func TestBadInput(t *testing.T) {
	p := startProxy(t, nil)
	inputs := map[string][]byte{
		"garbage":         []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		"truncated":       {0x20, 0, 0},
		"short-response":  {4, 0, 0, 1, 0, 0, 0, 0},
		"wrong-sequence":  append([]byte{40, 0, 0, 7}, make([]byte, 40)...),
		"huge-length":     {0xff, 0xff, 0xff, 1, 1, 2, 3},
		"no-protocol-41":  append([]byte{33, 0, 0, 1}, make([]byte, 33)...),
		"ssl-without-tls": append([]byte{32, 0, 0, 1, 0x00, 0x0a, 0, 0}, make([]byte, 28)...),
	}
	for name, in := range inputs {
		t.Run(name, func(t *testing.T) {
			nc, err := net.Dial("tcp", p.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
			w := newWire(nc)
			if _, _, _, err := w.readPacket(1 << 20); err != nil {
				t.Fatalf("greeting: %v", err)
			}
			if _, err := nc.Write(in); err != nil {
				t.Fatal(err)
			}
			if name == "truncated" || name == "huge-length" {
				_ = nc.(*net.TCPConn).CloseWrite()
			}
			// The proxy answers with an ERR or closes; either way the
			// connection ends.
			if _, err := io.Copy(io.Discard, nc); err != nil {
				t.Fatalf("connection did not end cleanly: %v", err)
			}
		})
	}
	// Mid-command garbage after a good login: out-of-order sequence id.
	c := rawConn(t, p, "root", "", "")
	c.Sequence = 3
	if err := c.WritePacket([]byte{0, 0, 0, 0, gmysql.COM_QUERY, 'S'}); err != nil {
		t.Fatal(err)
	}
	c.Sequence = 4
	pkt, err := c.ReadPacket()
	if err != nil || pkt[0] != gmysql.ERR_HEADER {
		t.Fatalf("out-of-order command: %v %x", err, pkt)
	}
	// Unknown command: an ERR, and the connection stays usable.
	c2 := rawConn(t, p, "root", "", "")
	c2.ResetSequence()
	if err := c2.WritePacket([]byte{0, 0, 0, 0, 0x99}); err != nil {
		t.Fatal(err)
	}
	if pkt, err := c2.ReadPacket(); err != nil || pkt[0] != gmysql.ERR_HEADER {
		t.Fatalf("unknown command: %v %x", err, pkt)
	}
	if _, err := c2.Execute("SELECT 1"); err != nil {
		t.Fatal(err)
	}
	var one int
	if err := p.open(t, "").QueryRow("SELECT 1").Scan(&one); err != nil {
		t.Fatalf("proxy stopped serving after bad input: %v", err)
	}
}

// TestShutdownDrains: on shutdown an idle connection is closed, one inside
// a transaction may finish it, and Run returns nil.
func TestShutdownDrains(t *testing.T) {
	p := startProxy(t, func(c *Config) { c.ShutdownTimeout = time.Minute })
	db := p.open(t, "app")
	ctx := context.Background()
	idle, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if err := idle.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	mustExec(t, direct, "DELETE FROM app.rt WHERE v LIKE 'drain%'")
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, tx, "INSERT INTO rt (v) VALUES ('drain1')")
	stopped := make(chan error, 1)
	go func() { stopped <- p.stop() }()
	// Wait until the listener is closed.
	for {
		nc, err := net.Dial("tcp", p.Addr().String())
		if err != nil {
			break
		}
		nc.Close()
		time.Sleep(10 * time.Millisecond)
	}
	mustExec(t, tx, "INSERT INTO rt (v) VALUES ('drain2')")
	if err := tx.Commit(); err != nil {
		t.Fatalf("commit while draining: %v", err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Run: %v", err)
	}
	var n int
	if err := direct.QueryRow("SELECT COUNT(*) FROM app.rt WHERE v LIKE 'drain%'").Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d drained rows committed (%v), want 2", n, err)
	}
	if err := idle.PingContext(ctx); err == nil {
		t.Fatal("idle connection still open after shutdown")
	}
}

// TestStampSetFails puts a man in the middle between proxy and server that
// breaks the stamping SET: the client gets the SET's error for its
// command, the command's own response is consumed, and the connection
// stays in step.
func TestStampSetFails(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			cn, err := ln.Accept()
			if err != nil {
				return
			}
			sn, err := net.Dial("tcp", srv.Addr())
			if err != nil {
				cn.Close()
				continue
			}
			go func() { _, _ = io.Copy(cn, sn); cn.Close() }()
			go func() {
				defer sn.Close()
				in, out := newWire(cn), newWire(sn)
				for {
					p, first, _, err := in.readPacket(maxCommand)
					if err != nil {
						return
					}
					if bytes.HasPrefix(p, []byte("\x03SET @_mlr_hlc=")) {
						p = append([]byte("\x03SET @_mlr_hlc=("), p[len("\x03SET @_mlr_hlc="):]...)
					}
					if _, err := out.writePacket(p, first); err != nil {
						return
					}
					if out.w.Flush() != nil {
						return
					}
				}
			}()
		}
	}()
	p := startProxy(t, func(c *Config) { c.Backend.Addr = ln.Addr().String() })
	db := p.open(t, "app")
	db.SetMaxOpenConns(1)
	for _, q := range []string{
		"INSERT INTO rt (v) VALUES ('set-fails')",
		"SELECT * FROM rt; UPDATE rt SET n = 1 WHERE v = 'set-fails'",
	} {
		_, err = db.Exec(q)
		var me *mysql.MySQLError
		if !errors.As(err, &me) || me.Number != 1064 {
			t.Fatalf("%s with a failing SET: %v, want the SET's 1064", q, err)
		}
		var one int
		if err := db.QueryRow("SELECT 1").Scan(&one); err != nil {
			t.Fatalf("connection out of step after a failed SET: %v", err)
		}
	}
	_, err = db.Exec("INSERT INTO rt (v) VALUES (?)", "set-fails-prepared")
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1064 {
		t.Fatalf("prepared insert with a failing SET: %v", err)
	}
	var one int
	if err := db.QueryRow("SELECT ?", 1).Scan(&one); err != nil {
		t.Fatalf("connection out of step after a failed SET: %v", err)
	}
}
