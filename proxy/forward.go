package proxy

import (
	"bytes"
	"context"
	"crypto/sha1" //nolint:gosec // mysql_native_password is SHA-1 by definition
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"go.uber.org/zap"
)

// Forwarding (home.elsewhere: forward, and strong tables with forward:
// true) sends a write homed in another region to that region's proxy, as
// the client itself: the same account, never a broader one.
//
// The proxy stores no passwords, and a client answers only one scramble,
// the local server's. For mysql_native_password that answer and the
// account's stored hash (SHA1(SHA1(password)), read from the local
// server's mysql.user) give back SHA1(password), the password's
// equivalent for this method, which answers the home region's scramble.
// It is kept in memory for the connection only, checked against the stored
// hash, and used for nothing but the forwarding connection. Accounts
// authenticated another way (ed25519, caching_sha2_password) cannot be
// forwarded: their writes homed elsewhere are refused instead, naming the
// home's proxy.

// Accounts, when set in Config, reads the stored hash of an account, for
// forwarding.
type Accounts interface {
	// NativeHashes are the mysql_native_password hashes (the 20 bytes of
	// SHA1(SHA1(password))) of every account named user.
	NativeHashes(ctx context.Context, user string) ([][]byte, error)
}

const nativePassword = "mysql_native_password"

// authState is what the proxy saw of the client's authentication: the
// scramble it answered last, its answer and the method.
type authState struct {
	user     string
	plugin   string
	scramble []byte
	answer   []byte
}

// switchTo records an auth switch request (0xfe, method, scramble).
func (a *authState) switchTo(p []byte) {
	plugin, rest, ok := cstring(p[1:])
	if !ok {
		a.plugin, a.scramble = "", nil
		return
	}
	a.plugin, a.scramble = plugin, bytes.TrimSuffix(bytes.Clone(rest), []byte{0})
	a.answer = nil
}

// answered records the client's answer to a switch.
func (a *authState) answered(r []byte) {
	if a.answer == nil {
		a.answer = bytes.Clone(r)
	}
}

// passwordHash recovers SHA1(password) from a native answer and the
// account's stored hashes; ok is false when the client did not answer
// natively or no stored hash matches.
func (a authState) passwordHash(stored [][]byte) ([]byte, bool) {
	if a.user == "" || (a.plugin != nativePassword && a.plugin != "") || len(a.scramble) != 20 || len(a.answer) != 20 {
		return nil, false
	}
	for _, h := range stored {
		if len(h) != 20 {
			continue
		}
		mix := sha1.Sum(append(bytes.Clone(a.scramble), h...)) //nolint:gosec
		x := make([]byte, 20)
		for i := range x {
			x[i] = a.answer[i] ^ mix[i]
		}
		if check := sha1.Sum(x); bytes.Equal(check[:], h) { //nolint:gosec
			return x, true
		}
	}
	return nil, false
}

// nativeAnswer answers scramble for a password whose SHA1 is pwHash.
func nativeAnswer(scramble, pwHash []byte) []byte {
	stored := sha1.Sum(pwHash)                                        //nolint:gosec
	mix := sha1.Sum(append(bytes.Clone(scramble[:20]), stored[:]...)) //nolint:gosec
	out := make([]byte, 20)
	for i := range out {
		out[i] = pwHash[i] ^ mix[i]
	}
	return out
}

// forwardConn is this client's session at another region's proxy.
type forwardConn struct {
	region uint16
	addr   string
	db     string            // the database it is in
	stmts  map[uint32]uint32 // the client's prepared statement ids -> this session's
	w      *wire
	nc     net.Conn
	status uint16 // the last status it sent
}

func (f *forwardConn) inTrans() bool { return f.status&mysql.SERVER_STATUS_IN_TRANS != 0 }

func (f *forwardConn) close() {
	if f.nc != nil {
		_ = f.nc.Close()
	}
}

// errNoForward is forwarding that cannot be: the account did not
// authenticate natively, no proxy address, ...
var errNoForward = errors.New("cannot forward")

