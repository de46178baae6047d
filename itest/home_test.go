package itest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// homeTables homes app.users by user_id: eu 1..1000, us 1001..2000, ap
// 2001..3000; app.kv replicates without a home.
const homeTables = appTables + `
  - schema: app
    table: users
    rule: lww
    home:
      column: user_id
      list:
        - {region: eu, from: 1, to: 1000}
        - {region: us, from: 1001, to: 2000}
        - {region: ap, from: 2001, to: 3000}`

const homeSetup = appSetup + `
CREATE TABLE app.users (user_id INT PRIMARY KEY, name VARCHAR(32) NOT NULL, visits INT NOT NULL DEFAULT 0);
CREATE PROCEDURE app.add_user(IN id INT) BEGIN INSERT INTO app.users (user_id, name) VALUES (id, 'via procedure'); END;
`

// TestHomeRegions: three regions, users homed by id range. A write for a
// user homed elsewhere gets an error naming the home region and its proxy,
// whether the proxy sees the key (a statement, a prepared statement) or
// not (a procedure, a session straight to the server): nothing is written
// anywhere. Under a mixed load with every write routed to its home, the
// regions converge and no region logs a conflict.
func TestHomeRegions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := startCluster(t, cluster.Options{Setup: homeSetup, Tables: homeTables})
	eu, us := c.Regions[0], c.Regions[1]
	euDB := openProxy(t, eu, 4)

	refused := func(err error, what string) {
		t.Helper()
		var me *mysql.MySQLError
		if !errors.As(err, &me) || me.Number != 1644 {
			t.Fatalf("%s: want ERR 1644 naming the home region, got %v", what, err)
		}
		for _, want := range []string{"homed in region us", "proxy " + us.ProxyAddr} {
			if !strings.Contains(me.Message, want) {
				t.Errorf("%s: error %q does not name %q", what, me.Message, want)
			}
		}
	}
	_, err := euDB.ExecContext(ctx, "INSERT INTO users (user_id, name) VALUES (1500, 'misrouted')")
	refused(err, "insert through eu's proxy")
	_, err = euDB.ExecContext(ctx, "UPDATE users SET name = ? WHERE user_id = ?", "x", 1501)
	refused(err, "prepared update through eu's proxy")
	_, err = euDB.ExecContext(ctx, "CALL add_user(1600)")
	refused(err, "a procedure through eu's proxy (the triggers check)")
	_, err = openDirect(t, eu).ExecContext(ctx, "INSERT INTO users (user_id, name) VALUES (1700, 'around the proxy')")
	refused(err, "a session straight to eu's server")
	if _, err := euDB.ExecContext(ctx, "CALL add_user(5)"); err != nil {
		t.Fatalf("a procedure writing a user homed here: %v", err)
	}

	// The load: each region writes only users homed there.
	const perRegion = 40
	var wg sync.WaitGroup
	var mu sync.Mutex
	var loadErrs []error
	stop := time.Now().Add(soak(6 * time.Second))
	for i, r := range c.Regions {
		db := openProxy(t, r, 4)
		base := 1000*i + 1
		for w := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(i), uint64(w)))
				for time.Now().Before(stop) && ctx.Err() == nil {
					id := base + rng.IntN(perRegion)
					var err error
					switch rng.IntN(4) {
					case 0:
						_, err = db.ExecContext(ctx, "INSERT INTO users (user_id, name) VALUES (?, ?) ON DUPLICATE KEY UPDATE visits = visits + 1", id, r.Name)
					case 1:
						_, err = db.ExecContext(ctx, fmt.Sprintf("UPDATE users SET visits = visits + 1, name = '%s-%d' WHERE user_id = %d", r.Name, w, id))
					case 2:
						_, err = db.ExecContext(ctx, "DELETE FROM users WHERE user_id IN (?, ?)", id, base+rng.IntN(perRegion))
					default:
						_, err = db.ExecContext(ctx, "REPLACE INTO users (user_id, name, visits) VALUES (?, 'replaced', 0)", id)
					}
					if err != nil && !isRetryable(err) {
						mu.Lock()
						loadErrs = append(loadErrs, fmt.Errorf("region %s: %w", r.Name, err))
						mu.Unlock()
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	if len(loadErrs) > 0 {
		t.Fatalf("writes routed home failed: %v", errors.Join(loadErrs...))
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	if err := c.WaitApplied(wctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitConverged(wctx, map[string]string{"app.users": "user_id"}, "user_id, name, visits"); err != nil {
		t.Fatal(err)
	}
	for _, r := range c.Regions {
		db := openDirect(t, r)
		var conflicts, misrouted, users int
		if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM mlr.conflicts").Scan(&conflicts); err != nil {
			t.Fatal(err)
		}
		if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM app.users WHERE user_id IN (1500, 1501, 1600, 1700)").Scan(&misrouted); err != nil {
			t.Fatal(err)
		}
		if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM app.users").Scan(&users); err != nil {
			t.Fatal(err)
		}
		if conflicts != 0 {
			t.Errorf("region %s logged %d conflicts; with every write routed home there are none", r.Name, conflicts)
		}
		if misrouted != 0 {
			t.Errorf("region %s holds %d rows of refused writes", r.Name, misrouted)
		}
		t.Logf("region %s: %d users, %d conflicts", r.Name, users, conflicts)
	}
}

// isRetryable is a deadlock or lock wait timeout, which a client retries.
func isRetryable(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == 1213 || me.Number == 1205)
}
