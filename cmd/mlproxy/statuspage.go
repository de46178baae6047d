package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/redact"
	"github.com/mlproxy/mlproxy/skew"
)

// The status page: server-rendered HTML on the metrics listener (`/`,
// `/ui`), the lag history as JSON (`/status/lag`) and one page per
// conflict (`/conflicts/{id}`, what `mlproxy conflicts show` prints). No
// JavaScript: the overview refreshes itself every pageRefresh seconds.
// It reads the local server with mlproxy's own account, each request
// bounded by pageTimeout; when the server cannot be read the page still
// renders what the process knows, with an error box.

//go:embed templates/*.html
var templateFS embed.FS

var pageTemplates = template.Must(template.New("").Funcs(template.FuncMap{
	"stateClass": stateClass,
}).ParseFS(templateFS, "templates/*.html"))

// stateClass colours a link state: running is well, stopped and stuck
// need an operator, the rest is on its way or waiting.
func stateClass(state string) string {
	switch state {
	case "running":
		return "ok"
	case "stopped", "stuck", "tables_stopped", "needs_reseed":
		return "bad"
	}
	return "warn"
}

const (
	pageRefresh   = 10 // seconds
	pageTimeout   = 3 * time.Second
	pageConflicts = 20
	// pageCSP allows the page's inline style and nothing else: no script,
	// no frame, no request the page did not make itself.
	pageCSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
)

// pageSource is what the status page shows: the running region, or a fake
// in tests.
type pageSource interface {
	overview(ctx context.Context) overview
	conflictPage(ctx context.Context, id uint64) (conflictPage, error)
}

// overview is the status page's content.
type overview struct {
	Region     string
	RegionID   uint16
	Instance   string // this process (host, proxy address, pid)
	Replicator string // active or standby
	Epoch      uint64
	Topology   string
	ConfigPath string
	Clock      skew.Status
	Generated  time.Time
	Refresh    int
	// Regions are this region, then every peer of the configuration.
	Regions []regionRow
	// Stops are links and tables stopped at a change, with what to run.
	Stops []stopRow
	// Conflicts are the newest of the conflict log, newest first;
	// ConflictsRead is false when the log could not be read.
	Conflicts     []conflictLine
	ConflictsRead bool
	Plot          lagPlot
	// Errors are what could not be read (the local server down), redacted.
	Errors []string
}

// regionRow is one region of the overview. A peer this region does not
// pull from (star, ring) has Linked false.
type regionRow struct {
	Name   string
	ID     uint16
	Self   bool
	Linked bool
	State  string
	// LagSecs and LagTxns are the last reading (lagEvery), "" when unknown.
	LagSecs, LagTxns string
	Measured         string // how long ago
	Txns, Conflicts  uint64
	Offset           string // its clock against this region's
	LastError        string
}

// stopRow is a link, or a table of a link, stopped at a change: the row
// (table and primary key, as `mlproxy status` shows them) and the error.
type stopRow struct {
	Peer      string
	Table     string
	Key       string // the primary key's values; a hash when the server is unreadable
	GTID      string
	Error     string
	Held      int  // changes held behind it (a table stopped alone)
	WholeLink bool // the whole link stopped (mlr.link_stops), not one table
	WholeDDL  bool // the table waits for DDL, not at a refused row
	Commands  []string
}

// conflictLine is a row of the overview's conflict table.
type conflictLine struct {
	ID                                     uint64
	Detected                               string
	Peer, Table, Key, Rule, Outcome, State string
	Winner                                 string
}

// conflictPage is /conflicts/{id}.
type conflictPage struct {
	Region     string
	ConfigPath string
	ID         uint64
	Detail     conflictDetail
	Commands   []string // resolve commands, for a conflict waiting for an operator
	Hidden     bool     // row values hidden (log.values off)
}

// statusUI serves the status page.
type statusUI struct {
	src pageSource
	lag *lagHistory
	log *zap.Logger

	renders chan struct{} // places for pages being read (maxRenders), made by register
}

// maxRenders bounds the pages read from the local server at once: they
// share its pool with the clock, the appliers and the guard, and the port
// has no authentication. Beyond it a request gets 503 at once.
const maxRenders = 2

// acquire takes one of the maxRenders places, or answers 503 and says no.
func (u *statusUI) acquire(w http.ResponseWriter) bool {
	select {
	case u.renders <- struct{}{}:
		return true
	default:
		w.Header().Set("Retry-After", "2")
		http.Error(w, "mlproxy status page: busy (at most 2 pages at once); retry in a moment", http.StatusServiceUnavailable)
		return false
	}
}

