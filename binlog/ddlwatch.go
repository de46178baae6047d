package binlog

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/redact"
)

// DDLEvent is one DDL statement the region's own server logged.
type DDLEvent struct {
	Schema string // the session's current database
	Verb   string // ALTER TABLE, DROP TRIGGER, TRUNCATE TABLE, ...
	// Statement is the statement's text. It may quote values (a DEFAULT, a
	// partition bound): callers log its verb and tables, not the text.
	Statement string
	File      string
	Pos       uint32
}

// ddlVerb matches the statements WatchDDL reports.
var ddlVerb = regexp.MustCompile(`(?i)^(CREATE|ALTER|DROP|RENAME|TRUNCATE)\b`)

// WatchDDL reads the local server's own binlog, from its end when called,
// and calls onDDL for every DDL statement it logs (from any session: the
// proxy's, one inside a procedure or a statement prepared from an
// expression, or one run on the server directly). It is how a region
// learns at once of DDL the proxy could not see. It reconnects with
// backoff until ctx ends. The account needs REPLICATION SLAVE and BINLOG
// MONITOR on the local server; serverID must be unique among the server's
// replicas.
func WatchDDL(ctx context.Context, local config.Server, db *sql.DB, serverID uint32, onDDL func(DDLEvent), log *zap.Logger) error {
	var file string
	var pos uint32
	flavor := mysql.MySQLFlavor
	var version string
	if err := db.QueryRowContext(ctx, "SELECT VERSION()").Scan(&version); err == nil && strings.Contains(strings.ToLower(version), "mariadb") {
		flavor = mysql.MariaDBFlavor
	}
	bo := backoff.NewExponentialBackOff()
	bo.MaxInterval = 30 * time.Second
	gate := newDDLGate(ctx, db, log) // nil: read every event
	reading := true                  // a DDL may already run at start
	for ctx.Err() == nil {
		if file == "" {
			f, p, err := MasterStatus(ctx, db)
			if err != nil {
				log.Warn("own-binlog DDL watch: cannot read the binlog position; retrying", redact.Err(err))
				if !sleepCtx(ctx, bo.NextBackOff()) {
					break
				}
				continue
			}
			file, pos = f, p
		}
		if !reading {
			if err := gate.idle(ctx, &file, &pos); err != nil {
				if ctx.Err() != nil {
					break
				}
				log.Warn("own-binlog DDL watch: cannot read the server's DDL counters; retrying", redact.Err(err))
				if !sleepCtx(ctx, bo.NextBackOff()) {
					break
				}
				continue
			}
			reading = true
		}
		quiet, err := watchOnce(ctx, local, flavor, serverID, &file, &pos, onDDL, gate, log)
		if ctx.Err() != nil {
			break
		}
		if quiet {
			reading = false
			bo.Reset()
			continue
		}
		log.Warn("own-binlog DDL watch interrupted; resuming", zap.String("file", file), zap.Uint32("pos", pos), redact.Err(err))
		if !sleepCtx(ctx, bo.NextBackOff()) {
			break
		}
	}
	return ctx.Err()
}

// watchEvents counts the binlog events the watch has read (tests see the
// gate keep it from reading).
var watchEvents atomic.Uint64

// errNoEvent: no event within ddlPoll (the gate is asked again).
var errNoEvent = errors.New("no binlog event yet")

