package itest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

const ledgerSetup = appSetup + `
CREATE TABLE app.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL, CONSTRAINT never_negative CHECK (balance >= 0));
CREATE TABLE app.transfers (id BIGINT PRIMARY KEY, src INT NOT NULL, dst INT NOT NULL, amount INT NOT NULL);
`

const ledgerTables = appTables + `
  - schema: app
    table: accounts
    consistency: strong
    leader: eu
    standby: [us, ap]
  - schema: app
    table: transfers
    consistency: strong
    leader: eu`

// reLeaderProxy reads the leader's proxy from a strong table's refusal.
var reLeaderProxy = regexp.MustCompile(`leader region (\S+) writes it \(proxy ([^)]+)\)`)

// transferClient moves money between accounts from one region. A write
// refused there names the leader's proxy: the client sends the whole
// transfer there (what an application or load balancer does with the
// error).
type transferClient struct {
	name    string
	home    *sql.DB
	dsn     func(addr string) string
	leaders map[string]*sql.DB
	base    int64

	acked     map[int64][3]int // transfer id -> src, dst, amount
	refused   int              // refused locally, then redirected
	overdrawn int              // the CHECK refused it at the leader
	lockWaits int              // lock wait timeouts (50 s: a transaction left open)
}

func (c *transferClient) transfer(ctx context.Context, db *sql.DB, id int64, src, dst, amount int) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{"UPDATE accounts SET balance = balance - ? WHERE id = ?", []any{amount, src}},
		{"UPDATE accounts SET balance = balance + ? WHERE id = ?", []any{amount, dst}},
		{"INSERT INTO transfers (id, src, dst, amount) VALUES (?, ?, ?, ?)", []any{id, src, dst, amount}},
	} {
		if _, err := tx.ExecContext(ctx, q.sql, q.args...); err != nil {
			return err
		}
	}
	return tx.Commit()
}

func (c *transferClient) run(ctx context.Context, stop *atomic.Bool, rng *rand.Rand) error {
	for seq := int64(1); !stop.Load() && ctx.Err() == nil; seq++ {
		id := c.base + seq
		src, dst := 1+rng.IntN(5), 1+rng.IntN(5)
		if src == dst {
			continue
		}
		amount := 1 + rng.IntN(60)
		err := c.transfer(ctx, c.home, id, src, dst, amount)
		var me *mysql.MySQLError
		if errors.As(err, &me) && me.Number == 1644 {
			m := reLeaderProxy.FindStringSubmatch(me.Message)
			if m == nil {
				return fmt.Errorf("%s: refusal does not name the leader's proxy: %s", c.name, me.Message)
			}
			c.refused++
			leader := c.leaders[m[2]]
			if leader == nil {
				if leader, err = sql.Open("mysql", c.dsn(m[2])); err != nil {
					return err
				}
				c.leaders[m[2]] = leader
			}
			err = c.transfer(ctx, leader, id, src, dst, amount)
		}
		switch {
		case err == nil:
			c.acked[id] = [3]int{src, dst, amount}
		case errors.As(err, &me) && me.Number == 4025: // CONSTRAINT_FAILED: would go negative
			c.overdrawn++
		case errors.As(err, &me) && me.Number == 1205:
			c.lockWaits++
		case errors.As(err, &me) && me.Number == 1213:
		default:
			return fmt.Errorf("%s: transfer %d: %w", c.name, id, err)
		}
	}
	return nil
}

// TestStrongLedger: accounts and transfers are strong tables led by eu,
// written concurrently from every region: refused outside eu with the
// leader's proxy and redirected there by the client, or (forward: true)
// forwarded there whole by the region's proxy, as the client's account.
// Every region ends with balances that are exactly the acknowledged
// transfers applied to the opening balances, none negative although
// clients kept trying to overdraw. While eu's proxy is down, writes
// elsewhere are refused, never taken and merged later.
func TestStrongLedger(t *testing.T) {
	t.Run("redirect", func(t *testing.T) { strongLedger(t, false) })
	t.Run("forward", func(t *testing.T) { strongLedger(t, true) })
}

