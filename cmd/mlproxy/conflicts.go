package main

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/spf13/cobra"

	"github.com/mlproxy/mlproxy/change"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/hlc"
	"github.com/mlproxy/mlproxy/schema"
)

// The conflict log (mlr.conflicts) is this region's: each region logs the
// conflicts its appliers met. The CLI reads it with the operator's local
// credentials and may show row values (logs and metrics never do).

func conflictsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "conflicts",
		Short: "List, show and resolve the conflicts this region's appliers logged",
	}
	cmd.AddCommand(conflictsListCmd(), conflictsShowCmd(), conflictsResolveCmd())
	return cmd
}

// conflictRow is one row of mlr.conflicts.
type conflictRow struct {
	ID           uint64          `json:"id"`
	DetectedAt   time.Time       `json:"detected_at"`
	PeerID       uint16          `json:"peer_id"`
	Peer         string          `json:"peer"`
	Schema       string          `json:"schema"`
	Table        string          `json:"table"`
	PK           json.RawMessage `json:"pk"`
	Rule         string          `json:"rule"`
	Outcome      string          `json:"outcome"`
	Status       string          `json:"status"` // pending, resolved, decided
	LocalHLC     *uint64         `json:"local_hlc,omitempty"`
	LocalOrigin  *uint16         `json:"local_origin,omitempty"`
	RemoteHLC    uint64          `json:"remote_hlc"`
	RemoteOrigin uint16          `json:"remote_origin"`
	LocalRow     json.RawMessage `json:"local_row,omitempty"`
	RemoteRow    json.RawMessage `json:"remote_row,omitempty"`
	LocalMeta    json.RawMessage `json:"local_meta,omitempty"`
	RemoteMeta   json.RawMessage `json:"remote_meta,omitempty"`
	ResolvedAt   *time.Time      `json:"resolved_at,omitempty"`
	Resolution   string          `json:"resolution,omitempty"`
	// What the table's shadow rule would have done (tables with one).
	ShadowRule    string          `json:"shadow_rule,omitempty"`
	ShadowOutcome string          `json:"shadow_outcome,omitempty"`
	ShadowRow     json.RawMessage `json:"shadow_row,omitempty"`
	ShadowDiffers *bool           `json:"shadow_differs,omitempty"`
}

const conflictColumns = "id, detected_at, peer_id, db, tbl, pk, rule, outcome, local_hlc, local_origin, remote_hlc, remote_origin, " +
	"local_row, remote_row, local_meta, remote_meta, resolved_at, COALESCE(resolution, ''), " +
	"COALESCE(shadow_rule, ''), COALESCE(shadow_outcome, ''), shadow_row, shadow_differs"

// serverTime is how the server prints a TIMESTAMP(6) (the CLI's sessions
// run in UTC).
const serverTime = "2006-01-02 15:04:05.999999"

func scanConflict(sc interface{ Scan(...any) error }, names map[uint16]string) (conflictRow, error) {
	var c conflictRow
	var lh sql.NullInt64
	var lo sql.NullInt16
	var lr, rr, lm, rm sql.NullString
	var ra, sr sql.NullString
	var sd sql.NullBool
	var pk, da string
	if err := sc.Scan(&c.ID, &da, &c.PeerID, &c.Schema, &c.Table, &pk, &c.Rule, &c.Outcome, &lh, &lo,
		&c.RemoteHLC, &c.RemoteOrigin, &lr, &rr, &lm, &rm, &ra, &c.Resolution,
		&c.ShadowRule, &c.ShadowOutcome, &sr, &sd); err != nil {
		return c, err
	}
	if sd.Valid {
		c.ShadowDiffers = &sd.Bool
	}
	c.PK = json.RawMessage(pk)
	if lh.Valid {
		v := uint64(lh.Int64)
		c.LocalHLC = &v
	}
	if lo.Valid {
		v := uint16(lo.Int16)
		c.LocalOrigin = &v
	}
	raw := func(s sql.NullString) json.RawMessage {
		if !s.Valid {
			return nil
		}
		return json.RawMessage(s.String)
	}
	c.LocalRow, c.RemoteRow, c.LocalMeta, c.RemoteMeta, c.ShadowRow = raw(lr), raw(rr), raw(lm), raw(rm), raw(sr)
	var err error
	if c.DetectedAt, err = time.Parse(serverTime, da); err != nil {
		return c, fmt.Errorf("conflict %d: detected_at %q: %w", c.ID, da, err)
	}
	if ra.Valid {
		t, err := time.Parse(serverTime, ra.String)
		if err != nil {
			return c, fmt.Errorf("conflict %d: resolved_at %q: %w", c.ID, ra.String, err)
		}
		c.ResolvedAt = &t
	}
	c.Peer = names[c.PeerID]
	if c.Peer == "" {
		c.Peer = fmt.Sprint(c.PeerID)
	}
	switch {
	case c.ResolvedAt != nil:
		c.Status = "resolved"
	case slices.Contains(openOutcomes, c.Outcome):
		c.Status = "pending"
	default:
		c.Status = "decided"
	}
	return c, nil
}