// dialForward opens the client's session at region's proxy addr.
func (c *conn) dialForward(ctx context.Context, region uint16, addr string) (*forwardConn, error) {
	if addr == "" {
		return nil, fmt.Errorf("%w: the configuration gives no proxy address for region %d (peers[].proxy)", errNoForward, region)
	}
	if c.s.cfg.Accounts == nil {
		return nil, fmt.Errorf("%w: forwarding is not configured", errNoForward)
	}
	hashes, err := c.s.cfg.Accounts.NativeHashes(ctx, c.auth.user)
	if err != nil {
		return nil, fmt.Errorf("%w: read the account's stored hash: %v", errNoForward, err)
	}
	pw, ok := c.auth.passwordHash(hashes)
	if !ok {
		return nil, fmt.Errorf("%w: only accounts that authenticate with mysql_native_password can be forwarded as themselves", errNoForward)
	}
	d := net.Dialer{Timeout: dialTimeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial region %d's proxy %s: %w", region, addr, err)
	}
	f := &forwardConn{region: region, addr: addr, w: newWire(nc), nc: nc, db: c.db}
	_ = nc.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := c.forwardHandshake(ctx, f, pw); err != nil {
		f.close()
		return nil, fmt.Errorf("log in to region %d's proxy %s as %s: %w", region, addr, c.auth.user, err)
	}
	// The home picks the account by the proxy's host: it must be the one
	// the client logged in as here, never another (broader) one that
	// shares the name and the password.
	if err := c.sameAccount(f); err != nil {
		f.close()
		return nil, fmt.Errorf("%w: %v", errNoForward, err)
	}
	_ = nc.SetDeadline(time.Time{})
	return f, nil
}

// sameAccount checks that f's session at the home runs as the account the
// client's session here does (CURRENT_USER(), user and host pattern).
func (c *conn) sameAccount(f *forwardConn) error {
	if c.account == "" {
		a, err := queryOne(c.backend, "SELECT CURRENT_USER()")
		if err != nil {
			return fmt.Errorf("read this session's account: %w", err)
		}
		c.account = a
	}
	there, err := queryOne(f.w, "SELECT CURRENT_USER()")
	if err != nil {
		return fmt.Errorf("read the forwarding session's account: %w", err)
	}
	if there != c.account {
		return fmt.Errorf("region %d's server logged the proxy in as %s, not %s as here: give the account one host pattern, or one password per host", f.region, there, c.account)
	}
	return nil
}

// queryOne runs a statement whose answer is one row of one text column
// on w and returns the value.
func queryOne(w *wire, sql string) (string, error) {
	p, _, err := roundTrip(w, append([]byte{mysql.COM_QUERY}, sql...), 0)
	if err != nil {
		return "", err
	}
	if len(p) == 0 || p[0] == mysql.ERR_HEADER || p[0] == mysql.OK_HEADER {
		return "", fmt.Errorf("%s: %s", sql, errText(p))
	}
	var row []byte
	for i := 0; ; i++ { // column definition, EOF, row, EOF
		q, _, _, err := w.readPacket(maxAuthPacket)
		if err != nil {
			return "", err
		}
		if i == 2 {
			row = bytes.Clone(q) // the wire reuses its buffer
		}
		if len(q) > 0 && q[0] == mysql.EOF_HEADER && len(q) < 9 && i >= 2 {
			break
		}
		if i > 3 {
			return "", fmt.Errorf("%s: more than one row", sql)
		}
	}
	v, null, _, ok := lenencString(row)
	if !ok || null {
		return "", fmt.Errorf("%s: no value", sql)
	}
	return string(v), nil
}

