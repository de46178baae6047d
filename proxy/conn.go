package proxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/pingcap/tidb/pkg/parser"
	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/causal"
	"github.com/mlproxy/mlproxy/redact"
)

// conn is one client connection and its backend connection. Its goroutine
// (serve) owns every field except those under mu.
type conn struct {
	s      *Server
	id     uint64
	ctx    context.Context // cancelled when the connection closes (or is forced shut)
	cancel context.CancelFunc
	log    *zap.Logger

	client  *wire
	backend *wire // nil until dialled
	// caps are the capabilities in force on both legs (without CLIENT_SSL).
	caps uint32
	// db is the current database, for qualifying unqualified table names.
	db string
	// stmts maps prepared statement ids (from PREPARE_OK) to what the
	// proxy knows of them.
	stmts map[uint32]*prepared
	// lastStmt is the id of the last prepared statement: MariaDB clients
	// may execute id 0xffffffff, meaning "the one just prepared".
	lastStmt uint32
	setBuf   []byte // reused SET @_mlr_hlc=... command
	// cur is the command being handled and next the sequence id of its
	// first response packet: what a recovered panic reports.
	cur  []byte
	next byte
	// watch notices a backend that ends while the client is idle.
	watch idleWatch
	// after is the causal token SET @mlr_after gave: the next read waits
	// until the region holds what it covers (causal.go).
	after causal.Token
	// auth is what the client's authentication showed (forward.go);
	// charset its character set (collation id).
	auth    authState
	charset byte
	// fwds are the client's sessions at other regions' proxies, fwd the
	// one a transaction was forwarded to (every statement goes there until
	// it ends); txnWrote is set once the local transaction wrote.
	fwds     map[uint16]*forwardConn
	fwd      *forwardConn
	txnWrote bool
	// relaying is the forwarding session a response is relayed from (nil:
	// the local server).
	relaying *forwardConn
	// account is the client's account here (CURRENT_USER()), read when
	// it is first forwarded.
	account string
	// noForward marks a session another proxy opened to forward: nothing
	// it sends is forwarded again (proxies never bounce a statement).
	noForward bool

	mu         sync.Mutex
	rawClient  net.Conn // closed to unblock I/O on cancel
	rawBackend net.Conn
	closed     bool
	idle       bool                  // waiting for the client's next command
	inTrans    bool                  // last status the server sent had SERVER_STATUS_IN_TRANS
	fwdTrans   bool                  // a transaction runs at another region's proxy (c.fwd)
	rawFwds    map[net.Conn]struct{} // forwarding sessions' sockets, closed with the others
	status     uint16                // the last status flags the server sent
	// txnStamp is set once a write inside the current transaction was
	// stamped: the session's @_mlr_hlc then serves the transaction's later
	// writes (see needSet). The connection's goroutine alone uses it.
	txnStamp bool
	draining bool // the server is shutting down

	// Tracing (trace.go): traceparent is the connection attribute the
	// client sent, carry the context the next SET takes to the peers,
	// tpLeft says the session's @_mlr_tp may still hold one (a sampled
	// write that changed no row) and clearTP that the next command, a
	// write, needs a SET clearing it, stamp the last stamp sent and failed
	// whether the last command's response had an error.
	traceparent string
	carry       string
	clearTP     bool
	tpLeft      bool
	stamp       uint64
	failed      bool
	// span is the statement's span while it is handled (tracing on).
	span *stmtSpan
	// kind is the series of the statement being handled (its kind's
	// label in statements_total), nil until known.
	kind *kindMetrics
}

// observe adds the statement's time since start to its kind's latency
// histogram, when its kind is known.
func (c *conn) observe(start time.Time) {
	if c.kind != nil {
		c.kind.latency.Observe(time.Since(start).Seconds())
	}
}

func (s *Server) newConn(base context.Context, nc net.Conn) *conn {
	ctx, cancel := context.WithCancel(base)
	id := s.nextID.Add(1)
	c := &conn{
		s: s, id: id, ctx: ctx, cancel: cancel,
		log:       s.log.With(zap.Uint64("conn", id), zap.String("client", nc.RemoteAddr().String())),
		client:    newWire(nc),
		stmts:     map[uint32]*prepared{},
		rawClient: nc,
		status:    mysql.SERVER_STATUS_AUTOCOMMIT,
	}
	context.AfterFunc(ctx, c.closeSockets)
	return c
}

func (c *conn) closeSockets() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	_ = c.rawClient.Close()
	if c.rawBackend != nil {
		_ = c.rawBackend.Close()
	}
	for nc := range c.rawFwds {
		_ = nc.Close()
	}
}

// setBackend records the dialled backend; false if the connection was
// closed meanwhile.
func (c *conn) setBackend(nc net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		_ = nc.Close()
		return false
	}
	c.rawBackend = nc
	c.backend = newWire(nc)
	return true
}

// drain asks the connection to close at its next idle moment outside a
// transaction (at once if it is there now).
func (c *conn) drain() {
	c.mu.Lock()
	c.draining = true
	now := c.idle && !c.inTrans && !c.fwdTrans
	c.mu.Unlock()
	if now {
		c.cancel()
	}
}

