// Package cluster starts local mlproxy regions for integration tests and the
// demo: per region one throwaway mariadbd (dbtest) and one `mlproxy run`
// process with a generated config. Everything it starts is stopped by Close,
// and mariadbd servers die with the process that started them.
package cluster

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/template"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/dbtest"
	"github.com/mlproxy/mlproxy/internal/devca"
)

// Options describes a cluster.
type Options struct {
	// Names of the regions, in id order (ids start at 1). Default eu, us, ap.
	Names []string
	// Topology is all-to-all (default), star or ring; Hub names the star's hub.
	Topology string
	Hub      string
	// Setup is SQL run on every region's server before `schema apply`
	// (CREATE DATABASE/TABLE ...).
	Setup string
	// Tables is the YAML list under `tables:` (indented by two spaces).
	Tables string
	// Bin is the mlproxy binary; empty = build it once into a temp dir.
	Bin string
	// Dir holds configs and logs; empty = a new temp dir.
	Dir string
	// Extra YAML appended to each region's config (e.g. apply tuning).
	Extra string
	// Forward lets each region's proxy forward writes to the others'
	// (proxy.forward over TLS, verified with the cluster's CA).
	Forward bool
	// Later names regions (of Names) that join after the others: their
	// servers, accounts and `schema apply` are set up, but their mlproxy is
	// not started and the others' configs omit them until Join.
	Later []string
	// ServerArgs are extra mariadbd arguments for every region.
	ServerArgs []string
	// Pprof serves Go's profiler on each region's metrics listener.
	Pprof bool
	// Stdout receives the regions' JSON logs when set (in addition to files).
	Stdout *os.File
	// Prepare, when set, runs after the setup SQL and before `schema apply`
	// and before any mlproxy starts (e.g. to load data with sysbench).
	Prepare func(ctx context.Context, c *Cluster) error
	// Via, when set, gives the address region from's config uses to
	// reach the server of region to (to == from: its own server, as
	// local.addr; otherwise the peer's server, read by from's tailer),
	// so a test can put a fault proxy on every link. It is called once
	// per pair after the servers started; nil = the servers' own
	// addresses.
	Via func(from, to *Region) (string, error)
}

// Region is one running region.
type Region struct {
	Name       string
	ID         uint16
	Server     *dbtest.Server
	ProxyAddr  string
	Metrics    string
	ConfigPath string
	LogPath    string

	// ProxyCert is the certificate the proxy offers clients; ReplCert the
	// client certificate this region's tailers present to its peers
	// (subject /CN=mlproxy-<name>, required by the peers' repl_<name>).
	ProxyCert, ReplCert devca.Pair

	// LocalAddr is the address this region's config gives for its own
	// server (Server.Addr unless Options.Via says otherwise); peerAddr
	// the one it gives for each peer's server, by peer name.
	LocalAddr string
	peerAddr  map[string]string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan error
	exited  chan struct{} // closed when the running mlproxy has exited
	logFrom int64         // the size of LogPath when the running mlproxy started
}

// Cluster is a set of regions that replicate to each other.
type Cluster struct {
	Opts    Options
	Regions []*Region
	Dir     string
	Bin     string
	// CAFile verifies every server and proxy certificate of the cluster.
	CAFile string
	ownDir bool
	// instances are more mlproxy processes of a region (AddInstance).
	instances []*Region
	// joined are the Options.Later regions that joined (Join).
	joined map[string]bool
}

// waiting says r is an Options.Later region that has not joined yet.
func (c *Cluster) waiting(r *Region) bool {
	return slices.Contains(c.Opts.Later, r.Name) && !c.joined[r.Name]
}

// Leave takes region r out of the others' files and reloads them (r's
// own mlproxy is stopped by the caller): what `region remove` tells an
// operator to do. It goes back to waiting, as a Later region.
func (c *Cluster) Leave(ctx context.Context, r *Region) error {
	if !slices.Contains(c.Opts.Later, r.Name) {
		c.Opts.Later = append(c.Opts.Later, r.Name)
	}
	delete(c.joined, r.Name)
	for _, o := range c.Regions {
		if o == r || c.waiting(o) {
			continue
		}
		if err := os.WriteFile(o.ConfigPath, c.config(o), 0o600); err != nil {
			return err
		}
		if err := c.Signal(o, syscall.SIGHUP); err != nil {
			return err
		}
	}
	return nil
}