func (u *statusUI) release() { <-u.renders }

// register adds the status page's handlers to mux.
func (u *statusUI) register(mux *http.ServeMux) {
	u.renders = make(chan struct{}, maxRenders)
	mux.HandleFunc("GET /{$}", u.serveOverview)
	mux.HandleFunc("GET /ui", u.serveOverview)
	mux.HandleFunc("GET /status/lag", u.serveLag)
	mux.HandleFunc("GET /conflicts/{id}", u.serveConflict)
}

// pageHeaders sets what every response of the status page carries.
func pageHeaders(w http.ResponseWriter, contentType string) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
}

func (u *statusUI) serveOverview(w http.ResponseWriter, req *http.Request) {
	if !u.acquire(w) {
		return
	}
	defer u.release()
	ctx, cancel := context.WithTimeout(req.Context(), pageTimeout)
	defer cancel()
	u.render(w, http.StatusOK, "status.html", u.src.overview(ctx))
}

// conflictID is an id as the page links it: decimal digits, no sign, no
// leading zero.
var conflictID = regexp.MustCompile(`^[1-9][0-9]{0,19}$`)

func (u *statusUI) serveConflict(w http.ResponseWriter, req *http.Request) {
	raw := req.PathValue("id")
	id, err := strconv.ParseUint(raw, 10, 64)
	if !conflictID.MatchString(raw) || err != nil {
		u.render(w, http.StatusNotFound, "error.html", errorPage{Title: "Not found", Message: "A conflict id is a number."})
		return
	}
	if !u.acquire(w) {
		return
	}
	defer u.release()
	ctx, cancel := context.WithTimeout(req.Context(), pageTimeout)
	defer cancel()
	p, err := u.src.conflictPage(ctx, id)
	switch {
	case errors.Is(err, errNoConflict):
		u.render(w, http.StatusNotFound, "error.html", errorPage{Title: "Not found", Message: fmt.Sprintf("No conflict %d in this region's log (ids are per region).", id)})
	case err != nil:
		u.render(w, http.StatusServiceUnavailable, "error.html", errorPage{Title: fmt.Sprintf("Conflict %d", id), Message: redact.Error(err)})
	default:
		u.render(w, http.StatusOK, "conflict.html", p)
	}
}

// errorPage is a page that only says what went wrong.
type errorPage struct{ Title, Message string }

