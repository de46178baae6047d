package chaos

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// Setup is the schema every region starts with; Tables its rules.
//
//   - events is append-only: every transaction the workload makes inserts
//     one row with a unique id, so whether a transaction whose COMMIT got
//     no answer committed can be read from the data at the end.
//   - counters merges hits by delta (rule counter).
//   - kv takes upserts, updates and deletes under lww.
//   - hw takes upserts that only raise top, under rule max.
const Setup = `
CREATE DATABASE app;
CREATE TABLE app.events (id BIGINT PRIMARY KEY, region SMALLINT NOT NULL, op VARCHAR(8) NOT NULL);
CREATE TABLE app.counters (id INT PRIMARY KEY, hits BIGINT NOT NULL DEFAULT 0);
CREATE TABLE app.kv (k INT PRIMARY KEY, v VARCHAR(32) NOT NULL);
CREATE TABLE app.hw (k INT PRIMARY KEY, top BIGINT NOT NULL, v VARCHAR(32) NOT NULL);
`

// Tables is the YAML under tables: for Setup.
const Tables = `  - schema: app
    table: events
    rule: lww
  - schema: app
    table: counters
    rule: counter
    columns: [hits]
  - schema: app
    table: kv
    rule: lww
  - schema: app
    table: hw
    rule: max
    columns: [top]`

// Key spaces: few keys, so concurrent writes to one row are common.
const (
	counterRows = 4
	kvKeys      = 12
	hwKeys      = 8
)

// Outcome is what the client learnt of a transaction.
type Outcome uint8

const (
	Acked   Outcome = iota // COMMIT returned OK
	Refused                // a statement was refused for the region's clock (error mentions "clock")
	Failed                 // another error before COMMIT: rolled back
	InDoubt                // COMMIT sent, no answer: decided from the data at the end
)

// op is the second statement of a transaction (the first inserts into
// events).
type op uint8

const (
	opCounter op = iota // counters.hits += delta
	opKVUpsert
	opKVUpdate
	opKVDelete
	opRaise      // hw.top = GREATEST(top, val)
	opCounterAll // every counters row += delta, in one statement (one row event, several rows)
)

func (o op) String() string {
	return [...]string{"counter", "kv-ins", "kv-upd", "kv-del", "raise", "ctr-all"}[o]
}

// Txn is one transaction the workload made, as the client saw it.
type Txn struct {
	ID      int64 // events.id
	Region  int   // index
	Op      op
	Key     int
	Delta   int64 // counter increment, or the raised value
	Changed bool  // the write statement changed a row (kv and hw)
	// Stamp and Origin are the kv row's (or tombstone's) _mlr_hlc and
	// _mlr_origin, read back inside the transaction before COMMIT.
	Stamp   uint64
	Origin  uint16
	Outcome Outcome
	Err     string
}

// Ledger collects every transaction of a schedule.
type Ledger struct {
	mu   sync.Mutex
	txns []Txn
}

func (l *Ledger) add(t Txn) { l.mu.Lock(); l.txns = append(l.txns, t); l.mu.Unlock() }

// Txns returns a copy of what was recorded.
func (l *Ledger) Txns() []Txn {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Txn(nil), l.txns...)
}

// SeedCounters inserts the counter rows through region r's proxy (once, in
// one region: they replicate).
func SeedCounters(ctx context.Context, r *cluster.Region) error {
	db, err := sql.Open("mysql", r.DSN("app"))
	if err != nil {
		return err
	}
	defer db.Close()
	for id := 1; id <= counterRows; id++ {
		if _, err := db.ExecContext(ctx, "INSERT INTO counters (id, hits) VALUES (?, 0)", id); err != nil {
			return fmt.Errorf("seed counter %d: %w", id, err)
		}
	}
	return nil
}

// txnTimeout bounds one transaction: a frozen process must not hold a
// writer past the heal.
const txnTimeout = 10 * time.Second

// Writer runs transactions through one region's proxy until stop is
// closed.
type Writer struct {
	Region *cluster.Region
	Index  int // region index
	Worker int
	Seed   uint64
	Ledger *Ledger
}

func (w *Writer) dsn() (string, error) {
	cfg, err := mysql.ParseDSN(w.Region.DSN("app"))
	if err != nil {
		return "", err
	}
	cfg.Timeout = 3 * time.Second
	cfg.ReadTimeout = txnTimeout
	cfg.WriteTimeout = txnTimeout
	return cfg.FormatDSN(), nil
}

