package itest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// The dashboard and the alert rules, relative to itest/.
var (
	dashboardPath  = filepath.Join("..", "deploy", "grafana", "mlproxy-dashboard.json")
	alertsPath     = filepath.Join("..", "deploy", "prometheus", "alerts.yml")
	alertTestsPath = filepath.Join("..", "deploy", "prometheus", "alerts_test.yml")
)

// fromPrometheus are series Prometheus makes itself for every target; no
// mlproxy exposes them.
var fromPrometheus = map[string]string{
	"up": "1 while Prometheus scrapes the target (MlproxyDown)",
}

// notBeforeEvent are metric vectors whose series a region creates only
// when the event they count happens, so a healthy cluster exposes none of
// them (a vector with no children is not exposed at all). Each is checked
// to be defined in mlproxy's code instead.
var notBeforeEvent = map[string]string{
	"mlproxy_applier_errors_total":  "a peer's series starts at its first non-retryable apply error",
	"mlproxy_applier_retries_total": "a peer's series starts at its first batch retried (deadlock, lock wait timeout, lost connection)",
	"mlproxy_applier_table_stopped": "set only while a table is stopped at a refused change, deleted when it resumes",
	"mlproxy_applier_held_changes":  "set only while a table is stopped (its mlr.held backlog), deleted when it resumes",
	"mlproxy_applier_held_total":    "a peer's series starts at the first batch held for a stamp beyond clock.max_offset",
}

// TestDashboard: the alert rules pass `promtool check rules` and their unit
// tests; the dashboard parses, every panel has a title, a description and
// a query, and its ids are unique; and every metric a panel, a template
// variable or an alert rule names is exposed by some region of a running
// cluster that took writes, a conflict (under a shadow rule) and a refused
// DDL, unless it is listed above with the reason it cannot be.
func TestDashboard(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not found (%v): run `bash scripts/need.sh promtool` (Debian's prometheus package)", err)
	}
	for _, args := range [][]string{{"check", "rules", alertsPath}, {"test", "rules", alertTestsPath}} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	uses := map[string][]string{} // metric name -> where it is used
	use := func(where, expr string) {
		for _, n := range promqlNames(expr) {
			if !slices.Contains(uses[n], where) {
				uses[n] = append(uses[n], where)
			}
		}
	}
	for _, p := range dashboardPanels(t) {
		for _, e := range p.exprs {
			use("panel "+p.title, e)
		}
	}
	for _, r := range alertRules(t) {
		use("alert "+r.Alert, r.Expr)
	}
	if len(uses) == 0 {
		t.Fatal("the dashboard and the rules name no metric")
	}
	for name := range notBeforeEvent {
		if uses[name] == nil {
			t.Errorf("%s is listed in notBeforeEvent but nothing uses it: remove it", name)
		}
	}
	definedInCode(t, notBeforeEvent)

	// A cluster that did what the dashboard shows: writes through every
	// proxy, a conflict on a table with a shadow rule, a refused DDL.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startCluster(t, cluster.Options{
		Tables: strings.Replace(appTables, "table: kv\n    rule: lww", "table: kv\n    rule: lww\n    shadow: {rule: first-writer-wins}", 1),
	})
	eu, us := c.Regions[0], c.Regions[1]
	for i, r := range c.Regions {
		if err := execAll(ctx, openProxy(t, r, 1),
			fmt.Sprintf("INSERT INTO events VALUES (%d, '%s', 1, 'hello')", i+1, r.Name),
			fmt.Sprintf("INSERT INTO counters VALUES (%d, 1)", i+1),
			fmt.Sprintf("UPDATE counters SET hits = hits + 1 WHERE id = %d", i+1),
		); err != nil {
			t.Fatalf("region %s: %v", r.Name, err)
		}
	}
	if err := execAll(ctx, openProxy(t, eu, 1), "INSERT INTO kv VALUES (1, 'first', 1)"); err != nil {
		t.Fatal(err)
	}
	if _, err := openProxy(t, eu, 1).ExecContext(ctx, "ALTER TABLE kv ADD COLUMN note VARCHAR(10) NULL"); err == nil {
		t.Fatal("ALTER TABLE on a replicated table through the proxy succeeded; want it refused")
	}
	waitApplied(ctx, t, c)
	// The conflict: us is cut off while both regions change kv row 1.
	concurrentEdits(ctx, t, c, eu, us, []string{"UPDATE kv SET v = 'eu edit' WHERE k = 1"}, []string{"UPDATE kv SET v = 'us edit' WHERE k = 1"})

	exposed := map[string][]string{} // sample name -> regions
	family := map[string]string{}    // sample name -> its family
	for _, r := range c.Regions {
		for n, f := range sampleNames(t, r) {
			exposed[n] = append(exposed[n], r.Name)
			family[n] = f
		}
	}
	for _, want := range []string{"mlproxy_applier_conflicts_total", "mlproxy_applier_shadow_conflicts_total"} {
		if exposed[want] == nil {
			t.Fatalf("no region exposes %s: the test's conflict did not happen", want)
		}
	}
	var missing []string
	for name, where := range uses {
		if exposed[name] != nil || fromPrometheus[name] != "" {
			continue
		}
		if why := notBeforeEvent[name]; why != "" {
			t.Logf("%s: not checked (%s)", name, why)
			continue
		}
		sort.Strings(where)
		missing = append(missing, fmt.Sprintf("%s (used by %s)", name, strings.Join(where, "; ")))
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("no region exposes %s", m)
	}
	for name := range notBeforeEvent {
		if exposed[name] != nil {
			t.Logf("%s is in notBeforeEvent but regions %v expose it now (an event happened in this run)", name, exposed[name])
		}
	}
	shown := map[string]bool{}
	for name := range uses {
		if f := family[name]; f != "" {
			shown[f] = true
		}
	}
	var unused []string
	for _, f := range family {
		if strings.HasPrefix(f, "mlproxy_") && !shown[f] && !slices.Contains(unused, f) {
			unused = append(unused, f)
		}
	}
	sort.Strings(unused)
	t.Logf("exposed but on no panel or rule: %s", strings.Join(unused, " "))
}

