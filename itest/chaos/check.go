package chaos

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// check runs every check on the converged cluster; failures go to
// r.res.Problems.
func (r *run) check(ctx context.Context, txns []Txn) {
	res := r.res
	res.Txns = len(txns)
	for _, t := range txns {
		switch t.Outcome {
		case Acked:
			res.Acked++
		case Refused:
			res.Refused++
		case Failed:
			res.Failed++
		case InDoubt:
			res.InDoubt++
		}
	}
	if res.Acked < 10 {
		res.problem("only %d of %d transactions acknowledged: the regions were not taking writes", res.Acked, len(txns))
	}
	for i, reg := range r.c.Regions {
		r.checkRegion(ctx, reg, txns, i == 0)
	}
	r.checksum(ctx)
	r.checkQuiet(ctx)
	r.checkLogs()
	r.selfCheck(ctx, reg0(r), txns)
}

func reg0(r *run) *cluster.Region { return r.c.Regions[0] }

// selfCheck runs the data checks once more against a doctored ledger (an
// acknowledged transaction that never happened, a committed one marked as
// failed, a kv write with a stamp above the winner's, an increment
// counted twice) and requires each to be caught: checks that cannot fail
// prove nothing.
func (r *run) selfCheck(ctx context.Context, reg *cluster.Region, txns []Txn) {
	doctored := append([]Txn(nil), txns...)
	var maxID int64
	for _, t := range txns {
		maxID = max(maxID, t.ID)
	}
	want := []string{"acknowledged transaction"}
	doctored = append(doctored, Txn{ID: maxID + 1, Op: opCounter, Key: 1, Delta: 1, Outcome: Acked})
	for i, t := range doctored {
		if t.Outcome == Acked && t.Op == opRaise {
			doctored[i].Outcome = Failed
			want = append(want, "told it failed")
			break
		}
	}
	for i, t := range doctored {
		if t.Outcome == Acked && t.Changed && t.Op == opKVUpsert {
			doctored[i].Stamp = ^uint64(0)
			want = append(want, fmt.Sprintf("kv key %d", t.Key))
			break
		}
	}
	for _, t := range doctored {
		if t.Outcome == Acked && t.Op == opCounter && t.ID <= maxID {
			doctored = append(doctored, t)
			want = append(want, fmt.Sprintf("counters id %d", t.Key))
			break
		}
	}
	real := r.res
	r.res = &Result{}
	r.checkRegion(ctx, reg, doctored, false)
	caught := r.res.Problems
	r.res = real
	for _, w := range want {
		found := false
		for _, p := range caught {
			found = found || strings.Contains(p, w)
		}
		if !found {
			r.res.problem("self-check: a doctored ledger (%s) passed the data checks; they cannot fail", w)
		}
	}
}

