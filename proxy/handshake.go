package proxy

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/tracing"
)

// relayCaps are the capability flags the proxy relays between client and
// backend. Everything else is masked in both the greeting and the
// handshake response:
//   - CLIENT_COMPRESS is the proxy's own, on the client leg only (zlib; see
//     compress.go); CLIENT_ZSTD_COMPRESSION_ALGORITHM is not offered;
//   - CLIENT_DEPRECATE_EOF, CLIENT_OPTIONAL_RESULTSET_METADATA: they change
//     how a result set ends; without them every result set has its EOF
//     packets, which the proxy uses to find the end of a response;
//   - CLIENT_QUERY_ATTRIBUTES: it changes COM_QUERY's layout;
//   - CLIENT_SSL is set per leg by the proxy itself;
//   - of the MariaDB extended capabilities only extended type info
//     (MARIADB_CLIENT_EXTENDED_TYPE_INFO: a JSON column's format, and the
//     like, inside the column definitions the proxy relays unread) is
//     relayed; progress reports, COM_MULTI, bulk execute and the metadata
//     cache change the packet flow and are zeroed.
const relayCaps = mysql.CLIENT_LONG_PASSWORD | mysql.CLIENT_FOUND_ROWS | mysql.CLIENT_LONG_FLAG |
	mysql.CLIENT_CONNECT_WITH_DB | mysql.CLIENT_NO_SCHEMA | mysql.CLIENT_ODBC |
	mysql.CLIENT_LOCAL_FILES | mysql.CLIENT_IGNORE_SPACE | mysql.CLIENT_PROTOCOL_41 |
	mysql.CLIENT_INTERACTIVE | mysql.CLIENT_IGNORE_SIGPIPE | mysql.CLIENT_TRANSACTIONS |
	mysql.CLIENT_RESERVED | mysql.CLIENT_SECURE_CONNECTION | mysql.CLIENT_MULTI_STATEMENTS |
	mysql.CLIENT_MULTI_RESULTS | mysql.CLIENT_PS_MULTI_RESULTS | mysql.CLIENT_PLUGIN_AUTH |
	mysql.CLIENT_CONNECT_ATTRS | mysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA |
	mysql.CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS | mysql.CLIENT_SESSION_TRACK

const (
	erHandshake   = 1043 // ER_HANDSHAKE_ERROR
	maxAuthPacket = 1 << 20
)

// greeting locates the fields of a server's HandshakeV10 packet that the
// proxy changes.
type greeting struct {
	caps       uint32
	connID     uint32
	capsLowAt  int // offset of the lower two capability bytes
	capsHighAt int // offset of the upper two (0 if absent)
	extCapsAt  int // offset of MariaDB's extended capabilities (0 if absent)
	// scramble is the 20-byte scramble (nil when it has none of that
	// size): forwarding answers it, or reuses the client's answer to it.
	scramble []byte
}

func parseGreeting(p []byte) (greeting, error) {
	var g greeting
	if len(p) < 1 || p[0] != 10 {
		return g, fmt.Errorf("%w: handshake protocol version is not 10", errMalformed)
	}
	end := bytes.IndexByte(p[1:], 0)
	if end < 0 {
		return g, fmt.Errorf("%w: unterminated server version", errMalformed)
	}
	pos := 1 + end + 1
	if len(p) < pos+4+8+1+2 {
		return g, fmt.Errorf("%w: short greeting", errMalformed)
	}
	g.connID = binary.LittleEndian.Uint32(p[pos:])
	// Part 1 (8), filler (1), capabilities (2), character set (1), status
	// (2), capabilities (2), scramble length (1), reserved (10), part 2.
	if at := pos + 4; len(p) >= at+27+12 {
		g.scramble = append(bytes.Clone(p[at:at+8]), p[at+27:at+27+12]...)
	}
	pos += 4 + 8 + 1
	g.capsLowAt = pos
	g.caps = uint32(binary.LittleEndian.Uint16(p[pos:]))
	pos += 2
	if len(p) >= pos+5 {
		g.capsHighAt = pos + 3
		g.caps |= uint32(binary.LittleEndian.Uint16(p[pos+3:])) << 16
	}
	if len(p) >= pos+16 {
		g.extCapsAt = pos + 12
	}
	return g, nil
}