// setIdle marks the connection as waiting for a command; false means it
// must close because the server is draining.
func (c *conn) setIdle(idle bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if idle && c.draining && !c.inTrans && !c.fwdTrans {
		return false
	}
	c.idle = idle
	return true
}

func (c *conn) trackStatus(st uint16) {
	c.mu.Lock()
	c.status = st
	c.inTrans = st&mysql.SERVER_STATUS_IN_TRANS != 0
	if !c.inTrans {
		c.txnStamp = false
		c.txnWrote = false
	}
	c.mu.Unlock()
}

// needSet reports whether a statement of class cl that decide says to
// stamp needs the stamping SET sent before it. One stamp serves a whole
// transaction: once a write inside a transaction was stamped, the
// session's @_mlr_hlc (which no client statement can set: the proxy
// refuses them) stamps the transaction's later writes too, as a commit
// timestamp would; the triggers still stamp each row above the version it
// replaces. A statement the proxy cannot see into (CALL, EXECUTE, ...),
// a session statement (BEGIN, COMMIT, SET, ...), a packet of several
// statements (one may commit before the write), or any error (a deadlock
// rolls the transaction back) ends the reuse: the next write is stamped
// anew. Reads keep it (a stored function a read calls could change
// @_mlr_hlc, as it could inside any write: only to an older stamp for the
// client's own writes, which the triggers cap from above).
func (c *conn) needSet(cl *class, stamp bool) bool {
	if cl == nil || cl.multi || (cl.kind != kindWrite && cl.kind != kindRead) {
		c.txnStamp = false
		return stamp
	}
	if !stamp {
		return false
	}
	c.mu.Lock()
	reuse := c.txnStamp && c.inTrans
	c.mu.Unlock()
	if reuse {
		c.s.m.stampReused.Inc()
		return false
	}
	return true
}

// stamped records that a write's SET succeeded: within a transaction, its
// stamp serves the writes after it (trackStatus forgets it at the end).
func (c *conn) stamped(cl *class, set bool, setErr []byte) {
	if set && setErr == nil && cl != nil && cl.kind == kindWrite {
		c.txnStamp = true
	}
}

// serve runs the connection to its end and closes both sockets. A panic
// while handling the connection ends only this connection.
func (c *conn) serve() {
	defer c.cancel()
	defer c.dropForwards()
	defer c.recoverPanic()
	c.log.Debug("proxy connection open")
	err := c.handshake()
	if err == nil {
		c.log.Debug("proxy client authenticated", zap.String("schema", c.db))
		err = c.loop()
	}
	switch {
	case err == nil || errors.Is(err, errQuit) || errors.Is(err, errAuthFailed) || c.ctx.Err() != nil:
		c.log.Debug("proxy connection closed", redact.Err(err))
	case errors.Is(err, errClientGone):
		c.log.Debug("proxy connection closed by client", redact.Err(err))
	default:
		c.log.Warn("proxy connection closed on error", redact.Err(err))
	}
}

// recoverPanic turns a panic in this connection's handler into an error
// for its client and a closed connection, logged with the command's kind
// and the statement's digest (never its text or values) and counted;
// every other connection and replication go on.
func (c *conn) recoverPanic() {
	r := recover()
	if r == nil {
		return
	}
	c.s.m.panics.WithLabelValues("connection").Inc()
	cmd, digest := "handshake", ""
	if len(c.cur) > 0 {
		cmd = commandName(c.cur[0])
		if c.cur[0] == mysql.COM_QUERY || c.cur[0] == mysql.COM_STMT_PREPARE {
			digest = safeDigest(string(c.cur[1:]))
		}
	}
	c.log.Error("proxy connection handler panicked: client disconnected, other connections unaffected",
		zap.String("command", cmd), zap.String("digest", digest), zap.String("panic", fmt.Sprintf("%T", r)), zap.Stack("stack"))
	c.sendErr(c.next, &sqlError{erUnknown, "HY000",
		"mlproxy: internal error while handling this command (logged with its digest); the connection is closed"})
}

// safeDigest is sql's statement digest, "" if computing it fails.
func safeDigest(sql string) (d string) {
	defer func() {
		if recover() != nil {
			d = ""
		}
	}()
	_, digest := parser.NormalizeDigest(sql)
	return digest.String()
}

// commandName names a command byte for logs.
func commandName(b byte) string {
	switch b {
	case mysql.COM_QUERY:
		return "query"
	case mysql.COM_STMT_PREPARE:
		return "stmt_prepare"
	case mysql.COM_STMT_EXECUTE:
		return "stmt_execute"
	case mysql.COM_STMT_SEND_LONG_DATA:
		return "stmt_send_long_data"
	case mysql.COM_STMT_CLOSE:
		return "stmt_close"
	case mysql.COM_STMT_RESET:
		return "stmt_reset"
	case mysql.COM_STMT_FETCH:
		return "stmt_fetch"
	case mysql.COM_CHANGE_USER:
		return "change_user"
	case mysql.COM_INIT_DB:
		return "init_db"
	case mysql.COM_FIELD_LIST:
		return "field_list"
	}
	return fmt.Sprintf("0x%02x", b)
}