// checkRegion compares one region's data with the ledger. In doubt
// transactions are decided by their events row (the first region's view
// counts: the regions are identical by now).
func (r *run) checkRegion(ctx context.Context, reg *cluster.Region, txns []Txn, count bool) {
	res := r.res
	db, err := reg.Direct("app")
	if err != nil {
		res.problem("region %s: %v", reg.Name, err)
		return
	}
	defer db.Close()
	events := map[int64]bool{}
	if err := scanRows(ctx, db, "SELECT id FROM events", func(rs *sql.Rows) error {
		var id int64
		err := rs.Scan(&id)
		events[id] = true
		return err
	}); err != nil {
		res.problem("region %s: %v", reg.Name, err)
		return
	}
	known := map[int64]bool{}
	var committed []Txn
	lost, phantom := 0, 0
	for _, t := range txns {
		known[t.ID] = true
		has := events[t.ID]
		switch t.Outcome {
		case Acked:
			if !has {
				lost++
				if lost <= 3 {
					res.problem("region %s: acknowledged transaction %d (%s key %d) missing", reg.Name, t.ID, t.Op, t.Key)
				}
			}
		case Refused, Failed:
			if has {
				phantom++
				if phantom <= 3 {
					res.problem("region %s: transaction %d (%s key %d) is present but its client was told it failed before COMMIT: %s", reg.Name, t.ID, t.Op, t.Key, t.Err)
				}
			}
		case InDoubt:
			if has && count {
				res.InDoubtCommitted++
			}
		}
		if has {
			committed = append(committed, t)
		}
	}
	invented := 0
	for id := range events {
		if !known[id] {
			invented++
		}
	}
	if invented > 0 {
		res.problem("region %s: %d events rows no client wrote", reg.Name, invented)
	}
	if count {
		res.Lost += lost
		res.Phantom += phantom
	}
	if lost > 3 {
		res.problem("region %s: %d acknowledged transactions missing in all", reg.Name, lost)
	}

	// counter: the exact sum of committed increments.
	want := map[int]int64{}
	for _, t := range committed {
		switch t.Op {
		case opCounter:
			want[t.Key] += t.Delta
		case opCounterAll:
			for id := 1; id <= counterRows; id++ {
				want[id] += t.Delta
			}
		}
	}
	if err := scanRows(ctx, db, "SELECT id, hits FROM counters", func(rs *sql.Rows) error {
		var id int
		var hits int64
		if err := rs.Scan(&id, &hits); err != nil {
			return err
		}
		if hits != want[id] {
			res.problem("region %s: counters id %d = %d, committed increments sum to %d", reg.Name, id, hits, want[id])
			if count {
				if hits > want[id] {
					res.Duplicated += int(hits - want[id])
				} else {
					res.Lost += int(want[id] - hits)
				}
			}
		}
		delete(want, id)
		return nil
	}); err != nil {
		res.problem("region %s: %v", reg.Name, err)
	}
	for id := range want {
		res.problem("region %s: counters row %d missing", reg.Name, id)
	}

	// kv under lww: per key the committed write with the highest
	// (stamp, origin) is what every region holds.
	win := map[int]Txn{}
	for _, t := range committed {
		if t.Changed && (t.Op == opKVUpsert || t.Op == opKVUpdate || t.Op == opKVDelete) {
			w, ok := win[t.Key]
			if !ok || t.Stamp > w.Stamp || (t.Stamp == w.Stamp && t.Origin > w.Origin) {
				win[t.Key] = t
			}
		}
	}
	got := map[int]bool{}
	if err := scanRows(ctx, db, "SELECT k, v, _mlr_hlc, _mlr_origin FROM kv", func(rs *sql.Rows) error {
		var k int
		var v string
		var stamp uint64
		var origin uint16
		if err := rs.Scan(&k, &v, &stamp, &origin); err != nil {
			return err
		}
		got[k] = true
		w, ok := win[k]
		switch {
		case !ok:
			res.problem("region %s: kv key %d present but no committed write made it", reg.Name, k)
		case w.Op == opKVDelete:
			res.problem("region %s: kv key %d holds %s (stamp %d origin %d); the winning write is the delete in %d (stamp %d origin %d)", reg.Name, k, v, stamp, origin, w.ID, w.Stamp, w.Origin)
		case v != fmt.Sprint(w.ID) || stamp != w.Stamp || origin != w.Origin:
			res.problem("region %s: kv key %d holds %s (stamp %d origin %d); want the write of %d (stamp %d origin %d)", reg.Name, k, v, stamp, origin, w.ID, w.Stamp, w.Origin)
		}
		return nil
	}); err != nil {
		res.problem("region %s: %v", reg.Name, err)
	}
	for k, w := range win {
		if w.Op != opKVDelete && !got[k] {
			res.problem("region %s: kv key %d missing; want the write of %d (stamp %d origin %d)", reg.Name, k, w.ID, w.Stamp, w.Origin)
		}
	}

	// hw under max: top is the highest committed raise.
	top := map[int]int64{}
	for _, t := range committed {
		if t.Op == opRaise && t.Delta > top[t.Key] {
			top[t.Key] = t.Delta
		}
	}
	if err := scanRows(ctx, db, "SELECT k, top FROM hw", func(rs *sql.Rows) error {
		var k int
		var v int64
		if err := rs.Scan(&k, &v); err != nil {
			return err
		}
		if v != top[k] {
			res.problem("region %s: hw key %d top = %d; the highest committed raise is %d", reg.Name, k, v, top[k])
		}
		delete(top, k)
		return nil
	}); err != nil {
		res.problem("region %s: %v", reg.Name, err)
	}
	for k := range top {
		res.problem("region %s: hw key %d missing", reg.Name, k)
	}

	// An append-only row that arrived twice shows as a conflict on it.
	var dup int
	if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM mlr.conflicts WHERE db = 'app' AND tbl = 'events'").Scan(&dup); err != nil {
		res.problem("region %s: %v", reg.Name, err)
	} else if dup > 0 {
		res.problem("region %s: %d conflicts logged on append-only table events: rows arrived twice", reg.Name, dup)
		if count {
			res.Duplicated += dup
		}
	}
}