// relayExtCaps are the MariaDB extended capabilities relayed.
const relayExtCaps = 1 << 3 // MARIADB_CLIENT_EXTENDED_TYPE_INFO

// maskExt keeps only relayExtCaps in the 4 bytes of MariaDB's extended
// capabilities at b.
func maskExt(b []byte) {
	binary.LittleEndian.PutUint32(b, binary.LittleEndian.Uint32(b)&relayExtCaps)
}

// setCaps writes caps into the greeting p and masks MariaDB's extended
// capabilities to relayExtCaps.
func (g greeting) setCaps(p []byte, caps uint32) {
	binary.LittleEndian.PutUint16(p[g.capsLowAt:], uint16(caps))
	if g.capsHighAt > 0 {
		binary.LittleEndian.PutUint16(p[g.capsHighAt:], uint16(caps>>16))
	}
	if g.extCapsAt > 0 {
		maskExt(p[g.extCapsAt : g.extCapsAt+4])
	}
}

// handshakeResponse is what the proxy reads from a client's
// HandshakeResponse41: its capabilities and the user and database names.
type handshakeResponse struct {
	caps uint32
	user string
	db   string
	// auth is the client's answer to the greeting's scramble, plugin the
	// method it answered with (forward.go may reuse a native answer).
	auth   []byte
	plugin string
	// traceparent is the connection attribute of that name (tracing).
	traceparent string
}

// sslRequestLen is the length of an SSLRequest packet; a handshake
// response is longer (it has at least the user name's terminator).
const sslRequestLen = 32

func parseHandshakeResponse(p []byte) (handshakeResponse, error) {
	var r handshakeResponse
	if len(p) < sslRequestLen {
		return r, fmt.Errorf("%w: short handshake response", errMalformed)
	}
	r.caps = binary.LittleEndian.Uint32(p)
	if r.caps&mysql.CLIENT_PROTOCOL_41 == 0 {
		return r, fmt.Errorf("%w: client does not speak protocol 4.1", errMalformed)
	}
	if len(p) == sslRequestLen {
		return r, nil
	}
	rest := p[sslRequestLen:]
	user, rest, ok := cstring(rest)
	if !ok {
		return r, fmt.Errorf("%w: unterminated user name", errMalformed)
	}
	r.user = user
	switch {
	case r.caps&mysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0:
		n, m, ok := lenenc(rest)
		if !ok || uint64(len(rest)-m) < n {
			return r, fmt.Errorf("%w: bad auth response length", errMalformed)
		}
		r.auth = rest[m : m+int(n)]
		rest = rest[m+int(n):]
	case r.caps&mysql.CLIENT_SECURE_CONNECTION != 0:
		if len(rest) < 1 || len(rest)-1 < int(rest[0]) {
			return r, fmt.Errorf("%w: bad auth response length", errMalformed)
		}
		r.auth = rest[1 : 1+int(rest[0])]
		rest = rest[1+int(rest[0]):]
	default:
		if _, rest, ok = cstring(rest); !ok {
			return r, fmt.Errorf("%w: unterminated auth response", errMalformed)
		}
	}
	if r.caps&mysql.CLIENT_CONNECT_WITH_DB != 0 && len(rest) > 0 {
		db, after, ok := cstring(rest)
		if !ok {
			return r, fmt.Errorf("%w: unterminated database name", errMalformed)
		}
		r.db, rest = db, after
	}
	if r.caps&mysql.CLIENT_PLUGIN_AUTH != 0 && len(rest) > 0 {
		plugin, after, ok := cstring(rest)
		if !ok {
			return r, nil
		}
		r.plugin, rest = plugin, after
	}
	if r.caps&mysql.CLIENT_CONNECT_ATTRS != 0 {
		// Kept only when well formed: the connection holds it for its life.
		if tp := connectAttr(rest, "traceparent"); len(tp) == tracing.TraceparentLen {
			r.traceparent = string(tp)
		}
	}
	return r, nil
}