var (
	errQuit       = errors.New("client sent COM_QUIT")
	errClientGone = errors.New("client connection lost")
)

// sendRaw writes a packet to the client and flushes.
func (c *conn) sendRaw(p []byte, seq byte) error {
	if _, err := c.client.writePacket(p, seq); err != nil {
		return fmt.Errorf("%w: %v", errClientGone, err)
	}
	if err := c.client.w.Flush(); err != nil {
		return fmt.Errorf("%w: %v", errClientGone, err)
	}
	return nil
}

// sendErr sends the client an ERR packet, ignoring failures (the caller
// is about to report or close anyway).
func (c *conn) sendErr(seq byte, e *sqlError) { _ = c.sendRaw(e.packet(), seq) }

// clientReadErr reports a failed read from the client: a malformed packet
// gets an ERR, a closed connection nothing.
func (c *conn) clientReadErr(err error, seq byte, what string) error {
	if errors.Is(err, errMalformed) {
		c.sendErr(seq, &sqlError{erMalformed, "08S01", "mlproxy: malformed packet"})
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%s: %w: %v", what, errClientGone, err)
}

// backendErr reports a failed backend exchange to the client (1158 with
// SQLSTATE 08S01, and the sequence id the client expects next) and returns
// the error to end the connection.
func (c *conn) backendErr(err error, seq byte, what string) error {
	var we *writeError
	if errors.As(err, &we) {
		// A relay could not write to the client: it is gone.
		return fmt.Errorf("%s: %w: %v", what, errClientGone, err)
	}
	if c.ctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, c.ctx.Err())
	}
	c.s.m.backendErrors.Inc()
	c.sendErr(seq, &sqlError{erBackendLost, "08S01",
		fmt.Sprintf("mlproxy: lost connection to %s during the command", c.relayingFrom())})
	return fmt.Errorf("%s: backend: %w", what, err)
}

// loop reads and relays commands until the client quits, the connection
// breaks or the server drains.
func (c *conn) loop() error {
	for {
		if !c.setIdle(true) {
			return nil
		}
		if c.backend != nil && c.client.r.Buffered() == 0 {
			c.armWatch()
		}
		p, first, last, err := c.client.readPacket(maxCommand)
		c.disarmWatch()
		if err != nil {
			if errors.Is(err, errMalformed) {
				c.sendErr(1, &sqlError{erOutOfOrder, "08S01", "Got packets out of order"})
				return fmt.Errorf("read command: %w", err)
			}
			if c.ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read command: %w: %v", errClientGone, err)
		}
		c.setIdle(false)
		if first != 0 {
			c.sendErr(last+1, &sqlError{erOutOfOrder, "08S01", "Got packets out of order"})
			return fmt.Errorf("%w: command sequence id %d", errMalformed, first)
		}
		if len(p) == 0 {
			c.sendErr(last+1, &sqlError{erMalformed, "08S01", "mlproxy: malformed packet"})
			return fmt.Errorf("%w: empty command", errMalformed)
		}
		c.cur, c.next = p, last+1
		if err := c.command(p, last+1); err != nil {
			return err
		}
		c.cur = nil
	}
}

