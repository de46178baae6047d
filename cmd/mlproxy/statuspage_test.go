package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/change"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/hlc"
	"github.com/mlproxy/mlproxy/skew"
)

// fakePages is a pageSource without a database.
type fakePages struct {
	o         overview
	conflicts map[uint64]conflictPage
	err       error // conflictPage's error for ids it does not hold
	asked     []uint64
}

func (f *fakePages) overview(context.Context) overview { return f.o }

func (f *fakePages) conflictPage(_ context.Context, id uint64) (conflictPage, error) {
	f.asked = append(f.asked, id)
	if p, ok := f.conflicts[id]; ok {
		return p, nil
	}
	if f.err != nil {
		return conflictPage{}, f.err
	}
	return conflictPage{}, fmt.Errorf("no conflict %d %w", id, errNoConflict)
}

const hostile = `<script>alert("x")</script>`

func testUI(t *testing.T, f *fakePages, hist *lagHistory) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	(&statusUI{src: f, lag: hist, log: zap.NewNop()}).register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	return resp, b.String()
}

func checkHeaders(t *testing.T, path string, resp *http.Response) {
	t.Helper()
	if got := resp.Header.Get("Content-Security-Policy"); got != pageCSP {
		t.Errorf("%s: Content-Security-Policy %q, want %q", path, got, pageCSP)
	}
	if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("%s: X-Content-Type-Options %q, want nosniff", path, got)
	}
}

func sampleOverview(now time.Time) overview {
	return overview{
		Region: "eu", RegionID: 1, Instance: "host 127.0.0.1:3307 pid 7", Replicator: "active", Epoch: 3,
		Topology: "all-to-all", ConfigPath: "/etc/mlproxy/eu.yaml", Generated: now, Refresh: pageRefresh,
		Clock: skew.Status{Fenced: true, Reason: "ahead of " + hostile, MaxOffsetMs: 500},
		Regions: []regionRow{
			{Name: "eu", ID: 1, Self: true, State: "this region (local server ok)"},
			{Name: "us", ID: 2, Linked: true, State: "running", LagSecs: "0.0", LagTxns: "0", Measured: "3s ago", Txns: 12},
			{Name: "ap", ID: 3, Linked: true, State: "stopped", LagSecs: "12.5", LagTxns: "4", LastError: "apply from peer ap: " + hostile},
			{Name: "sa", ID: 4, State: "no link in this topology (star)"},
		},
		Stops: []stopRow{{Peer: "ap", Table: "app.kv", Key: `[1]`, GTID: "3-3-9", Error: "Duplicate entry '…' for key " + hostile,
			Commands: []string{"mlproxy link retry ap -c /etc/mlproxy/eu.yaml", "mlproxy link skip ap -c /etc/mlproxy/eu.yaml"}}},
		Conflicts: []conflictLine{{ID: 42, Detected: "2026-12-04 18:00:00", Peer: "us", Table: "app.kv", Key: `["` + hostile + `"]`,
			Rule: "lww", Outcome: "remote_won", State: "decided", Winner: "us"}},
		Plot: plotLag(map[string][]lagReading{
			"us": {{At: now.Add(-20 * time.Second), Secs: 0.5, Txns: 1}, {At: now.Add(-10 * time.Second), Secs: 0, Txns: 0}},
		}, []string{"us", "ap"}, now),
	}
}

