package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// benchHomes measures home regions and forwarding: single-row upserts by
// concurrent clients of an application account, through eu's proxy, into
//
//   - app.plain: replicated, no home (the stamped write of the speed issue);
//   - app.users for keys homed in eu (the proxy parses the keys, the
//     triggers check the home);
//   - app.users for keys homed in us (forwarded to us's proxy, over TLS);
//
// and through us's proxy for keys homed there (what the forwarded write
// costs at home). Interleaved runs; medians of ops/s and latency.
func benchHomes(ctx context.Context, bin string, dur time.Duration, runs int, threads []int) error {
	fmt.Println("\n== home regions and forwarding: single-row upserts (app account, prepared off), through eu's proxy and us's")
	c, err := cluster.Start(ctx, cluster.Options{Bin: bin, Names: []string{"eu", "us"}, Forward: true,
		Setup: `CREATE DATABASE app;
CREATE TABLE app.users (user_id INT PRIMARY KEY, n INT NOT NULL);
CREATE TABLE app.plain (user_id INT PRIMARY KEY, n INT NOT NULL);
CREATE USER app@'%' IDENTIFIED BY 'app-secret'; GRANT ALL ON app.* TO app@'%';`,
		Tables: `  - schema: app
    table: plain
  - schema: app
    table: users
    home:
      column: user_id
      list:
        - {region: eu, from: 1, to: 1000000}
        - {region: us, from: 1000001, to: 2000000}
      elsewhere: forward`})
	if err != nil {
		return err
	}
	defer c.Close()
	open := func(r *cluster.Region, conns int) (*sql.DB, error) {
		mc, err := mysql.ParseDSN(r.DSN("app"))
		if err != nil {
			return nil, err
		}
		mc.User, mc.Passwd, mc.InterpolateParams = "app", "app-secret", true
		db, err := sql.Open("mysql", mc.FormatDSN())
		if err == nil {
			db.SetMaxOpenConns(conns)
			db.SetMaxIdleConns(conns)
		}
		return db, err
	}
	type variant struct {
		name  string
		r     *cluster.Region
		table string
		base  int
	}
	variants := []variant{
		{"eu: no home", c.Regions[0], "plain", 1},
		{"eu: homed in eu", c.Regions[0], "users", 1},
		{"eu: forwarded to us", c.Regions[0], "users", 1000001},
		{"us: homed in us", c.Regions[1], "users", 1000001},
	}
	fmt.Printf("%-8s", "threads")
	for _, v := range variants {
		fmt.Printf(" %24s", v.name)
	}
	fmt.Printf(" | %14s %14s\n", "homed / none", "fwd / at home")
	for _, th := range threads {
		ops := map[string][]float64{}
		lat := map[string][]float64{}
		for range runs {
			for _, v := range variants {
				db, err := open(v.r, th)
				if err != nil {
					return err
				}
				o, p50, err := upserts(ctx, db, v.table, v.base, th, dur)
				db.Close()
				if err != nil {
					return fmt.Errorf("%s: %w", v.name, err)
				}
				ops[v.name], lat[v.name] = append(ops[v.name], o), append(lat[v.name], p50)
			}
		}
		fmt.Printf("%-8d", th)
		for _, v := range variants {
			fmt.Printf(" %13.0f/s %6.2fms", med(ops[v.name]), med(lat[v.name]))
		}
		fmt.Printf(" | %13.2fx %13.2fx\n", med(ops[variants[1].name])/med(ops[variants[0].name]), med(ops[variants[2].name])/med(ops[variants[3].name]))
	}
	fmt.Printf("upserts per second and median latency, medians of %d interleaved runs of %s; both regions' proxies and servers share this machine (no network between regions)\n", runs, dur)
	return nil
}

// upserts runs INSERT ... ON DUPLICATE KEY UPDATE on random keys from base
// on threads connections of db for dur: ops per second and the median
// latency in ms.
func upserts(ctx context.Context, db *sql.DB, table string, base, threads int, dur time.Duration) (float64, float64, error) {
	var mu sync.Mutex
	var lats []float64
	var firstErr error
	var wg sync.WaitGroup
	stop := time.Now().Add(dur)
	for w := range threads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(base)))
			var mine []float64
			for time.Now().Before(stop) && ctx.Err() == nil {
				t0 := time.Now()
				_, err := db.ExecContext(ctx, "INSERT INTO "+table+" (user_id, n) VALUES (?, 1) ON DUPLICATE KEY UPDATE n = n + 1", base+rng.IntN(100000))
				if err != nil {
					var me *mysql.MySQLError
					if errors.As(err, &me) && (me.Number == 1213 || me.Number == 1205) {
						continue
					}
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				mine = append(mine, float64(time.Since(t0).Microseconds())/1000)
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, 0, firstErr
	}
	return float64(len(lats)) / dur.Seconds(), med(lats), nil
}

func med(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
