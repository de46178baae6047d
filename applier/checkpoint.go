package applier

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/hlc"
)

// Checkpoint is one peer's row of mlr.checkpoints: how far this region has
// applied that peer's binlog. It is committed in the same local
// transaction as the rows it covers, so it is exactly where the tailer
// must resume.
type Checkpoint struct {
	// Found is false when the peer was never applied (no row): the tailer
	// starts where its configuration says.
	Found bool
	// Pos is the end of the last applied source transaction. For MariaDB
	// sources Pos.GTID is a GTID position with one "domain-server-seq" per
	// replication domain seen (as gtid_slave_pos spells it).
	Pos binlog.Position
	// HLC is the highest stamp applied from the peer.
	HLC hlc.Timestamp
	// Txns counts the source transactions applied from the peer, ever.
	Txns uint64
	// SourceTime is the source commit time of the last applied transaction,
	// AppliedAt when this region committed it.
	SourceTime time.Time
	AppliedAt  time.Time
}

// Resume is where the peer's tailer resumes: after the last applied
// transaction (the zero Checkpoint, first start, when nothing was applied).
func (c Checkpoint) Resume() binlog.Checkpoint {
	return binlog.Checkpoint{GTID: c.Pos.GTID, File: c.Pos.File, Pos: c.Pos.Pos}
}

const selectCheckpointSQL = "SELECT gtid, file, pos, hlc, txns, " +
	"COALESCE(UNIX_TIMESTAMP(source_ts), 0), COALESCE(UNIX_TIMESTAMP(applied_at), 0) " +
	"FROM mlr.checkpoints WHERE peer_id = ?"

// UpsertCheckpointSQL writes the peer's checkpoint. Args: peer_id,
// peer_name, gtid, file, pos, hlc, txns (added), source_ts (Unix seconds
// with microseconds as a decimal string, or NULL).
const UpsertCheckpointSQL = "INSERT INTO mlr.checkpoints " +
	"(peer_id, peer_name, gtid, file, pos, hlc, txns, source_ts, applied_at) " +
	"VALUES (?, ?, ?, ?, ?, ?, ?, FROM_UNIXTIME(?), NOW(6)) ON DUPLICATE KEY UPDATE " +
	"peer_name = VALUES(peer_name), gtid = VALUES(gtid), file = VALUES(file), pos = VALUES(pos), " +
	"hlc = GREATEST(hlc, VALUES(hlc)), txns = txns + VALUES(txns), " +
	"source_ts = COALESCE(VALUES(source_ts), source_ts), applied_at = VALUES(applied_at)"

// markSQL is the loop marker, the first write of every applier
// transaction that carries rows: it always changes the peer's checkpoint
// row (batches grows), so the row event is always logged, ahead of every
// data row. Args: peer_id, peer_name.
const markSQL = "INSERT INTO mlr.checkpoints (peer_id, peer_name, batches) VALUES (?, ?, 1) " +
	"ON DUPLICATE KEY UPDATE batches = batches + 1"

type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// readCheckpoint reads peer's checkpoint through q (suffix: e.g. " FOR
// UPDATE" inside the apply transaction).
func readCheckpoint(ctx context.Context, q queryer, peer uint16, suffix string) (Checkpoint, error) {
	var c Checkpoint
	var h uint64
	var src, applied string
	err := q.QueryRowContext(ctx, selectCheckpointSQL+suffix, peer).
		Scan(&c.Pos.GTID, &c.Pos.File, &c.Pos.Pos, &h, &c.Txns, &src, &applied)
	if errors.Is(err, sql.ErrNoRows) {
		return Checkpoint{}, nil
	}
	if err != nil {
		return Checkpoint{}, err
	}
	c.Found = true
	c.HLC = hlc.Timestamp(h)
	c.SourceTime = parseUnix(src)
	c.AppliedAt = parseUnix(applied)
	return c, nil
}

// parseUnix reads UNIX_TIMESTAMP()'s decimal seconds; 0 is the zero time.
func parseUnix(s string) time.Time {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f == 0 {
		return time.Time{}
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(math.Round(frac*1e6))*1e3)
}

// unixArg is t as FROM_UNIXTIME's argument (exact to the microsecond), or
// nil for the zero time.
func unixArg(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	us := t.UnixMicro()
	return fmt.Sprintf("%d.%06d", us/1e6, us%1e6)
}

var mariaGTID = regexp.MustCompile(`^\d+-\d+-\d+$`)

// mariaPos splits a MariaDB GTID position ("d-s-n,d-s-n") by domain; ok is
// false for anything else (a MySQL GTID set, a malformed value).
func mariaPos(pos string) (map[string]string, bool) {
	m := map[string]string{}
	if pos == "" {
		return m, true
	}
	for _, g := range strings.Split(pos, ",") {
		g = strings.TrimSpace(g)
		if !mariaGTID.MatchString(g) {
			return nil, false
		}
		d, _, _ := strings.Cut(g, "-")
		m[d] = g
	}
	return m, true
}

// mergeGTID folds the GTID position after the last applied transaction
// into the stored one. For MariaDB the result keeps one "domain-server-seq"
// per domain (sorted by domain), the new entries replacing their domain's
// old ones, so a position that names only the domains a tailer run has
// seen never drops another domain. Anything else (a MySQL GTID set)
// replaces the stored value; an empty one leaves it.
func mergeGTID(stored, last string) string {
	if last == "" {
		return stored
	}
	next, ok := mariaPos(last)
	if !ok {
		return last
	}
	domains, ok := mariaPos(stored)
	if !ok {
		domains = map[string]string{}
	}
	for d, g := range next {
		domains[d] = g
	}
	keys := make([]string, 0, len(domains))
	for k := range domains {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, _ := strconv.ParseUint(keys[i], 10, 32)
		b, _ := strconv.ParseUint(keys[j], 10, 32)
		return a < b
	})
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = domains[k]
	}
	return strings.Join(out, ",")
}
