package proxy

import (
	"context"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestSysbenchOLTP runs sysbench's oltp_read_write (server-side prepared
// statements, go-mysql issue #915 territory) through the proxy, with its
// tables counted as replicated so every write EXECUTE is stamped.
func TestSysbenchOLTP(t *testing.T) {
	bin, err := exec.LookPath("sysbench")
	if err != nil {
		t.Fatalf("sysbench is not on PATH: install it (apt-get install sysbench) to run this test: %v", err)
	}
	replicated["sbtest.sbtest1"] = true
	replicated["sbtest.sbtest2"] = true
	t.Cleanup(func() { // after the proxy has stopped
		delete(replicated, "sbtest.sbtest1")
		delete(replicated, "sbtest.sbtest2")
	})
	// sysbench creates and drops its tables through the proxy, as a
	// migration tool would: proxy.allow_ddl.
	p := startProxy(t, func(c *Config) { c.AllowDDL = true })
	args := []string{"oltp_read_write", "--db-driver=mysql", "--mysql-host=127.0.0.1",
		"--mysql-port=" + p.port(), "--mysql-user=root", "--mysql-db=sbtest",
		"--tables=2", "--table-size=2000", "--threads=2", "--time=5", "--report-interval=0"}
	run := func(cmd string, extra ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, append(append(args, extra...), cmd)...).CombinedOutput()
		if err != nil {
			t.Fatalf("sysbench %s: %v\n%s", cmd, err, out)
		}
		return string(out)
	}
	run("cleanup")
	run("prepare")
	before := p.st.count()
	deadlocks := func() int {
		t.Helper()
		var name string
		var n int
		if err := direct.QueryRow("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'").Scan(&name, &n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	d0 := deadlocks()
	out := run("run")
	dl := deadlocks() - d0
	t.Logf("sysbench oltp_read_write through the proxy:\n%s", out)
	// The same load straight to the server, for comparison (logged only).
	directOut := run("run", "--mysql-port="+strings.TrimPrefix(srv.Addr(), "127.0.0.1:"))
	tps := regexp.MustCompile(`transactions:\s+\d+\s+\(([\d.]+) per sec`)
	if a, b := tps.FindStringSubmatch(out), tps.FindStringSubmatch(directOut); a != nil && b != nil {
		t.Logf("oltp_read_write transactions/s: proxy %s, direct %s", a[1], b[1])
	}
	run("cleanup")
	if strings.Contains(out, "FATAL") {
		t.Fatalf("sysbench reported a fatal error:\n%s", out)
	}
	m := regexp.MustCompile(`transactions:\s+(\d+)`).FindStringSubmatch(out)
	if m == nil || m[1] == "0" {
		t.Fatalf("sysbench ran no transactions:\n%s", out)
	}
	// sysbench retries deadlocks and counts them as "ignored errors", a
	// normal outcome of oltp_read_write; any other error is the proxy's.
	ig := regexp.MustCompile(`ignored errors:\s+(\d+)\s`).FindStringSubmatch(out)
	if ig == nil {
		t.Fatalf("no error count in sysbench's output:\n%s", out)
	}
	if n, _ := strconv.Atoi(ig[1]); n > dl {
		t.Fatalf("sysbench saw %d errors, the server %d deadlocks:\n%s", n, dl, out)
	}
	if !regexp.MustCompile(`reconnects:\s+0\s`).MatchString(out) {
		t.Fatalf("sysbench had to reconnect:\n%s", out)
	}
	if p.st.count() == before {
		t.Fatal("sysbench's writes were not stamped")
	}
}