// openOutcomes are the outcomes that wait for an operator until resolved:
// a manual table's conflict (pending), and a remote change a unique or
// foreign key refused, recorded whole (rejected under on_constraint log,
// skipped by `mlproxy link skip`): the regions differ in that row until
// someone resolves it.
var openOutcomes = []string{"pending", "rejected", "skipped"}

// openOutcomesSQL is openOutcomes as an SQL list.
const openOutcomesSQL = "('pending', 'rejected', 'skipped')"

// regionNames maps every region id of cfg to its name.
func regionNames(cfg *config.Config) map[uint16]string {
	m := map[uint16]string{}
	for name, id := range cfg.RegionIDs() {
		m[id] = name
	}
	return m
}

// timeFlag parses --since/--until: an RFC 3339 time, or a duration back
// from now ("2h", "30m").
func timeFlag(name, v string) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil {
		return time.Now().Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("--%s %q: want an RFC 3339 time (2026-12-04T18:00:00Z) or a duration back from now (2h)", name, v)
	}
	return t, nil
}

// splitTable parses "db.table".
func splitTable(v string) (string, string, error) {
	db, tbl, ok := strings.Cut(v, ".")
	if !ok || db == "" || tbl == "" {
		return "", "", fmt.Errorf("--table %q: want schema.table", v)
	}
	return db, tbl, nil
}

type listFilter struct {
	table, rule, outcome, peer, status, since, until, output string
	limit                                                    int
	// shadow lists only conflicts of tables with a shadow rule, with what
	// it would have done.
	shadow bool
}

func conflictsListCmd() *cobra.Command {
	var path string
	var f listFilter
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Conflicts, newest first (filters: --table --rule --outcome --peer --status --since --until)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg, db, err := loadLocal(ctx, path)
			if err != nil {
				return err
			}
			defer db.Close()
			rows, err := listConflicts(ctx, db, cfg, f)
			if err != nil {
				return err
			}
			if f.shadow {
				return printShadow(cmd.OutOrStdout(), rows, f.output)
			}
			return printConflicts(cmd.OutOrStdout(), rows, f.output)
		},
	}
	configFlag(cmd, &path)
	fl := cmd.Flags()
	fl.StringVar(&f.table, "table", "", "only this table (schema.table)")
	fl.StringVar(&f.rule, "rule", "", "only this rule (lww, manual, ...)")
	fl.StringVar(&f.outcome, "outcome", "", "only this outcome (local_won, remote_won, merged, pending, rejected, skipped)")
	fl.StringVar(&f.peer, "peer", "", "only conflicts met applying this peer's changes")
	fl.StringVar(&f.status, "status", "", "pending, resolved or decided (decided: settled by the rule)")
	fl.StringVar(&f.since, "since", "", "detected at or after (RFC 3339, or a duration back from now: 2h)")
	fl.StringVar(&f.until, "until", "", "detected before (RFC 3339, or a duration back from now)")
	fl.IntVar(&f.limit, "limit", 100, "at most this many (0 = all)")
	fl.StringVarP(&f.output, "output", "o", "table", "table or json")
	fl.BoolVar(&f.shadow, "shadow", false, "only conflicts of tables with a shadow rule, beside what it would have done (and how many it would have ended differently)")
	return cmd
}