// command relays one client command and its whole response. next is the
// sequence id of the first response packet.
func (c *conn) command(p []byte, next byte) error {
	switch p[0] {
	case mysql.COM_QUIT:
		_, _ = c.backend.writePacket(p, 0)
		_ = c.backend.w.Flush()
		return errQuit
	case mysql.COM_QUERY:
		start := time.Now()
		c.kind = nil
		err := c.query(p, next)
		c.observe(start)
		return err
	case mysql.COM_STMT_PREPARE:
		return c.prepare(p, next)
	case mysql.COM_STMT_EXECUTE:
		start := time.Now()
		c.kind = nil
		defer c.observe(start)
		var cl *class
		var sp *stmtSpan
		if len(p) >= 5 {
			id := binary.LittleEndian.Uint32(p[1:])
			if id == 0xffffffff {
				id = c.lastStmt
			}
			if ps := c.stmts[id]; ps != nil {
				cl = ps.cl
				if c.s.cfg.Tracer != nil {
					sp = c.startSpan(ps.sql, cl, false)
					defer sp.end(c)
				}
				if g := c.guarded(cl); g != nil {
					return c.refuse(g, "", next)
				}
				if cl.kind == kindRead {
					if answered, err := c.waitAfter(next); answered || err != nil {
						return err
					}
				}
				var vals []paramValue
				if ps.params > 0 && !ps.longData && (ps.homes != nil || c.fwd != nil) {
					// Read for the home check and kept for forwarding:
					// a client sends the types only when they change.
					vals, ps.types = execParams(p, ps.params, ps.types)
				}
				if f := c.fwd; f != nil { // inside a forwarded transaction
					if ps.homes != nil {
						if d := c.checkHomes(ps.homes, vals, f.region); d.refusal != nil {
							return c.refuse(d.refusal, "", next)
						}
					}
					err := c.forwardExecute(f, id, ps, p, next)
					if c.fwd != nil && !c.fwd.inTrans() {
						c.setFwd(nil)
					}
					return err
				}
				if ps.homes != nil {
					if ps.longData {
						vals = nil // the keys are unknown
					}
					d := c.checkHomes(ps.homes, vals, c.s.cfg.RegionID)
					if d.refusal != nil {
						if err := c.resetLongData(id, ps); err != nil {
							return err
						}
						return c.refuse(d.refusal, "", next)
					}
					if d.forward != 0 {
						return c.startForward(d, cl, "", next, func(f *forwardConn) error { return c.forwardExecute(f, id, ps, p, next) })
					}
					ps.longData = false
					// The server last saw the types of the executes it ran:
					// those forwarded or refused carried newer ones.
					p = ps.withLocalTypes(p)
				}
				if ps.cl.kind == kindWrite || ps.cl.kind == kindWriteUnknown {
					c.txnWrote = true // until the status shows no transaction
				}
			}
		}
		stamp := false
		if cl != nil {
			var label string
			stamp, label = c.decide(cl)
			c.kind = c.s.m.kinds[label]
		}
		if sp != nil {
			c.carry = sp.written(c, stamp)
			c.clearTP = c.carry == "" && c.tpLeft && (cl.kind == kindWrite || cl.kind == kindWriteUnknown)
		}
		stamp = c.needSet(cl, stamp)
		dst, setErr, err := c.send(p, stamp, next)
		if err != nil {
			return err
		}
		c.stamped(cl, stamp, setErr)
		if err := c.results(dst, next, nil); err != nil {
			return err
		}
		return c.finish(setErr, next)
	case mysql.COM_STMT_SEND_LONG_DATA:
		if len(p) >= 5 {
			if ps := c.stmts[binary.LittleEndian.Uint32(p[1:])]; ps != nil {
				ps.longData = true // the next execute's values lack it
			}
		}
		_, _, err := c.send(p, false, next)
		return err
	case mysql.COM_STMT_CLOSE:
		if len(p) >= 5 {
			id := binary.LittleEndian.Uint32(p[1:])
			delete(c.stmts, id)
			c.closeForwarded(id)
		}
		_, _, err := c.send(p, false, next)
		return err
	case mysql.COM_STMT_FETCH:
		if _, _, err := c.send(p, false, next); err != nil {
			return err
		}
		return c.rows(c.client.w, next)
	case mysql.COM_INIT_DB:
		if _, _, err := c.send(p, false, next); err != nil {
			return err
		}
		if h, err := c.single(next); err != nil {
			return err
		} else if len(h) > 0 && h[0] == mysql.OK_HEADER {
			c.db = string(p[1:])
		}
		return nil
	case mysql.COM_RESET_CONNECTION:
		if _, _, err := c.send(p, false, next); err != nil {
			return err
		}
		if h, err := c.single(next); err != nil {
			return err
		} else if len(h) > 0 && h[0] == mysql.OK_HEADER {
			clear(c.stmts)
			c.after = nil
			c.dropForwards() // their prepared statements and state went with it
		}
		return nil
	case mysql.COM_PING, mysql.COM_STMT_RESET, mysql.COM_SET_OPTION, mysql.COM_PROCESS_KILL,
		mysql.COM_STATISTICS, mysql.COM_REFRESH, mysql.COM_DEBUG:
		if _, _, err := c.send(p, false, next); err != nil {
			return err
		}
		_, err := c.single(next)
		return err
	case mysql.COM_FIELD_LIST:
		if _, _, err := c.send(p, false, next); err != nil {
			return err
		}
		return c.fieldList(next)
	case mysql.COM_PROCESS_INFO:
		if _, _, err := c.send(p, false, next); err != nil {
			return err
		}
		return c.results(c.client.w, next, nil)
	case mysql.COM_CHANGE_USER:
		return c.changeUser(p, next)
	}
	c.s.m.refused.WithLabelValues("unsupported_command").Inc()
	return c.sendRaw(errPacket(erUnknownCom, "08S01",
		fmt.Sprintf("mlproxy: command 0x%02x is not supported through the proxy; connect to the server directly", p[0])), next)
}

// decide says whether a statement of class cl is stamped, and its metric
// label.
func (c *conn) decide(cl *class) (bool, string) {
	switch cl.kind {
	case kindRead:
		return false, labelRead
	case kindSession:
		return false, labelSession
	case kindDDL:
		return false, labelDDL
	case kindWriteUnknown:
		if !c.mayReachReplicated(cl) {
			return false, labelWriteOther
		}
		return true, labelWriteUnknown
	case kindWrite:
		for _, t := range cl.writes {
			if c.s.tables.Replicated(t.schema, t.table) {
				return true, labelWriteReplicated
			}
		}
		return false, labelWriteOther
	}
	return false, labelRefused
}

