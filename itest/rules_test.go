package itest

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// The rules tests: one table per conflict rule, all written at once by
// random concurrent clients through every region's proxy, must end
// identical in every region (manual: except keys with a pending conflict),
// the counter must equal the sum of the acknowledged deltas, and the
// binlogs must stop growing.

const (
	ruleKeys   = 10   // keys per small table
	ownKeyBase = 1000 // manual: region r also writes keys r*ownKeyBase+1..+ruleKeys/2 alone
	wideRows   = 4000 // key space of the wide table
	widePad    = 300  // bytes of padding per wide row
	// Parallel apply (off by default) is exercised here with every rule;
	// the ring and star runs apply serially (the default).
	ruleRelay       = "apply:\n  relay_bytes: 1048576\n  workers: 4\n"
	ruleRelaySerial = "apply:\n  relay_bytes: 1048576\n"
)

// ruleTable is one small table of the rules schema and its rule.
type ruleTable struct {
	name string // in schema rt
	rule string // YAML after "rule: "
}

var (
	tblLWW  = ruleTable{"lww", "lww"}
	tblFWW  = ruleTable{"fww", "first-writer-wins"}
	tblPrio = ruleTable{"prio", "origin-priority\n    priority: [us, eu, ap]"}
	tblCnt  = ruleTable{"cnt", "counter\n    columns: [n]"}
	tblMax  = ruleTable{"mx", "max\n    columns: [n]"}
	tblMin  = ruleTable{"mn", "min\n    columns: [n]"}
	tblMan  = ruleTable{"man", "manual"}
)

const rulesSetup = `
CREATE DATABASE rt;
CREATE TABLE rt.lww  (k INT PRIMARY KEY, v VARCHAR(64) NOT NULL, n INT NOT NULL);
CREATE TABLE rt.fww  (k INT PRIMARY KEY, v VARCHAR(64) NOT NULL, n INT NOT NULL);
CREATE TABLE rt.prio (k INT PRIMARY KEY, v VARCHAR(64) NOT NULL, n INT NOT NULL);
CREATE TABLE rt.cnt  (k INT PRIMARY KEY, n BIGINT NOT NULL DEFAULT 0);
CREATE TABLE rt.mx   (k INT PRIMARY KEY, v VARCHAR(64) NOT NULL, n INT NOT NULL);
CREATE TABLE rt.mn   (k INT PRIMARY KEY, v VARCHAR(64) NOT NULL, n INT NOT NULL);
CREATE TABLE rt.man  (k INT PRIMARY KEY, v VARCHAR(64) NOT NULL, n INT NOT NULL);
CREATE TABLE rt.wide (id INT PRIMARY KEY, v VARCHAR(64) NOT NULL, n INT NOT NULL, pad VARCHAR(1024) NOT NULL);
`

// rulesWorkload is what one run writes: the small tables, and the wide
// table (written by big transactions that travel in pieces) under wideRule.
type rulesWorkload struct {
	small    []ruleTable
	wideRule string
}

func (w rulesWorkload) tablesYAML() string {
	var b strings.Builder
	for _, t := range w.small {
		fmt.Fprintf(&b, "  - schema: rt\n    table: %s\n    rule: %s\n", t.name, t.rule)
	}
	fmt.Fprintf(&b, "  - schema: rt\n    table: wide\n    rule: %s", w.wideRule)
	return b.String()
}

func (w rulesWorkload) has(name string) bool {
	for _, t := range w.small {
		if t.name == name {
			return true
		}
	}
	return false
}

// TestRulesConverge: three regions all-to-all, every rule at once.
func TestRulesConverge(t *testing.T) {
	runRules(t, cluster.Options{}, rulesWorkload{
		small:    []ruleTable{tblLWW, tblFWW, tblPrio, tblCnt, tblMax, tblMin, tblMan},
		wideRule: "lww",
	}, soak(30*time.Second), 3)
}

// TestRulesRing and TestRulesStar: the forwarding topologies, for the
// merging rule (counter) and the order-sensitive one (first-writer-wins),
// as long and as loaded as the all-to-all run, applied serially.
func TestRulesRing(t *testing.T) {
	runRules(t, cluster.Options{Topology: "ring", Extra: ruleRelaySerial}, rulesWorkload{
		small:    []ruleTable{tblCnt, tblFWW},
		wideRule: "first-writer-wins",
	}, soak(30*time.Second), 3)
}