// connectAttr is the value of the connection attribute key in attrs (the
// handshake response's lenenc-prefixed list of lenenc key/value strings),
// nil when absent or malformed. The server reads the same list; the proxy
// only looks, and relays the packet unchanged.
func connectAttr(attrs []byte, key string) []byte {
	n, m, ok := lenenc(attrs)
	if !ok || uint64(len(attrs)-m) < n {
		return nil
	}
	attrs = attrs[m : m+int(n)]
	next := func() ([]byte, bool) {
		l, k, ok := lenenc(attrs)
		if !ok || uint64(len(attrs)-k) < l {
			return nil, false
		}
		v := attrs[k : k+int(l)]
		attrs = attrs[k+int(l):]
		return v, true
	}
	for len(attrs) > 0 {
		k, ok := next()
		if !ok {
			return nil
		}
		v, ok := next()
		if !ok {
			return nil
		}
		if string(k) == key { // no copy: the compiler compares in place
			return v
		}
	}
	return nil
}

// changeUserDB returns the database named in a COM_CHANGE_USER payload
// (after the command byte).
func changeUserDB(p []byte, caps uint32) (string, error) {
	_, rest, ok := cstring(p)
	if !ok {
		return "", fmt.Errorf("%w: unterminated user name", errMalformed)
	}
	if caps&mysql.CLIENT_SECURE_CONNECTION != 0 {
		if len(rest) < 1 || len(rest)-1 < int(rest[0]) {
			return "", fmt.Errorf("%w: bad auth response length", errMalformed)
		}
		rest = rest[1+int(rest[0]):]
	} else if _, rest, ok = cstring(rest); !ok {
		return "", fmt.Errorf("%w: unterminated auth response", errMalformed)
	}
	db, _, ok := cstring(rest)
	if !ok {
		return "", fmt.Errorf("%w: unterminated database name", errMalformed)
	}
	return db, nil
}

func cstring(b []byte) (string, []byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}

// backendTLS is the TLS configuration of the backend leg (nil = plain).
func (s *Server) backendTLS(clientTLS bool) *tls.Config {
	cfg := s.cfg.BackendTLS
	if cfg == nil && clientTLS && s.cfg.Backend.TLS != nil && s.cfg.Backend.TLS.InsecureSkipVerify {
		cfg = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // documented: local server, by configuration
	}
	if cfg != nil && cfg.ServerName == "" && !cfg.InsecureSkipVerify {
		cfg = cfg.Clone()
		if host, _, err := net.SplitHostPort(s.cfg.Backend.Addr); err == nil {
			cfg.ServerName = host
		}
	}
	return cfg
}