// TestStatusPageOverview: the overview renders a fake status with every
// region, link state, lag, the stop with its commands, a conflict linking
// to its page and the plot; hostile strings from a peer's error, a key or
// the fence reason come out escaped; the security headers are set.
func TestStatusPageOverview(t *testing.T) {
	now := time.Now()
	srv := testUI(t, &fakePages{o: sampleOverview(now)}, newLagHistory())
	for _, path := range []string{"/", "/ui"} {
		resp, body := get(t, srv.URL+path)
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Fatalf("GET %s: %s %s", path, resp.Status, resp.Header.Get("Content-Type"))
		}
		checkHeaders(t, path, resp)
		if strings.Contains(body, "<script") {
			t.Errorf("GET %s: a hostile string came out unescaped:\n%s", path, body)
		}
		for _, want := range []string{
			`<meta http-equiv="refresh" content="10">`,
			`data-region="eu"`, `data-region="us"`, `data-region="ap"`, `data-region="sa"`,
			"no link in this topology (star)",
			`<td class="num lag-s">12.5</td>`, `<td class="num lag-txns">4</td>`,
			"&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;",
			"FENCED: ahead of &lt;script&gt;",
			"mlproxy link retry ap -c /etc/mlproxy/eu.yaml",
			`<a href="conflicts/42">42</a>`,
			"<polyline", "from us: 0.0 s", "from ap: no reading",
			"replicator <b id=\"replicator\" class=\"ok\">active</b> (epoch 3)",
		} {
			if !strings.Contains(body, want) {
				t.Errorf("GET %s: no %q in:\n%s", path, want, body)
			}
		}
	}
	if resp, _ := get(t, srv.URL+"/nothing"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /nothing: %s, want 404", resp.Status)
	}
}

// TestStatusPageErrorBox: with the local server unreadable the overview
// still renders, saying so.
func TestStatusPageErrorBox(t *testing.T) {
	o := overview{Region: "eu", Refresh: pageRefresh, Replicator: "standby",
		Regions: []regionRow{{Name: "eu", Self: true, State: "this region (local server not reachable)"}},
		Errors:  []string{"local server 127.0.0.1:3306: dial tcp: connection refused " + hostile},
		Plot:    plotLag(nil, nil, time.Now())}
	srv := testUI(t, &fakePages{o: o}, newLagHistory())
	resp, body := get(t, srv.URL+"/")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `id="errors"`) || !strings.Contains(body, "connection refused &lt;script&gt;") {
		t.Fatalf("GET /: %s; want the page with an error box:\n%s", resp.Status, body)
	}
	if !strings.Contains(body, "The conflict log could not be read") || !strings.Contains(body, "no lag readings yet") {
		t.Errorf("GET /: want the conflict log unread and the empty plot's note:\n%s", body)
	}
}

// TestStatusPageConflict: /conflicts/{id} takes only a plain decimal id
// (404 for anything else, without asking the source), 404 for an id the
// log does not hold, 503 with the error for a server error, and renders
// the conflict escaped.
func TestStatusPageConflict(t *testing.T) {
	d, err := detailOf(testConflict(), regionNames(testConfig()))
	if err != nil {
		t.Fatal(err)
	}
	f := &fakePages{conflicts: map[uint64]conflictPage{42: {Region: "eu", ID: 42, Detail: d,
		Commands: []string{"mlproxy conflicts resolve -c /etc/mlproxy/eu.yaml 42 --keep local"}}}}
	srv := testUI(t, f, newLagHistory())
	for _, junk := range []string{"abc", "007", "0", "-1", "+5", "1%20OR%201=1", "1;DROP", "18446744073709551616", "1e3", "%3Cscript%3E"} {
		resp, body := get(t, srv.URL+"/conflicts/"+junk)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET /conflicts/%s: %s, want 404", junk, resp.Status)
		}
		checkHeaders(t, "/conflicts/"+junk, resp)
		if strings.Contains(body, "<script") {
			t.Errorf("GET /conflicts/%s echoes the id unescaped:\n%s", junk, body)
		}
	}
	if len(f.asked) > 0 {
		t.Errorf("junk ids reached the source: %v", f.asked)
	}
	if resp, _ := get(t, srv.URL+"/conflicts/7"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /conflicts/7 (not in the log): %s, want 404", resp.Status)
	}
	f.err = errors.New("local server: connection refused")
	if resp, body := get(t, srv.URL+"/conflicts/8"); resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "connection refused") {
		t.Errorf("GET /conflicts/8 (server down): %s, want 503 naming the error:\n%s", resp.Status, body)
	}
	resp, body := get(t, srv.URL+"/conflicts/42")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /conflicts/42: %s", resp.Status)
	}
	checkHeaders(t, "/conflicts/42", resp)
	for _, want := range []string{
		"conflict 42 on app.docs, key [1]",
		"rule manual decided pending; pending",
		`<tr data-column="body" class="differs"><th>body</th><td class="mono wrap">eu &lt;b&gt;edit&lt;/b&gt;</td><td class="mono wrap">us edit</td><td>*</td></tr>`,
		`<tr data-column="id"><th>id</th>`,
		"{eu:5 us:7}",
		"mlproxy conflicts resolve -c /etc/mlproxy/eu.yaml 42 --keep local",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("GET /conflicts/42: no %q in:\n%s", want, body)
		}
	}
	if strings.Contains(body, "<b>edit") {
		t.Errorf("GET /conflicts/42: a row value came out unescaped:\n%s", body)
	}
}

