// Package dbtest starts throwaway mariadbd servers for tests: each in its
// own temporary data directory, on a free port, with its own server_id and
// the binlog settings mlproxy requires. A server is stopped by Stop, and is
// killed with the test process if that dies first (Pdeathsig).
//
// Every server offers TLS with a certificate from one throwaway CA per
// process (Certs), so tests run encrypted links as production does;
// Cleanup removes the CA and the shared template when the tests end.
//
// It never skips: a missing mariadbd binary is an error the test reports.
package dbtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/internal/devca"
)

// Options describes one server.
type Options struct {
	// ServerID is the server_id (also the gtid_domain_id); must be unique
	// among servers that replicate with each other. Required.
	ServerID uint32
	// Port to listen on; 0 picks a free one.
	Port int
	// AutoIncrement sets auto_increment_increment/offset (0 = leave default).
	AutoIncrementIncrement, AutoIncrementOffset int
	// Args are extra mariadbd arguments, e.g. "--binlog-format=STATEMENT";
	// later arguments override the defaults.
	Args []string
}

// Server is a running mariadbd.
type Server struct {
	Opts    Options
	Port    int
	Dir     string // holds data/, the socket and error.log
	cmd     *exec.Cmd
	exited  chan struct{}
	mu      sync.Mutex
	stopped bool
}

// Addr is host:port for TCP clients.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// DSN is a go-sql-driver DSN for root (no password) on database db.
func (s *Server) DSN(db string) string {
	c := mysql.NewConfig()
	c.User = "root"
	c.Net = "tcp"
	c.Addr = s.Addr()
	c.DBName = db
	c.MultiStatements = true
	c.InterpolateParams = false
	c.ParseTime = false
	return c.FormatDSN()
}

// Open returns a *sql.DB for root on db.
func (s *Server) Open(db string) (*sql.DB, error) { return sql.Open("mysql", s.DSN(db)) }

var (
	templateOnce sync.Once
	templateRoot string // holds data/ (the template) and certs/
	templateDir  string
	templateCA   *devca.CA
	serverPair   devca.Pair
	templateErr  error
)

// CAName is the common name of the tests' CA: REQUIRE ISSUER '/CN=' + CAName.
const CAName = "mlproxy test CA"

// template installs a system database once per process; servers copy it
// (mariadb-install-db per server would cost a second each). It also makes
// the process's CA and the servers' certificate.
func template() (string, error) {
	templateOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mlproxy-dbtest-template-")
		if err != nil {
			templateErr = err
			return
		}
		templateRoot = dir
		if templateCA, templateErr = devca.New(filepath.Join(dir, "certs"), CAName); templateErr != nil {
			return
		}
		if serverPair, templateErr = templateCA.Server("mariadb"); templateErr != nil {
			return
		}
		data := filepath.Join(dir, "data")
		// Every server gets its own tmpdir: mariadbd deletes stray #sql*
		// files in its tmpdir when it starts, which would pull temporary
		// tables from under other servers sharing /tmp.
		cmd := exec.Command("mariadb-install-db", "--no-defaults", "--datadir="+data,
			"--user="+currentUser(), "--auth-root-authentication-method=normal", "--skip-test-db",
			"--tmpdir="+dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			templateErr = fmt.Errorf("dbtest: mariadb-install-db: %v\n%s", err, out)
			return
		}
		templateDir = data
	})
	return templateDir, templateErr
}

// Certs returns the CA every test server's certificate comes from; issue
// client and proxy certificates from it (they land in the same directory
// and are removed by Cleanup).
func Certs() (*devca.CA, error) {
	if _, err := template(); err != nil {
		return nil, err
	}
	return templateCA, nil
}

// Cleanup removes the template and the CA; call it from TestMain after
// m.Run, when every server has been destroyed.
func Cleanup() {
	if templateRoot != "" && os.Getenv("DBTEST_KEEP") == "" {
		_ = os.RemoveAll(templateRoot)
	}
}

func currentUser() string {
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	return "root"
}

// FreePort asks the kernel for a free TCP port on 127.0.0.1.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start installs a fresh data directory and starts mariadbd, waiting until
// it accepts connections.
func Start(opts Options) (*Server, error) {
	if opts.ServerID == 0 {
		return nil, errors.New("dbtest: ServerID is required")
	}
	if _, err := exec.LookPath("mariadbd"); err != nil {
		return nil, fmt.Errorf("dbtest: mariadbd not found on PATH (install mariadb-server): %w", err)
	}
	tmpl, err := template()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", fmt.Sprintf("mlproxy-dbtest-%d-", opts.ServerID))
	if err != nil {
		return nil, err
	}
	if out, err := exec.Command("cp", "-a", tmpl, filepath.Join(dir, "data")).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("dbtest: copy template: %v: %s", err, out)
	}
	if opts.Port == 0 {
		if opts.Port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	s := &Server{Opts: opts, Port: opts.Port, Dir: dir}
	if err := s.start(); err != nil {
		s.Destroy()
		return nil, err
	}
	return s, nil
}