// mayReachReplicated reports whether a statement whose writes the proxy
// cannot see (CALL, EXECUTE, DO, syntax the parser does not know) may
// write a replicated table: the current database has replicated tables,
// or the text names a schema that does. Only then does it get the
// stamping SET (which would otherwise show in ROW_COUNT() and the
// diagnostics area for nothing). Writes it cannot see are stamped by the
// triggers either way; the SET only gives them the proxy's clock.
func (c *conn) mayReachReplicated(cl *class) bool { return c.mayReachText(cl.text) }

// mayReachText reports whether a statement whose lower-cased text is text
// may reach a replicated schema: the current one, or one the text names
// ("": no text to look into, so whenever anything replicates).
func (c *conn) mayReachText(text string) bool {
	ss, ok := c.s.tables.(SchemaSet)
	if !ok {
		return true
	}
	schemas := ss.ReplicatedSchemas()
	if text == "" {
		return len(schemas) > 0
	}
	for _, s := range schemas {
		if strings.EqualFold(s, c.db) || strings.Contains(text, strings.ToLower(s)) {
			return true
		}
	}
	return false
}

// ddlHow says how to run DDL on replicated tables instead.
const ddlHow = "run it in every region with `mlproxy schema ddl -c <each region's file> \"<statement>\"`, which also prepares the table's stamping everywhere " +
	"(proxy.allow_ddl lets DDL through, to be run in every region and followed by `mlproxy schema apply`)"

// ddlRefusal is the refusal of DDL on a replicated table or schema (its
// own, or prepared for EXECUTE), or of DDL the parser could not read on a
// database that has replicated tables or naming one; nil otherwise.
func (c *conn) ddlRefusal(cl *class) *class {
	for _, t := range cl.ddl {
		if t.table == "" {
			if c.replicatedSchema(t.schema) {
				return refused(reasonReplicatedDDL, fmt.Sprintf("%s on %s, which holds replicated tables, is refused through the proxy: %s", cl.verb, t.schema, ddlHow))
			}
			continue
		}
		if c.s.tables.Replicated(t.schema, t.table) {
			return refused(reasonReplicatedDDL, fmt.Sprintf("%s on replicated table %s.%s is refused through the proxy: %s", cl.verb, t.schema, t.table, ddlHow))
		}
	}
	for _, text := range cl.ddlTexts {
		if c.mayReachText(text) {
			return refused(reasonReplicatedDDL, "DDL the proxy cannot parse, on a database with replicated tables or naming one, is refused: "+ddlHow)
		}
	}
	return nil
}

// replicatedSchema reports whether schema holds replicated tables.
func (c *conn) replicatedSchema(schema string) bool {
	ss, ok := c.s.tables.(SchemaSet)
	if !ok {
		return false
	}
	for _, s := range ss.ReplicatedSchemas() {
		if strings.EqualFold(s, schema) {
			return true
		}
	}
	return false
}

// guarded is the refusal of a write to a table the Guard blocks (nil when
// the write may go ahead).
func (c *conn) guarded(cl *class) *class {
	if !c.s.cfg.AllowDDL {
		if r := c.ddlRefusal(cl); r != nil {
			return r
		}
	}
	if f := c.s.cfg.Fence; f != nil {
		if why := f.Fenced(); why != "" && c.stamps(cl) {
			r := refused(reasonClockFenced, why)
			r.code = erReadOnly
			return r
		}
	}
	g := c.s.guard
	if g == nil {
		return nil
	}
	switch cl.kind {
	case kindWrite:
		for _, t := range cl.writes {
			if why := g.Blocked(t.schema, t.table); why != "" {
				return refused(reasonDamaged, why)
			}
		}
	case kindWriteUnknown:
		if why := g.AnyBlocked(); why != "" {
			return refused(reasonDamaged, why)
		}
	}
	return nil
}

// refuse answers a refused statement; the connection stays usable.
func (c *conn) refuse(cl *class, sql string, next byte) error {
	c.s.m.refused.WithLabelValues(cl.reason).Inc()
	c.kind = c.s.m.kinds[labelRefused]
	c.kind.count.Inc()
	norm, digest := parser.NormalizeDigest(sql)
	if len(norm) > 60 {
		norm = norm[:60]
	}
	fields := []zap.Field{zap.String("reason", cl.reason), zap.String("statement", norm), zap.String("digest", digest.String())}
	if c.span != nil && c.span.span.SpanContext().IsValid() {
		fields = append(fields, zap.String("trace_id", c.span.span.SpanContext().TraceID().String()))
	}
	c.log.Info("proxy refused statement", fields...)
	code, state := uint16(erUnknown), "HY000"
	if cl.code != 0 {
		code = cl.code
	}
	if cl.state != "" {
		state = cl.state
	}
	return c.sendRaw(errPacket(code, state, cl.msg), next)
}

// stamps reports whether cl would be stamped: it writes, or may write, a
// replicated table.
func (c *conn) stamps(cl *class) bool {
	stamp, _ := c.decide(cl)
	return stamp
}