// forwardHandshake logs f in as the client's account, over TLS when the
// proxy is configured for it.
func (c *conn) forwardHandshake(ctx context.Context, f *forwardConn, pw []byte) error {
	g0, _, _, err := f.w.readPacket(maxAuthPacket)
	if err != nil {
		return err
	}
	if len(g0) > 0 && g0[0] == mysql.ERR_HEADER {
		return errors.New(errText(g0))
	}
	g, err := parseGreeting(g0)
	if err != nil {
		return err
	}
	scramble := g.scramble
	if len(scramble) != 20 {
		return errors.New("the greeting has no 20-byte scramble")
	}
	caps := (c.caps | mysql.CLIENT_PROTOCOL_41 | mysql.CLIENT_SECURE_CONNECTION | mysql.CLIENT_PLUGIN_AUTH) &^
		(mysql.CLIENT_CONNECT_ATTRS | mysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | mysql.CLIENT_CONNECT_WITH_DB)
	if c.db != "" {
		caps |= mysql.CLIENT_CONNECT_WITH_DB
	}
	caps &= g.caps | mysql.CLIENT_CONNECT_WITH_DB
	seq := byte(1)
	if tc := c.s.cfg.ForwardTLS; tc != nil {
		if g.caps&mysql.CLIENT_SSL == 0 {
			return errors.New("the proxy does not offer TLS, which forwarding is configured to use")
		}
		ssl := make([]byte, sslRequestLen)
		binary.LittleEndian.PutUint32(ssl, caps|mysql.CLIENT_SSL)
		binary.LittleEndian.PutUint32(ssl[4:], 1<<24)
		ssl[8] = c.charset
		if _, err := f.w.writePacket(ssl, seq); err != nil {
			return err
		}
		if err := f.w.w.Flush(); err != nil {
			return err
		}
		cfg := tc.Clone()
		if cfg.ServerName == "" && !cfg.InsecureSkipVerify {
			if host, _, err := net.SplitHostPort(f.addr); err == nil {
				cfg.ServerName = host
			}
		}
		tlsc := tls.Client(f.w.raw(), cfg)
		if err := tlsc.HandshakeContext(ctx); err != nil {
			return fmt.Errorf("TLS: %w", err)
		}
		f.w.upgrade(tlsc)
		f.nc = tlsc
		seq++
		caps |= mysql.CLIENT_SSL
	}
	resp := make([]byte, sslRequestLen, sslRequestLen+64)
	binary.LittleEndian.PutUint32(resp, caps)
	binary.LittleEndian.PutUint32(resp[4:], 1<<24)
	resp[8] = c.charset
	resp = append(resp, c.auth.user...)
	resp = append(resp, 0, 20)
	resp = append(resp, nativeAnswer(scramble, pw)...)
	if c.db != "" {
		resp = append(append(resp, c.db...), 0)
	}
	resp = append(append(resp, nativePassword...), 0)
	for {
		p, last, err := roundTrip(f.w, resp, seq)
		if err != nil {
			return err
		}
		switch {
		case len(p) == 0:
			return errors.New("empty authentication reply")
		case p[0] == mysql.OK_HEADER:
			if st, ok := okStatus(p); ok {
				f.status = st
			}
			return simpleCommand(f.w, forwardedMarker)
		case p[0] == mysql.ERR_HEADER:
			return errors.New(errText(p))
		case p[0] == mysql.EOF_HEADER: // auth switch
			var a authState
			a.switchTo(p)
			if a.plugin != nativePassword || len(a.scramble) < 20 {
				return fmt.Errorf("the home region asks for %q, not %s", a.plugin, nativePassword)
			}
			resp, seq = nativeAnswer(a.scramble, pw), last+1
		default:
			return fmt.Errorf("unexpected authentication reply 0x%02x", p[0])
		}
	}
}

// forwardedMarker is the statement a forwarding session sends first: the
// home's proxy then never forwards what arrives on it (a client sending
// it only keeps its own writes from being forwarded).
const forwardedMarker = "/* mlproxy: forwarded session */ DO 0"

// okPacket is an OK packet with status flags st.
func okPacket(st uint16) []byte {
	return []byte{mysql.OK_HEADER, 0, 0, byte(st), byte(st >> 8), 0, 0}
}

// errText is an ERR packet's message.
func errText(p []byte) string {
	if len(p) > 9 && p[3] == '#' {
		return string(p[9:])
	}
	if len(p) > 3 {
		return string(p[3:])
	}
	return "error"
}

// dropForwards closes the client's forwarding sessions.
func (c *conn) dropForwards() {
	for _, f := range c.fwds {
		c.dropForward(f)
	}
	c.setFwd(nil)
}

// forwardTo returns the client's session at region's proxy, opening it
// on first use.
func (c *conn) forwardTo(region uint16, addr string) (*forwardConn, error) {
	if f := c.fwds[region]; f != nil {
		if f.alive() {
			return f, nil
		}
		c.dropForward(f) // the home's proxy went away meanwhile
	}
	f, err := c.dialForward(c.ctx, region, addr)
	if err != nil {
		return nil, err
	}
	if c.fwds == nil {
		c.fwds = map[uint16]*forwardConn{}
	}
	c.fwds[region] = f
	c.mu.Lock()
	if c.rawFwds == nil {
		c.rawFwds = map[net.Conn]struct{}{}
	}
	c.rawFwds[f.nc] = struct{}{}
	closed := c.closed
	c.mu.Unlock()
	if closed {
		f.close()
		return nil, c.ctx.Err()
	}
	return f, nil
}

