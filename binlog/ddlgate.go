package binlog

import (
	"context"
	"database/sql"
	"time"

	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/redact"
)

// ddlGate keeps the own-binlog watch from reading a busy binlog that
// carries no DDL: row events are nearly all of it, and reading them cost
// the proxy about a tenth of its CPU under writes (and the server a dump
// thread). The server counts every DDL statement it runs, also inside a
// procedure, a prepared statement or an event (Com_create_*, Com_alter_*,
// Com_drop_*, Com_rename_*, Com_truncate); while those counters stand
// still the watch only moves its position to the binlog's end, and it
// reads the binlog from where it stood once one moves.
//
// Order makes this exact. Idle, each round reads the binlog's end, then
// the counters: if they did not move, no DDL had started when the end was
// read, so nothing before that end is DDL. A DDL statement counts when it
// starts and is logged when it ends, so reading stops this way: first no
// session runs a statement that is or may run DDL (CREATE, ALTER, DROP,
// RENAME, TRUNCATE, CALL, EXECUTE anywhere in its text: a long ALTER, or
// one inside a procedure), then the binlog's end is read, then the
// counters, which stood still for ddlQuiet; every DDL logged after that
// end started after the counters were read, and moves them again. The
// reader stops once it reaches that end (under a steady write load it
// never catches up with the end of the moment). The watch starts reading,
// for a DDL already running when it starts. Seeing every session's
// statement needs the PROCESS privilege; without it the gate is off and
// the watch reads everything.
type ddlGate struct {
	db  *sql.DB
	log *zap.Logger

	count   uint64    // the counters' sum as last read
	uptime  uint64    // the server's Uptime then (a restart resets the counters)
	moved   time.Time // when the counters last moved
	checked time.Time // when quiet last asked the server
	// target is the binlog end read in a quiet round: the reader may stop
	// there (file "" when none).
	target struct {
		file string
		pos  uint32
	}
}

const (
	ddlCountSQL = "SELECT COALESCE(SUM(IF(VARIABLE_NAME = 'UPTIME', 0, VARIABLE_VALUE)), 0), " +
		"COALESCE(SUM(IF(VARIABLE_NAME = 'UPTIME', VARIABLE_VALUE, 0)), 0) FROM information_schema.GLOBAL_STATUS " +
		"WHERE VARIABLE_NAME LIKE 'COM\\_CREATE\\_%' OR VARIABLE_NAME LIKE 'COM\\_ALTER\\_%' OR VARIABLE_NAME LIKE 'COM\\_DROP\\_%' " +
		"OR VARIABLE_NAME LIKE 'COM\\_RENAME\\_%' OR VARIABLE_NAME = 'COM_TRUNCATE' OR VARIABLE_NAME = 'UPTIME'"
	// No leading word boundary: an executable comment puts a version
	// number right before the keyword (/*!50000ALTER ...*/).
	ddlRunningSQL = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() " +
		"AND INFO REGEXP '(CREATE|ALTER|DROP|RENAME|TRUNCATE|CALL|EXECUTE)([^[:alnum:]_]|$)'"
	// PROCESS granted to this account itself (USER_PRIVILEGES lists every
	// account to one that may read the mysql schema).
	processPrivSQL = "SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES WHERE PRIVILEGE_TYPE = 'PROCESS' " +
		"AND GRANTEE = CONCAT(QUOTE(SUBSTRING_INDEX(CURRENT_USER(), '@', 1)), '@', QUOTE(SUBSTRING_INDEX(CURRENT_USER(), '@', -1)))"
)

// ddlPoll is how often the gate reads the counters; ddlQuiet how long they
// stand still before the watch stops reading.
var (
	ddlPoll  = 250 * time.Millisecond
	ddlQuiet = 2 * time.Second
)

// newDDLGate returns the gate, or nil when the account cannot see every
// session's statement (then the watch reads the whole binlog).
func newDDLGate(ctx context.Context, db *sql.DB, log *zap.Logger) *ddlGate {
	var n int
	if err := db.QueryRowContext(ctx, processPrivSQL).Scan(&n); err != nil || n == 0 {
		log.Info("own-binlog DDL watch reads every binlog event: grant PROCESS to mlproxy's account to have it read only around DDL", redact.Err(err))
		return nil
	}
	g := &ddlGate{db: db, log: log, moved: time.Now()}
	if _, err := g.read(ctx); err != nil {
		log.Warn("own-binlog DDL watch: cannot read the server's DDL counters; reading every binlog event", redact.Err(err))
		return nil
	}
	return g
}

// read takes the counters' sum, noting when it moved; a server restart
// (its Uptime went back) counts as a move whatever the sum.
func (g *ddlGate) read(ctx context.Context) (moved bool, err error) {
	var c, up uint64
	if err := g.db.QueryRowContext(ctx, ddlCountSQL).Scan(&c, &up); err != nil {
		return false, err
	}
	moved = c != g.count || up < g.uptime
	g.uptime = up
	if moved {
		g.count, g.moved = c, time.Now()
	}
	return moved, nil
}

// idle moves *file and *pos to the binlog's end every ddlPoll until a DDL
// counter moves, and returns with them at the last end read before it.
func (g *ddlGate) idle(ctx context.Context, file *string, pos *uint32) error {
	for {
		f, p, err := MasterStatus(ctx, g.db)
		if err != nil {
			return err
		}
		moved, err := g.read(ctx)
		if err != nil {
			return err
		}
		if moved {
			g.log.Debug("own-binlog DDL watch: a DDL counter moved; reading the binlog", zap.String("file", *file), zap.Uint32("pos", *pos))
			return nil
		}
		*file, *pos = f, p
		if !sleepCtx(ctx, ddlPoll) {
			return ctx.Err()
		}
	}
}

// quiet reports whether the reader, at file:pos, may stop (see the type);
// it asks the server at most every ddlPoll.
func (g *ddlGate) quiet(ctx context.Context, file string, pos uint32) bool {
	if g.target.file != "" && reached(file, pos, g.target.file, g.target.pos) {
		g.target.file = ""
		g.log.Debug("own-binlog DDL watch: no DDL for a while; following the binlog's end only", zap.String("file", file), zap.Uint32("pos", pos))
		return true
	}
	if time.Since(g.checked) < ddlPoll {
		return false
	}
	g.checked = time.Now()
	// Anything but a quiet round voids the target: the counters it was
	// taken with are no longer the ones idle compares against.
	g.target.file = ""
	var running int
	if err := g.db.QueryRowContext(ctx, ddlRunningSQL).Scan(&running); err != nil || running > 0 {
		return false
	}
	f, p, err := MasterStatus(ctx, g.db)
	if err != nil {
		return false
	}
	if moved, err := g.read(ctx); err != nil || moved || time.Since(g.moved) < ddlQuiet {
		return false
	}
	g.target.file, g.target.pos = f, p
	return false // the next call stops once the reader is there
}

// reached reports whether a reader at file:pos has read up to end:endPos.
// Binlog files are numbered in the order the server writes them; a longer
// number is a later file (binlog.1000000 after binlog.999999).
func reached(file string, pos uint32, end string, endPos uint32) bool {
	if file == end {
		return pos >= endPos
	}
	if len(file) != len(end) {
		return len(file) > len(end)
	}
	return file > end
}
