package itest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// TestStatusPage: region eu's status page, loaded by a real headless
// browser (Debian's Chromium), shows the three regions, a lag value for
// each of eu's links and a conflict the test made, linked to its own page,
// which shows both versions of the row with the differing column marked.
// The page needs no JavaScript; the browser only parses and lays it out.
func TestStatusPage(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is not on PATH: install it (scripts/need.sh chromium, or apt-get install chromium) to run this test: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := startCluster(t, cluster.Options{})
	eu, us := c.Regions[0], c.Regions[1]
	// A conflict as TestConflictsCLI makes one: us is cut off while eu
	// and us change the same row; lww decides it in eu when us is back.
	if err := execAll(ctx, openProxy(t, eu, 1), "INSERT INTO kv VALUES (1, 'first', 1)"); err != nil {
		t.Fatal(err)
	}
	waitApplied(ctx, t, c)
	concurrentEdits(ctx, t, c, eu, us, []string{"UPDATE kv SET v = 'eu edit' WHERE k = 1"}, []string{"UPDATE kv SET v = 'us edit' WHERE k = 1"})
	var id uint64
	if err := openDirect(t, eu).QueryRowContext(ctx, "SELECT MAX(id) FROM mlr.conflicts WHERE db = 'app' AND tbl = 'kv'").Scan(&id); err != nil {
		t.Fatalf("eu logged no conflict on app.kv: %v", err)
	}

	page := "http://" + eu.Metrics + "/"
	start := time.Now()
	var dom string
	var missing []string
	// The lag is read every 10 s: a link's first reading may still be
	// on its way, so the page is loaded again until it has every value.
	for deadline := time.Now().Add(30 * time.Second); ; {
		dom = dumpDOM(ctx, t, browser, page)
		missing = overviewMissing(dom, id)
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		t.Logf("loading %s again in 2s: %s", page, strings.Join(missing, "; "))
		time.Sleep(2 * time.Second)
	}
	if len(missing) > 0 {
		t.Fatalf("%s in Chromium: %s; its DOM:\n%s", page, strings.Join(missing, "; "), dom)
	}
	t.Logf("%s loaded in Chromium with every region, lag and conflict %d (%.1fs)", page, id, time.Since(start).Seconds())

	detail := fmt.Sprintf("%sconflicts/%d", page, id)
	dom = dumpDOM(ctx, t, browser, detail)
	for _, want := range []string{
		fmt.Sprintf("conflict %d on app.kv, key hash ", id),
		"applying peer us; rule lww decided ",
		`<tr data-column="v" class="differs">`,
		"(hidden)", "vector",
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("%s in Chromium: no %q in its DOM:\n%s", detail, want, dom)
		}
	}
	// No row value on a port without authentication (log.values is off):
	// neither version's value nor the key.
	for _, value := range []string{"eu edit", "us edit", "key [1]"} {
		if strings.Contains(dom, value) {
			t.Errorf("%s in Chromium shows the row value %q with log.values off:\n%s", detail, value, dom)
		}
	}
	if dom := dumpDOM(ctx, t, browser, page+"conflicts/1%20OR%201=1"); !strings.Contains(dom, "Not found") {
		t.Errorf("a conflict id that is not a number: want the not-found page, got:\n%s", dom)
	}
}

// overviewMissing lists what the overview's DOM lacks: a row per region
// (eu, us, ap), a lag in seconds and in transactions on each of eu's links,
// and conflict id's row on app.kv linking to its page.
func overviewMissing(dom string, id uint64) []string {
	var missing []string
	for _, name := range []string{"eu", "us", "ap"} {
		if !strings.Contains(dom, `<tr data-region="`+name+`"`) {
			missing = append(missing, "no row for region "+name)
		}
	}
	for _, peer := range []string{"us", "ap"} {
		row := regexp.MustCompile(`(?s)<tr data-region="` + peer + `">(.*?)</tr>`).FindStringSubmatch(dom)
		if row == nil {
			continue
		}
		if !regexp.MustCompile(`<td class="num lag-s">[0-9]+\.[0-9]</td>`).MatchString(row[1]) ||
			!regexp.MustCompile(`<td class="num lag-txns">[0-9]+</td>`).MatchString(row[1]) {
			missing = append(missing, "no lag value on the link from "+peer)
		}
	}
	row := regexp.MustCompile(fmt.Sprintf(`(?s)<tr data-conflict="%d">(.*?)</tr>`, id)).FindStringSubmatch(dom)
	switch {
	case row == nil:
		missing = append(missing, fmt.Sprintf("no row for conflict %d", id))
	case !strings.Contains(row[1], fmt.Sprintf(`<a href="conflicts/%d">%d</a>`, id, id)) || !strings.Contains(row[1], "app.kv"):
		missing = append(missing, fmt.Sprintf("conflict %d's row does not link to its page or name app.kv", id))
	}
	return missing
}

// dumpDOM loads url in headless Chromium and returns the DOM it built.
// Chromium's profile, cache and temporary files go to the test's own
// directories; the whole process group is killed if it overruns.
func dumpDOM(ctx context.Context, t *testing.T, browser, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	home := t.TempDir()
	cmd := exec.CommandContext(ctx, browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(), "--dump-dom", url)
	cmd.Env = append(os.Environ(), "HOME="+home, "TMPDIR="+home, "XDG_CONFIG_HOME="+home, "XDG_CACHE_HOME="+home)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	// Its helpers (a crash handler) leave with it.
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if err != nil {
		t.Fatalf("chromium --dump-dom %s: %v\n%s", url, err, errOut.String())
	}
	return out.String()
}