// Join adds a Later region to the others: each one's config names it, its
// `schema apply` runs again, and it reloads (SIGHUP). The joining
// region's own mlproxy is started by the caller (after seeding it).
func (c *Cluster) Join(ctx context.Context, r *Region) error {
	if c.joined == nil {
		c.joined = map[string]bool{}
	}
	c.joined[r.Name] = true
	for _, o := range c.Regions {
		if o == r || c.waiting(o) {
			continue
		}
		if err := os.WriteFile(o.ConfigPath, c.config(o), 0o600); err != nil {
			return err
		}
		if out, err := c.Command(ctx, "schema", "apply", "-c", o.ConfigPath); err != nil {
			return fmt.Errorf("cluster: schema apply on region %s: %v\n%s", o.Name, err, out)
		}
		if err := c.Signal(o, syscall.SIGHUP); err != nil {
			return err
		}
	}
	return nil
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// Build compiles cmd/mlproxy once per process and returns the binary's path.
func Build() (string, error) {
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "mlproxy-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "mlproxy")
		cmd := exec.Command("go", "build", "-o", builtBin, "./cmd/mlproxy")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("cluster: build mlproxy: %v\n%s", err, out)
		}
	})
	return builtBin, buildErr
}

// Cleanup removes what Build and the test servers left for the whole
// process (the binary, the CA, the server template); call it from
// TestMain after m.Run.
func Cleanup() {
	if builtBin != "" {
		_ = os.RemoveAll(filepath.Dir(builtBin))
	}
	dbtest.Cleanup()
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("cluster: go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("cluster: not inside the mlproxy module")
	}
	return filepath.Dir(mod), nil
}

// Start starts every region's server, applies the setup SQL and
// `mlproxy schema apply`, then starts every region's mlproxy.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if len(opts.Names) == 0 {
		opts.Names = []string{"eu", "us", "ap"}
	}
	if opts.Topology == "" {
		opts.Topology = "all-to-all"
	}
	c := &Cluster{Opts: opts, Dir: opts.Dir, Bin: opts.Bin}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if c.Bin == "" {
		if c.Bin, err = Build(); err != nil {
			return nil, err
		}
	}
	if c.Dir == "" {
		if c.Dir, err = os.MkdirTemp("", "mlproxy-cluster-"); err != nil {
			return nil, err
		}
		c.ownDir = true
	}
	for i, name := range opts.Names {
		id := uint16(i + 1)
		srv, err := dbtest.Start(dbtest.Options{
			ServerID:               uint32(id),
			AutoIncrementIncrement: 10,
			AutoIncrementOffset:    int(id),
			Args:                   opts.ServerArgs,
		})
		if err != nil {
			return nil, fmt.Errorf("cluster: region %s: %w", name, err)
		}
		r := &Region{Name: name, ID: id, Server: srv}
		c.Regions = append(c.Regions, r)
		pp, err := dbtest.FreePort()
		if err != nil {
			return nil, err
		}
		mp, err := dbtest.FreePort()
		if err != nil {
			return nil, err
		}
		r.ProxyAddr = fmt.Sprintf("127.0.0.1:%d", pp)
		r.Metrics = fmt.Sprintf("127.0.0.1:%d", mp)
		r.ConfigPath = filepath.Join(c.Dir, name+".yaml")
		r.LogPath = filepath.Join(c.Dir, name+".log")
	}
	if err := c.addresses(); err != nil {
		return nil, err
	}
	if err := c.certificates(ctx); err != nil {
		return nil, err
	}
	for _, r := range c.Regions {
		if err := os.WriteFile(r.ConfigPath, c.config(r), 0o600); err != nil {
			return nil, err
		}
		if opts.Setup == "" {
			continue
		}
		{
			db, err := r.Server.Open("")
			if err != nil {
				return nil, err
			}
			_, err = db.ExecContext(ctx, opts.Setup)
			db.Close()
			if err != nil {
				return nil, fmt.Errorf("cluster: setup SQL on region %s: %w", r.Name, err)
			}
		}
	}
	if opts.Prepare != nil {
		if err := opts.Prepare(ctx, c); err != nil {
			return nil, err
		}
	}
	for _, r := range c.Regions {
		if out, err := c.Command(ctx, "schema", "apply", "-c", r.ConfigPath); err != nil {
			return nil, fmt.Errorf("cluster: schema apply on region %s: %v\n%s", r.Name, err, out)
		}
	}
	for _, r := range c.Regions {
		if c.waiting(r) {
			continue
		}
		if err := c.StartProxy(r); err != nil {
			return nil, err
		}
	}
	for _, r := range c.Regions {
		if c.waiting(r) {
			continue
		}
		err := r.waitProxy(ctx)
		// A free port can be taken by another process between FreePort
		// and mlproxy's listen (tests and fault proxies run side by
		// side): pick new ports for that region and start it again.
		for try := 0; err != nil && strings.Contains(err.Error(), "address already in use") && try < 3; try++ {
			if perr := c.newPorts(r); perr != nil {
				return nil, perr
			}
			if serr := c.StartProxy(r); serr != nil {
				return nil, serr
			}
			err = r.waitProxy(ctx)
		}
		if err != nil {
			return nil, err
		}
	}
	return c, nil
}