// relayForward sends the command p to f and relays its whole response to
// the client. A session that breaks is dropped (the client gets an error
// and may retry; the statement may or may not have run there).
func (c *conn) relayForward(f *forwardConn, p []byte, next byte) error {
	send := func() error {
		if _, err := f.w.writePacket(p, 0); err != nil {
			return err
		}
		return f.w.w.Flush()
	}
	if err := send(); err != nil {
		c.dropForward(f)
		return c.sendRaw(errPacket(erBackendLost, "08S01", fmt.Sprintf("mlproxy: lost the forwarding session to region %d's proxy %s: %v", f.region, f.addr, err)), next)
	}
	// While relaying, the status is the forwarding session's (an ERR
	// carries none and leaves it); then the local session's again.
	c.mu.Lock()
	saved, savedStatus := c.backend, c.status
	c.status = f.status
	c.mu.Unlock()
	c.backend, c.relaying = f.w, f
	err := c.results(c.client.w, next, nil)
	c.backend, c.relaying = saved, nil
	c.mu.Lock()
	f.status = c.status
	c.mu.Unlock()
	c.trackStatus(savedStatus)
	if err != nil {
		c.dropForward(f)
		if errors.Is(err, errClientGone) || c.ctx.Err() != nil {
			return err
		}
		// The client has the ERR; its own connection goes on.
		c.log.Warn("forwarding session lost", zap.Uint16("home", f.region), zap.String("proxy", f.addr), zap.Error(err))
		return nil
	}
	c.s.m.forwarded.Inc()
	return nil
}

// relayingFrom names where the response being relayed comes from.
func (c *conn) relayingFrom() string {
	if f := c.relaying; f != nil {
		return fmt.Sprintf("region %d's proxy at '%s' (a forwarded statement: it may or may not have run there)", f.region, f.addr)
	}
	return fmt.Sprintf("the MySQL server at '%s'", c.s.cfg.Backend.Addr)
}