// nextEvent waits for the next event, at most ddlPoll when bounded.
func nextEvent(ctx context.Context, s *replication.BinlogStreamer, bounded bool) (*replication.BinlogEvent, error) {
	if !bounded {
		return s.GetEvent(ctx)
	}
	ectx, cancel := context.WithTimeout(ctx, ddlPoll)
	defer cancel()
	ev, err := s.GetEvent(ectx)
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		return nil, errNoEvent
	}
	return ev, err
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// MasterStatus is the server's current binlog file and position (SHOW
// MASTER STATUS); an error when the binary log is off.
func MasterStatus(ctx context.Context, db *sql.DB) (string, uint32, error) {
	rows, err := db.QueryContext(ctx, "SHOW MASTER STATUS")
	if err != nil {
		return "", 0, err
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	vals := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if !rows.Next() {
		return "", 0, fmt.Errorf("the binary log is off (SHOW MASTER STATUS is empty): set log_bin")
	}
	if err := rows.Scan(ptrs...); err != nil {
		return "", 0, err
	}
	p, err := strconv.ParseUint(string(vals[1]), 10, 32)
	if err != nil {
		return "", 0, fmt.Errorf("SHOW MASTER STATUS position %q: %w", vals[1], err)
	}
	return string(vals[0]), uint32(p), rows.Err()
}

// watchOnce reads the binlog from *file:*pos, reporting DDL, until an
// error, or until gate (when not nil) says it may stop (quiet).
func watchOnce(ctx context.Context, local config.Server, flavor string, serverID uint32, file *string, pos *uint32, onDDL func(DDLEvent), gate *ddlGate, log *zap.Logger) (quiet bool, err error) {
	tlsCfg, err := local.TLSConfig()
	if err != nil {
		return false, err
	}
	sc, err := syncerConfig(local, tlsCfg, flavor, serverID, log)
	if err != nil {
		return false, err
	}
	// Only query events matter here: raw mode leaves every other event
	// (row events are nearly all of a busy binlog) undecoded, which keeps
	// the watch's CPU far below the server's write rate.
	sc.RawModeEnabled = true
	syncer := replication.NewBinlogSyncer(sc)
	stop := context.AfterFunc(ctx, func() { closeSyncer(syncer, log) })
	defer func() {
		stop()
		closeSyncer(syncer, log)
	}()
	streamer, err := syncer.StartSync(mysql.Position{Name: *file, Pos: *pos})
	if err != nil {
		return false, cleanErr(err)
	}
	// A full parser, fed only the format description, decodes MariaDB's
	// compressed query events (log_bin_compress), which raw mode leaves
	// as they are: a long DDL must not hide from the watch.
	full := replication.NewBinlogParser()
	full.SetFlavor(flavor)
	for {
		if gate != nil && gate.quiet(ctx, *file, *pos) {
			return true, nil
		}
		ev, err := nextEvent(ctx, streamer, gate != nil)
		if errors.Is(err, errNoEvent) {
			continue
		}
		if err != nil {
			return false, cleanErr(err)
		}
		watchEvents.Add(1)
		switch e := ev.Event.(type) {
		case *replication.RotateEvent:
			*file, *pos = string(e.NextLogName), uint32(e.Position)
			continue
		case *replication.FormatDescriptionEvent:
			if _, err := full.Parse(ev.RawData); err != nil {
				log.Warn("own-binlog DDL watch: unreadable format description event", zap.String("file", *file), zap.Uint32("pos", ev.Header.LogPos), zap.Error(err))
			}
		case *replication.GenericEvent:
			var qe *replication.QueryEvent
			switch ev.Header.EventType {
			case replication.QUERY_EVENT:
				qe = &replication.QueryEvent{}
				err = qe.Decode(e.Data)
			case replication.MARIADB_QUERY_COMPRESSED_EVENT:
				var be *replication.BinlogEvent
				if be, err = full.Parse(ev.RawData); err == nil {
					var ok bool
					if qe, ok = be.Event.(*replication.QueryEvent); !ok {
						err = fmt.Errorf("compressed query event decoded as %T", be.Event)
					}
				}
			}
			if err != nil {
				log.Warn("own-binlog DDL watch: undecodable query event; skipped", zap.String("file", *file), zap.Uint32("pos", ev.Header.LogPos), zap.Error(err))
				break
			}
			if qe == nil {
				break // not a query event
			}
			q := strings.TrimSpace(skipComments(string(qe.Query)))
			if ddlVerb.MatchString(q) {
				_, verb := classifyQuery(q)
				onDDL(DDLEvent{Schema: string(qe.Schema), Verb: verb, Statement: q, File: *file, Pos: ev.Header.LogPos})
			}
		}
		if ev.Header.LogPos > 0 {
			*pos = ev.Header.LogPos
		}
	}
}
