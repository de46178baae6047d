package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/dbtest"
	"github.com/mlproxy/mlproxy/hlc"
)

// One mariadbd for the whole package, with TLS (self-signed certificate)
// and the test schema:
//   - app.rt, app.rt2: replicated tables with _mlr_ columns and triggers
//     like those `schema apply` installs (a simple version);
//   - app.rt_twin: the same table and triggers, not replicated, for
//     comparing with a direct connection;
//   - app.plain: a non-replicated table with the same triggers (so an
//     unwanted stamp would show);
//   - mlr.tomb_rt: tombstones of app.rt.
var (
	srv     *dbtest.Server
	direct  *sql.DB // root, straight to the server
	certPEM []byte  // the server's (and proxy's) self-signed certificate
	tlsCert tls.Certificate
)

const testRegion = 7

func TestMain(m *testing.M) {
	code := runMain(m)
	dbtest.Cleanup()
	os.Exit(code)
}

// sharedServerEnv carries the server's port and certificate directory from
// the test process to `go test -fuzz` worker processes (which run TestMain
// again), so that fuzzing starts the backend once.
const sharedServerEnv = "MLPROXY_PROXY_TEST_SERVER"

func runMain(m *testing.M) int {
	if shared := os.Getenv(sharedServerEnv); shared != "" {
		return runShared(m, shared)
	}
	dir, err := os.MkdirTemp("", "mlproxy-proxy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	certFile, keyFile, err := writeCert(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "proxy tests: certificate:", err)
		return 1
	}
	srv, err = dbtest.Start(dbtest.Options{ServerID: 71, Args: []string{
		"--ssl-cert=" + certFile, "--ssl-key=" + keyFile, "--local-infile=1",
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "proxy tests: start mariadbd:", err)
		return 1
	}
	defer srv.Destroy()
	direct, err = srv.Open("")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer direct.Close()
	if err := setupSchema(direct); err != nil {
		fmt.Fprintln(os.Stderr, "proxy tests: schema:", err)
		return 1
	}
	os.Setenv(sharedServerEnv, fmt.Sprintf("%d %s", srv.Port, dir))
	return m.Run()
}

// runShared runs a fuzz worker against the coordinator's server.
func runShared(m *testing.M, shared string) int {
	var dir string
	srv = &dbtest.Server{}
	if _, err := fmt.Sscanf(shared, "%d %s", &srv.Port, &dir); err != nil {
		fmt.Fprintf(os.Stderr, "proxy tests: bad %s=%q: %v\n", sharedServerEnv, shared, err)
		return 1
	}
	var err error
	if certPEM, err = os.ReadFile(filepath.Join(dir, "cert.pem")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "key.pem"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if tlsCert, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if direct, err = srv.Open(""); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer direct.Close()
	return m.Run()
}

func writeCert(dir string) (certFile, keyFile string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	tlsCert, err = tls.X509KeyPair(certPEM, keyPEM)
	return certFile, keyFile, err
}

// stampedTable creates a table with the invisible stamp columns and the
// triggers docs/internals.md describes (bypass stamp simplified to 1).
func stampedTable(name string) []string {
	return []string{
		fmt.Sprintf(`CREATE TABLE app.%s (
			id INT AUTO_INCREMENT PRIMARY KEY,
			v VARCHAR(100) NULL,
			n INT NULL,
			b LONGBLOB NULL,
			UNIQUE KEY (v),
			_mlr_origin SMALLINT UNSIGNED NULL INVISIBLE,
			_mlr_hlc BIGINT UNSIGNED NULL INVISIBLE)`, name),
		fmt.Sprintf(`CREATE TABLE mlr.tomb_%s (id INT PRIMARY KEY,
			_mlr_hlc BIGINT UNSIGNED NULL, _mlr_origin SMALLINT UNSIGNED NULL)`, name),
		fmt.Sprintf(`CREATE TRIGGER app._mlr_bi_%[1]s BEFORE INSERT ON app.%[1]s FOR EACH ROW
			IF @_mlr_apply IS NULL THEN
				SET NEW._mlr_hlc = COALESCE(@_mlr_hlc, 1), NEW._mlr_origin = COALESCE(@_mlr_origin, 0);
			END IF`, name),
		fmt.Sprintf(`CREATE TRIGGER app._mlr_bu_%[1]s BEFORE UPDATE ON app.%[1]s FOR EACH ROW
			IF @_mlr_apply IS NULL AND NOT (NEW.id <=> OLD.id AND NEW.v <=> OLD.v AND NEW.n <=> OLD.n AND NEW.b <=> OLD.b) THEN
				SET NEW._mlr_hlc = COALESCE(@_mlr_hlc, 1), NEW._mlr_origin = COALESCE(@_mlr_origin, 0);
			END IF`, name),
		fmt.Sprintf(`CREATE TRIGGER app._mlr_ad_%[1]s AFTER DELETE ON app.%[1]s FOR EACH ROW
			IF @_mlr_apply IS NULL THEN
				INSERT INTO mlr.tomb_%[1]s VALUES (OLD.id, COALESCE(@_mlr_hlc, 1), COALESCE(@_mlr_origin, 0))
				ON DUPLICATE KEY UPDATE _mlr_hlc = VALUES(_mlr_hlc), _mlr_origin = VALUES(_mlr_origin);
			END IF`, name),
	}
}

func setupSchema(db *sql.DB) error {
	stmts := []string{
		"CREATE DATABASE app", "CREATE DATABASE mlr",
		"CREATE TABLE mlr.checkpoints (peer_id SMALLINT UNSIGNED PRIMARY KEY, gtid VARCHAR(100))",
		"CREATE USER 'pw'@'%' IDENTIFIED BY 'secret'",
		"GRANT ALL ON *.* TO 'pw'@'%'",
		"CREATE USER 'nopw'@'%'",
		"GRANT ALL ON app.* TO 'nopw'@'%'",
		"CREATE USER 'tlsuser'@'%' IDENTIFIED BY 'tlspw' REQUIRE SSL",
		"GRANT ALL ON *.* TO 'tlsuser'@'%'",
		"CREATE USER 'ed'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('edpw')",
		"GRANT ALL ON app.* TO 'ed'@'%'",
		// sysbench's user
		"CREATE DATABASE sbtest",
	}
	for _, t := range []string{"rt", "rt2", "rt_twin", "plain"} {
		stmts = append(stmts, stampedTable(t)...)
	}
	stmts = append(stmts,
		`CREATE PROCEDURE app.p_ins(IN x VARCHAR(100)) BEGIN INSERT INTO app.rt (v) VALUES (x); SELECT 1 AS one; END`)
	for _, q := range stmts {
		if _, err := db.Exec(q); err != nil {
			if strings.Contains(q, "ed25519") {
				// The ed25519 plugin may be absent: load it and retry.
				if _, err2 := db.Exec("INSTALL SONAME 'auth_ed25519'"); err2 == nil {
					if _, err = db.Exec(q); err == nil {
						continue
					}
				}
			}
			return fmt.Errorf("%.60s: %w", q, err)
		}
	}
	return nil
}

// testStamper issues strictly increasing stamps and counts them.
type testStamper struct {
	mu    sync.Mutex
	last  hlc.Timestamp
	calls int
	// panicNext makes the next call panic (a failing component).
	panicNext bool
}

func (s *testStamper) NowContext(context.Context) (hlc.Timestamp, error) { return s.Now(), nil }

func (s *testStamper) Now() hlc.Timestamp {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.panicNext {
		s.panicNext = false
		panic("test: stamper failed")
	}
	ts := hlc.New(time.Now().UnixMilli(), 0)
	if ts <= s.last {
		ts = s.last + 1
	}
	s.last = ts
	s.calls++
	return ts
}

func (s *testStamper) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// tableSet is Tables over "schema.table" keys.
type tableSet map[string]bool

func (t tableSet) Replicated(schema, table string) bool { return t[schema+"."+table] }

// ReplicatedSchemas makes the test tables a SchemaSet, as the region's are.
func (t tableSet) ReplicatedSchemas() []string {
	seen := map[string]bool{}
	var out []string
	for k := range t {
		s, _, _ := strings.Cut(k, ".")
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

var replicated = tableSet{"app.rt": true, "app.rt2": true}

// testProxy is a running proxy in front of srv.
type testProxy struct {
	*Server
	st   *testStamper
	stop func() error
}

// startProxy starts a proxy; edit adjusts its configuration. It stops at
// the end of the test.
func startProxy(tb testing.TB, edit func(*Config)) *testProxy {
	tb.Helper()
	return startProxyTables(tb, replicated, edit)
}

// startProxyTables is startProxy with tables saying what replicates.
func startProxyTables(tb testing.TB, tables Tables, edit func(*Config)) *testProxy {
	tb.Helper()
	cfg := Config{
		Listen:          "127.0.0.1:0",
		Backend:         config.Server{Addr: srv.Addr()},
		RegionID:        testRegion,
		ShutdownTimeout: 5 * time.Second,
	}
	if edit != nil {
		edit(&cfg)
	}
	st := &testStamper{}
	log := zap.NewNop()
	if os.Getenv("PROXY_TEST_LOG") != "" {
		log, _ = zap.NewDevelopment()
	}
	s, err := New(cfg, st, tables, log, nil)
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	tb.Cleanup(func() {
		if err := stop(); err != nil {
			tb.Errorf("proxy Run: %v", err)
		}
	})
	return &testProxy{Server: s, st: st, stop: stop}
}

func (p *testProxy) port() string {
	_, port, _ := net.SplitHostPort(p.Addr().String())
	return port
}

// dsn is a go-sql-driver DSN through the proxy (server-side prepared
// statements: interpolateParams=false).
func (p *testProxy) dsn(user, pass, db string, edit func(*mysql.Config)) string {
	c := mysql.NewConfig()
	c.User, c.Passwd, c.Net, c.Addr, c.DBName = user, pass, "tcp", p.Addr().String(), db
	c.MultiStatements = true
	c.InterpolateParams = false
	c.AllowNativePasswords = true
	c.MaxAllowedPacket = 0 // ask the server
	if edit != nil {
		edit(c)
	}
	return c.FormatDSN()
}

func (p *testProxy) open(tb testing.TB, db string) *sql.DB {
	tb.Helper()
	d, err := sql.Open("mysql", p.dsn("root", "", db, nil))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return d
}

// directDB opens root straight to the server on db.
func directDB(tb testing.TB, db string) *sql.DB {
	tb.Helper()
	d, err := srv.Open(db)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return d
}

// stampOf reads a row's stamp straight from the server.
func stampOf(tb testing.TB, table string, id int64) (hlc uint64, origin int) {
	tb.Helper()
	var h sql.NullInt64
	var o sql.NullInt64
	err := direct.QueryRow(fmt.Sprintf("SELECT _mlr_hlc, _mlr_origin FROM app.%s WHERE id = ?", table), id).Scan(&h, &o)
	if err != nil {
		tb.Fatalf("stamp of app.%s id %d: %v", table, id, err)
	}
	return uint64(h.Int64), int(o.Int64)
}

func mustExec(tb testing.TB, db interface {
	Exec(string, ...any) (sql.Result, error)
}, q string, args ...any) sql.Result {
	tb.Helper()
	r, err := db.Exec(q, args...)
	if err != nil {
		tb.Fatalf("%s: %v", q, err)
	}
	return r
}