func (c *conn) query(p []byte, next byte) error {
	sql := string(p[1:])
	if c.s.cfg.Causal != nil && isTokenQuery(sql) {
		return c.answerToken(next)
	}
	if sql == forwardedMarker {
		c.noForward = true
		return c.sendRaw(okPacket(c.status), next)
	}
	cl := c.s.cls.classify(c.db, sql)
	if g := c.guarded(cl); g != nil {
		cl = g
	}
	var sp *stmtSpan
	if c.s.cfg.Tracer != nil {
		sp = c.startSpan(sql, cl, true)
		defer sp.end(c)
	}
	if cl.kind == kindRefused {
		return c.refuse(cl, sql, next)
	}
	if c.fwd != nil {
		return c.forwarded(cl, sql, p, next)
	}
	if c.s.homes != nil && cl.kind == kindWrite {
		d := c.checkHomes(c.homePlans(sql, cl), nil, c.s.cfg.RegionID)
		if d.refusal != nil {
			return c.refuse(d.refusal, sql, next)
		}
		if d.forward != 0 {
			return c.startForward(d, cl, sql, next, func(f *forwardConn) error { return c.relayForward(f, p, next) })
		}
	}
	if c.s.cfg.Causal != nil {
		switch cl.kind {
		case kindSession:
			if t, hit, r := afterRefusal(sql); r != nil {
				return c.refuse(r, sql, next)
			} else if hit {
				c.after = t
			}
		case kindRead:
			if answered, err := c.waitAfter(next); answered || err != nil {
				return err
			}
		}
	}
	stamp, label := c.decide(cl)
	c.kind = c.s.m.kinds[label]
	c.kind.count.Inc()
	if cl.kind == kindWrite || cl.kind == kindWriteUnknown {
		c.txnWrote = true // until the status shows no transaction
	}
	if sp != nil {
		c.carry = sp.written(c, stamp)
		c.clearTP = c.carry == "" && c.tpLeft && (cl.kind == kindWrite || cl.kind == kindWriteUnknown)
	}
	stamp = c.needSet(cl, stamp)
	dst, setErr, err := c.send(p, stamp, next)
	if err != nil {
		return err
	}
	c.stamped(cl, stamp, setErr)
	var onResult func(i int, ok bool)
	failed := false
	if cl.uses != nil {
		onResult = func(i int, ok bool) {
			if !ok {
				failed = true
			} else if !cl.calls && i < len(cl.uses) && cl.uses[i] != "" {
				c.db = cl.uses[i]
			}
		}
	}
	if err := c.results(dst, next, onResult); err != nil {
		return err
	}
	if cl.uses != nil && cl.calls && !failed && setErr == nil {
		// With a CALL the results cannot be matched to statements: take the
		// last USE once all succeeded.
		for _, u := range cl.uses {
			if u != "" {
				c.db = u
			}
		}
	}
	return c.finish(setErr, next)
}

func (c *conn) prepare(p []byte, next byte) error {
	sql := string(p[1:])
	cl := c.s.cls.classify(c.db, sql)
	if g := c.guarded(cl); g != nil {
		cl = g
	}
	var sp *stmtSpan
	if c.s.cfg.Tracer != nil {
		sp = c.startSpan(sql, cl, true)
		defer sp.end(c)
	}
	if cl.kind == kindRefused {
		return c.refuse(cl, sql, next)
	}
	_, label := c.decide(cl)
	c.s.m.kinds[label].count.Inc()
	if _, _, err := c.send(p, false, next); err != nil {
		return err
	}
	r, err := c.relay(c.client.w)
	if err != nil {
		return c.backendErr(err, next, "relay prepare response")
	}
	h := r.peek()
	if len(h) < 9 || h[0] != mysql.OK_HEADER {
		return c.flush() // ERR
	}
	id := binary.LittleEndian.Uint32(h[1:])
	cols := int(binary.LittleEndian.Uint16(h[5:]))
	params := int(binary.LittleEndian.Uint16(h[7:]))
	ps := &prepared{cl: cl, params: params, sql: sql}
	if c.s.homes != nil && cl.kind == kindWrite {
		ps.homes = c.homePlans(sql, cl)
	}
	c.stmts[id] = ps
	c.lastStmt = id
	for _, n := range []int{params, cols} {
		if n == 0 {
			continue
		}
		for i := 0; i < n+1; i++ { // definitions, then EOF
			if r, err = c.relay(c.client.w); err != nil {
				return c.backendErr(err, r.seq+1, "relay prepare response")
			}
		}
	}
	return c.flush()
}

func (c *conn) changeUser(p []byte, next byte) error {
	db, err := changeUserDB(p[1:], c.caps)
	if err != nil {
		c.sendErr(next, &sqlError{erMalformed, "08S01", "mlproxy: malformed packet"})
		return fmt.Errorf("COM_CHANGE_USER: %w", err)
	}
	if _, _, err := c.send(p, false, next); err != nil {
		return err
	}
	c.auth = authState{} // the new account's answer is not kept: no forwarding
	c.account = ""
	c.dropForwards()
	ok, err := c.relayAuth(0, next-1)
	if err != nil {
		return err
	}
	if ok {
		c.db = db
		clear(c.stmts)
		c.after = nil
	}
	return nil
}