// render executes a template into a buffer first, so that a failure is a
// clean 500, never half a page.
func (u *statusUI) render(w http.ResponseWriter, code int, name string, data any) {
	var b bytes.Buffer
	if err := pageTemplates.ExecuteTemplate(&b, name, data); err != nil {
		u.log.Error("status page not rendered", zap.String("template", name), zap.Error(err))
		pageHeaders(w, "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintln(w, "status page: template failed (see the log)")
		return
	}
	pageHeaders(w, "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(b.Bytes())
}

// lagJSON is /status/lag: every source peer's readings of the last hour,
// oldest first (lag_s and lag_txns null when unknown).
type lagJSON struct {
	IntervalS int                     `json:"interval_s"`
	Peers     map[string][]lagReading `json:"peers"`
}

func (u *statusUI) serveLag(w http.ResponseWriter, _ *http.Request) {
	pageHeaders(w, "application/json")
	_ = json.NewEncoder(w).Encode(lagJSON{IntervalS: int(lagEvery / time.Second), Peers: u.lag.series(time.Now())})
}

// statusSource is the running region as the page's source.
type statusSource struct{ r *region }

var _ pageSource = statusSource{}

func (s statusSource) overview(ctx context.Context) overview {
	r := s.r
	cfg := r.current()
	st := r.status()
	now := time.Now()
	o := overview{
		Region: cfg.Region.Name, RegionID: cfg.Region.ID, Instance: instanceName(cfg),
		Replicator: st.Replicator, Epoch: st.Epoch, Topology: cfg.Topology.Mode, ConfigPath: cfg.Path,
		Clock: st.Clock, Generated: now.UTC(), Refresh: pageRefresh,
	}
	local := "ok"
	if err := r.db.PingContext(ctx); err != nil {
		local = "not reachable"
		o.Errors = append(o.Errors, "local server "+cfg.Local.Addr+": "+redact.Error(err))
	}
	o.Regions = regionRows(cfg, st, r.lag, local, now)
	o.Stops = s.stops(ctx, cfg, st, &o.Errors)
	for i := range o.Regions { // the stop's own box says it all, with the key
		if row := &o.Regions[i]; slices.ContainsFunc(o.Stops, func(sr stopRow) bool { return sr.Peer == row.Name }) {
			row.LastError = "stopped at a change: see Stopped below"
		}
	}
	if len(o.Errors) == 0 {
		rows, err := listConflicts(ctx, r.db, cfg, listFilter{limit: pageConflicts, output: "table"})
		if err != nil {
			o.Errors = append(o.Errors, "recent conflicts: "+redact.Error(err))
		}
		o.Conflicts, o.ConflictsRead = conflictLines(rows, cfg), err == nil
	}
	o.Plot = plotLag(r.lag.series(now), sourceNames(cfg), now)
	return o
}

func sourceNames(cfg *config.Config) []string {
	var names []string
	for _, p := range cfg.Sources() {
		names = append(names, p.Name)
	}
	return names
}

// regionRows lays out this region and every peer of cfg: links from st,
// lag from hist, clock offsets from st.Clock.
func regionRows(cfg *config.Config, st statusPage, hist *lagHistory, local string, now time.Time) []regionRow {
	links := st.links()
	offsets := map[string]skew.Reading{}
	for _, c := range st.Clock.Peers {
		offsets[c.Peer] = c
	}
	rows := []regionRow{{Name: cfg.Region.Name, ID: cfg.Region.ID, Self: true, State: "this region (local server " + local + ")"}}
	for _, p := range cfg.Peers {
		row := regionRow{Name: p.Name, ID: p.ID, Linked: containsPeer(cfg.Sources(), p.Name)}
		if c, ok := offsets[p.Name]; ok {
			if c.Error != "" {
				row.Offset = "unknown: " + c.Error
			} else if !c.MeasuredAt.IsZero() {
				row.Offset = fmt.Sprintf("%+.1f ms (rtt %.1f ms)", c.OffsetMs, c.RTTMs)
			}
		}
		if !row.Linked {
			row.State = "no link in this topology (" + cfg.Topology.Mode + ")"
			rows = append(rows, row)
			continue
		}
		if l, ok := links[p.Name]; ok {
			row.State, row.LastError, row.Txns, row.Conflicts = l.State, l.LastError, l.Txns, l.Conflicts
			if l.Breaker != "" && l.Breaker != "closed" {
				row.State += " (breaker " + l.Breaker + ")"
			}
		} else if st.Replicator != "active" {
			row.State = "not run by this instance (standby)"
		} else {
			row.State = "starting"
		}
		if lr, ok := hist.latest(p.Name); ok {
			if !math.IsNaN(lr.Secs) {
				row.LagSecs = strconv.FormatFloat(lr.Secs, 'f', 1, 64)
			}
			if lr.Txns >= 0 {
				row.LagTxns = strconv.FormatInt(lr.Txns, 10)
			}
			row.Measured = now.Sub(lr.At).Round(time.Second).String() + " ago"
			if lr.Err != "" && row.LastError == "" {
				row.LastError = "lag not measured: " + lr.Err
			}
		}
		rows = append(rows, row)
	}
	return rows
}

// stops reads what each source link is stopped at from the local server
// (mlr.link_stops, mlr.table_stops: the key's values, as `mlproxy status`
// shows them); when the server cannot be read, from the links themselves
// (a key hash). Errors are added to errs.
func (s statusSource) stops(ctx context.Context, cfg *config.Config, st statusPage, errs *[]string) []stopRow {
	var out []stopRow
	retry := func(peer, table string) []string {
		t := ""
		if table != "" {
			t = " --table " + table
		}
		return []string{
			fmt.Sprintf("mlproxy link retry %s%s -c %s", peer, t, cfg.Path),
			fmt.Sprintf("mlproxy link skip %s%s -c %s", peer, t, cfg.Path),
		}
	}
	if len(*errs) == 0 {
		rows, err := s.r.db.QueryContext(ctx, "SELECT peer_id, CONCAT(db, '.', tbl), pk, gtid, error FROM mlr.link_stops ORDER BY peer_id")
		if err == nil {
			names := regionNames(cfg)
			for rows.Next() {
				var id uint16
				var sr stopRow
				if err = rows.Scan(&id, &sr.Table, &sr.Key, &sr.GTID, &sr.Error); err != nil {
					break
				}
				sr.Peer, sr.WholeLink = names[id], true
				if sr.Peer == "" {
					sr.Peer = strconv.Itoa(int(id))
				}
				sr.Commands = retry(sr.Peer, "")
				out = append(out, sr)
			}
			if err == nil {
				err = rows.Err()
			}
			rows.Close()
		}
		if err == nil {
			for _, p := range cfg.Sources() {
				stops, err := tableStops(ctx, s.r.db, p)
				if err != nil {
					*errs = append(*errs, redact.Error(err))
				}
				for _, ts := range stops {
					// The applier's key hash: the one its logs and the
					// in-memory stops above show for the same change.
					key := "key hash " + ts.keyHash
					if cfg.Log.Values {
						key = ts.pk
					}
					sr := stopRow{Peer: p.Name, Table: ts.table, Key: key, GTID: ts.gtid, Error: ts.err, Held: ts.held}
					if ts.kind == "ddl" {
						sr.WholeDDL = true
						sr.Commands = []string{"run the DDL in this region (mlproxy schema ddl, then mlproxy schema apply -c " + cfg.Path + "): the table resumes by itself"}
					} else {
						sr.Commands = retry(p.Name, ts.table)
					}
					out = append(out, sr)
				}
			}
			return out
		}
		*errs = append(*errs, "stopped links: "+redact.Error(err))
		out = nil
	}
	// The server is not readable: what the links know (no key values).
	for _, l := range st.Links {
		if l.Stopped != nil {
			out = append(out, stopRow{Peer: l.Peer, Table: l.Stopped.Table, Key: "key hash " + l.Stopped.KeyHash, GTID: l.Stopped.GTID,
				Error: l.Stopped.Error, WholeLink: true, Commands: retry(l.Peer, "")})
		}
		for _, ts := range l.TableStops {
			sr := stopRow{Peer: l.Peer, Table: ts.Table, Key: "key hash " + ts.KeyHash, GTID: ts.GTID, Error: ts.Error, WholeDDL: ts.Kind == "ddl"}
			if !sr.WholeDDL {
				sr.Commands = retry(l.Peer, ts.Table)
			}
			out = append(out, sr)
		}
	}
	return out
}

// conflictLines lays out conflicts for the overview; the winner is the
// region whose version the rule kept.
func conflictLines(rows []conflictRow, cfg *config.Config) []conflictLine {
	names := regionNames(cfg)
	origin := func(o *uint16) string {
		if o == nil {
			return cfg.Region.Name
		}
		if n := names[*o]; n != "" {
			return n
		}
		return strconv.Itoa(int(*o))
	}
	out := make([]conflictLine, 0, len(rows))
	for _, c := range rows {
		l := conflictLine{ID: c.ID, Detected: c.DetectedAt.UTC().Format("2006-01-02 15:04:05"), Peer: c.Peer,
			Table: c.Schema + "." + c.Table, Key: pageKey(cfg, string(c.PK)), Rule: c.Rule, Outcome: c.Outcome, State: c.Status}
		ro := c.RemoteOrigin
		switch {
		case c.Status == "resolved":
			l.Winner = "resolved: " + c.Resolution
		case c.Outcome == "local_won":
			l.Winner = origin(c.LocalOrigin)
		case c.Outcome == "remote_won":
			l.Winner = origin(&ro)
		case c.Outcome == "merged":
			l.Winner = "both (merged)"
		case c.Status == "pending":
			l.Winner = "none yet: an operator decides"
		default:
			l.Winner = "-"
		}
		out = append(out, l)
	}
	return out
}

func (s statusSource) conflictPage(ctx context.Context, id uint64) (conflictPage, error) {
	cfg := s.r.current()
	c, err := getConflict(ctx, s.r.db, cfg, id, false)
	if err != nil {
		return conflictPage{}, err
	}
	d, err := detailOf(c, regionNames(cfg))
	if err != nil {
		return conflictPage{}, err
	}
	p := conflictPage{Region: cfg.Region.Name, ConfigPath: cfg.Path, ID: id, Detail: d}
	if !cfg.Log.Values {
		p.Detail = hideValues(d, string(c.PK), c.ID, c.Schema+"."+c.Table)
		p.Hidden = true
	}
	if c.Status == "pending" {
		for _, keep := range []string{"local", "remote"} {
			p.Commands = append(p.Commands, fmt.Sprintf("mlproxy conflicts resolve -c %s %d --keep %s", cfg.Path, id, keep))
		}
	}
	return p, nil
}

// lagPlot is the lag of the last hour drawn as inline SVG: one polyline
// per unbroken run of readings of a peer (an unknown reading breaks it),
// coordinates computed here so the template only places them.
type lagPlot struct {
	Width, Height          int
	Left, Right, Top, Base int // the plot area
	LabelX, LabelY         int // where the y labels end, the x labels sit
	LegendX, LegendX2      int // a legend entry's line
	LegendText             int
	Series                 []plotSeries
	YTicks, XTicks         []plotTick
	Empty                  bool
}

type plotSeries struct {
	Peer, Color string
	Lines       []string // polyline points, "x,y x,y ..."
	Dots        []plotDot
	Last        string // the last reading, for the legend
	LegendY     int
}

type plotDot struct{ X, Y string }

type plotTick struct {
	Pos   int // y for YTicks, x for XTicks
	Label string
}

var plotColors = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"}

// plotLag draws series (by peer, oldest first) over the hour before now,
// peers in the order given.
func plotLag(series map[string][]lagReading, peers []string, now time.Time) lagPlot {
	p := lagPlot{Width: 760, Height: 200, Left: 56, Right: 600, Top: 12, Base: 168}
	p.LabelX, p.LabelY = p.Left-6, p.Base+18
	p.LegendX, p.LegendX2, p.LegendText = p.Right+16, p.Right+36, p.Right+42
	top := 0.0
	for _, rs := range series {
		for _, r := range rs {
			if !math.IsNaN(r.Secs) {
				top = max(top, r.Secs)
			}
		}
	}
	ymax := niceCeil(max(top, 1))
	from := now.Add(-time.Hour)
	x := func(t time.Time) float64 {
		f := float64(t.Sub(from)) / float64(time.Hour)
		return float64(p.Left) + min(max(f, 0), 1)*float64(p.Right-p.Left)
	}
	y := func(v float64) float64 { return float64(p.Base) - v/ymax*float64(p.Base-p.Top) }
	for i := 0; i <= 4; i++ {
		v := ymax * float64(i) / 4
		p.YTicks = append(p.YTicks, plotTick{Pos: int(math.Round(y(v))), Label: strconv.FormatFloat(v, 'g', 4, 64) + " s"})
	}
	for m := 60; m >= 0; m -= 15 {
		label := "now"
		if m > 0 {
			label = "-" + strconv.Itoa(m) + " min"
		}
		p.XTicks = append(p.XTicks, plotTick{Pos: int(math.Round(x(now.Add(-time.Duration(m) * time.Minute)))), Label: label})
	}
	names := slices.Clone(peers)
	for name := range series { // peers measured but no longer configured: still drawn
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	sort.SliceStable(names[len(peers):], func(i, j int) bool { return names[len(peers)+i] < names[len(peers)+j] })
	p.Empty = true
	for i, name := range names {
		s := plotSeries{Peer: name, Color: plotColors[i%len(plotColors)], Last: "no reading", LegendY: p.Top + 14 + 20*i}
		var pts []string
		flush := func() {
			if len(pts) > 0 {
				s.Lines = append(s.Lines, strings.Join(pts, " "))
				last := strings.Split(pts[len(pts)-1], ",")
				s.Dots = append(s.Dots, plotDot{X: last[0], Y: last[1]})
				pts = nil
			}
		}
		for _, r := range series[name] {
			if math.IsNaN(r.Secs) {
				flush()
				s.Last = "unknown"
				continue
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(r.At), y(r.Secs)))
			s.Last = strconv.FormatFloat(r.Secs, 'f', 1, 64) + " s"
			p.Empty = false
		}
		flush()
		p.Series = append(p.Series, s)
	}
	return p
}

// niceCeil is the smallest of 1, 2, 2.5, 5 times a power of ten at or
// above v (v > 0).
func niceCeil(v float64) float64 {
	e := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*e >= v {
			return m * e
		}
	}
	return 10 * e
}

// The status page shows no row value unless log.values is on (DESIGN: no
// row value in logs, metrics or status; the metrics port has no
// authentication): keys are shown as their hash, and a conflict's columns
// as whether they differ. `mlproxy conflicts show` prints the values to an
// operator with an account on the server.
const hiddenValue = "(hidden)"

// pageKey is a primary key as the page shows it.
func pageKey(cfg *config.Config, pk string) string {
	if cfg.Log.Values {
		return pk
	}
	return "key hash " + pkHash(pk)
}

// pkHash is the first 12 hex digits of the key text's SHA-256.
func pkHash(pk string) string {
	sum := sha256.Sum256([]byte(pk))
	return hex.EncodeToString(sum[:6])
}

// hideValues is d without row values: the title names the key's hash,
// each column keeps its name and whether it differs.
func hideValues(d conflictDetail, pk string, id uint64, table string) conflictDetail {
	d.Title = fmt.Sprintf("conflict %d on %s, key hash %s", id, table, pkHash(pk))
	cols := make([]detailRow, len(d.Columns))
	for i, c := range d.Columns {
		cols[i] = detailRow{Name: c.Name, Local: hiddenValue, Remote: hiddenValue, Differs: c.Differs}
	}
	d.Columns = cols
	return d
}