func strongLedger(t *testing.T, forward bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	tables := ledgerTables
	if forward {
		tables = strings.ReplaceAll(tables, "    leader: eu", "    leader: eu\n    forward: true")
	}
	c := startCluster(t, cluster.Options{Setup: ledgerSetup + "CREATE USER app@'%' IDENTIFIED BY 'app-secret'; GRANT ALL ON app.* TO app@'%';",
		Tables: tables, Forward: forward})
	eu, us := c.Regions[0], c.Regions[1]
	const accounts, opening = 5, 100
	for i := 1; i <= accounts; i++ {
		if _, err := openProxy(t, eu, 1).ExecContext(ctx, "INSERT INTO accounts VALUES (?, ?)", i, opening); err != nil {
			t.Fatal(err)
		}
	}
	var me *mysql.MySQLError
	if !forward {
		_, err := openProxy(t, us, 1).ExecContext(ctx, "INSERT INTO accounts VALUES (99, 1000000)")
		if !errors.As(err, &me) || me.Number != 1644 {
			t.Fatalf("insert into a strong table outside its leader: %v; want ERR 1644 naming the leader", err)
		}
	}

	var stop atomic.Bool
	var wg sync.WaitGroup
	var clients []*transferClient
	errs := make(chan error, 16)
	for i, r := range c.Regions {
		for w := range 2 {
			dsn := func(addr string) string {
				mc, _ := mysql.ParseDSN(r.DSN("app"))
				mc.User, mc.Passwd = "app", "app-secret" // forwarding needs a native password
				if addr != "" {
					mc.Addr = addr
				}
				return mc.FormatDSN()
			}
			home, err := sql.Open("mysql", dsn(""))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { home.Close() })
			cl := &transferClient{name: fmt.Sprintf("%s-%d", r.Name, w), home: home, base: int64(i*10+w+1) * 1_000_000,
				dsn: dsn, leaders: map[string]*sql.DB{}, acked: map[int64][3]int{}}
			clients = append(clients, cl)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := cl.run(ctx, &stop, rand.New(rand.NewPCG(uint64(i), uint64(w)))); err != nil {
					errs <- err
				}
			}()
		}
	}
	time.Sleep(soak(8 * time.Second))
	stop.Store(true)
	stopped := time.Now()
	wg.Wait()
	t.Logf("clients done %s after the stop", time.Since(stopped).Round(time.Millisecond))
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, cl := range clients {
		for _, db := range cl.leaders {
			db.Close()
		}
	}

	// eu's proxy down: the others still refuse, nothing is taken.
	downAt := time.Now()
	if err := c.StopProxy(eu, false); err != nil {
		t.Fatal(err)
	}
	t.Logf("eu's proxy stopped in %s", time.Since(downAt).Round(time.Millisecond))
	_, err := clients[2].home.ExecContext(ctx, "UPDATE accounts SET balance = balance + 1000 WHERE id = 1")
	if !errors.As(err, &me) || me.Number != 1644 {
		t.Fatalf("write to a strong table with the leader down: %v; want ERR 1644", err)
	}
	if err := c.StartProxy(eu); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitProxy(ctx, eu); err != nil {
		t.Fatal(err)
	}

	want := map[int]int{}
	for i := 1; i <= accounts; i++ {
		want[i] = opening
	}
	acked, refused, overdrawn := 0, 0, 0
	for _, cl := range clients {
		for _, tr := range cl.acked {
			want[tr[0]] -= tr[2]
			want[tr[1]] += tr[2]
		}
		acked, refused, overdrawn = acked+len(cl.acked), refused+cl.refused, overdrawn+cl.overdrawn
	}
	t.Logf("%d transfers acknowledged, %d redirected to the leader by clients, %d refused by the CHECK", acked, refused, overdrawn)
	if acked == 0 || overdrawn == 0 || (refused == 0) == !forward {
		t.Fatalf("the load did not exercise the ledger: %d acknowledged, %d redirected by clients (forwarding %v), %d overdrafts refused", acked, refused, forward, overdrawn)
	}
	for _, cl := range clients {
		if cl.lockWaits > 0 {
			t.Errorf("client %s waited out the lock wait timeout %d times: a transaction was left open at the leader", cl.name, cl.lockWaits)
		}
	}
	for _, cl := range clients[2:] { // us and ap
		if len(cl.acked) == 0 {
			t.Errorf("client %s outside the leader had no transfer acknowledged", cl.name)
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	if err := c.WaitApplied(wctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitConverged(wctx, map[string]string{"app.accounts": "id", "app.transfers": "id"}, "*"); err != nil {
		t.Fatal(err)
	}
	for _, r := range c.Regions {
		db := openDirect(t, r)
		for id, bal := range want {
			var got int
			if err := db.QueryRowContext(ctx, "SELECT balance FROM accounts WHERE id = ?", id).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != bal {
				t.Errorf("region %s: account %d holds %d; the acknowledged transfers give %d", r.Name, id, got, bal)
			}
		}
		var n int
		if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM transfers").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != acked {
			t.Errorf("region %s: %d transfers recorded, %d acknowledged", r.Name, n, acked)
		}
		var conflicts int
		if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM mlr.conflicts WHERE tbl IN ('accounts', 'transfers')").Scan(&conflicts); err != nil {
			t.Fatal(err)
		}
		if conflicts != 0 {
			t.Errorf("region %s logged %d conflicts on strong tables", r.Name, conflicts)
		}
	}
}