func listConflicts(ctx context.Context, db *sql.DB, cfg *config.Config, f listFilter) ([]conflictRow, error) {
	var where []string
	var args []any
	if f.table != "" {
		s, t, err := splitTable(f.table)
		if err != nil {
			return nil, err
		}
		where, args = append(where, "db = ? AND tbl = ?"), append(args, s, t)
	}
	if f.rule != "" {
		where, args = append(where, "rule = ?"), append(args, f.rule)
	}
	if f.outcome != "" {
		where, args = append(where, "outcome = ?"), append(args, f.outcome)
	}
	if f.shadow {
		where = append(where, "shadow_rule IS NOT NULL")
	}
	if f.peer != "" {
		id, ok := cfg.RegionIDs()[f.peer]
		if !ok {
			return nil, fmt.Errorf("--peer %q: not a region of %s", f.peer, cfg.Path)
		}
		where, args = append(where, "peer_id = ?"), append(args, id)
	}
	switch f.status {
	case "":
	case "pending":
		where = append(where, "outcome IN "+openOutcomesSQL+" AND resolved_at IS NULL")
	case "resolved":
		where = append(where, "resolved_at IS NOT NULL")
	case "decided":
		where = append(where, "outcome NOT IN "+openOutcomesSQL+" AND resolved_at IS NULL")
	default:
		return nil, fmt.Errorf("--status %q: want pending, resolved or decided", f.status)
	}
	for _, b := range []struct{ name, v, op string }{{"since", f.since, ">="}, {"until", f.until, "<"}} {
		if b.v == "" {
			continue
		}
		t, err := timeFlag(b.name, b.v)
		if err != nil {
			return nil, err
		}
		where, args = append(where, "detected_at "+b.op+" ?"), append(args, t.UTC())
	}
	if f.output != "table" && f.output != "json" {
		return nil, fmt.Errorf("--output %q: want table or json", f.output)
	}
	q := "SELECT " + conflictColumns + " FROM mlr.conflicts"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY id DESC"
	if f.limit > 0 {
		q += fmt.Sprintf(" LIMIT %d", f.limit)
	}
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("read mlr.conflicts: %w (did `mlproxy schema apply` run?)", err)
	}
	defer rows.Close()
	names := regionNames(cfg)
	var out []conflictRow
	for rows.Next() {
		c, err := scanConflict(rows, names)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

func printConflicts(w io.Writer, rows []conflictRow, output string) error {
	if output == "json" {
		if rows == nil {
			rows = []conflictRow{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tDETECTED (UTC)\tPEER\tTABLE\tPK\tRULE\tOUTCOME\tSTATUS")
	for _, c := range rows {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s.%s\t%s\t%s\t%s\t%s\n", c.ID, c.DetectedAt.UTC().Format("2006-01-02 15:04:05.000"),
			c.Peer, c.Schema, c.Table, c.PK, c.Rule, c.Outcome, c.Status)
	}
	return tw.Flush()
}

// printShadow lists conflicts beside what their table's shadow rule would
// have done, then how many it would have ended with another row.
func printShadow(w io.Writer, rows []conflictRow, output string) error {
	if output == "json" {
		return printConflicts(w, rows, output)
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tDETECTED (UTC)\tTABLE\tPK\tRULE\tOUTCOME\tSHADOW\tSHADOW OUTCOME\tDIFFERS")
	differ := map[string]int{}
	total := map[string]int{}
	var order []string
	for _, c := range rows {
		d, differs := c.ShadowDiffers != nil && *c.ShadowDiffers, "no"
		if d {
			differs = "yes"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s.%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.ID, c.DetectedAt.UTC().Format("2006-01-02 15:04:05.000"),
			c.Schema, c.Table, c.PK, c.Rule, c.Outcome, c.ShadowRule, c.ShadowOutcome, differs)
		k := c.Schema + "." + c.Table + ": " + c.Rule + " -> " + c.ShadowRule
		if total[k] == 0 {
			order = append(order, k)
		}
		total[k]++
		if d {
			differ[k]++
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, k := range order {
		fmt.Fprintf(w, "%s: %d of %d conflicts listed would have left another row\n", k, differ[k], total[k])
	}
	return nil
}

func getConflict(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, cfg *config.Config, id uint64, lock bool) (conflictRow, error) {
	s := "SELECT " + conflictColumns + " FROM mlr.conflicts WHERE id = ?"
	if lock {
		s += " FOR UPDATE"
	}
	c, err := scanConflict(q.QueryRowContext(ctx, s, id), regionNames(cfg))
	if errors.Is(err, sql.ErrNoRows) {
		return c, fmt.Errorf("no conflict %d %w (ids are per region: see `mlproxy conflicts list -c %s`)", id, errNoConflict, cfg.Path)
	}
	return c, err
}

// errNoConflict is getConflict's answer for an id the log does not hold
// (its text is part of the message: "no conflict 7 in this region's log").
var errNoConflict = errors.New("in this region's log")

func conflictsShowCmd() *cobra.Command {
	var path, output string
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Both versions of a conflict side by side, differing columns marked",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var id uint64
			if _, err := fmt.Sscan(args[0], &id); err != nil {
				return fmt.Errorf("conflict id %q: want a number", args[0])
			}
			ctx := cmd.Context()
			cfg, db, err := loadLocal(ctx, path)
			if err != nil {
				return err
			}
			defer db.Close()
			c, err := getConflict(ctx, db, cfg, id, false)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(c)
			}
			return showConflict(cmd.OutOrStdout(), c, regionNames(cfg))
		},
	}
	configFlag(cmd, &path)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

// decodeRow parses a logged row image; nil for an absent or deleted row.
func decodeRow(raw json.RawMessage) (map[string]any, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var m map[string]any
	d := json.NewDecoder(strings.NewReader(string(raw)))
	d.UseNumber()
	if err := d.Decode(&m); err != nil {
		return nil, fmt.Errorf("logged row %.60s: %w", raw, err)
	}
	return m, nil
}

// conflictDetail is one conflict as `conflicts show` prints it and the
// status page's /conflicts/{id} renders it: a title, a summary line, the
// versions' stamps, origins and vectors, then every column of either
// version (sorted), local beside remote.
type conflictDetail struct {
	Title, Summary string
	Meta           []detailRow // stamp, origin, vector
	Columns        []detailRow
	BothDeleted    bool // both versions are deletes: no columns
}

// detailRow is one line of a conflictDetail; Differs marks a column whose
// versions differ.
type detailRow struct {
	Name, Local, Remote string
	Differs             bool
}

// detailOf lays conflict c out for showing; names maps region ids to names.
func detailOf(c conflictRow, names map[uint16]string) (conflictDetail, error) {
	local, err := decodeRow(c.LocalRow)
	if err != nil {
		return conflictDetail{}, err
	}
	remote, err := decodeRow(c.RemoteRow)
	if err != nil {
		return conflictDetail{}, err
	}
	origin := func(o *uint16) string {
		if o == nil {
			return "-"
		}
		if n := names[*o]; n != "" {
			return n
		}
		return fmt.Sprint(*o)
	}
	stamp := func(h *uint64) string {
		if h == nil {
			return "-"
		}
		t := hlc.Timestamp(*h)
		return fmt.Sprintf("%d (%s)", *h, t.Time().UTC().Format("2006-01-02 15:04:05.000"))
	}
	ro := c.RemoteOrigin
	rh := c.RemoteHLC
	d := conflictDetail{
		Title: fmt.Sprintf("conflict %d on %s.%s, key %s", c.ID, c.Schema, c.Table, c.PK),
		Summary: fmt.Sprintf("detected %s applying peer %s; rule %s decided %s; %s",
			c.DetectedAt.UTC().Format(time.RFC3339), c.Peer, c.Rule, c.Outcome, c.Status),
		Meta: []detailRow{
			{Name: "stamp", Local: stamp(c.LocalHLC), Remote: stamp(&rh)},
			{Name: "origin", Local: origin(c.LocalOrigin), Remote: origin(&ro)},
			{Name: "vector", Local: vectorText(c.LocalMeta, names), Remote: vectorText(c.RemoteMeta, names)},
		},
		BothDeleted: local == nil && remote == nil,
	}
	if c.ResolvedAt != nil {
		d.Summary += fmt.Sprintf(" at %s (%s)", c.ResolvedAt.UTC().Format(time.RFC3339), c.Resolution)
	}
	cols := map[string]bool{}
	for k := range local {
		cols[k] = true
	}
	for k := range remote {
		cols[k] = true
	}
	names2 := make([]string, 0, len(cols))
	for k := range cols {
		names2 = append(names2, k)
	}
	sort.Strings(names2)
	cell := func(m map[string]any, k string) string {
		if m == nil {
			return "(no row)"
		}
		v, ok := m[k]
		switch {
		case !ok:
			return "(absent)"
		case v == nil:
			return "NULL"
		}
		return fmt.Sprint(v)
	}
	for _, k := range names2 {
		l, r := cell(local, k), cell(remote, k)
		d.Columns = append(d.Columns, detailRow{Name: k, Local: l, Remote: r, Differs: l != r})
	}
	return d, nil
}

func showConflict(w io.Writer, c conflictRow, names map[uint16]string) error {
	d, err := detailOf(c, names)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, d.Title)
	fmt.Fprintln(w, d.Summary)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\tLOCAL\tREMOTE\t")
	for _, m := range d.Meta {
		fmt.Fprintf(tw, "%s\t%s\t%s\t\n", m.Name, m.Local, m.Remote)
	}
	for _, col := range d.Columns {
		mark := ""
		if col.Differs {
			mark = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", col.Name, col.Local, col.Remote, mark)
	}
	if d.BothDeleted {
		fmt.Fprintln(tw, "(both versions are deletes)\t\t\t")
	}
	return tw.Flush()
}

func vectorText(raw json.RawMessage, names map[uint16]string) string {
	if len(raw) == 0 {
		return "-"
	}
	m, err := change.ParseMeta(string(raw))
	if err != nil {
		return "(unreadable)"
	}
	ids := make([]uint16, 0, len(m.VV))
	for id := range m.VV {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	parts := make([]string, 0, len(ids))
	for _, id := range ids {
		n := names[id]
		if n == "" {
			n = fmt.Sprint(id)
		}
		parts = append(parts, fmt.Sprintf("%s:%d", n, m.VV[id]))
	}
	if len(parts) == 0 {
		return "{}"
	}
	return "{" + strings.Join(parts, " ") + "}"
}

func conflictsResolveCmd() *cobra.Command {
	var path, keep, table string
	var sets []string
	var all bool
	cmd := &cobra.Command{
		Use:   "resolve [ID] --keep local|remote [--set col=value ...] | --all --table schema.table --keep local|remote",
		Short: "Write the chosen version as a new version causally after both, replicated everywhere, and close the conflict",
		Long: `resolve writes the chosen version (--keep, then --set overrides) into this
region's table as a new version whose vector dominates both conflicting
versions, so every region applies it as causally later (no new conflict)
and closes its own pending conflicts on that key. The conflict is marked
resolved with who and when.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if keep != "local" && keep != "remote" {
				return fmt.Errorf("--keep %q: want local or remote", keep)
			}
			ctx := cmd.Context()
			cfg, db, err := loadLocal(ctx, path)
			if err != nil {
				return err
			}
			defer db.Close()
			r := &resolver{cfg: cfg, db: db, keep: keep, who: operator()}
			if r.sets, err = parseSets(sets); err != nil {
				return err
			}
			var ids []uint64
			switch {
			case all && len(args) == 0 && table != "":
				f := listFilter{table: table, status: "pending", output: "table"}
				rows, err := listConflicts(ctx, db, cfg, f)
				if err != nil {
					return err
				}
				seen := map[string]bool{}
				for _, c := range rows { // newest first: one resolution per key
					if !seen[string(c.PK)] {
						seen[string(c.PK)] = true
						ids = append(ids, c.ID)
					}
				}
			case !all && len(args) == 1 && table == "":
				var id uint64
				if _, err := fmt.Sscan(args[0], &id); err != nil {
					return fmt.Errorf("conflict id %q: want a number", args[0])
				}
				ids = []uint64{id}
			default:
				return errors.New("give one conflict ID, or --all with --table schema.table")
			}
			for _, id := range ids {
				msg, err := r.resolve(ctx, id)
				if err != nil {
					return fmt.Errorf("conflict %d: %w", id, err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), msg)
			}
			if len(ids) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "no pending conflicts on %s\n", table)
			}
			return nil
		},
	}
	configFlag(cmd, &path)
	fl := cmd.Flags()
	fl.StringVar(&keep, "keep", "", "the version to keep: local or remote (required)")
	fl.StringArrayVar(&sets, "set", nil, "col=value: override a column of the kept version (repeatable; value NULL for NULL)")
	fl.BoolVar(&all, "all", false, "resolve every pending conflict of --table")
	fl.StringVar(&table, "table", "", "with --all: the table (schema.table)")
	return cmd
}

func parseSets(sets []string) (map[string]any, error) {
	out := map[string]any{}
	for _, s := range sets {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--set %q: want column=value", s)
		}
		if v == "NULL" {
			out[k] = nil
		} else {
			out[k] = v
		}
	}
	return out, nil
}

// operator names who resolves, for the conflict log.
func operator() string {
	u := os.Getenv("USER")
	if u == "" {
		u = "unknown"
	}
	h, _ := os.Hostname()
	return u + "@" + h
}

type resolver struct {
	cfg  *config.Config
	db   *sql.DB
	keep string
	sets map[string]any
	who  string
}

// resolve writes conflict id's chosen version in one transaction: the row
// (stamped after both versions and whatever the row holds now, its vector
// the join of all three with this region's entry at the new stamp), and
// the conflict log: this conflict and every other pending one of the key
// marked resolved. It runs as mlproxy's own account with @_mlr_apply, the
// one session the stamping triggers let write the metadata columns.
func (r *resolver) resolve(ctx context.Context, id uint64) (_ string, rerr error) {
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return "", err
	}
	defer func() {
		if rerr != nil {
			// @_mlr_apply may still be set on it: never back to the pool.
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		conn.Close()
	}()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return "", err
	}
	defer tx.Rollback()
	c, err := getConflict(ctx, tx, r.cfg, id, true)
	if err != nil {
		return "", err
	}
	if c.ResolvedAt != nil {
		return "", fmt.Errorf("already resolved at %s (%s)", c.ResolvedAt.UTC().Format(time.RFC3339), c.Resolution)
	}
	switch c.Rule {
	case config.RuleCounter, config.RuleMax, config.RuleMin:
		if c.Outcome != "rejected" && c.Outcome != "skipped" {
			return "", fmt.Errorf("rule %s merges both versions itself; there is nothing to choose", c.Rule)
		}
	}
	ts, err := schema.Inspect(ctx, r.db, []config.TableRule{{Schema: c.Schema, Table: c.Table}})
	if err != nil || len(ts) == 0 {
		return "", fmt.Errorf("read table %s.%s: %v", c.Schema, c.Table, err)
	}
	t := ts[0]
	raw := c.RemoteRow
	if r.keep == "local" {
		raw = c.LocalRow
	}
	row, err := decodeRow(raw)
	if err != nil {
		return "", err
	}
	if row == nil && r.keep == "local" && (c.Outcome == "rejected" || c.Outcome == "skipped") {
		return "", fmt.Errorf("the log holds only the remote version of a change a unique or foreign key refused (%s); "+
			"keep remote (with --set on the colliding column, or after changing the row it collides with), or leave this region's row as it is and update it through the proxy", c.Outcome)
	}
	if row == nil {
		return "", fmt.Errorf("the %s version is a delete: resolving to a delete is not supported; delete the row through the proxy", r.keep)
	}
	user := map[string]bool{}
	for _, col := range t.UserColumns() {
		user[col.Name] = true
	}
	for k, v := range r.sets {
		if !user[k] {
			return "", fmt.Errorf("--set %s: %s.%s has no such column", k, c.Schema, c.Table)
		}
		if slices.Contains(t.PK, k) {
			return "", fmt.Errorf("--set %s: a primary key column cannot change in a resolution", k)
		}
		row[k] = v
	}
	var pk []any
	dec := json.NewDecoder(strings.NewReader(string(c.PK)))
	dec.UseNumber() // a BIGINT key above 2^53 must not become a float
	if err := dec.Decode(&pk); err != nil || len(pk) != len(t.PK) {
		return "", fmt.Errorf("logged key %s does not match %s.%s's primary key (%s)", c.PK, c.Schema, c.Table, strings.Join(t.PK, ", "))
	}
	where := make([]string, len(t.PK))
	for i, k := range t.PK {
		where[i] = schema.Quote(k) + " = ?"
	}
	// What the row holds now (it may have moved on since the conflict).
	var curHLC sql.NullInt64
	var curOrigin sql.NullInt64
	var curMeta sql.NullString
	err = tx.QueryRowContext(ctx, "SELECT "+schema.Quote(schema.ColHLC)+", "+schema.Quote(schema.ColOrigin)+", "+schema.Quote(schema.ColMeta)+
		" FROM "+t.QualifiedName()+" WHERE "+strings.Join(where, " AND ")+" FOR UPDATE", pkArgs(pk)...).Scan(&curHLC, &curOrigin, &curMeta)
	exists := err == nil
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("read the current row: %w", err)
	}

	self := r.cfg.Region.ID
	stamp := uint64(hlc.New(time.Now().UnixMilli(), 0))
	vv := change.Vector{}
	var kept change.Meta
	add := func(metaRaw string, h uint64, origin uint16, isKept bool) error {
		if h+1 > stamp {
			stamp = h + 1
		}
		m, err := change.ParseMeta(metaRaw)
		if err != nil {
			return err
		}
		if origin != 0 && m.VV[origin] < h {
			m.VV = m.VV.Clone()
			if m.VV == nil {
				m.VV = change.Vector{}
			}
			m.VV[origin] = h
		}
		vv = vv.Join(m.VV)
		if isKept {
			kept = m
		}
		return nil
	}
	lm, rm := string(c.LocalMeta), string(c.RemoteMeta)
	if c.LocalHLC != nil {
		lo := uint16(0)
		if c.LocalOrigin != nil {
			lo = *c.LocalOrigin
		}
		if err := add(lm, *c.LocalHLC, lo, r.keep == "local"); err != nil {
			return "", err
		}
	}
	if err := add(rm, c.RemoteHLC, c.RemoteOrigin, r.keep == "remote"); err != nil {
		return "", err
	}
	if exists {
		if err := add(curMeta.String, uint64(curHLC.Int64), uint16(curOrigin.Int64), false); err != nil {
			return "", err
		}
	} else {
		// The row is deleted here: the resolution must come after the
		// delete too, and replaces its tombstone.
		var th sql.NullInt64
		var to sql.NullInt64
		var tm sql.NullString
		terr := tx.QueryRowContext(ctx, "SELECT "+schema.Quote(schema.ColHLC)+", "+schema.Quote(schema.ColOrigin)+", "+schema.Quote(schema.ColMeta)+
			" FROM "+t.TombstoneQualifiedName()+" WHERE "+strings.Join(where, " AND ")+" FOR UPDATE", pkArgs(pk)...).Scan(&th, &to, &tm)
		switch {
		case terr == nil:
			if err := add(tm.String, uint64(th.Int64), uint16(to.Int64), false); err != nil {
				return "", err
			}
			if _, err := tx.ExecContext(ctx, "DELETE FROM "+t.TombstoneQualifiedName()+" WHERE "+strings.Join(where, " AND "), pkArgs(pk)...); err != nil {
				return "", fmt.Errorf("remove the key's tombstone: %w", err)
			}
		case !errors.Is(terr, sql.ErrNoRows):
			return "", fmt.Errorf("read the key's tombstone: %w", terr)
		}
	}
	if hlc.Timestamp(stamp).Bypass() { // a resolution is a stamped write, not a bypass
		stamp = uint64(hlc.New(hlc.Timestamp(stamp).Millis()+1, 0))
	}
	if vv[self] >= stamp { // this region's entry may already be ahead of every stamp seen
		stamp = vv[self] + 1
	}
	if hlc.Timestamp(stamp).Bypass() {
		stamp = uint64(hlc.New(hlc.Timestamp(stamp).Millis()+1, 0))
	}
	vv[self] = stamp
	meta := change.Meta{VV: vv, Birth: kept.Birth, Contrib: kept.Contrib}

	cols := make([]string, 0, len(row))
	for k := range row {
		if user[k] {
			cols = append(cols, k)
		}
	}
	sort.Strings(cols)
	args := make([]any, 0, len(cols)+3)
	quoted := make([]string, 0, len(cols)+3)
	for _, k := range cols {
		quoted = append(quoted, schema.Quote(k))
		args = append(args, sqlValue(row[k]))
	}
	quoted = append(quoted, schema.Quote(schema.ColHLC), schema.Quote(schema.ColOrigin), schema.Quote(schema.ColMeta))
	args = append(args, stamp, self, meta.Encode())
	var stmt string
	if exists {
		sets := make([]string, len(quoted))
		for i, q := range quoted {
			sets[i] = q + " = ?"
		}
		stmt = "UPDATE " + t.QualifiedName() + " SET " + strings.Join(sets, ", ") + " WHERE " + strings.Join(where, " AND ")
		for _, v := range pk {
			args = append(args, sqlValue(v))
		}
	} else {
		stmt = "INSERT INTO " + t.QualifiedName() + " (" + strings.Join(quoted, ", ") + ") VALUES (" +
			strings.TrimSuffix(strings.Repeat("?, ", len(quoted)), ", ") + ")"
	}
	if _, err := tx.ExecContext(ctx, "SET @_mlr_apply = 1"); err != nil {
		return "", err
	}
	if _, err := tx.ExecContext(ctx, stmt, args...); err != nil {
		var me *mysql.MySQLError
		if errors.As(err, &me) && (me.Number == 1062 || me.Number == 1452 || me.Number == 1451) {
			return "", fmt.Errorf("the %s version is refused by a unique or foreign key of %s.%s here (%w): "+
				"change or delete the row it collides with first, or resolve with --set on the colliding column", r.keep, c.Schema, c.Table, err)
		}
		return "", fmt.Errorf("write the resolution into %s.%s: %w", c.Schema, c.Table, err)
	}
	if _, err := tx.ExecContext(ctx, "SET @_mlr_apply = NULL"); err != nil {
		return "", err
	}
	why := truncate(fmt.Sprintf("keep %s by %s", r.keep, r.who), 64)
	if _, err := tx.ExecContext(ctx, "UPDATE mlr.conflicts SET resolved_at = NOW(6), resolution = ? WHERE id = ?", why, id); err != nil {
		return "", err
	}
	res, err := tx.ExecContext(ctx, "UPDATE mlr.conflicts SET resolved_at = NOW(6), resolution = ? WHERE db = ? AND tbl = ? AND pk = ? AND outcome IN "+openOutcomesSQL+" AND resolved_at IS NULL",
		truncate(fmt.Sprintf("settled with conflict %d", id), 64), c.Schema, c.Table, string(c.PK))
	if err != nil {
		return "", err
	}
	others, _ := res.RowsAffected()
	if err := tx.Commit(); err != nil {
		return "", err
	}
	msg := fmt.Sprintf("conflict %d on %s.%s key %s: kept %s, written at stamp %d; it replicates to every region as causally after both versions", id, c.Schema, c.Table, c.PK, r.keep, stamp)
	if others > 0 {
		msg += fmt.Sprintf(" (%d other pending conflicts of this key closed)", others)
	}
	return msg, nil
}

func pkArgs(pk []any) []any {
	out := make([]any, len(pk))
	for i, v := range pk {
		out[i] = sqlValue(v)
	}
	return out
}

// sqlValue turns a decoded JSON value into a driver argument.
func sqlValue(v any) any {
	switch x := v.(type) {
	case json.Number:
		return x.String()
	case map[string]any, []any:
		b, _ := json.Marshal(x)
		return string(b)
	case bool:
		if x {
			return 1
		}
		return 0
	}
	return v
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