// send writes the client's command to the backend, preceded, when stamp is
// set, by the stamping SET in the same write, and reads the SET's reply.
// It returns where the command's response must go: the client, or nowhere
// (nil) when the SET failed; then setErr is the SET's ERR for the client.
func (c *conn) send(p []byte, stamp bool, next byte) (dst *bufio.Writer, setErr []byte, err error) {
	carry, clearTP := c.carry, c.clearTP
	c.carry, c.clearTP = "", false
	set := stamp || carry != "" || clearTP
	if set {
		b := append(c.setBuf[:0], mysql.COM_QUERY)
		b = append(b, "SET "...)
		if stamp {
			b = append(b, "@_mlr_hlc="...)
			ts, err := c.s.stamper.NowContext(c.ctx)
			if err != nil {
				return nil, nil, fmt.Errorf("stamp: %w", err)
			}
			c.stamp = uint64(ts)
			b = strconv.AppendUint(b, uint64(ts), 10)
			b = append(b, ",@_mlr_origin="...)
			b = strconv.AppendUint(b, uint64(c.s.cfg.RegionID), 10)
		}
		switch {
		case carry != "":
			// The table's trigger writes it into mlr.traces with the
			// statement's first row and clears it (package tracing).
			if stamp {
				b = append(b, ',')
			}
			b = append(b, "@_mlr_tp='"...)
			b = append(b, carry...)
			b = append(b, '\'')
			c.tpLeft = true
		case c.tpLeft:
			// A traced write that changed no row left it set: a write
			// must not carry another statement's context.
			if stamp {
				b = append(b, ',')
			}
			b = append(b, "@_mlr_tp=NULL"...)
			c.tpLeft = false
		}
		c.setBuf = b
		if _, err := c.backend.writePacket(b, 0); err != nil {
			return nil, nil, c.backendErr(err, next, "send stamp")
		}
		if stamp {
			c.s.m.stamped.Inc()
		}
	}
	if _, err := c.backend.writePacket(p, 0); err != nil {
		return nil, nil, c.backendErr(err, next, "send command")
	}
	if err := c.backend.w.Flush(); err != nil {
		return nil, nil, c.backendErr(err, next, "send command")
	}
	if !set {
		return c.client.w, nil, nil
	}
	r, _, _, err := c.backend.readPacket(maxAuthPacket)
	if err != nil {
		return nil, nil, c.backendErr(err, next, "read stamp reply")
	}
	if len(r) > 0 && r[0] == mysql.ERR_HEADER {
		c.log.Warn("proxy stamp SET failed; the command's response is discarded and the client gets the SET's error")
		return nil, append([]byte(nil), r...), nil
	}
	return c.client.w, nil, nil
}

// finish sends the SET's error, if there was one, once the command's
// response was discarded.
func (c *conn) finish(setErr []byte, next byte) error {
	if setErr == nil {
		return c.flush()
	}
	return c.sendRaw(setErr, next)
}

func (c *conn) flush() error {
	if err := c.client.w.Flush(); err != nil {
		return fmt.Errorf("%w: %v", errClientGone, err)
	}
	return nil
}

// relay copies one backend packet to dst (nil: discard) and flushes dst
// when the backend has nothing more buffered, so the client is never kept
// waiting for bytes the proxy holds.
func (c *conn) relay(dst *bufio.Writer) (relayed, error) {
	r, err := relayPacket(c.backend, dst)
	if err != nil {
		return r, err
	}
	if dst != nil && c.backend.r.Buffered() == 0 {
		if err := dst.Flush(); err != nil {
			return r, &writeError{err}
		}
	}
	return r, nil
}

// single relays a one-packet response and returns its first bytes.
func (c *conn) single(next byte) ([]byte, error) {
	r, err := c.relay(c.client.w)
	if err != nil {
		return nil, c.backendErr(err, next, "relay response")
	}
	h := r.peek()
	if len(h) > 0 {
		switch {
		case h[0] == mysql.OK_HEADER:
			if st, ok := okStatus(h); ok {
				c.trackStatus(st)
			}
		case isEOF(h, r.length):
			c.trackStatus(eofStatus(h))
		}
	}
	return append([]byte(nil), h...), c.flush()
}