func (s *Server) args() []string {
	o := s.Opts
	a := []string{
		"--no-defaults",
		"--datadir=" + filepath.Join(s.Dir, "data"),
		"--user=" + currentUser(),
		"--port=" + strconv.Itoa(s.Port),
		"--bind-address=127.0.0.1",
		"--socket=" + filepath.Join(s.Dir, "mysqld.sock"),
		"--pid-file=" + filepath.Join(s.Dir, "mysqld.pid"),
		"--log-error=" + filepath.Join(s.Dir, "error.log"),
		"--tmpdir=" + s.Dir, // its own (see template)
		"--server-id=" + strconv.Itoa(int(o.ServerID)),
		"--gtid-domain-id=" + strconv.Itoa(int(o.ServerID)),
		"--log-bin=binlog",
		"--binlog-format=ROW",
		"--binlog-row-image=FULL",
		"--binlog-row-metadata=FULL",
		"--skip-name-resolve",
		"--innodb-buffer-pool-size=64M",
		"--innodb-log-file-size=32M",
		"--innodb-flush-log-at-trx-commit=2",
		"--sync-binlog=0",
		"--max-connections=500",
		"--max-allowed-packet=64M",
		"--log-bin-trust-function-creators=1",
		"--ssl-ca=" + templateCA.CAFile(),
		"--ssl-cert=" + serverPair.Cert,
		"--ssl-key=" + serverPair.Key,
	}
	if o.AutoIncrementIncrement > 0 {
		a = append(a, "--auto-increment-increment="+strconv.Itoa(o.AutoIncrementIncrement),
			"--auto-increment-offset="+strconv.Itoa(o.AutoIncrementOffset))
	}
	return append(a, o.Args...)
}

func (s *Server) start() error {
	cmd := exec.Command("mariadbd", s.args()...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("dbtest: start mariadbd: %w", err)
	}
	s.mu.Lock()
	s.cmd = cmd
	s.exited = make(chan struct{})
	s.stopped = false
	exited := s.exited
	s.mu.Unlock()
	go func() { _ = cmd.Wait(); close(exited) }()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	db, err := s.Open("")
	if err != nil {
		return err
	}
	defer db.Close()
	for {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		err = db.PingContext(pctx)
		pcancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("dbtest: mariadbd exited during start-up: %s", s.ErrorLogTail(20))
		case <-ctx.Done():
			return fmt.Errorf("dbtest: mariadbd on port %d not ready after 60s: %v: %s", s.Port, err, s.ErrorLogTail(20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ErrorLogTail returns the last n lines of the server's error log.
func (s *Server) ErrorLogTail(n int) string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "error.log"))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Stop shuts the server down (SIGTERM, then SIGKILL after 30s). Idempotent.
func (s *Server) Stop() error { return s.signal(syscall.SIGTERM, 30*time.Second) }

// Kill stops the server with SIGKILL, as a crash would.
func (s *Server) Kill() error { return s.signal(syscall.SIGKILL, 10*time.Second) }

func (s *Server) signal(sig syscall.Signal, wait time.Duration) error {
	s.mu.Lock()
	if s.stopped || s.cmd == nil {
		s.mu.Unlock()
		return nil
	}
	s.stopped = true
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	_ = cmd.Process.Signal(sig)
	// A server stopped by SIGSTOP (Signal) acts on SIGTERM only once
	// continued; SIGCONT to a running server does nothing.
	_ = cmd.Process.Signal(syscall.SIGCONT)
	select {
	case <-exited:
		return nil
	case <-time.After(wait):
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("dbtest: mariadbd on port %d did not stop on %v within %v; killed", s.Port, sig, wait)
	}
}

// PID is the process id of the running mariadbd (0 after Stop or Kill).
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Signal sends sig to the running mariadbd without waiting: SIGSTOP and
// SIGCONT freeze and resume it as a hung host would. Use Stop and Kill to
// end it.
func (s *Server) Signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || s.cmd == nil {
		return fmt.Errorf("dbtest: mariadbd on port %d is not running", s.Port)
	}
	return s.cmd.Process.Signal(sig)
}

// Exited reports whether the server was started and has exited since
// without Stop or Kill (it crashed).
func (s *Server) Exited() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || s.exited == nil {
		return false
	}
	select {
	case <-s.exited:
		return true
	default:
		return false
	}
}

// Restart starts the server again on the same data directory and port
// after Stop or Kill.
func (s *Server) Restart() error {
	if err := s.Stop(); err != nil {
		return err
	}
	return s.start()
}

// Destroy stops the server and removes its directory.
func (s *Server) Destroy() error {
	err := s.Stop()
	if os.Getenv("DBTEST_KEEP") == "" {
		_ = os.RemoveAll(s.Dir)
	}
	return err
}