// TestShowConflictText: `mlproxy conflicts show` prints what it printed
// before its layout moved into detailOf (shared with the status page).
func TestShowConflictText(t *testing.T) {
	var b bytes.Buffer
	if err := showConflict(&b, testConflict(), regionNames(testConfig())); err != nil {
		t.Fatal(err)
	}
	want := `conflict 42 on app.docs, key [1]
detected 2026-12-04T18:00:00Z applying peer us; rule manual decided pending; pending
        LOCAL                                         REMOTE                                        
stamp   117729342193664000 (2026-12-04 17:59:59.000)  117729342259200003 (2026-12-04 18:00:00.000)  
origin  eu                                            us                                            
vector  {eu:5 us:7}                                   -                                             
body    eu <b>edit</b>                                us edit                                       *
id      1                                             1                                             
note    NULL                                          (absent)                                      *
`
	if b.String() != want {
		t.Errorf("conflicts show printed:\n%s\nwant:\n%s", b.String(), want)
	}
}

// TestLagHistory: a peer's ring keeps the last lagPoints readings, oldest
// first; a peer no longer measured is forgotten; /status/lag gives unknown
// readings as null.
func TestLagHistory(t *testing.T) {
	h := newLagHistory()
	start := time.Now().Add(-time.Hour + time.Second)
	for i := range lagPoints + 40 {
		h.record(map[string]lagReading{
			"us": {At: start.Add(time.Duration(i) * time.Second), Secs: float64(i), Txns: int64(i)},
			"ap": {At: start.Add(time.Duration(i) * time.Second), Secs: math.NaN(), Txns: -1, Err: "peer ap: refused"},
		})
	}
	s := h.series(start.Add(time.Hour))
	if n := len(s["us"]); n != lagPoints {
		t.Fatalf("us: %d readings kept, want %d", n, lagPoints)
	}
	if first, last := s["us"][0].Secs, s["us"][lagPoints-1].Secs; first != 40 || last != lagPoints+39 {
		t.Errorf("us: readings from %v to %v, want 40 to %d (oldest first)", first, last, lagPoints+39)
	}
	if r, ok := h.latest("ap"); !ok || r.Err == "" {
		t.Errorf("ap's last reading %+v: want its error", r)
	}
	h.record(map[string]lagReading{"us": {At: time.Now(), Secs: 1, Txns: 1}})
	if _, ok := h.latest("ap"); ok {
		t.Error("ap is still held after a round without it")
	}

	h.record(map[string]lagReading{"us": {At: time.Now(), Secs: math.NaN(), Txns: -1}})
	srv := testUI(t, &fakePages{}, h)
	resp, body := get(t, srv.URL+"/status/lag")
	checkHeaders(t, "/status/lag", resp)
	var got struct {
		IntervalS int `json:"interval_s"`
		Peers     map[string][]struct {
			T    time.Time `json:"t"`
			Secs *float64  `json:"lag_s"`
			Txns *int64    `json:"lag_txns"`
		} `json:"peers"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("/status/lag: %v\n%s", err, body)
	}
	us := got.Peers["us"]
	if got.IntervalS != 10 || len(us) == 0 || us[len(us)-1].Secs != nil || us[len(us)-1].Txns != nil || us[len(us)-2].Secs == nil || *us[len(us)-2].Secs != 1 {
		t.Errorf("/status/lag: want us's last reading null and the one before 1 s:\n%s", body)
	}
}

// TestPlotLag: an unknown reading breaks a peer's line; the y axis ends at
// a round number at or above the largest lag; readings sit inside the
// plot area.
func TestPlotLag(t *testing.T) {
	now := time.Now()
	p := plotLag(map[string][]lagReading{"us": {
		{At: now.Add(-3 * time.Minute), Secs: 3},
		{At: now.Add(-2 * time.Minute), Secs: 7.2},
		{At: now.Add(-time.Minute), Secs: math.NaN()},
		{At: now, Secs: 0},
	}}, []string{"us"}, now)
	if len(p.Series) != 1 || len(p.Series[0].Lines) != 2 || len(p.Series[0].Dots) != 2 {
		t.Fatalf("series %+v: want us drawn as two lines", p.Series)
	}
	if last := p.YTicks[len(p.YTicks)-1]; last.Label != "10 s" || last.Pos != p.Top {
		t.Errorf("top y tick %+v, want 10 s at the top", last)
	}
	if p.Series[0].Dots[1].X != fmt.Sprintf("%.1f", float64(p.Right)) || p.Series[0].Dots[1].Y != fmt.Sprintf("%.1f", float64(p.Base)) {
		t.Errorf("the reading of now at 0 s is at %+v, want the bottom right corner (%d,%d)", p.Series[0].Dots[1], p.Right, p.Base)
	}
	for _, c := range []struct{ in, want float64 }{{1, 1}, {1.2, 2}, {2.1, 2.5}, {3, 5}, {7.2, 10}, {11, 20}, {0.3, 0.5}, {250, 250}, {260, 500}} {
		if got := niceCeil(c.in); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("niceCeil(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func testConfig() *config.Config {
	return &config.Config{Region: config.Region{Name: "eu", ID: 1}, Peers: []config.Peer{{Name: "us", ID: 2}, {Name: "ap", ID: 3}}}
}

func testConflict() conflictRow {
	lh := uint64(hlc.New(time.Date(2026, 12, 4, 17, 59, 59, 0, time.UTC).UnixMilli(), 0))
	rh := uint64(hlc.New(time.Date(2026, 12, 4, 18, 0, 0, 0, time.UTC).UnixMilli(), 3))
	lo := uint16(1)
	return conflictRow{ID: 42, DetectedAt: time.Date(2026, 12, 4, 18, 0, 0, 0, time.UTC), PeerID: 2, Peer: "us",
		Schema: "app", Table: "docs", PK: json.RawMessage(`[1]`), Rule: "manual", Outcome: "pending", Status: "pending",
		LocalHLC: &lh, LocalOrigin: &lo, RemoteHLC: rh, RemoteOrigin: 2,
		LocalRow:  json.RawMessage(`{"id": 1, "body": "eu <b>edit</b>", "note": null}`),
		RemoteRow: json.RawMessage(`{"id": 1, "body": "us edit"}`),
		LocalMeta: json.RawMessage(change.Meta{VV: change.Vector{1: 5, 2: 7}}.Encode()),
	}
}

// TestHideValues: with log.values off the page shows a key as its hash
// and a conflict's columns without their values, marked where they differ.
func TestHideValues(t *testing.T) {
	cfg := testConfig()
	c := testConflict()
	d, err := detailOf(c, regionNames(cfg))
	if err != nil {
		t.Fatal(err)
	}
	h := hideValues(d, string(c.PK), c.ID, c.Schema+"."+c.Table)
	if strings.Contains(h.Title, string(c.PK)) || !strings.Contains(h.Title, "key hash "+pkHash(string(c.PK))) {
		t.Errorf("title %q: want the key's hash, not the key", h.Title)
	}
	differs := 0
	for i, col := range h.Columns {
		if col.Local != hiddenValue || col.Remote != hiddenValue {
			t.Errorf("column %s shows %q / %q", col.Name, col.Local, col.Remote)
		}
		if col.Differs != d.Columns[i].Differs {
			t.Errorf("column %s: differs %v, want %v", col.Name, col.Differs, d.Columns[i].Differs)
		}
		if col.Differs {
			differs++
		}
	}
	if differs == 0 {
		t.Error("the test conflict has no differing column: the check above proves nothing")
	}
	if got := pageKey(cfg, string(c.PK)); got != "key hash "+pkHash(string(c.PK)) {
		t.Errorf("pageKey with log.values off = %q", got)
	}
	cfg.Log.Values = true
	if got := pageKey(cfg, string(c.PK)); got != string(c.PK) {
		t.Errorf("pageKey with log.values on = %q, want the key", got)
	}
}