// handshake dials the backend and relays the connection phase: the
// backend's greeting (with the capabilities the proxy cannot relay masked)
// to the client, TLS on either leg, the client's handshake response and
// every auth-switch and auth-more-data packet until the backend's OK or
// ERR, which reaches the client unchanged. It returns nil once the client
// is authenticated.
func (c *conn) handshake() error {
	deadline := time.Now().Add(handshakeTimeout)
	_ = c.client.nc.SetDeadline(deadline)

	addr := c.s.cfg.Backend.Addr
	d := net.Dialer{Timeout: dialTimeout}
	bnc, err := d.DialContext(c.ctx, "tcp", addr)
	if err != nil {
		c.s.m.backendErrors.Inc()
		c.sendErr(0, &sqlError{erBackendUnreachable, "08S01",
			fmt.Sprintf("mlproxy: can't connect to the MySQL server at '%s' (%v)", addr, errors.Unwrap(err))})
		return fmt.Errorf("dial backend %s: %w", addr, err)
	}
	if !c.setBackend(bnc) {
		return c.ctx.Err()
	}
	_ = bnc.SetDeadline(deadline)

	g0, _, _, err := c.backend.readPacket(maxAuthPacket)
	if err != nil {
		c.s.m.backendErrors.Inc()
		c.sendErr(0, &sqlError{erBackendLost, "08S01",
			fmt.Sprintf("mlproxy: lost connection to the MySQL server at '%s' while reading its handshake", addr)})
		return fmt.Errorf("read greeting from %s: %w", addr, err)
	}
	if len(g0) > 0 && g0[0] == mysql.ERR_HEADER {
		// The server refused us (too many connections, host blocked...):
		// the client gets its words.
		c.sendRaw(g0, 0)
		return errors.New("backend refused the connection")
	}
	g, err := parseGreeting(g0)
	if err != nil {
		c.s.m.backendErrors.Inc()
		c.sendErr(0, &sqlError{erHandshake, "08S01", "mlproxy: the MySQL server sent a handshake the proxy cannot read"})
		return fmt.Errorf("greeting from %s: %w", addr, err)
	}
	c.log = c.log.With(zap.Uint32("backend_conn_id", g.connID))
	c.auth.scramble = g.scramble
	caps := g.caps&relayCaps | mysql.CLIENT_COMPRESS // zlib on the client leg, by the proxy itself
	if c.s.cfg.ClientTLS != nil {
		caps |= mysql.CLIENT_SSL
	}
	g.setCaps(g0, caps)
	if err := c.sendRaw(g0, 0); err != nil {
		return err
	}

	resp, _, cseq, err := c.client.readPacket(maxAuthPacket)
	if err != nil {
		return c.clientReadErr(err, 1, "read handshake response")
	}
	if cseq != 1 {
		c.sendErr(cseq+1, &sqlError{erOutOfOrder, "08S01", "Got packets out of order"})
		return fmt.Errorf("%w: handshake response sequence id %d", errMalformed, cseq)
	}
	hr, err := parseHandshakeResponse(resp)
	if err != nil {
		c.sendErr(cseq+1, &sqlError{erHandshake, "08S01", "Bad handshake"})
		return fmt.Errorf("handshake response: %w", err)
	}
	clientTLS := false
	if hr.caps&mysql.CLIENT_SSL != 0 {
		if c.s.cfg.ClientTLS == nil || len(resp) != sslRequestLen {
			c.sendErr(cseq+1, &sqlError{erHandshake, "08S01", "Bad handshake"})
			return fmt.Errorf("%w: unexpected SSL request", errMalformed)
		}
		tc := tls.Server(c.client.raw(), c.s.cfg.ClientTLS)
		if err := tc.HandshakeContext(c.ctx); err != nil {
			return fmt.Errorf("client TLS handshake: %w", err)
		}
		c.client.upgrade(tc)
		clientTLS = true
		if resp, _, cseq, err = c.client.readPacket(maxAuthPacket); err != nil {
			return c.clientReadErr(err, 2, "read handshake response")
		}
		if cseq != 2 {
			c.sendErr(cseq+1, &sqlError{erOutOfOrder, "08S01", "Got packets out of order"})
			return fmt.Errorf("%w: handshake response sequence id %d", errMalformed, cseq)
		}
		if hr, err = parseHandshakeResponse(resp); err != nil {
			c.sendErr(cseq+1, &sqlError{erHandshake, "08S01", "Bad handshake"})
			return fmt.Errorf("handshake response: %w", err)
		}
	}
	if len(resp) == sslRequestLen {
		c.sendErr(cseq+1, &sqlError{erHandshake, "08S01", "Bad handshake"})
		return fmt.Errorf("%w: SSL request where a handshake response was due", errMalformed)
	}
	c.log = c.log.With(zap.String("user", hr.user), zap.Bool("client_tls", clientTLS))
	if unsafeCollation(resp[8]) {
		c.s.m.refused.WithLabelValues(reasonCharset).Inc()
		c.sendErr(cseq+1, &sqlError{erUnknown, "HY000", "mlproxy: " + msgCharset})
		return fmt.Errorf("client character set (collation %d) refused", resp[8])
	}

	ccaps := hr.caps & (relayCaps | mysql.CLIENT_SSL)
	// The MariaDB extended capabilities sit in the last 4 filler bytes.
	maskExt(resp[sslRequestLen-4 : sslRequestLen])
	bseq := byte(1)
	if bcfg := c.s.backendTLS(clientTLS); bcfg != nil {
		if g.caps&mysql.CLIENT_SSL == 0 {
			c.sendErr(cseq+1, &sqlError{erBackendUnreachable, "08S01",
				fmt.Sprintf("mlproxy: the MySQL server at '%s' does not offer TLS, which the proxy is configured to use", addr)})
			return errors.New("backend does not offer TLS")
		}
		ccaps |= mysql.CLIENT_SSL
		ssl := make([]byte, sslRequestLen)
		binary.LittleEndian.PutUint32(ssl, ccaps)
		copy(ssl[4:9], resp[4:9])                                        // max packet size, character set
		copy(ssl[sslRequestLen-4:], resp[sslRequestLen-4:sslRequestLen]) // MariaDB's extended capabilities (masked): the server reads them here
		if _, err := c.backend.writePacket(ssl, 1); err != nil {
			return c.backendErr(err, cseq+1, "send SSL request")
		}
		if err := c.backend.w.Flush(); err != nil {
			return c.backendErr(err, cseq+1, "send SSL request")
		}
		tc := tls.Client(c.backend.raw(), bcfg)
		if err := tc.HandshakeContext(c.ctx); err != nil {
			c.s.m.backendErrors.Inc()
			c.sendErr(cseq+1, &sqlError{erBackendUnreachable, "08S01",
				fmt.Sprintf("mlproxy: TLS to the MySQL server at '%s' failed: %v", addr, err)})
			return fmt.Errorf("backend TLS handshake: %w", err)
		}
		c.backend.upgrade(tc)
		bseq = 2
	} else {
		ccaps &^= mysql.CLIENT_SSL
	}
	binary.LittleEndian.PutUint32(resp, ccaps)
	c.caps = ccaps &^ mysql.CLIENT_SSL
	delta := bseq - cseq
	if _, err := c.backend.writePacket(resp, bseq); err != nil {
		return c.backendErr(err, cseq+1, "send handshake response")
	}
	if err := c.backend.w.Flush(); err != nil {
		return c.backendErr(err, cseq+1, "send handshake response")
	}
	c.auth.user, c.auth.plugin, c.auth.answer = hr.user, hr.plugin, bytes.Clone(hr.auth)
	c.traceparent = hr.traceparent
	c.charset = resp[8]
	ok, err := c.relayAuth(delta, cseq)
	if err != nil {
		return err
	}
	if !ok {
		return errAuthFailed
	}
	if hr.caps&mysql.CLIENT_COMPRESS != 0 {
		c.client.compress() // after the OK, which went uncompressed
		c.s.m.compressed.Inc()
		c.log = c.log.With(zap.Bool("compressed", true))
	}
	c.db = hr.db
	_ = c.client.nc.SetDeadline(time.Time{})
	_ = c.backend.nc.SetDeadline(time.Time{})
	return nil
}