// TestStrongLeaderMove: `mlproxy strong move` hands a strong table from eu
// to us while clients keep writing at eu: once it returns, us writes the
// table and eu refuses naming us; every write eu acknowledged reached
// every region, and the table converges.
func TestStrongLeaderMove(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startCluster(t, cluster.Options{Setup: ledgerSetup, Tables: ledgerTables})
	eu, us, ap := c.Regions[0], c.Regions[1], c.Regions[2]
	euDB := openProxy(t, eu, 2)
	if _, err := euDB.ExecContext(ctx, "INSERT INTO accounts VALUES (1, 0)"); err != nil {
		t.Fatal(err)
	}
	// A client at eu adds 1 until refused, counting what was acknowledged.
	var acked atomic.Int64
	done := make(chan error, 1)
	go func() {
		for {
			_, err := euDB.ExecContext(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = 1")
			if err != nil {
				var me *mysql.MySQLError
				if errors.As(err, &me) && me.Number == 1644 {
					done <- nil
				} else {
					done <- err
				}
				return
			}
			acked.Add(1)
		}
	}()
	time.Sleep(time.Second)
	// No --to: the first of its standby list, us.
	out, err := c.Command(ctx, "strong", "move", "app.accounts", "-c", eu.ConfigPath, "-c", us.ConfigPath, "-c", ap.ConfigPath)
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("strong move: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the writer at eu: %v; want it refused once the move began", err)
	}
	if !strings.Contains(string(out), "moving to us, its first standby") || !strings.Contains(string(out), "region us leads it") {
		t.Fatalf("strong move printed:\n%s", out)
	}
	if _, err := openProxy(t, us, 1).ExecContext(ctx, "UPDATE accounts SET balance = balance + 1000 WHERE id = 1"); err != nil {
		t.Fatalf("a write at the new leader us: %v", err)
	}
	_, err = euDB.ExecContext(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = 1")
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1644 || !strings.Contains(me.Message, "leader region us") {
		t.Fatalf("a write at the old leader eu after the move: %v; want ERR 1644 naming us", err)
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	if err := c.WaitApplied(wctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitConverged(wctx, map[string]string{"app.accounts": "id"}, "*"); err != nil {
		t.Fatal(err)
	}
	var bal int64
	if err := openDirect(t, ap).QueryRowContext(ctx, "SELECT balance FROM app.accounts WHERE id = 1").Scan(&bal); err != nil {
		t.Fatal(err)
	}
	if bal != acked.Load()+1000 {
		t.Errorf("balance %d in ap; the acknowledged writes give %d", bal, acked.Load()+1000)
	}
}