// dashboardPanel is what the test reads of a panel: title and queries.
type dashboardPanel struct {
	title string
	exprs []string
}

// dashboardPanels parses the dashboard, checks its shape (fixed uid and
// title, schemaVersion 39, the datasource, region and peer variables,
// every panel titled, described, with a query on the datasource variable,
// unique ids) and returns its panels' queries, the variables' label_values
// queries as a panel named "variable NAME".
func dashboardPanels(t *testing.T) []dashboardPanel {
	t.Helper()
	type datasource struct{ Type, UID string }
	type panel struct {
		ID          int
		Type        string
		Title       string
		Description string
		Datasource  *datasource
		Targets     []struct {
			RefID      string
			Expr       string
			Datasource *datasource
		}
		Panels []json.RawMessage // a collapsed row's panels
	}
	var d struct {
		UID           string
		Title         string
		SchemaVersion int
		Panels        []json.RawMessage
		Templating    struct {
			List []struct {
				Name, Type string
				Query      json.RawMessage
				Datasource *datasource
			}
		}
	}
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	if d.UID != "mlproxy-overview" || d.Title != "mlproxy" || d.SchemaVersion != 39 {
		t.Errorf("dashboard uid %q title %q schemaVersion %d; want mlproxy-overview, mlproxy, 39", d.UID, d.Title, d.SchemaVersion)
	}
	var out []dashboardPanel
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		var q string
		if json.Unmarshal(v.Query, &q) != nil {
			var obj struct{ Query string }
			_ = json.Unmarshal(v.Query, &obj)
			q = obj.Query
		}
		switch {
		case v.Type == "datasource" && q != "prometheus":
			t.Errorf("variable %s: a datasource of type %q; want prometheus", v.Name, q)
		case v.Type == "query":
			if v.Datasource == nil || v.Datasource.UID != "${datasource}" {
				t.Errorf("variable %s does not query the datasource variable", v.Name)
			}
			out = append(out, dashboardPanel{title: "variable " + v.Name, exprs: []string{labelValuesExpr(q)}})
		}
	}
	if vars["datasource"] != "datasource" || vars["region"] != "query" || vars["peer"] != "query" {
		t.Errorf("template variables %v; want datasource (datasource), region and peer (query)", vars)
	}

	ids := map[int]string{}
	var walk func(raw []json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatalf("%s: a panel: %v", dashboardPath, err)
			}
			if prev, ok := ids[p.ID]; ok || p.ID == 0 {
				t.Errorf("panel %q: id %d is missing or used by %q too", p.Title, p.ID, prev)
			}
			ids[p.ID] = p.Title
			if p.Title == "" {
				t.Errorf("panel %d has no title", p.ID)
			}
			if p.Type == "row" { // a row holds panels and has no query of its own
				walk(p.Panels)
				continue
			}
			if strings.TrimSpace(p.Description) == "" {
				t.Errorf("panel %q has no description", p.Title)
			}
			if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q does not query the datasource variable", p.Title)
			}
			dp := dashboardPanel{title: p.Title}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("panel %q: target %s has no expr", p.Title, tg.RefID)
					continue
				}
				dp.exprs = append(dp.exprs, tg.Expr)
			}
			if len(dp.exprs) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			out = append(out, dp)
		}
	}
	walk(d.Panels)
	return out
}

