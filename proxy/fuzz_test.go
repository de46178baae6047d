package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	gmysql "github.com/go-mysql-org/go-mysql/mysql"
)

// The fuzz targets run as ordinary tests over the seeds in
// testdata/fuzz/<name>/ and under `go test -fuzz`. The backend server is
// the package's one mariadbd (fuzz workers reuse the coordinator's, see
// TestMain); one proxy serves every input of a target.

// FuzzHandshake sends arbitrary bytes where the client's handshake response
// belongs (and after it: a seed that logs in as root continues with
// commands). The proxy must end or keep the connection without hanging or
// panicking, and keep serving others.
func FuzzHandshake(f *testing.F) {
	p := startProxy(f, func(c *Config) { c.MaxConnections = 100 })
	f.Fuzz(func(t *testing.T, in []byte) {
		nc, err := net.Dial("tcp", p.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
		w := newWire(nc)
		if _, _, _, err := w.readPacket(1 << 20); err != nil {
			t.Fatalf("greeting: %v", err)
		}
		if _, err := nc.Write(in); err != nil && !errors.Is(err, net.ErrClosed) {
			// The proxy may already have closed on a bad prefix.
			t.Logf("write: %v", err)
		}
		_ = nc.(*net.TCPConn).CloseWrite()
		// With its input closed, the proxy must end the connection.
		if _, err := io.Copy(io.Discard, w.r); err != nil && !isReset(err) {
			t.Fatalf("connection did not end: %v", err)
		}
		checkServing(t, p)
	})
}

// FuzzStmtExecute sends arbitrary COM_STMT_EXECUTE bodies (flags,
// iteration count, NULL bitmap, types, values) for a prepared INSERT into a
// replicated table, followed by a sentinel query, to the proxy and to the
// server directly. The proxy relays the bytes without decoding them: when
// the server answers the sentinel directly, it must answer it through the
// proxy too (the proxy stayed in step), and nothing panics or hangs.
func FuzzStmtExecute(f *testing.F) {
	p := startProxy(f, func(c *Config) { c.MaxConnections = 100 })
	f.Fuzz(func(t *testing.T, body []byte) {
		viaDirect := executeAndSentinel(t, srv.Addr(), body)
		viaProxy := executeAndSentinel(t, p.Addr().String(), body)
		if viaDirect && !viaProxy {
			t.Fatal("the server answered the sentinel after this EXECUTE directly, but not through the proxy")
		}
		checkServing(t, p)
	})
}

const sentinel = "mlproxy-sentinel-6b2f"

// executeAndSentinel prepares the fuzz statement, sends EXECUTE with body,
// then a sentinel SELECT and COM_QUIT in one write, and reports whether
// the sentinel's result came back before the connection ended.
func executeAndSentinel(t *testing.T, addr string, body []byte) bool {
	t.Helper()
	got := commandAndSentinel(t, addr, func(c *client.Conn) []byte {
		id, err := prepareRaw(c, "INSERT INTO rt2 (v, n) VALUES (?, ?)")
		if err != nil {
			t.Fatalf("prepare via %s: %v", addr, err)
		}
		exec := append([]byte{gmysql.COM_STMT_EXECUTE}, id...)
		return append(exec, body...)
	}, 30*time.Second)
	return bytes.Contains(got, []byte(sentinel))
}

// commandAndSentinel logs in as root, sends the command packet cmd(conn)
// builds, then a sentinel SELECT and COM_QUIT in one write, and reports
// what came back before the connection ended or wait passed.
func commandAndSentinel(t *testing.T, addr string, cmd func(*client.Conn) []byte, wait time.Duration) []byte {
	t.Helper()
	c, err := client.Connect(addr, "root", "", "app", func(c *client.Conn) error {
		c.UnsetCapability(gmysql.CLIENT_DEPRECATE_EOF)
		return nil
	})
	if err != nil {
		t.Fatalf("connect to %s: %v", addr, err)
	}
	defer c.Close()
	var out bytes.Buffer
	frame := func(payload []byte) {
		// Split like a client would (packets over 16 MiB cannot come from
		// a fuzz input anyway).
		h := [4]byte{byte(len(payload)), byte(len(payload) >> 8), byte(len(payload) >> 16), 0}
		out.Write(h[:])
		out.Write(payload)
	}
	frame(cmd(c))
	frame(append([]byte{gmysql.COM_QUERY}, "SELECT '"+sentinel+"'"...))
	frame([]byte{gmysql.COM_QUIT})
	nc := c.Conn.Conn
	_ = nc.SetDeadline(time.Now().Add(wait))
	if _, err := nc.Write(out.Bytes()); err != nil {
		return nil
	}
	got, err := io.ReadAll(nc)
	var ne net.Error
	if err != nil && !isReset(err) && !(errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("read from %s: %v", addr, err)
	}
	return got
}

// FuzzCommand sends an arbitrary command packet (any command byte, any
// body) after login, then a sentinel query, to the server directly and
// through the proxy: when the server answers the sentinel directly, the
// proxy must too (it stayed in step), unless it refused the command as
// malformed with an error and closed; nothing panics or hangs, and the
// proxy keeps serving.
func FuzzCommand(f *testing.F) {
	p := startProxy(f, func(c *Config) { c.MaxConnections = 100 })
	f.Fuzz(func(t *testing.T, pkt []byte) {
		if len(pkt) == 0 || len(pkt) > 1<<16 {
			return
		}
		switch pkt[0] {
		case gmysql.COM_BINLOG_DUMP, gmysql.COM_BINLOG_DUMP_GTID, gmysql.COM_REGISTER_SLAVE, gmysql.COM_SHUTDOWN:
			return // server-side replication and shutdown: not a client's to fuzz here
		}
		cmd := func(*client.Conn) []byte { return pkt }
		viaDirect := bytes.Contains(commandAndSentinel(t, srv.Addr(), cmd, 5*time.Second), []byte(sentinel))
		got := commandAndSentinel(t, p.Addr().String(), cmd, 10*time.Second)
		viaProxy := bytes.Contains(got, []byte(sentinel)) || bytes.Contains(got, []byte("mlproxy: malformed packet"))
		if viaDirect && !viaProxy {
			t.Fatalf("the server answered the sentinel after command 0x%02x directly, but not through the proxy", pkt[0])
		}
		checkServing(t, p)
	})
}

// FuzzClassify feeds arbitrary statement texts to the classifier: it never
// panics, decides the same way twice, and explains every refusal.
func FuzzClassify(f *testing.F) {
	c, err := newClassifier(16, 0, func() {}, func() {})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, db, sql string) {
		a := c.parse(db, sql)
		b := c.classify(db, sql)
		// Statements that differ only in literals share a cache entry:
		// the cached class is the first one's. The parser may fail on a
		// literal the server takes (a 90-digit number) and classify that
		// text by heuristics instead; what it writes is the same.
		if k, ok := normalizedKey(sql); ok && k != sql {
			b = a
		}
		if a.kind != b.kind || a.reason != b.reason {
			t.Fatalf("classified %q twice differently: %d/%s then %d/%s", sql, a.kind, a.reason, b.kind, b.reason)
		}
		if a.kind > kindRefused {
			t.Fatalf("unknown kind %d", a.kind)
		}
		if a.kind == kindRefused && (a.reason == "" || len(a.msg) < 9 || a.msg[:9] != "mlproxy: ") {
			t.Fatalf("refusal of %q without a reason or message: %+v", sql, a)
		}
	})
}