// newPorts gives region r new proxy and metrics ports and rewrites its
// config (the peers' configs name servers, not proxies).
func (c *Cluster) newPorts(r *Region) error {
	pp, err := dbtest.FreePort()
	if err != nil {
		return err
	}
	mp, err := dbtest.FreePort()
	if err != nil {
		return err
	}
	r.ProxyAddr = fmt.Sprintf("127.0.0.1:%d", pp)
	r.Metrics = fmt.Sprintf("127.0.0.1:%d", mp)
	return os.WriteFile(r.ConfigPath, c.config(r), 0o600)
}

// addresses sets, for every region, the addresses its config gives for its
// own server and its peers' servers (Options.Via).
func (c *Cluster) addresses() error {
	for _, r := range c.Regions {
		r.LocalAddr = r.Server.Addr()
		r.peerAddr = map[string]string{}
		for _, p := range c.others(r) {
			r.peerAddr[p.Name] = p.Server.Addr()
		}
		if c.Opts.Via == nil {
			continue
		}
		var err error
		if r.LocalAddr, err = c.Opts.Via(r, r); err != nil {
			return fmt.Errorf("cluster: address of region %s's own server: %w", r.Name, err)
		}
		for _, p := range c.others(r) {
			if r.peerAddr[p.Name], err = c.Opts.Via(r, p); err != nil {
				return fmt.Errorf("cluster: address of region %s's server for region %s: %w", p.Name, r.Name, err)
			}
		}
	}
	return nil
}

// ReplUser is the account region name's tailers use on every peer.
func ReplUser(name string) string { return "repl_" + name }

// certificates issues each region's proxy and replication certificates
// from the test CA and creates, on every server, one replication account
// per other region that only that region's certificate opens (REQUIRE
// SUBJECT and ISSUER), as the README tells operators to.
func (c *Cluster) certificates(ctx context.Context) error {
	ca, err := dbtest.Certs()
	if err != nil {
		return err
	}
	if ca, err = ca.In(filepath.Join(c.Dir, "certs")); err != nil {
		return err
	}
	c.CAFile = ca.CAFile()
	for _, r := range c.Regions {
		if r.ProxyCert, err = ca.Server("proxy-" + r.Name); err != nil {
			return err
		}
		if r.ReplCert, err = ca.Client("mlproxy-" + r.Name); err != nil {
			return err
		}
	}
	for _, r := range c.Regions {
		db, err := r.Server.Open("")
		if err != nil {
			return err
		}
		for _, p := range c.others(r) {
			u := ReplUser(p.Name)
			_, err = db.ExecContext(ctx, fmt.Sprintf("CREATE USER '%s'@'127.0.0.1' REQUIRE SUBJECT '%s' AND ISSUER '%s'; "+
				"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '%[4]s'@'127.0.0.1'; GRANT SELECT ON mlr.* TO '%[4]s'@'127.0.0.1'; "+
				// mlproxy checksum reads peers' tables with these accounts
				// (the README grants SELECT on the replicated schemas).
				"GRANT SELECT ON *.* TO '%[4]s'@'127.0.0.1'",
				u, devca.Subject("mlproxy-"+p.Name), devca.Subject(dbtest.CAName), u))
			if err != nil {
				break
			}
		}
		db.Close()
		if err != nil {
			return fmt.Errorf("cluster: replication accounts on region %s: %w", r.Name, err)
		}
	}
	return nil
}

