package itest

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// TestForwardHomedWrites: users homed by id range with elsewhere:
// forward. A write for a user homed in us, sent to eu's proxy as an
// application account, succeeds: eu's proxy runs it at us's proxy under
// the same account, us stamps it, every region ends with it. A
// transaction moves to the home of its first write and runs there whole;
// a write in it for another home is refused, and the rest commits.
// Prepared statements are forwarded the same way.
func TestForwardHomedWrites(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tables := strings.Replace(homeTables, "        - {region: ap, from: 2001, to: 3000}",
		"        - {region: ap, from: 2001, to: 3000}\n      elsewhere: forward", 1)
	c := startCluster(t, cluster.Options{
		Setup:   homeSetup + "CREATE USER app@'%' IDENTIFIED BY 'app-secret'; GRANT ALL ON app.* TO app@'%';",
		Tables:  tables,
		Forward: true,
	})
	eu, us := c.Regions[0], c.Regions[1]
	asApp := func(r *cluster.Region) *sql.DB {
		mc, err := mysql.ParseDSN(r.DSN("app"))
		if err != nil {
			t.Fatal(err)
		}
		mc.User, mc.Passwd = "app", "app-secret"
		db, err := sql.Open("mysql", mc.FormatDSN())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}
	euApp := asApp(eu)

	if _, err := euApp.ExecContext(ctx, "INSERT INTO users (user_id, name) VALUES (1500, 'sent to eu')"); err != nil {
		t.Fatalf("a write homed in us, through eu's proxy: %v", err)
	}
	var origin int
	if err := openDirect(t, us).QueryRowContext(ctx, "SELECT _mlr_origin & 0xFFFF FROM app.users WHERE user_id = 1500").Scan(&origin); err != nil {
		t.Fatalf("the forwarded write is not in us: %v", err)
	}
	if origin != int(us.ID) {
		t.Errorf("the forwarded write was stamped by region %d, want us (%d)", origin, us.ID)
	}

	conn, err := euApp.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	steps := []struct {
		sql     string
		refused string
	}{
		{"BEGIN", ""},
		{"SELECT COUNT(*) FROM users", ""},
		{"UPDATE users SET name = 'moved with its transaction' WHERE user_id = 1500", ""},
		{"INSERT INTO users (user_id, name) VALUES (1600, 'same home')", ""},
		{"INSERT INTO users (user_id, name) VALUES (5, 'eu home')", "a transaction writes the keys of one home region"},
		{"COMMIT", ""},
	}
	for _, s := range steps {
		_, err := conn.ExecContext(ctx, s.sql)
		switch {
		case s.refused == "" && err != nil:
			t.Fatalf("%s: %v", s.sql, err)
		case s.refused != "" && (err == nil || !strings.Contains(err.Error(), s.refused)):
			t.Fatalf("%s: %v; want it refused: %s", s.sql, err, s.refused)
		}
	}
	// A statement with keys homed here and there is refused, not sent to
	// and fro; so is a move of a transaction that already wrote here (a
	// prepared write counts).
	if _, err := euApp.ExecContext(ctx, "INSERT INTO users (user_id, name) VALUES (1700, 'us'), (7, 'eu')"); err == nil || !strings.Contains(err.Error(), "homed here and in another region") {
		t.Fatalf("a statement with keys homed in eu and us, through eu: %v; want it refused", err)
	}
	// The forwarded writes above are applied here first: the transaction
	// below must not meet the applier's gap locks (a deadlock, not the
	// refusal this checks; CI saw one).
	waitApplied(ctx, t, c)
	wrote, err := euApp.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wrote.ExecContext(ctx, "INSERT INTO users (user_id, name) VALUES (?, 'eu first')", 8); err != nil {
		t.Fatal(err)
	}
	if _, err := wrote.ExecContext(ctx, "INSERT INTO users (user_id, name) VALUES (?, 'us second')", 1800); err == nil || !strings.Contains(err.Error(), "already wrote here") {
		t.Fatalf("a write homed in us after a prepared write homed in eu, in one transaction: %v; want it refused", err)
	}
	if err := wrote.Rollback(); err != nil {
		t.Fatal(err)
	}

	// Prepared statements are forwarded too (prepared again there), in a
	// transaction as well; the parameter types the driver sends once hold.
	tx, err := euApp.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := tx.PrepareContext(ctx, "UPDATE users SET name = ? WHERE user_id = ?")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"prepared once", "prepared twice"} {
		if _, err := st.ExecContext(ctx, name, 1600); err != nil {
			t.Fatalf("a prepared write homed in us through eu: %v", err)
		}
	}
	st.Close()
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	// A write homed here inside a transaction forwarded to us is refused.
	tx, err = euApp.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM users WHERE user_id = ?", 1500); err != nil {
		t.Fatal(err)
	}
	_, err = tx.ExecContext(ctx, "INSERT INTO users (user_id, name) VALUES (?, 'eu home')", 6)
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1644 || !strings.Contains(me.Message, "one home region") {
		t.Fatalf("a write homed in eu inside a transaction forwarded to us: %v; want ERR 1644", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}

	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	if err := c.WaitApplied(wctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitConverged(wctx, map[string]string{"app.users": "user_id"}, "user_id, name, _mlr_origin"); err != nil {
		t.Fatal(err)
	}
	for _, r := range c.Regions {
		rows, err := openDirect(t, r).QueryContext(ctx, "SELECT user_id, name FROM app.users ORDER BY user_id")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for rows.Next() {
			var id int
			var name string
			if err := rows.Scan(&id, &name); err != nil {
				t.Fatal(err)
			}
			got = append(got, itoa(id)+"="+name)
		}
		rows.Close()
		want := "1500=moved with its transaction 1600=prepared twice"
		if strings.Join(got, " ") != want {
			t.Errorf("region %s holds %v, want %s", r.Name, got, want)
		}
	}
}