// results relays a COM_QUERY / COM_STMT_EXECUTE response: one or more
// results (OK, ERR, LOCAL INFILE exchange, or result set), chained by
// SERVER_MORE_RESULTS_EXISTS. onResult, if set, learns whether the i-th
// result succeeded. An open cursor (SERVER_STATUS_CURSOR_EXISTS after the
// column definitions) ends the response: its rows come with COM_STMT_FETCH.
func (c *conn) results(dst *bufio.Writer, next byte, onResult func(i int, ok bool)) error {
	seq := next
	fail := func(err error) error { return c.backendErr(err, seq, "relay result") }
	for i := 0; ; i++ {
		r, err := c.relay(dst)
		if err != nil {
			return fail(err)
		}
		seq = r.seq + 1
		h := r.peek()
		if len(h) == 0 {
			return fail(fmt.Errorf("%w: empty response packet", errMalformed))
		}
		more := false
		switch h[0] {
		case mysql.OK_HEADER:
			st, _ := okStatus(h)
			c.trackStatus(st)
			more = st&mysql.SERVER_MORE_RESULTS_EXISTS != 0
			if onResult != nil {
				onResult(i, true)
			}
		case mysql.ERR_HEADER:
			c.txnStamp = false // the transaction may have been rolled back
			c.failed = true
			if onResult != nil {
				onResult(i, false)
			}
		case mysql.LocalInFile_HEADER:
			if err := c.localInfile(dst, r.seq); err != nil {
				return err
			}
			i-- // the OK or ERR that follows is this statement's result
			more = true
		default:
			if more, err = c.resultSet(dst, h, &seq); err != nil {
				return err
			}
			if onResult != nil {
				onResult(i, true)
			}
		}
		if !more {
			return c.flush()
		}
	}
}

// resultSet relays the rest of a result set whose column count packet has
// been relayed; it returns SERVER_MORE_RESULTS_EXISTS of its end.
func (c *conn) resultSet(dst *bufio.Writer, h []byte, seq *byte) (bool, error) {
	fail := func(err error) (bool, error) { return false, c.backendErr(err, *seq, "relay result set") }
	n, _, ok := lenenc(h)
	if !ok {
		return fail(fmt.Errorf("%w: bad column count", errMalformed))
	}
	for j := uint64(0); j < n; j++ {
		r, err := c.relay(dst)
		if err != nil {
			return fail(err)
		}
		*seq = r.seq + 1
	}
	r, err := c.relay(dst)
	if err != nil {
		return fail(err)
	}
	*seq = r.seq + 1
	eh := r.peek()
	if !isEOF(eh, r.length) {
		return fail(fmt.Errorf("%w: no EOF after column definitions", errMalformed))
	}
	if st := eofStatus(eh); st&mysql.SERVER_STATUS_CURSOR_EXISTS != 0 {
		c.trackStatus(st)
		return false, nil
	}
	for {
		r, err := c.relay(dst)
		if err != nil {
			return fail(err)
		}
		*seq = r.seq + 1
		rh := r.peek()
		if len(rh) > 0 && rh[0] == mysql.ERR_HEADER {
			c.txnStamp = false // the transaction may have been rolled back
			return false, nil
		}
		if isEOF(rh, r.length) {
			st := eofStatus(rh)
			c.trackStatus(st)
			return st&mysql.SERVER_MORE_RESULTS_EXISTS != 0, nil
		}
	}
}

// rows relays a COM_STMT_FETCH response: rows up to EOF or ERR.
func (c *conn) rows(dst *bufio.Writer, next byte) error {
	seq := next
	for {
		r, err := c.relay(dst)
		if err != nil {
			return c.backendErr(err, seq, "relay rows")
		}
		seq = r.seq + 1
		h := r.peek()
		if len(h) > 0 && h[0] == mysql.ERR_HEADER {
			c.txnStamp = false // the transaction may have been rolled back
			return c.flush()
		}
		if isEOF(h, r.length) {
			c.trackStatus(eofStatus(h))
			return c.flush()
		}
	}
}

// fieldList relays a COM_FIELD_LIST response: column definitions up to EOF
// or ERR.
func (c *conn) fieldList(next byte) error {
	return c.rows(c.client.w, next)
}

// localInfile relays a LOAD DATA LOCAL INFILE exchange: the server's
// request has been relayed to dst; the client's file contents go to the
// backend up to the empty packet that ends them. When the response is
// being discarded (dst nil) the proxy ends the file itself.
func (c *conn) localInfile(dst *bufio.Writer, seq byte) error {
	if dst == nil {
		if _, err := c.backend.writePacket(nil, seq+1); err != nil {
			return c.backendErr(err, seq+1, "end LOCAL INFILE")
		}
		if err := c.backend.w.Flush(); err != nil {
			return c.backendErr(err, seq+1, "end LOCAL INFILE")
		}
		return nil
	}
	if err := c.flush(); err != nil {
		return err
	}
	for {
		r, err := relayPacket(c.client, c.backend.w)
		if err != nil {
			var we *writeError
			if errors.As(err, &we) {
				return c.backendErr(we.err, seq+1, "relay LOCAL INFILE data")
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("relay LOCAL INFILE data: %w: %v", errClientGone, err)
			}
			return fmt.Errorf("relay LOCAL INFILE data: %w: %v", errClientGone, err)
		}
		seq = r.seq
		if r.length == 0 {
			break
		}
	}
	if err := c.backend.w.Flush(); err != nil {
		return c.backendErr(err, seq+1, "relay LOCAL INFILE data")
	}
	return nil
}