// Run writes until stop is closed.
func (w *Writer) Run(stop <-chan struct{}) error {
	dsn, err := w.dsn()
	if err != nil {
		return err
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	rng := rand.New(rand.NewPCG(w.Seed, uint64(w.Index)<<8|uint64(w.Worker)))
	for seq := int64(0); ; seq++ {
		select {
		case <-stop:
			return nil
		default:
		}
		t := Txn{ID: int64(w.Index+1)*1_000_000_000 + int64(w.Worker)*10_000_000 + seq, Region: w.Index}
		switch x := rng.IntN(20); {
		case x < 1:
			t.Op, t.Delta = opCounterAll, 1+rng.Int64N(5)
		case x < 8:
			t.Op, t.Key, t.Delta = opCounter, 1+rng.IntN(counterRows), 1+rng.Int64N(5)
		case x < 11:
			t.Op, t.Key = opKVUpsert, 1+rng.IntN(kvKeys)
		case x < 14:
			t.Op, t.Key = opKVUpdate, 1+rng.IntN(kvKeys)
		case x < 16:
			t.Op, t.Key = opKVDelete, 1+rng.IntN(kvKeys)
		default:
			t.Op, t.Key, t.Delta = opRaise, 1+rng.IntN(hwKeys), 1+rng.Int64N(1_000_000)
		}
		w.do(db, &t)
		w.Ledger.add(t)
		if t.Outcome != Acked {
			// The region is down or fenced: do not spin.
			select {
			case <-stop:
				return nil
			case <-time.After(time.Duration(50+rng.IntN(100)) * time.Millisecond):
			}
		}
	}
}

// do runs t and sets its outcome.
func (w *Writer) do(db *sql.DB, t *Txn) {
	ctx, cancel := context.WithTimeout(context.Background(), txnTimeout)
	defer cancel()
	fail := func(err error) {
		t.Err = err.Error()
		t.Outcome = Failed
		if strings.Contains(strings.ToLower(t.Err), "clock") {
			t.Outcome = Refused
		}
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		fail(err)
		return
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "INSERT INTO events (id, region, op) VALUES (?, ?, ?)", t.ID, w.Index, t.Op.String()); err != nil {
		fail(err)
		return
	}
	v := fmt.Sprint(t.ID)
	var res sql.Result
	switch t.Op {
	case opCounter:
		res, err = tx.ExecContext(ctx, "UPDATE counters SET hits = hits + ? WHERE id = ?", t.Delta, t.Key)
	case opKVUpsert:
		res, err = tx.ExecContext(ctx, "INSERT INTO kv (k, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)", t.Key, v)
	case opKVUpdate:
		res, err = tx.ExecContext(ctx, "UPDATE kv SET v = ? WHERE k = ?", v, t.Key)
	case opKVDelete:
		res, err = tx.ExecContext(ctx, "DELETE FROM kv WHERE k = ?", t.Key)
	case opCounterAll:
		res, err = tx.ExecContext(ctx, "UPDATE counters SET hits = hits + ?", t.Delta)
	case opRaise:
		res, err = tx.ExecContext(ctx, "INSERT INTO hw (k, top, v) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE top = GREATEST(top, VALUES(top)), v = VALUES(v)", t.Key, t.Delta, v)
	}
	if err != nil {
		fail(err)
		return
	}
	n, _ := res.RowsAffected()
	t.Changed = n > 0
	if (t.Op == opCounter && n != 1) || (t.Op == opCounterAll && n != counterRows) {
		fail(fmt.Errorf("%d counter rows changed", n))
		return
	}
	if t.Changed && (t.Op == opKVUpsert || t.Op == opKVUpdate || t.Op == opKVDelete) {
		q := "SELECT _mlr_hlc, _mlr_origin FROM kv WHERE k = ?"
		if t.Op == opKVDelete {
			q = "SELECT _mlr_hlc, _mlr_origin FROM mlr.`app.kv` WHERE k = ?"
		}
		if err := tx.QueryRowContext(ctx, q, t.Key).Scan(&t.Stamp, &t.Origin); err != nil {
			fail(fmt.Errorf("read back stamp: %w", err))
			return
		}
	}
	if err := tx.Commit(); err != nil {
		t.Err = err.Error()
		// No answer, or an answer we cannot trust to mean "rolled
		// back": the data decides.
		t.Outcome = InDoubt
		return
	}
	t.Outcome = Acked
}