func TestRulesStar(t *testing.T) {
	runRules(t, cluster.Options{Topology: "star", Hub: "eu", Extra: ruleRelaySerial}, rulesWorkload{
		small:    []ruleTable{tblCnt, tblFWW},
		wideRule: "first-writer-wins",
	}, soak(30*time.Second), 3)
}

func runRules(t *testing.T, opts cluster.Options, w rulesWorkload, dur time.Duration, conns int) {
	opts.Setup = rulesSetup
	opts.Tables = w.tablesYAML()
	if opts.Extra == "" {
		opts.Extra = ruleRelay
	}
	c := startCluster(t, opts)

	led := writeRules(t, c, w, conns, dur)
	t.Logf("%d transactions committed (%d of them big, %d multi-statement), %d rolled back; errors: %v",
		led.commits, led.big, led.multi, led.rollbacks, led.errSummary())
	if led.commits < 100 {
		t.Fatalf("only %d transactions committed in %v: the proxies are not taking writes; errors: %v", led.commits, dur, led.errSummary())
	}
	if led.big == 0 {
		t.Errorf("no big transaction committed; errors: %v", led.errSummary())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	if err := c.WaitApplied(ctx); err != nil {
		t.Errorf("after the writers stopped: %v", err)
	} else {
		t.Logf("every region applied everything %v after the writers stopped", time.Since(start).Round(100*time.Millisecond))
	}
	checkRuleTables(t, ctx, c, w)
	if w.has("cnt") {
		checkCounter(t, ctx, c, led)
	}
	logConflicts(t, ctx, c)
	var pieces float64
	for _, r := range c.Regions {
		pieces += metric(t, r, "mlproxy_binlog_txn_pieces_total")
	}
	if pieces == 0 {
		t.Errorf("no transaction was received in pieces: the big transactions did not exercise streaming (relay_bytes too large?)")
	}
	checkQuiet(t, ctx, c)
}

// ledger is what the writers know: counter deltas of committed
// transactions, per key, and counts.
type ledger struct {
	mu        sync.Mutex
	sum       map[int]int64 // rt.cnt key -> acknowledged delta
	doubt     map[int]int64 // deltas of commits whose outcome is unknown
	commits   int
	rollbacks int
	big       int
	multi     int
	errs      map[string]int
}

func (l *ledger) errSummary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) == 0 {
		return "none"
	}
	var out []string
	for e, n := range l.errs {
		out = append(out, fmt.Sprintf("%d× %s", n, e))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// stmt is one statement of a transaction; delta/cntKey are set for
// counter changes, counted only when the statement changed a row and the
// transaction committed.
type stmt struct {
	query  string
	args   []any
	cntKey int
	delta  int64
}

func writeRules(t *testing.T, c *cluster.Cluster, w rulesWorkload, conns int, dur time.Duration) *ledger {
	t.Helper()
	led := &ledger{sum: map[int]int64{}, doubt: map[int]int64{}, errs: map[string]int{}}
	until := time.Now().Add(dur)
	var wg sync.WaitGroup
	for _, r := range c.Regions {
		for j := 0; j < conns; j++ {
			// Half the connections use server-side prepared statements
			// (the driver's default), half interpolate on the client.
			db := openRules(t, r, j%2 == 1)
			wg.Add(1)
			go func(r *cluster.Region, j int) {
				defer wg.Done()
				ruleWriter(db, r, j, w, until, led)
			}(r, j)
		}
	}
	wg.Wait()
	return led
}

func openRules(t *testing.T, r *cluster.Region, interpolate bool) *sql.DB {
	t.Helper()
	cfg, err := mysql.ParseDSN(r.DSN("rt"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.InterpolateParams = interpolate
	db, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

// ruleWriter runs random transactions until the deadline; the transaction
// under way when it passes still finishes (a cancelled COMMIT would leave
// its counter deltas in doubt).
func ruleWriter(db *sql.DB, r *cluster.Region, worker int, w rulesWorkload, until time.Time, led *ledger) {
	rng := rand.New(rand.NewSource(int64(r.ID)*1000 + int64(worker)))
	nextBig := time.Now().Add(time.Duration(500+rng.Intn(2500)) * time.Millisecond)
	for i := 0; time.Now().Before(until); i++ {
		tag := fmt.Sprintf("%s-%d-%d", r.Name, worker, i)
		n := 1
		if rng.Intn(10) >= 6 {
			n = 2 + rng.Intn(4)
		}
		var stmts []stmt
		for j := 0; j < n; j++ {
			stmts = append(stmts, randomRuleStmt(rng, w, int(r.ID), fmt.Sprintf("%s.%d", tag, j)))
		}
		big := worker == 0 && time.Now().After(nextBig)
		if big {
			at := rng.Intn(len(stmts) + 1)
			stmts = append(stmts[:at], append([]stmt{bigStmt(rng, tag)}, stmts[at:]...)...)
			nextBig = time.Now().Add(time.Duration(2500+rng.Intn(2000)) * time.Millisecond)
		}
		autocommit := len(stmts) == 1 && rng.Intn(2) == 0
		deltas, err := runTxn(db, stmts, autocommit)
		led.mu.Lock()
		switch {
		case err == nil:
			led.commits++
			if big {
				led.big++
			}
			if len(stmts) > 1 {
				led.multi++
			}
			for k, d := range deltas {
				led.sum[k] += d
			}
		case errors.Is(err, errInDoubt):
			led.errs[errKind(err)]++
			for k, d := range deltas {
				led.doubt[k] += d
			}
		default:
			led.rollbacks++
			led.errs[errKind(err)]++
		}
		led.mu.Unlock()
		if err != nil && !errors.Is(err, errRolledBack) {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

var (
	errInDoubt    = errors.New("COMMIT failed without a server answer: outcome unknown")
	errRolledBack = errors.New("rolled back")
)

func errKind(err error) string {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return fmt.Sprintf("error %d", me.Number)
	}
	s := err.Error()
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}

// runTxn runs stmts in one transaction (or one autocommit statement) and
// returns the counter deltas that the transaction applied.
func runTxn(db *sql.DB, stmts []stmt, autocommit bool) (map[int]int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	deltas := map[int]int64{}
	applied := func(s stmt, res sql.Result) {
		if s.delta == 0 {
			return
		}
		if n, _ := res.RowsAffected(); n > 0 {
			deltas[s.cntKey] += s.delta
		}
	}
	if autocommit {
		s := stmts[0]
		res, err := db.ExecContext(ctx, s.query, s.args...)
		if err != nil {
			var me *mysql.MySQLError
			if !errors.As(err, &me) && s.delta != 0 {
				// No server answer: the statement may have committed.
				deltas[s.cntKey] += s.delta
				return deltas, fmt.Errorf("in doubt: %v: %w", err, errInDoubt)
			}
			return nil, err
		}
		applied(s, res)
		return deltas, nil
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	for _, s := range stmts {
		res, err := tx.ExecContext(ctx, s.query, s.args...)
		if err != nil {
			return nil, err
		}
		applied(s, res)
	}
	if err := tx.Commit(); err != nil {
		var me *mysql.MySQLError
		if errors.As(err, &me) {
			return nil, err
		}
		return deltas, fmt.Errorf("in doubt: %v: %w", err, errInDoubt)
	}
	return deltas, nil
}

// randomRuleStmt is one random write to a random small table: upsert,
// update or delete, or for the counter an increment or decrement.
func randomRuleStmt(rng *rand.Rand, w rulesWorkload, region int, tag string) stmt {
	t := w.small[rng.Intn(len(w.small))]
	k := 1 + rng.Intn(ruleKeys)
	if t.name == "man" && rng.Intn(3) == 0 {
		// Keys only this region writes: never in conflict, so they must
		// converge although the shared keys of a manual table need not.
		k = ownKeyBase*region + 1 + rng.Intn(ruleKeys/2)
	}
	if t.name == "cnt" {
		d := int64(1 + rng.Intn(9))
		if rng.Intn(3) == 0 {
			d = -d
		}
		if rng.Intn(2) == 0 {
			return stmt{query: "INSERT INTO cnt (k, n) VALUES (?, ?) ON DUPLICATE KEY UPDATE n = n + VALUES(n)", args: []any{k, d}, cntKey: k, delta: d}
		}
		return stmt{query: "UPDATE cnt SET n = n + ? WHERE k = ?", args: []any{d, k}, cntKey: k, delta: d}
	}
	n := rng.Intn(1000)
	switch op := rng.Intn(10); {
	case op < 4:
		return stmt{query: "INSERT INTO " + t.name + " (k, v, n) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v), n = VALUES(n)", args: []any{k, tag, n}}
	case op < 8:
		return stmt{query: "UPDATE " + t.name + " SET v = ?, n = ? WHERE k = ?", args: []any{tag, n, k}}
	default:
		return stmt{query: "DELETE FROM " + t.name + " WHERE k = ?", args: []any{k}}
	}
}

// bigStmt changes a few thousand rows of the wide table at once: far more
// than one tailer piece (64 KiB with the small relay).
func bigStmt(rng *rand.Rand, tag string) stmt {
	size := 1500 + rng.Intn(1500)
	lo := 1 + rng.Intn(wideRows-size)
	hi := lo + size - 1
	fill := string(rune('a' + rng.Intn(26)))
	switch op := rng.Intn(10); {
	case op < 5:
		return stmt{query: fmt.Sprintf("INSERT INTO wide (id, v, n, pad) SELECT seq, ?, seq, REPEAT(?, %d) FROM seq_%d_to_%d ON DUPLICATE KEY UPDATE v = VALUES(v), n = n + 1, pad = VALUES(pad)", widePad, lo, hi), args: []any{tag, fill}}
	case op < 8:
		return stmt{query: fmt.Sprintf("UPDATE wide SET v = ?, n = n + 1, pad = REPEAT(?, %d) WHERE id BETWEEN ? AND ?", widePad), args: []any{tag, fill, lo, hi}}
	default:
		return stmt{query: "DELETE FROM wide WHERE id BETWEEN ? AND ?", args: []any{lo, lo + size/2}}
	}
}

// regionRow is one table row as a region holds it.
type regionRow struct {
	user  string // user columns, compared
	stamp string // _mlr_hlc/_mlr_origin, shown only
}

// readTable returns key -> row of rt.<table> on region r.
func readTable(ctx context.Context, r *cluster.Region, table string) (map[int64]regionRow, error) {
	key, cols := "k", "v, n"
	switch table {
	case "cnt":
		cols = "n"
	case "wide":
		key, cols = "id", "v, n, LEFT(pad, 1) AS pad1, LENGTH(pad) AS padlen, LEFT(MD5(pad), 8) AS padmd5"
	}
	db, err := r.Direct("rt")
	if err != nil {
		return nil, err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, fmt.Sprintf("SELECT %s, %s, _mlr_hlc, _mlr_origin FROM %s", key, cols, table))
	if err != nil {
		return nil, fmt.Errorf("region %s: read rt.%s: %w", r.Name, table, err)
	}
	defer rows.Close()
	names, _ := rows.Columns()
	out := map[int64]regionRow{}
	vals := make([]sql.NullString, len(names))
	ptrs := make([]any, len(names))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		var k int64
		fmt.Sscan(vals[0].String, &k)
		var user []string
		for i := 1; i < len(vals)-2; i++ {
			s := "NULL"
			if vals[i].Valid {
				s = vals[i].String
			}
			user = append(user, names[i]+"="+s)
		}
		out[k] = regionRow{
			user:  strings.Join(user, " "),
			stamp: fmt.Sprintf("hlc %s origin %s", vals[len(vals)-2].String, vals[len(vals)-1].String),
		}
	}
	return out, rows.Err()
}

// pendingKeys returns the keys of rt.<table> with an unresolved pending
// conflict in any region.
func pendingKeys(ctx context.Context, c *cluster.Cluster, table string) (map[int64]bool, error) {
	out := map[int64]bool{}
	for _, r := range c.Regions {
		db, err := r.Direct("")
		if err != nil {
			return nil, err
		}
		rows, err := db.QueryContext(ctx, "SELECT DISTINCT pk FROM mlr.conflicts WHERE db = 'rt' AND tbl = ? AND outcome = 'pending' AND resolved_at IS NULL", table)
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("region %s: mlr.conflicts: %w", r.Name, err)
		}
		for rows.Next() {
			var pk string
			if err := rows.Scan(&pk); err != nil {
				rows.Close()
				db.Close()
				return nil, err
			}
			var vals []json.Number
			d := json.NewDecoder(strings.NewReader(pk))
			d.UseNumber()
			if err := d.Decode(&vals); err != nil || len(vals) != 1 {
				rows.Close()
				db.Close()
				return nil, fmt.Errorf("region %s: mlr.conflicts pk %q is not a one-element JSON array: %v", r.Name, pk, err)
			}
			k, err := vals[0].Int64()
			if err != nil {
				// A key stored as a JSON string.
				fmt.Sscan(strings.Trim(vals[0].String(), `"`), &k)
			}
			out[k] = true
		}
		rows.Close()
		db.Close()
	}
	return out, nil
}

// checkRuleTables: every table identical row by row (user columns) in
// every region; for manual, keys with a pending conflict are skipped.
func checkRuleTables(t *testing.T, ctx context.Context, c *cluster.Cluster, w rulesWorkload) {
	t.Helper()
	tables := []string{}
	rules := map[string]string{"wide": w.wideRule}
	for _, tt := range w.small {
		tables = append(tables, tt.name)
		rules[tt.name] = strings.SplitN(tt.rule, "\n", 2)[0]
	}
	tables = append(tables, "wide")
	for _, table := range tables {
		var skip map[int64]bool
		if rules[table] == "manual" {
			var err error
			if skip, err = pendingKeys(ctx, c, table); err != nil {
				t.Fatal(err)
			}
		}
		per := make([]map[int64]regionRow, len(c.Regions))
		keys := map[int64]bool{}
		for i, r := range c.Regions {
			m, err := readTable(ctx, r, table)
			if err != nil {
				t.Fatal(err)
			}
			per[i] = m
			for k := range m {
				keys[k] = true
			}
		}
		var sorted []int64
		for k := range keys {
			sorted = append(sorted, k)
		}
		sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
		var diffs []int64
		compared := 0
		for _, k := range sorted {
			if skip[k] {
				continue
			}
			compared++
			first, ok0 := per[0][k]
			for i := 1; i < len(per); i++ {
				g, ok := per[i][k]
				if ok != ok0 || g.user != first.user {
					diffs = append(diffs, k)
					break
				}
			}
		}
		if rules[table] == "manual" {
			t.Logf("rt.%s (manual): %d keys compared, %d skipped for a pending conflict", table, compared, len(skip))
		}
		if len(diffs) == 0 {
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "rt.%s (rule %s): %d of %d keys differ between regions:\n", table, rules[table], len(diffs), compared)
		for n, k := range diffs {
			if n == 12 {
				fmt.Fprintf(&b, "  ... %d more keys\n", len(diffs)-n)
				break
			}
			fmt.Fprintf(&b, "  key %d:\n", k)
			for i, r := range c.Regions {
				if row, ok := per[i][k]; ok {
					fmt.Fprintf(&b, "    %-3s %s  (%s)\n", r.Name, row.user, row.stamp)
				} else {
					fmt.Fprintf(&b, "    %-3s absent%s\n", r.Name, tombstone(ctx, r, table, k))
				}
			}
			if n < 3 {
				b.WriteString(conflictsFor(ctx, c, table, k))
			}
		}
		t.Error(b.String())
	}
}

// tombstone describes the key's tombstone in region r, if any.
func tombstone(ctx context.Context, r *cluster.Region, table string, k int64) string {
	db, err := r.Direct("")
	if err != nil {
		return ""
	}
	defer db.Close()
	key := "k"
	if table == "wide" {
		key = "id"
	}
	var h, o string
	if err := db.QueryRowContext(ctx, fmt.Sprintf("SELECT _mlr_hlc, _mlr_origin FROM mlr.`rt.%s` WHERE %s = ?", table, key), k).Scan(&h, &o); err != nil {
		return " (no tombstone)"
	}
	return fmt.Sprintf(" (tombstone hlc %s origin %s)", h, o)
}

// conflictsFor lists the last conflicts each region logged for one key.
func conflictsFor(ctx context.Context, c *cluster.Cluster, table string, k int64) string {
	var b strings.Builder
	for _, r := range c.Regions {
		db, err := r.Direct("")
		if err != nil {
			continue
		}
		rows, err := db.QueryContext(ctx, `SELECT peer_id, outcome, IFNULL(local_hlc, '-'), IFNULL(local_origin, '-'), remote_hlc, remote_origin,
			IFNULL(local_row, 'absent'), IFNULL(remote_row, 'absent') FROM mlr.conflicts
			WHERE db = 'rt' AND tbl = ? AND JSON_EXTRACT(pk, '$[0]') = ? ORDER BY id DESC LIMIT 4`, table, k)
		if err != nil {
			db.Close()
			fmt.Fprintf(&b, "      %s: conflicts: %v\n", r.Name, err)
			continue
		}
		for rows.Next() {
			var peer, outcome, lh, lo, rh, ro, lr, rr string
			if rows.Scan(&peer, &outcome, &lh, &lo, &rh, &ro, &lr, &rr) == nil {
				if len(lr) > 120 {
					lr = lr[:120] + "…"
				}
				if len(rr) > 120 {
					rr = rr[:120] + "…"
				}
				fmt.Fprintf(&b, "      %s logged (from peer %s) %s: local %s/%s %s, remote %s/%s %s\n", r.Name, peer, outcome, lh, lo, lr, rh, ro, rr)
			}
		}
		rows.Close()
		db.Close()
	}
	return b.String()
}

// checkCounter: every region's counter equals the acknowledged deltas,
// per key and in total.
func checkCounter(t *testing.T, ctx context.Context, c *cluster.Cluster, led *ledger) {
	t.Helper()
	var want int64
	for _, d := range led.sum {
		want += d
	}
	doubt := ""
	if len(led.doubt) > 0 {
		doubt = fmt.Sprintf(" (commits in doubt carried deltas %v: they may or may not count)", led.doubt)
	}
	per := make([]map[int64]int64, len(c.Regions))
	for i, r := range c.Regions {
		db, err := r.Direct("rt")
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var total sql.NullInt64
		if err := db.QueryRowContext(ctx, "SELECT SUM(n) FROM cnt").Scan(&total); err != nil {
			t.Fatal(err)
		}
		if total.Int64 != want {
			t.Errorf("region %s: SUM(rt.cnt.n) = %d, but the acknowledged deltas sum to %d%s", r.Name, total.Int64, want, doubt)
		}
		per[i] = map[int64]int64{}
		rows, err := db.QueryContext(ctx, "SELECT k, n FROM cnt")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var k, n int64
			if err := rows.Scan(&k, &n); err != nil {
				t.Fatal(err)
			}
			per[i][k] = n
		}
		rows.Close()
	}
	for k := 1; k <= ruleKeys; k++ {
		bad := false
		for i := range c.Regions {
			if per[i][int64(k)] != led.sum[k] {
				bad = true
			}
		}
		if !bad {
			continue
		}
		var got []string
		for i, r := range c.Regions {
			got = append(got, fmt.Sprintf("%s=%d", r.Name, per[i][int64(k)]))
		}
		t.Errorf("rt.cnt key %d: acknowledged deltas sum to %d, regions hold %s%s", k, led.sum[k], strings.Join(got, " "), doubt)
	}
}

// logConflicts logs how many conflicts each region resolved per table and
// outcome (a run without conflicts did not test the rules).
func logConflicts(t *testing.T, ctx context.Context, c *cluster.Cluster) {
	t.Helper()
	var b strings.Builder
	total := 0
	for _, r := range c.Regions {
		db, err := r.Direct("")
		if err != nil {
			t.Fatal(err)
		}
		rows, err := db.QueryContext(ctx, "SELECT tbl, outcome, COUNT(*) FROM mlr.conflicts WHERE db = 'rt' GROUP BY tbl, outcome ORDER BY tbl, outcome")
		if err != nil {
			db.Close()
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "  %s:", r.Name)
		for rows.Next() {
			var tbl, outcome string
			var n int
			if err := rows.Scan(&tbl, &outcome, &n); err != nil {
				t.Fatal(err)
			}
			total += n
			fmt.Fprintf(&b, " %s/%s=%d", tbl, outcome, n)
		}
		b.WriteString("\n")
		rows.Close()
		db.Close()
	}
	t.Logf("conflicts logged (table/outcome=count), %d in all:\n%s", total, b.String())
}

// checkQuiet: with no client writes, no region's binlog may grow (a change
// looping between regions would); on growth it shows what was logged.
func checkQuiet(t *testing.T, ctx context.Context, c *cluster.Cluster) {
	t.Helper()
	_, before, err := c.Lag(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	_, after, err := c.Lag(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range c.Regions {
		if before[i] == after[i] {
			continue
		}
		t.Errorf("region %s: binlog still growing with no client writes (%s -> %s): changes are looping; events logged meanwhile:\n%s", r.Name, before[i], after[i], binlogEvents(ctx, r, before[i]))
	}
}

// binlogEvents lists up to 30 binlog events from file:pos on region r.
func binlogEvents(ctx context.Context, r *cluster.Region, from string) string {
	file, pos, _ := strings.Cut(from, ":")
	db, err := r.Direct("")
	if err != nil {
		return err.Error()
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, fmt.Sprintf("SHOW BINLOG EVENTS IN '%s' FROM %s LIMIT 30", file, pos))
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var logName, evType, info string
		var p, serverID, end uint64
		if err := rows.Scan(&logName, &p, &evType, &serverID, &end, &info); err != nil {
			return b.String() + err.Error()
		}
		fmt.Fprintf(&b, "    %s:%d %s server %d %s\n", logName, p, evType, serverID, info)
	}
	return b.String()
}