var configTmpl = template.Must(template.New("region").Parse(`# generated by itest/cluster
region:
  name: {{.R.Name}}
  id: {{.R.ID}}
proxy:
  listen: "{{.R.ProxyAddr}}"
  shutdown_timeout: 5s
  tls: {cert: "{{.R.ProxyCert.Cert}}", key: "{{.R.ProxyCert.Key}}"}
{{- if .C.Opts.Forward}}
  forward: {tls: {ca: "{{.C.CAFile}}"}}
{{- end}}
local:
  addr: "{{.R.LocalAddr}}"
  user: root
  password: ""
metrics:
  listen: "{{.R.Metrics}}"
{{- if .C.Opts.Pprof}}
  pprof: true
{{- end}}
topology:
  mode: {{.C.Opts.Topology}}
{{- if .C.Opts.Hub}}
  hub: {{.C.Opts.Hub}}
{{- end}}
tables:
{{.C.Opts.Tables}}
peers:
{{- range .Peers}}
  - name: {{.Name}}
    id: {{.ID}}
    proxy: "{{.ProxyAddr}}"
    server:
      addr: "{{index $.R.PeerAddrs .Name}}"
      user: {{$.ReplUser}}
      password: ""
      tls: {ca: "{{$.C.CAFile}}", cert: "{{$.R.ReplCert.Cert}}", key: "{{$.R.ReplCert.Key}}"}
{{- end}}
{{.C.Opts.Extra}}
`))

// Peers returns every other region: a region's file lists all regions, and
// the topology in the file decides which of them it pulls from. A Later
// region not yet joined is left out of the others' lists (its own lists
// them all).
func (c *Cluster) Peers(r *Region) []*Region {
	var out []*Region
	for _, p := range c.others(r) {
		if !c.waiting(p) || c.waiting(r) {
			out = append(out, p)
		}
	}
	return out
}

// others is every region but r.
func (c *Cluster) others(r *Region) []*Region {
	var out []*Region
	for _, p := range c.Regions {
		if p.Name != r.Name {
			out = append(out, p)
		}
	}
	return out
}

func (c *Cluster) config(r *Region) []byte {
	var b bytes.Buffer
	if err := configTmpl.Execute(&b, map[string]any{"R": r, "C": c, "Peers": c.Peers(r), "ReplUser": ReplUser(r.Name)}); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// Command runs the mlproxy binary with args and returns its combined output.
func (c *Cluster) Command(ctx context.Context, args ...string) ([]byte, error) {
	return exec.CommandContext(ctx, c.Bin, args...).CombinedOutput()
}

// StartProxy starts region r's `mlproxy run`.
func (c *Cluster) StartProxy(r *Region) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		return fmt.Errorf("cluster: mlproxy of region %s already running", r.Name)
	}
	logf, err := os.OpenFile(r.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if fi, err := logf.Stat(); err == nil {
		r.logFrom = fi.Size() // this run's lines start here (waitProxy)
	}
	cmd := exec.Command(c.Bin, "run", "-c", r.ConfigPath)
	cmd.Env = append(os.Environ(), "MLPROXY_CLOCK_OFFSET_FILE="+r.clockFile())
	cmd.Stdout = logf
	cmd.Stderr = logf
	if c.Opts.Stdout != nil {
		cmd.Stderr = io.MultiWriter(logf, c.Opts.Stdout)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("cluster: start mlproxy for region %s: %w", r.Name, err)
	}
	done, exited := make(chan error, 1), make(chan struct{})
	go func() { err := cmd.Wait(); logf.Close(); close(exited); done <- err }()
	r.cmd, r.done, r.exited = cmd, done, exited
	return nil
}

// PeerAddrs is, by peer name, the address region r's config gives for
// that peer's server.
func (r *Region) PeerAddrs() map[string]string { return r.peerAddr }

// ProxyExited reports whether region r's mlproxy was started and has
// exited since, without StopProxy (it crashed or stopped by itself).
func (r *Region) ProxyExited() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return false
	}
	select {
	case <-r.exited:
		return true
	default:
		return false
	}
}