// prepareRaw prepares q on c (without CLIENT_DEPRECATE_EOF) and returns
// the statement id bytes.
func prepareRaw(c *client.Conn, q string) ([]byte, error) {
	c.ResetSequence()
	if err := c.WritePacket(append([]byte{0, 0, 0, 0, gmysql.COM_STMT_PREPARE}, q...)); err != nil {
		return nil, err
	}
	ok, err := c.ReadPacket()
	if err != nil {
		return nil, err
	}
	if ok[0] != gmysql.OK_HEADER || len(ok) < 9 {
		return nil, c.HandleErrorPacket(ok)
	}
	cols := int(binary.LittleEndian.Uint16(ok[5:]))
	params := int(binary.LittleEndian.Uint16(ok[7:]))
	for _, n := range []int{params, cols} {
		if n == 0 {
			continue
		}
		for i := 0; i < n+1; i++ {
			if _, err := c.ReadPacket(); err != nil {
				return nil, err
			}
		}
	}
	return append([]byte(nil), ok[1:5]...), nil
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne)
}

// checkServing fails unless the proxy still serves a new client.
func checkServing(t *testing.T, p *testProxy) {
	t.Helper()
	c, err := client.Connect(p.Addr().String(), "root", "", "")
	if err != nil {
		t.Fatalf("proxy no longer serves: %v", err)
	}
	defer c.Close()
	if err := c.Ping(); err != nil {
		t.Fatalf("proxy no longer serves: %v", err)
	}
}

// executeBody builds a well-formed EXECUTE body for two parameters: a
// string (or NULL) and an integer.
func executeBody(v *string, n int64, withTypes bool) []byte {
	b := []byte{0, 1, 0, 0, 0} // no cursor, iteration count 1
	var nulls byte
	if v == nil {
		nulls = 1
	}
	b = append(b, nulls)
	if !withTypes {
		return append(b, 0)
	}
	b = append(b, 1, gmysql.MYSQL_TYPE_VAR_STRING, 0, gmysql.MYSQL_TYPE_LONGLONG, 0)
	if v != nil {
		b = append(b, byte(len(*v)))
		b = append(b, *v...)
	}
	return binary.LittleEndian.AppendUint64(b, uint64(n))
}

// TestFuzzSeedsWellFormed guards the checked-in seeds' meaning: a
// well-formed EXECUTE through the proxy inserts a stamped row.
func TestFuzzSeedsWellFormed(t *testing.T) {
	p := startProxy(t, nil)
	v := fmt.Sprintf("fuzz-seed-%d", time.Now().UnixNano())
	if !executeAndSentinel(t, p.Addr().String(), executeBody(&v, 5, true)) {
		t.Fatal("sentinel missing after a well-formed EXECUTE")
	}
	if _, o := stampOfV(t, "rt2", v); o != testRegion {
		t.Fatal("fuzz-style EXECUTE not stamped")
	}
}