// alive reports whether f's peer has not closed it: an idle session has
// nothing to read, so a read that times out at once means alive. The read
// is tried before the deadline is waited for, so a close that arrived
// shows, and an open session costs some 50 µs.
func (f *forwardConn) alive() bool {
	if f.w.r.Buffered() > 0 {
		return false // an idle session has nothing to say
	}
	_ = f.nc.SetReadDeadline(time.Now().Add(50 * time.Microsecond))
	_, err := f.w.r.Peek(1)
	_ = f.nc.SetReadDeadline(time.Time{})
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (c *conn) dropForward(f *forwardConn) {
	f.close()
	delete(c.fwds, f.region)
	c.mu.Lock()
	delete(c.rawFwds, f.nc)
	c.mu.Unlock()
	if c.fwd == f {
		c.setFwd(nil)
	}
}

// setFwd makes f (nil: none) the session the current transaction runs in.
func (c *conn) setFwd(f *forwardConn) {
	c.fwd = f
	c.mu.Lock()
	c.fwdTrans = f != nil
	c.mu.Unlock()
}

// startForward sends a statement whose keys are homed in region d.forward
// to that region's proxy. The home is decided at a transaction's first
// write: inside a transaction that has not written here yet, the
// transaction moves there (its reads so far were local; the local one is
// rolled back) and every statement goes there until it ends.
func (c *conn) startForward(d homeDecision, cl *class, sql string, next byte, run func(*forwardConn) error) error {
	refuse := func(msg string) error {
		r := refused(reasonHome, msg)
		r.code, r.state = erSignal, "45000"
		return c.refuse(r, sql, next)
	}
	if cl.multi {
		return refuse(fmt.Sprintf("a packet of several statements is not forwarded: send its write homed in another region alone, or to that region's proxy %s", d.addr))
	}
	c.mu.Lock()
	inTrans, status := c.inTrans, c.status
	c.mu.Unlock()
	if inTrans && c.txnWrote {
		return refuse(fmt.Sprintf("this transaction already wrote here, and this write is for a key homed in another region (proxy %s): a transaction writes the keys of one home region", d.addr))
	}
	f, err := c.forwardTo(d.forward, d.addr)
	if err != nil {
		c.log.Warn("write not forwarded", zap.Uint16("home", d.forward), zap.String("proxy", d.addr), zap.Error(err))
		return refuse(fmt.Sprintf("this write is for a key homed in another region, and forwarding it to that region's proxy %s failed: %v", d.addr, err))
	}
	if err := c.syncForward(f); err != nil {
		c.dropForward(f)
		return refuse(fmt.Sprintf("forwarding to %s failed: %v", d.addr, err))
	}
	explicit := inTrans || status&mysql.SERVER_STATUS_AUTOCOMMIT == 0
	if explicit {
		if err := simpleCommand(f.w, "START TRANSACTION"); err != nil {
			c.dropForward(f)
			return refuse(fmt.Sprintf("forwarding to %s failed: %v", d.addr, err))
		}
		f.status |= mysql.SERVER_STATUS_IN_TRANS
		if inTrans {
			if err := simpleCommand(c.backend, "ROLLBACK"); err != nil {
				return c.backendErr(err, next, "end the local transaction")
			}
			c.trackStatus(status &^ mysql.SERVER_STATUS_IN_TRANS)
		}
	}
	start := time.Now()
	if err := run(f); err != nil {
		return err
	}
	c.s.m.forwardSeconds.Observe(time.Since(start).Seconds())
	if f.inTrans() && c.fwds[f.region] == f {
		c.setFwd(f)
	}
	return nil
}

// forwarded runs a statement of a transaction forwarded to c.fwd there;
// a write for a key homed in a third region (or here) is refused.
func (c *conn) forwarded(cl *class, sql string, p []byte, next byte) error {
	f := c.fwd
	if err := c.syncForward(f); err != nil {
		c.dropForward(f)
		return c.sendRaw(errPacket(erBackendLost, "08S01", fmt.Sprintf("mlproxy: lost the forwarding session to region %d's proxy %s: %v", f.region, f.addr, err)), next)
	}
	if c.s.homes != nil && cl.kind == kindWrite {
		if d := c.checkHomes(c.homePlans(sql, cl), nil, f.region); d.refusal != nil {
			return c.refuse(d.refusal, sql, next)
		}
	}
	if cl.multi || cl.uses != nil {
		r := refused(reasonHome, fmt.Sprintf("inside a transaction forwarded to region %d's proxy, send one statement at a time, and no USE", f.region))
		return c.refuse(r, sql, next)
	}
	start := time.Now()
	err := c.relayForward(f, p, next)
	if err == nil {
		c.s.m.forwardSeconds.Observe(time.Since(start).Seconds())
	}
	if c.fwd != nil && !c.fwd.inTrans() {
		c.setFwd(nil) // the transaction ended there
	}
	return err
}

// syncForward gives f the client's current database.
func (c *conn) syncForward(f *forwardConn) error {
	if f.db == c.db || c.db == "" {
		return nil
	}
	r, _, err := roundTrip(f.w, append([]byte{mysql.COM_INIT_DB}, c.db...), 0)
	if err != nil {
		return err
	}
	if len(r) == 0 || r[0] != mysql.OK_HEADER {
		return errors.New(errText(r))
	}
	f.db = c.db
	return nil
}

// roundTrip sends one packet on w and reads the first packet of the
// answer, and its sequence id.
func roundTrip(w *wire, p []byte, seq byte) ([]byte, byte, error) {
	if _, err := w.writePacket(p, seq); err != nil {
		return nil, 0, err
	}
	if err := w.w.Flush(); err != nil {
		return nil, 0, err
	}
	r, _, last, err := w.readPacket(maxAuthPacket)
	return r, last, err
}

// simpleCommand runs a statement that answers OK or ERR on w.
func simpleCommand(w *wire, sql string) error {
	r, _, err := roundTrip(w, append([]byte{mysql.COM_QUERY}, sql...), 0)
	if err != nil {
		return err
	}
	if len(r) == 0 || r[0] != mysql.OK_HEADER {
		return fmt.Errorf("%s: %s", sql, errText(r))
	}
	return nil
}

// forwardExecute runs the client's COM_STMT_EXECUTE p of statement ps
// (the client's id) on f: the statement is prepared there on first use
// (its text), and the packet names that id and always carries the
// parameter types (the client sends them only when they change).
func (c *conn) forwardExecute(f *forwardConn, id uint32, ps *prepared, p []byte, next byte) error {
	fail := func(msg string) error {
		r := refused(reasonHome, msg)
		r.code, r.state = erSignal, "45000"
		return c.refuse(r, "", next)
	}
	if ps.longData {
		if err := c.resetLongData(id, ps); err != nil {
			return err
		}
		return fail(fmt.Sprintf("a prepared statement with data sent apart (COM_STMT_SEND_LONG_DATA) is not forwarded: send it to region %d's proxy %s", f.region, f.addr))
	}
	if len(p) < 10 || p[5] != 0 {
		return fail(fmt.Sprintf("a prepared statement executed with a cursor is not forwarded: send it to region %d's proxy %s", f.region, f.addr))
	}
	remote, ok := f.stmts[id]
	if !ok {
		var err error
		if remote, err = c.forwardPrepare(f, ps.sql); err != nil {
			var se *sqlError
			if errors.As(err, &se) {
				return c.sendRaw(se.packet(), next)
			}
			c.dropForward(f)
			return c.sendRaw(errPacket(erBackendLost, "08S01", fmt.Sprintf("mlproxy: lost the forwarding session to region %d's proxy %s: %v", f.region, f.addr, err)), next)
		}
		if f.stmts == nil {
			f.stmts = map[uint32]uint32{}
		}
		f.stmts[id] = remote
	}
	q := bytes.Clone(p)
	binary.LittleEndian.PutUint32(q[1:], remote)
	if n := ps.params; n > 0 {
		at := 10 + (n+7)/8 // the new-parameters-bound flag
		if len(q) <= at || len(ps.types) != 2*n {
			return fail("a prepared statement's parameters could not be read for forwarding")
		}
		if q[at] == 0 {
			q = append(append(append(q[:at:at], 1), ps.types...), p[at+1:]...)
		}
	}
	return c.relayForward(f, q, next)
}

// forwardPrepare prepares sql on f and returns its statement id there; an
// ERR from there is a *sqlError for the client.
func (c *conn) forwardPrepare(f *forwardConn, sql string) (uint32, error) {
	h, _, err := roundTrip(f.w, append([]byte{mysql.COM_STMT_PREPARE}, sql...), 0)
	if err != nil {
		return 0, err
	}
	if len(h) > 0 && h[0] == mysql.ERR_HEADER && len(h) >= 9 {
		return 0, &sqlError{code: binary.LittleEndian.Uint16(h[1:]), state: string(h[4:9]), msg: errText(h)}
	}
	if len(h) < 9 || h[0] != mysql.OK_HEADER {
		return 0, fmt.Errorf("%w: prepare response", errMalformed)
	}
	id := binary.LittleEndian.Uint32(h[1:])
	cols := int(binary.LittleEndian.Uint16(h[5:]))
	params := int(binary.LittleEndian.Uint16(h[7:]))
	for _, n := range []int{params, cols} {
		if n == 0 {
			continue
		}
		for range n + 1 { // definitions, then EOF
			if _, _, _, err := f.w.readPacket(maxAuthPacket); err != nil {
				return 0, err
			}
		}
	}
	return id, nil
}

// closeForwarded closes, in every forwarding session, the statement the
// client's id was prepared as (COM_STMT_CLOSE has no answer).
func (c *conn) closeForwarded(id uint32) {
	for _, f := range c.fwds {
		remote, ok := f.stmts[id]
		if !ok {
			continue
		}
		delete(f.stmts, id)
		q := binary.LittleEndian.AppendUint32([]byte{mysql.COM_STMT_CLOSE}, remote)
		// A broken session shows at its next use.
		if _, err := f.w.writePacket(q, 0); err == nil {
			_ = f.w.w.Flush()
		}
	}
}

// resetLongData drops, on the local server, the data a client sent apart
// for statement id when its execute is refused or not run there (the next
// execute would use it).
func (c *conn) resetLongData(id uint32, ps *prepared) error {
	if !ps.longData {
		return nil
	}
	ps.longData = false
	r, _, err := roundTrip(c.backend, binary.LittleEndian.AppendUint32([]byte{mysql.COM_STMT_RESET}, id), 0)
	if err != nil {
		return c.backendErr(err, 1, "reset a statement's long data")
	}
	if len(r) == 0 || r[0] != mysql.OK_HEADER {
		c.log.Warn("statement reset refused", zap.String("error", errText(r)))
	}
	return nil
}

// withLocalTypes returns the EXECUTE packet p for the local server: with
// the parameter types added when the client sent none and the server last
// saw others (an execute forwarded or refused carried them).
func (ps *prepared) withLocalTypes(p []byte) []byte {
	n := ps.params
	if n == 0 || len(ps.types) != 2*n {
		return p
	}
	at := 10 + (n+7)/8 // the new-parameters-bound flag
	if len(p) <= at {
		return p
	}
	if p[at] != 0 {
		ps.localTypes = append(ps.localTypes[:0], ps.types...)
		return p
	}
	if bytes.Equal(ps.localTypes, ps.types) {
		return p
	}
	ps.localTypes = append(ps.localTypes[:0], ps.types...)
	return append(append(append(bytes.Clone(p[:at]), 1), ps.types...), p[at+1:]...)
}