func (r *Region) waitProxy(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		// The proxy's port answering is not enough: another process may
		// have taken the port between FreePort and this mlproxy's listen
		// (tests and fault proxies run side by side). This run's own log
		// must say it started (after its listen succeeded).
		err := r.startedSince()
		if err == nil {
			var db *sql.DB
			if db, err = sql.Open("mysql", r.DSN("")); err == nil {
				err = db.PingContext(ctx)
				db.Close()
			}
		}
		if err == nil {
			return nil
		}
		r.mu.Lock()
		done := r.done
		r.mu.Unlock()
		select {
		case werr := <-done:
			r.mu.Lock()
			r.cmd = nil
			r.mu.Unlock()
			return fmt.Errorf("cluster: mlproxy of region %s exited at start (%v); log %s:\n%s", r.Name, werr, r.LogPath, Tail(r.LogPath, 20))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster: mlproxy of region %s not serving on %s after 30s: %v; log:\n%s", r.Name, r.ProxyAddr, err, Tail(r.LogPath, 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startedSince reports whether region r's mlproxy logged, since its last
// start, that it is listening.
func (r *Region) startedSince() error {
	r.mu.Lock()
	from := r.logFrom
	r.mu.Unlock()
	b, err := os.ReadFile(r.LogPath)
	if err != nil {
		return err
	}
	if int64(len(b)) < from || !bytes.Contains(b[from:], []byte(`"msg":"mlproxy started"`)) {
		return fmt.Errorf("mlproxy of region %s has not logged its start yet", r.Name)
	}
	return nil
}

// WaitProxy waits until region r's proxy accepts connections.
func (c *Cluster) WaitProxy(ctx context.Context, r *Region) error { return r.waitProxy(ctx) }

// StopProxy sends SIGTERM (or SIGKILL when kill) to region r's mlproxy and
// waits for it to exit; it returns the process's exit error.
func (c *Cluster) StopProxy(r *Region, kill bool) error {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return nil
	}
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	_ = cmd.Process.Signal(sig)
	// A process stopped by SIGSTOP acts on SIGTERM only once continued.
	_ = cmd.Process.Signal(syscall.SIGCONT)
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("cluster: mlproxy of region %s did not exit within 30s of %v", r.Name, sig)
	}
}

func (r *Region) clockFile() string { return strings.TrimSuffix(r.ConfigPath, ".yaml") + ".clock" }

// SetClockOffset shifts the wall clock of region r's mlproxy by d (its
// hybrid clock and its offset measurements; not the region's server),
// through the test hook MLPROXY_CLOCK_OFFSET_FILE; mlproxy reads it within
// about 100 ms. 0 sets it back.
func (r *Region) SetClockOffset(d time.Duration) error {
	tmp := r.clockFile() + ".tmp"
	if err := os.WriteFile(tmp, []byte(d.String()+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, r.clockFile())
}

// PID is the process id of region r's running mlproxy (0 when stopped).
func (r *Region) PID() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil || r.cmd.Process == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

// Signal sends sig to region r's running mlproxy (SIGHUP: reload).
func (c *Cluster) Signal(r *Region, sig syscall.Signal) error {
	r.mu.Lock()
	cmd := r.cmd
	r.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("cluster: mlproxy of region %s is not running", r.Name)
	}
	return cmd.Process.Signal(sig)
}

// DSN is a go-sql-driver DSN for root through region r's proxy.
func (r *Region) DSN(db string) string {
	cfg := mysql.NewConfig()
	cfg.User = "root"
	cfg.Net = "tcp"
	cfg.Addr = r.ProxyAddr
	cfg.DBName = db
	cfg.Timeout = 5 * time.Second
	return cfg.FormatDSN()
}

// AddInstance starts another `mlproxy run` for region r (DESIGN: more than
// one machine per region): the same server, name and id, its own proxy and
// metrics ports, config and log (named with suffix). The peers' configs
// keep naming r's proxy. Close stops it.
func (c *Cluster) AddInstance(ctx context.Context, r *Region, suffix string) (*Region, error) {
	in := &Region{Name: r.Name, ID: r.ID, Server: r.Server, ProxyCert: r.ProxyCert, ReplCert: r.ReplCert,
		LocalAddr: r.LocalAddr, peerAddr: r.peerAddr,
		ConfigPath: filepath.Join(c.Dir, r.Name+"-"+suffix+".yaml"), LogPath: filepath.Join(c.Dir, r.Name+"-"+suffix+".log")}
	if err := c.newPorts(in); err != nil {
		return nil, err
	}
	c.instances = append(c.instances, in)
	if err := c.StartProxy(in); err != nil {
		return nil, err
	}
	return in, in.waitProxy(ctx)
}