// labelValues matches Grafana's label_values(METRIC_SELECTOR, LABEL).
var labelValues = regexp.MustCompile(`^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$`)

// labelValuesExpr is the selector of a label_values variable query, ""
// when it names no metric (label_values(LABEL)).
func labelValuesExpr(q string) string {
	if m := labelValues.FindStringSubmatch(q); m != nil {
		return m[1]
	}
	return ""
}

// alertRule is an alerting rule of alerts.yml.
type alertRule struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

// alertRules reads alerts.yml and checks every rule is an alert with a
// severity, a summary and a description.
func alertRules(t *testing.T) []alertRule {
	t.Helper()
	b, err := os.ReadFile(alertsPath)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Name  string      `yaml:"name"`
			Rules []alertRule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", alertsPath, err)
	}
	var out []alertRule
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("group %s: rule %q needs an alert name, a severity label, a summary and a description", g.Name, r.Alert)
			}
			out = append(out, r)
		}
	}
	return out
}

// PromQL that names no metric: quoted strings (label values), label
// matchers, grouping clauses (label names), ranges and subqueries,
// Grafana's variables.
var (
	promqlStrings  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promqlMatchers = regexp.MustCompile(`\{[^}]*\}`)
	promqlGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promqlRanges   = regexp.MustCompile(`\[[^\]]*\]`)
	promqlVars     = regexp.MustCompile(`\$\{[^}]*\}|\$\w+`)
	// promqlTokens: an identifier, or a number or duration (it starts
	// with a digit and is skipped whole: 1e3, 0.99, 5m).
	promqlTokens = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*|[0-9][A-Za-z0-9_.]*`)
)

// promqlKeywords are PromQL words that are neither metrics nor followed by
// a parenthesis (functions and aggregations are: they are skipped by it).
var promqlKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "by": true, "without": true, "on": true, "ignoring": true,
	"group_left": true, "group_right": true, "offset": true, "bool": true, "atan2": true, "inf": true, "nan": true,
}

// promqlNames returns the metric names expr selects, in order, once each.
// Histogram and summary series keep their suffix (_bucket, _sum, _count):
// they are compared with the sample names a region exposes.
func promqlNames(expr string) []string {
	e := promqlStrings.ReplaceAllString(expr, `""`)
	e = promqlMatchers.ReplaceAllString(e, "{}")
	e = promqlGrouping.ReplaceAllString(e, " ")
	e = promqlRanges.ReplaceAllString(e, "[]")
	e = promqlVars.ReplaceAllString(e, " ")
	var out []string
	for _, loc := range promqlTokens.FindAllStringIndex(e, -1) {
		tok := e[loc[0]:loc[1]]
		if tok[0] >= '0' && tok[0] <= '9' || promqlKeywords[strings.ToLower(tok)] {
			continue
		}
		if rest := strings.TrimLeft(e[loc[1]:], " \t\n"); strings.HasPrefix(rest, "(") {
			continue // a function or an aggregation
		}
		if !slices.Contains(out, tok) {
			out = append(out, tok)
		}
	}
	return out
}

// TestDashboardPromQLNames: the metric-name extractor TestDashboard relies on.
func TestDashboardPromQLNames(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`mlproxy_binlog_link_up == 0`, []string{"mlproxy_binlog_link_up"}},
		{`histogram_quantile(0.99, sum by (instance, peer, le) (rate(mlproxy_replication_lag_seconds_bucket{instance=~"$region", peer=~"$peer"}[$__rate_interval])))`,
			[]string{"mlproxy_replication_lag_seconds_bucket"}},
		{`sum without (rule, outcome) (rate(mlproxy_applier_conflicts_total{outcome=~"pending|rejected", table!="x{y}"}[10m])) > 1e3`,
			[]string{"mlproxy_applier_conflicts_total"}},
		{`sum(rate(a_total[5m])) by (job) / on(instance) group_left(peer) b_info offset 5m unless c > bool 0.5`,
			[]string{"a_total", "b_info", "c"}},
		{`mlproxy_proxy_connections / mlproxy_proxy_max_connections > 0.9 or up{job=~"mlproxy.*"} == 0 and NaN != Inf`,
			[]string{"mlproxy_proxy_connections", "mlproxy_proxy_max_connections", "up"}},
		{`label_replace(rate(x_seconds_sum[$__range]), "dst", "$1", "src", "(.*)") / rate(x_seconds_count[1h:5m])`,
			[]string{"x_seconds_sum", "x_seconds_count"}},
		{`max_over_time(go_gc_duration_seconds{quantile="1"}[${__interval}]) * 2`, []string{"go_gc_duration_seconds"}},
		{labelValuesExpr(`label_values(mlproxy_binlog_link_up{instance=~"$region"}, peer)`), []string{"mlproxy_binlog_link_up"}},
		{labelValuesExpr(`label_values(instance)`), nil},
	} {
		if got := promqlNames(tc.expr); !slices.Equal(got, tc.want) {
			t.Errorf("promqlNames(%s) = %q; want %q", tc.expr, got, tc.want)
		}
	}
}

// sampleNames scrapes region r's /metrics and returns the names of the
// samples it exposes, each with its family's name: a histogram's _bucket,
// _sum and _count, a summary's own name, _sum and _count, any other
// metric's own name.
func sampleNames(t *testing.T, r *cluster.Region) map[string]string {
	t.Helper()
	resp, err := http.Get("http://" + r.Metrics + "/metrics")
	if err != nil {
		t.Fatalf("region %s: %v", r.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("region %s /metrics: %s\n%s", r.Name, resp.Status, b)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("region %s /metrics: %v", r.Name, err)
	}
	out := map[string]string{}
	for name, f := range families {
		if len(f.GetMetric()) == 0 {
			continue
		}
		samples := []string{name}
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			samples = []string{name + "_bucket", name + "_sum", name + "_count"}
		case dto.MetricType_SUMMARY:
			samples = append(samples, name+"_sum", name+"_count")
		}
		for _, s := range samples {
			out[s] = name
		}
	}
	return out
}

// definedInCode fails for each name no Go file of the module (outside
// tests) spells as a string literal: an allow-listed typo would otherwise
// hide a metric that does not exist.
func definedInCode(t *testing.T, names map[string]string) {
	t.Helper()
	left := map[string]bool{}
	for n := range names {
		left[n] = true
	}
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && path != ".." || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for n := range left {
			if strings.Contains(string(b), `"`+n+`"`) {
				delete(left, n)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for n := range left {
		t.Errorf("%s is allow-listed but no Go file defines it", n)
	}
}
