package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mlproxy/mlproxy/dbtest"
)

// haproxy is HAProxy in `mode tcp` in front of a server: the floor a
// drop-in proxy is judged against (a TCP load balancer in the same place).
type haproxy struct {
	cmd  *exec.Cmd
	dir  string
	addr string
}

// ensureHAProxy installs HAProxy with apt-get when it is missing (the
// bench runs as root on a Debian machine), or says the one command to run.
func ensureHAProxy() (string, error) {
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin"} {
		if p := filepath.Join(dir, "haproxy"); fileExists(p) {
			return p, nil
		}
	}
	if os.Geteuid() != 0 {
		return "", errors.New("haproxy is not installed: run `apt-get install -y haproxy` (as root), then make bench again")
	}
	fmt.Println("  installing haproxy (apt-get install -y haproxy) ...")
	cmd := exec.Command("apt-get", "install", "-y", "-q", "haproxy")
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get install haproxy: %v\n%s", err, out)
	}
	return "/usr/sbin/haproxy", nil
}

func fileExists(p string) bool { st, err := os.Stat(p); return err == nil && !st.IsDir() }

func startHAProxy(target string) (*haproxy, error) {
	bin, err := ensureHAProxy()
	if err != nil {
		return nil, err
	}
	port, err := dbtest.FreePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "mlproxy-bench-haproxy-")
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	conf := fmt.Sprintf(`global
  maxconn 4096
  nbthread 2
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen mysql
  bind %s
  server db %s
`, addr, target)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cmd := exec.Command(bin, "-db", "-f", path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logf, _ := os.Create(filepath.Join(dir, "haproxy.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start haproxy: %w", err)
	}
	h := &haproxy{cmd: cmd, dir: dir, addr: addr}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return h, nil
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, "haproxy.log"))
	h.Close()
	return nil, fmt.Errorf("haproxy did not listen on %s: %s", addr, b)
}

func (h *haproxy) PID() int { return h.cmd.Process.Pid }

func (h *haproxy) Close() {
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = h.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = h.cmd.Process.Kill()
		<-done
	}
	os.RemoveAll(h.dir)
}

// cpuTime is the user+system CPU time process pid has used (from
// /proc/<pid>/stat), 0 for pid 0.
func cpuTime(_ context.Context, pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz
}

// rss is process pid's resident memory in bytes.
func rss(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}