// Close stops every proxy and server and removes the cluster's directory
// (unless it was given, or DBTEST_KEEP is set).
func (c *Cluster) Close() {
	for _, r := range c.instances {
		_ = c.StopProxy(r, false)
	}
	for _, r := range c.Regions {
		_ = c.StopProxy(r, false)
	}
	for _, r := range c.Regions {
		if r.Server != nil {
			_ = r.Server.Destroy()
		}
	}
	if c.ownDir && os.Getenv("DBTEST_KEEP") == "" {
		_ = os.RemoveAll(c.Dir)
	}
}

// Tail returns the last n lines of the file at path (a region's log).
func Tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Direct opens root on region r's server, bypassing the proxy.
func (r *Region) Direct(db string) (*sql.DB, error) { return r.Server.Open(db) }

// Dump returns every row of table (a quoted or plain `db.table`), metadata
// columns included, ordered by primary key (ORDER BY 1 is not enough for
// composite keys, so callers pass the key order in orderBy).
func (r *Region) Dump(ctx context.Context, table, columns, orderBy string) ([]string, error) {
	db, err := r.Direct("")
	if err != nil {
		return nil, err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, fmt.Sprintf("SELECT %s FROM %s ORDER BY %s", columns, table, orderBy))
	if err != nil {
		return nil, fmt.Errorf("dump %s on region %s: %w", table, r.Name, err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	var out []string
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		var b strings.Builder
		for i, v := range vals {
			if i > 0 {
				b.WriteByte('|')
			}
			if v.Valid {
				b.WriteString(v.String)
			} else {
				b.WriteString("NULL")
			}
		}
		out = append(out, b.String())
	}
	return out, rows.Err()
}

// Diff compares table across all regions row by row and returns a
// description of the first differences, or "" when every region holds the
// same rows.
func (c *Cluster) Diff(ctx context.Context, table, columns, orderBy string) (string, error) {
	var first []string
	var b strings.Builder
	for i, r := range c.Regions {
		rows, err := r.Dump(ctx, table, columns, orderBy)
		if err != nil {
			return "", err
		}
		if i == 0 {
			first = rows
			continue
		}
		if d := diffRows(first, rows); d != "" {
			fmt.Fprintf(&b, "%s vs %s on %s: %s\n", c.Regions[0].Name, r.Name, table, d)
		}
	}
	return b.String(), nil
}

func diffRows(a, b []string) string {
	in := func(rows []string) map[string]bool {
		m := make(map[string]bool, len(rows))
		for _, r := range rows {
			m[r] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var onlyA, onlyB []string
	for _, r := range a {
		if !mb[r] {
			onlyA = append(onlyA, r)
		}
	}
	for _, r := range b {
		if !ma[r] {
			onlyB = append(onlyB, r)
		}
	}
	if len(onlyA) == 0 && len(onlyB) == 0 {
		return ""
	}
	trim := func(rows []string) []string {
		if len(rows) > 5 {
			return append(rows[:5:5], fmt.Sprintf("... %d more", len(rows)-5))
		}
		return rows
	}
	return fmt.Sprintf("%d rows only in the first %v, %d rows only in the second %v", len(onlyA), trim(onlyA), len(onlyB), trim(onlyB))
}

// WaitConverged polls Diff until every region holds the same rows of every
// table, or ctx is done (then it returns the last difference).
func (c *Cluster) WaitConverged(ctx context.Context, tables map[string]string, columns string) error {
	var last string
	for {
		last = ""
		for table, orderBy := range tables {
			d, err := c.Diff(ctx, table, columns, orderBy)
			if err != nil {
				last += err.Error() + "\n"
				continue
			}
			last += d
		}
		if last == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("regions did not converge: %s", last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Sources returns the regions r pulls changes from under the cluster's
// topology: every other region in all-to-all; in a star the hub pulls from
// every spoke and a spoke from the hub; in a ring the predecessor (next
// lower id, the lowest region pulling from the highest).
func (c *Cluster) Sources(r *Region) []*Region {
	switch c.Opts.Topology {
	case "star":
		if r.Name == c.Opts.Hub {
			return c.Peers(r)
		}
		for _, p := range c.Regions {
			if p.Name == c.Opts.Hub {
				return []*Region{p}
			}
		}
		return nil
	case "ring":
		for i, p := range c.Regions {
			if p == r {
				return []*Region{c.Regions[(i+len(c.Regions)-1)%len(c.Regions)]}
			}
		}
		return nil
	default:
		return c.Peers(r)
	}
}

// GTIDSeqs parses a MariaDB GTID position ("1-1-40,2-2-7") into the
// highest sequence number per domain.
func GTIDSeqs(pos string) map[uint32]uint64 {
	out := map[uint32]uint64{}
	for _, g := range strings.Split(pos, ",") {
		f := strings.Split(strings.TrimSpace(g), "-")
		if len(f) != 3 {
			continue
		}
		var d uint32
		var n uint64
		if _, err := fmt.Sscan(f[0], &d); err != nil {
			continue
		}
		if _, err := fmt.Sscan(f[2], &n); err != nil {
			continue
		}
		if n > out[d] {
			out[d] = n
		}
	}
	return out
}

// Lag describes, for every region and every region it pulls from, how far
// its applied checkpoint (mlr.checkpoints) is behind the source's binlog
// (@@gtid_binlog_pos), and each region's binlog file:position. An empty
// behind list means every region has applied everything its sources
// logged.
func (c *Cluster) Lag(ctx context.Context) (behind []string, binlogs []string, err error) {
	type srvState struct{ gtid, pos string }
	state := make([]srvState, len(c.Regions))
	dbs := make([]*sql.DB, len(c.Regions))
	defer func() {
		for _, db := range dbs {
			if db != nil {
				db.Close()
			}
		}
	}()
	for i, r := range c.Regions {
		if dbs[i], err = r.Direct(""); err != nil {
			return nil, nil, err
		}
		var file string
		var pos uint64
		row := dbs[i].QueryRowContext(ctx, "SELECT @@gtid_binlog_pos")
		if err = row.Scan(&state[i].gtid); err != nil {
			return nil, nil, fmt.Errorf("region %s: @@gtid_binlog_pos: %w", r.Name, err)
		}
		rows, err := dbs[i].QueryContext(ctx, "SHOW MASTER STATUS")
		if err != nil {
			return nil, nil, fmt.Errorf("region %s: SHOW MASTER STATUS: %w", r.Name, err)
		}
		cols, _ := rows.Columns()
		vals := make([]sql.RawBytes, len(cols))
		ptrs := make([]any, len(cols))
		for j := range vals {
			ptrs[j] = &vals[j]
		}
		if rows.Next() {
			if err := rows.Scan(ptrs...); err != nil {
				rows.Close()
				return nil, nil, err
			}
			file = string(vals[0])
			fmt.Sscan(string(vals[1]), &pos)
		}
		rows.Close()
		state[i].pos = fmt.Sprintf("%s:%d", file, pos)
		binlogs = append(binlogs, state[i].pos)
	}
	idx := map[*Region]int{}
	for i, r := range c.Regions {
		idx[r] = i
	}
	for i, r := range c.Regions {
		if c.waiting(r) {
			continue // not replicating yet
		}
		for _, p := range c.Sources(r) {
			var cp string
			err := dbs[i].QueryRowContext(ctx, "SELECT gtid FROM mlr.checkpoints WHERE peer_id = ?", p.ID).Scan(&cp)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return nil, nil, fmt.Errorf("region %s: mlr.checkpoints: %w", r.Name, err)
			}
			have, want := GTIDSeqs(cp), GTIDSeqs(state[idx[p]].gtid)
			for d, n := range want {
				if have[d] < n {
					behind = append(behind, fmt.Sprintf("region %s has applied %s up to %q, %s's binlog is at %q", r.Name, p.Name, cp, p.Name, state[idx[p]].gtid))
					break
				}
			}
		}
	}
	return behind, binlogs, nil
}

// WaitApplied waits until every region has applied everything its sources
// logged and no region's binlog moved between two polls (so nothing is
// still in flight), or ctx is done (then it says who is behind).
func (c *Cluster) WaitApplied(ctx context.Context) error {
	var prev []string
	for {
		behind, binlogs, err := c.Lag(ctx)
		if err == nil && len(behind) == 0 && strings.Join(binlogs, ",") == strings.Join(prev, ",") {
			return nil
		}
		prev = binlogs
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("regions did not catch up: %w", err)
			}
			if len(behind) == 0 {
				return fmt.Errorf("regions did not settle: binlogs still moving (%s)", strings.Join(binlogs, ", "))
			}
			return fmt.Errorf("regions did not catch up:\n  %s", strings.Join(behind, "\n  "))
		case <-time.After(500 * time.Millisecond):
		}
	}
}