func scanRows(ctx context.Context, db *sql.DB, q string, each func(*sql.Rows) error) error {
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		return fmt.Errorf("%s: %w", q, err)
	}
	defer rows.Close()
	for rows.Next() {
		if err := each(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// checksum runs `mlproxy checksum` from every region's config.
func (r *run) checksum(ctx context.Context) {
	for _, reg := range r.c.Regions {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		out, err := r.c.Command(cctx, "checksum", "-c", reg.ConfigPath, "--recheck", "2")
		cancel()
		if err != nil {
			r.res.problem("mlproxy checksum -c %s.yaml: %v\n%s", reg.Name, err, out)
		}
	}
}

// checkQuiet requires the binlogs to stop moving once the regions
// converged with no client writing: a change that loops between regions
// keeps them moving. Tombstone GC may still write for a moment, so a few
// windows are tried.
func (r *run) checkQuiet(ctx context.Context) {
	var last []string
	for try := 0; try < 5; try++ {
		_, before, err := r.c.Lag(ctx)
		if err != nil {
			r.res.problem("binlog positions: %v", err)
			return
		}
		time.Sleep(3 * time.Second)
		_, after, err := r.c.Lag(ctx)
		if err != nil {
			r.res.problem("binlog positions: %v", err)
			return
		}
		if strings.Join(before, ",") == strings.Join(after, ",") {
			return
		}
		last = []string{strings.Join(before, ","), strings.Join(after, ",")}
	}
	r.res.problem("binlogs still moving 15s after convergence with no client writes (%s -> %s): changes are looping", last[0], last[1])
}

// faultCaused lists error-level log messages that a fault explains, each
// with the classes that can cause it. A message not listed, or listed but
// with none of its classes in the schedule, is a problem.
var faultCaused = []struct {
	msg     *regexp.Regexp
	classes []Class
}{
	// A tailer loses its peer's server: a link fault, the peer's mariadbd
	// killed or frozen, or this mlproxy stopping.
	{regexp.MustCompile(`^binlog tailer stopped$`), []Class{Latency, Bandwidth, ResetPeer, Timeout, PartitionOneWay, PartitionTwoWay, KillServer, StopServer, RestartServer, StopProxy, RestartProxy}},
	// The applier loses its own server.
	{regexp.MustCompile(`^applier stopped$`), []Class{Latency, Bandwidth, ResetPeer, Timeout, PartitionOneWay, PartitionTwoWay, KillServer, StopServer, RestartServer, StopProxy, RestartProxy}},
	// The clock fence (package skew): a region ahead of its peers by more
	// than clock.max_offset refuses writes.
	{regexp.MustCompile(`^clock fence engaged: refusing writes to replicated tables$`), []Class{ClockSkew}},
	// mlproxy gives up when its own server is gone at start or for long.
	{regexp.MustCompile(`^mlproxy stopped with an error$`), []Class{ResetPeer, Timeout, PartitionOneWay, PartitionTwoWay, KillServer, StopServer, RestartServer}},
}

// logLine is the part of a JSON log line the check reads.
type logLine struct {
	Level string `json:"level"`
	Msg   string `json:"msg"`
	Error string `json:"error"`
}

// checkLogs reads every region's mlproxy log: a panic, or an error-level
// line that no fault of this schedule explains, is a problem.
func (r *run) checkLogs() {
	for _, reg := range r.c.Regions {
		f, err := os.Open(reg.LogPath)
		if err != nil {
			r.res.problem("region %s log: %v", reg.Name, err)
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		reported := map[string]bool{}
		for sc.Scan() {
			line := sc.Text()
			var l logLine
			if err := json.Unmarshal([]byte(line), &l); err != nil {
				if strings.Contains(line, "panic") || strings.Contains(line, "fatal error") || strings.Contains(line, "SIGSEGV") {
					r.res.problem("region %s log: %s", reg.Name, line)
				}
				continue
			}
			switch l.Level {
			case "error":
			case "dpanic", "panic", "fatal":
				r.res.problem("region %s log: %s", reg.Name, line)
				continue
			default:
				continue
			}
			if strings.Contains(l.Msg, "panic") {
				r.res.problem("region %s log: %s", reg.Name, line)
				continue
			}
			if r.explained(l.Msg) {
				r.res.ExplainedErrors++
				continue
			}
			if !reported[l.Msg] {
				reported[l.Msg] = true
				r.res.problem("region %s log: error no fault of this schedule explains: %s", reg.Name, line)
			}
		}
		f.Close()
	}
}

func (r *run) explained(msg string) bool {
	for _, fc := range faultCaused {
		if !fc.msg.MatchString(msg) {
			continue
		}
		for _, c := range fc.classes {
			if r.res.Injected[c] > 0 {
				return true
			}
		}
	}
	return false
}