// errAuthFailed ends a connection whose authentication the backend
// refused (the client has the backend's ERR).
var errAuthFailed = errors.New("authentication refused by the server")

// relayAuth relays the authentication exchange until the backend's OK
// (true) or ERR (false). Backend packets reach the client with their
// sequence id minus delta (the backend leg may count an SSLRequest the
// client leg does not, or the reverse), client packets the backend with
// delta added. cseq is the sequence id of the client's last packet.
//
// After an auth switch request (0xfe) the client always answers. After
// auth-more-data (0x01) it answers too, except for caching_sha2_password's
// "fast auth success" (0x01 0x03), which the server follows with OK.
func (c *conn) relayAuth(delta, cseq byte) (bool, error) {
	for {
		p, _, bseq, err := c.backend.readPacket(maxAuthPacket)
		if err != nil {
			return false, c.backendErr(err, cseq+1, "read authentication reply")
		}
		if len(p) == 0 {
			return false, c.backendErr(fmt.Errorf("%w: empty packet", errMalformed), cseq+1, "read authentication reply")
		}
		cseq = bseq - delta
		if err := c.sendRaw(p, cseq); err != nil {
			return false, err
		}
		switch p[0] {
		case mysql.OK_HEADER:
			if st, ok := okStatus(p); ok {
				c.trackStatus(st)
			}
			return true, nil
		case mysql.ERR_HEADER:
			return false, nil
		case 0x01:
			if len(p) == 2 && p[1] == 0x03 {
				continue
			}
		case mysql.EOF_HEADER: // auth switch: a method and its scramble
			c.auth.switchTo(p)
		}
		r, first, last, err := c.client.readPacket(maxAuthPacket)
		if err != nil {
			return false, c.clientReadErr(err, cseq+1, "read authentication data")
		}
		if first != cseq+1 {
			c.sendErr(last+1, &sqlError{erOutOfOrder, "08S01", "Got packets out of order"})
			return false, fmt.Errorf("%w: auth packet sequence id %d, want %d", errMalformed, first, cseq+1)
		}
		cseq = last
		c.auth.answered(r)
		if _, err := c.backend.writePacket(r, first+delta); err != nil {
			return false, c.backendErr(err, cseq+1, "send authentication data")
		}
		if err := c.backend.w.Flush(); err != nil {
			return false, c.backendErr(err, cseq+1, "send authentication data")
		}
	}
}
