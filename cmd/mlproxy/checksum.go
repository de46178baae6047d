package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/hlc"
	"github.com/mlproxy/mlproxy/schema"
)

// checksum compares the replicated tables of every region while writes go
// on. It walks each table in primary-key chunks (boundaries from this
// region), and every region hashes the same chunk in one short
// autocommit SELECT (no locks, no long transaction), like
// pt-table-checksum's BIT_XOR of row hashes. A chunk whose hashes differ
// is compared row by row; a differing row is re-read a few times, and what
// still differs is either in flight (a version some region has not yet
// applied from its origin, by mlr.checkpoints) or a real difference,
// named by table, key, region and column.

type csRegion struct {
	name string
	id   uint16
	db   *sql.DB
	// applied is the highest stamp this region has applied from each
	// peer (mlr.checkpoints.hlc); floor is the lowest of them, for an
	// origin it does not pull from directly (star and ring forward).
	applied map[uint16]uint64
	floor   uint64
	// gtid is, per peer, the position applied from it (mlr.checkpoints);
	// domain and seq are this region's own GTID domain and the last
	// sequence number its binlog holds in it.
	gtid   map[uint16]string
	domain uint32
	seq    int64
}

type csOptions struct {
	table, since, output string
	chunk, recheck       int
	rate                 float64
}

// csDiff is one row that differs.
type csDiff struct {
	Table    string            `json:"table"`
	Key      string            `json:"key"`
	InFlight bool              `json:"in_flight"`
	Versions map[string]string `json:"versions"`          // region -> "stamp origin" or "absent"
	Columns  []string          `json:"columns,omitempty"` // user columns that differ
}

type csTable struct {
	Table   string   `json:"table"`
	Rows    int64    `json:"rows"`
	Chunks  int      `json:"chunks"`
	Diffs   []csDiff `json:"differences"`
	Seconds float64  `json:"seconds"`
}

func checksumCmd() *cobra.Command {
	var path string
	var o csOptions
	cmd := &cobra.Command{
		Use:   "checksum",
		Short: "Compare every replicated table across all regions while writes continue; exit 1 on a real difference",
		Long: `checksum reads this region's server and every peer's (with the peer
credentials of the config: their accounts need SELECT on the replicated
schemas, which shows them nothing the binlog they already read does not).
Rows that differ only because a region has not yet applied them are
re-read, then reported as in flight, not as differences.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.output != "table" && o.output != "json" {
				return fmt.Errorf("--output %q: want table or json", o.output)
			}
			ctx := cmd.Context()
			cfg, local, err := loadLocal(ctx, path)
			if err != nil {
				return err
			}
			defer local.Close()
			regions := []*csRegion{{name: cfg.Region.Name, id: cfg.Region.ID, db: local}}
			for _, p := range cfg.Peers {
				if p.Server.Addr == "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: peer %s has no server in %s; not compared\n", p.Name, cfg.Path)
					continue
				}
				db, err := openServer(ctx, "peer "+p.Name, p.Server)
				if err != nil {
					return err
				}
				defer db.Close()
				regions = append(regions, &csRegion{name: p.Name, id: p.ID, db: db})
			}
			rules := cfg.Tables
			if o.table != "" {
				s, t, err := splitTable(o.table)
				if err != nil {
					return err
				}
				rc, ok := cfg.TableRule(s, t)
				if !ok {
					return fmt.Errorf("--table %s is not replicated by %s", o.table, cfg.Path)
				}
				rc.Schema, rc.Table = s, t
				rules = []config.TableRule{rc}
			}
			tables, err := schema.Inspect(ctx, local, rules)
			if err != nil {
				return err
			}
			var since uint64
			if o.since != "" {
				if since, err = sinceStamp(o.since); err != nil {
					return err
				}
			}
			start := time.Now()
			var results []csTable
			real := 0
			var rows int64
			for _, t := range tables {
				res, err := checksumTable(ctx, regions, t, o, since)
				if err != nil {
					return fmt.Errorf("checksum %s.%s: %w", t.Schema, t.Name, err)
				}
				for _, d := range res.Diffs {
					if !d.InFlight {
						real++
					}
				}
				rows += res.Rows
				results = append(results, res)
			}
			printChecksum(cmd.OutOrStdout(), results, o.output, rows, time.Since(start), len(regions))
			if real > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "checksum: %d rows differ between regions\n", real)
				return errProblems
			}
			return nil
		},
	}
	configFlag(cmd, &path)
	fl := cmd.Flags()
	fl.StringVar(&o.table, "table", "", "only this table (schema.table)")
	fl.StringVar(&o.since, "since", "", "only rows changed since: a stamp, an RFC 3339 time or a duration back from now (deletes are not covered)")
	fl.IntVar(&o.chunk, "chunk", 1000, "rows per chunk")
	fl.IntVar(&o.recheck, "recheck", 5, "times a differing row is re-read, a second apart, before it is reported")
	fl.Float64Var(&o.rate, "rate", 0, "at most this many rows per second per region (0 = no limit)")
	fl.StringVarP(&o.output, "output", "o", "table", "table or json")
	return cmd
}

// sinceStamp parses --since: a raw stamp, a time, or a duration back.
func sinceStamp(v string) (uint64, error) {
	var n uint64
	if _, err := fmt.Sscan(v, &n); err == nil && fmt.Sprint(n) == v {
		return n, nil
	}
	t, err := timeFlag("since", v)
	if err != nil {
		return 0, err
	}
	return uint64(hlc.New(t.UnixMilli(), 0)), nil
}

func checksumTable(ctx context.Context, regions []*csRegion, t *schema.Table, o csOptions, since uint64) (csTable, error) {
	began := time.Now()
	res := csTable{Table: t.Schema + "." + t.Name}
	if len(t.PK) == 0 {
		return res, fmt.Errorf("no primary key")
	}
	var user []string
	for _, c := range t.UserColumns() {
		user = append(user, c.Name)
	}
	hashed := append(append([]string{}, user...), schema.ColHLC, schema.ColOrigin)
	q := make([]string, len(hashed))
	nulls := make([]string, len(hashed))
	for i, c := range hashed {
		q[i] = schema.Quote(c)
		nulls[i] = "ISNULL(" + q[i] + ")"
	}
	rowHash := "MD5(CONCAT_WS('#', " + strings.Join(q, ", ") + ", CONCAT(" + strings.Join(nulls, ", ") + ")))"
	pkq := make([]string, len(t.PK))
	for i, k := range t.PK {
		pkq[i] = schema.Quote(k)
	}
	pkList := strings.Join(pkq, ", ")
	tuple := "(" + pkList + ")"
	ph := "(" + strings.TrimSuffix(strings.Repeat("?, ", len(t.PK)), ", ") + ")"
	filter := ""
	if since > 0 {
		filter = fmt.Sprintf(" AND %s >= %d", schema.Quote(schema.ColHLC), since)
	}
	chunkSQL := func(lo, hi bool) string {
		w := "1=1"
		if lo {
			w += " AND " + tuple + " > " + ph
		}
		if hi {
			w += " AND " + tuple + " <= " + ph
		}
		return w + filter
	}
	for _, r := range regions {
		if err := r.loadApplied(ctx); err != nil {
			return res, err
		}
	}
	var last []any
	var suspect []chunkRef // chunks whose hashes differed, compared row by row at the end
	for {
		// The chunk's upper bound, from this region.
		bq := "SELECT " + pkList + " FROM " + t.QualifiedName()
		if last != nil {
			bq += " WHERE " + tuple + " > " + ph
		}
		bq += fmt.Sprintf(" ORDER BY %s LIMIT 1 OFFSET %d", pkList, o.chunk-1)
		hi := make([]any, len(t.PK))
		ptrs := make([]any, len(t.PK))
		for i := range hi {
			ptrs[i] = &hi[i]
		}
		err := regions[0].db.QueryRowContext(ctx, bq, last...).Scan(ptrs...)
		final := errors.Is(err, sql.ErrNoRows)
		if err != nil && !final {
			return res, fmt.Errorf("chunk bound: %w", err)
		}
		for i := range hi {
			if b, ok := hi[i].([]byte); ok {
				hi[i] = string(b)
			}
		}
		var args []any
		args = append(args, last...)
		if !final {
			args = append(args, hi...)
		}
		where := chunkSQL(last != nil, !final)
		agg := "SELECT COUNT(*), COALESCE(BIT_XOR(CONV(SUBSTRING(h, 1, 16), 16, 10)), 0), COALESCE(BIT_XOR(CONV(SUBSTRING(h, 17, 16), 16, 10)), 0) FROM (SELECT " +
			rowHash + " AS h FROM " + t.QualifiedName() + " WHERE " + where + ") x"
		sums := make([]string, len(regions))
		var count int64
		for i, r := range regions {
			var n int64
			var a, b uint64
			if err := r.db.QueryRowContext(ctx, agg, args...).Scan(&n, &a, &b); err != nil {
				return res, fmt.Errorf("region %s: %w", r.name, err)
			}
			sums[i] = fmt.Sprintf("%d/%x/%x", n, a, b)
			if i == 0 {
				count = n
			}
		}
		res.Chunks++
		res.Rows += count
		if !allEqual(sums) {
			suspect = append(suspect, chunkRef{where: where, args: args})
		}
		if o.rate > 0 { // pace the whole table: rows so far at o.rate
			if d := time.Duration(float64(res.Rows)/o.rate*float64(time.Second)) - time.Since(began); d > 0 {
				select {
				case <-ctx.Done():
					return res, ctx.Err()
				case <-time.After(d):
				}
			}
		}
		if final {
			break
		}
		last = hi
	}
	if len(suspect) > 0 {
		diffs, err := compareRows(ctx, regions, t, user, rowHash, suspect, o.recheck)
		if err != nil {
			return res, err
		}
		res.Diffs = diffs
	}
	res.Seconds = time.Since(began).Seconds()
	return res, nil
}

// chunkRef is a chunk's WHERE clause and its arguments.
type chunkRef struct {
	where string
	args  []any
}

func allEqual(s []string) bool {
	for _, x := range s[1:] {
		if x != s[0] {
			return false
		}
	}
	return true
}

// loadApplied reads what the region has applied from each peer.
func (r *csRegion) loadApplied(ctx context.Context) error {
	rows, err := r.db.QueryContext(ctx, "SELECT peer_id, hlc, gtid FROM mlr.checkpoints")
	if err != nil {
		return fmt.Errorf("region %s: read mlr.checkpoints: %w", r.name, err)
	}
	defer rows.Close()
	r.applied = map[uint16]uint64{}
	r.gtid = map[uint16]string{}
	r.floor = math.MaxUint64
	for rows.Next() {
		var id uint16
		var h uint64
		var g string
		if err := rows.Scan(&id, &h, &g); err != nil {
			return err
		}
		r.applied[id] = h
		r.gtid[id] = g
		r.floor = min(r.floor, h)
	}
	if len(r.applied) == 0 {
		r.floor = 0
	}
	if err := rows.Err(); err != nil {
		return err
	}
	var pos string
	if err := r.db.QueryRowContext(ctx, "SELECT @@gtid_domain_id, @@gtid_binlog_pos").Scan(&r.domain, &pos); err != nil {
		return fmt.Errorf("region %s: read its binlog position: %w", r.name, err)
	}
	r.seq = binlog.SeqNo(pos, r.domain)
	return nil
}

// caughtUp reports whether r has applied everything origin's binlog held
// when both were last read (so a version origin holds that r lacks is not
// on its way). Without a direct link to origin (star, ring), r is caught
// up when it is with every region it pulls from.
func (r *csRegion) caughtUp(origin *csRegion, all []*csRegion) bool {
	if r == origin {
		return true
	}
	if g, ok := r.gtid[origin.id]; ok {
		return binlog.SeqNo(g, origin.domain) >= origin.seq
	}
	for id, g := range r.gtid {
		for _, src := range all {
			if src.id == id && binlog.SeqNo(g, src.domain) < src.seq {
				return false
			}
		}
	}
	return true
}

// seen reports whether region r has applied origin's write stamped s.
func (r *csRegion) seen(origin uint16, s uint64) bool {
	if origin == r.id {
		return true
	}
	if h, ok := r.applied[origin]; ok {
		return h >= s
	}
	return r.floor >= s
}

type csVersion struct {
	present bool
	hash    string
	stamp   uint64
	origin  uint16
	row     map[string]string
}

// compareRows reads the suspect chunks' rows from every region and
// returns the keys that still differ after recheck re-reads, all chunks
// re-read together a second apart (so a run waits recheck seconds at most,
// however many chunks were caught mid-replication).
func compareRows(ctx context.Context, regions []*csRegion, t *schema.Table, user []string, rowHash string, chunks []chunkRef, recheck int) ([]csDiff, error) {
	cols := make([]string, 0, len(user))
	for _, c := range user {
		cols = append(cols, "CAST("+schema.Quote(c)+" AS CHAR)")
	}
	pk := make([]string, len(t.PK))
	for i, k := range t.PK {
		pk[i] = "CAST(" + schema.Quote(k) + " AS CHAR)"
	}
	sel := "SELECT CONCAT_WS(',', " + strings.Join(pk, ", ") + "), " + rowHash + ", " + schema.Quote(schema.ColHLC) + ", " + schema.Quote(schema.ColOrigin) +
		", " + strings.Join(cols, ", ") + " FROM " + t.QualifiedName() + " WHERE "
	read := func(ch chunkRef) ([]map[string]csVersion, error) {
		out := make([]map[string]csVersion, len(regions))
		for i, r := range regions {
			rows, err := r.db.QueryContext(ctx, sel+ch.where, ch.args...)
			if err != nil {
				return nil, fmt.Errorf("region %s: %w", r.name, err)
			}
			m := map[string]csVersion{}
			for rows.Next() {
				var key, h string
				v := csVersion{present: true, row: map[string]string{}}
				vals := make([]sql.NullString, len(user))
				dest := []any{&key, &h, &v.stamp, &v.origin}
				for j := range vals {
					dest = append(dest, &vals[j])
				}
				if err := rows.Scan(dest...); err != nil {
					rows.Close()
					return nil, err
				}
				v.hash = h
				for j, c := range user {
					if vals[j].Valid {
						v.row[c] = vals[j].String
					} else {
						v.row[c] = "\x00NULL"
					}
				}
				m[key] = v
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return nil, err
			}
			out[i] = m
		}
		return out, nil
	}
	differing := func(got []map[string]csVersion) []string {
		keys := map[string]bool{}
		for _, m := range got {
			for k := range m {
				keys[k] = true
			}
		}
		var out []string
		for k := range keys {
			first := got[0][k]
			for _, m := range got[1:] {
				if v := m[k]; v.present != first.present || v.hash != first.hash {
					out = append(out, k)
					break
				}
			}
		}
		sort.Strings(out)
		return out
	}
	type state struct {
		got  []map[string]csVersion
		keys []string
	}
	states := make([]state, len(chunks))
	open := 0
	for round := 0; ; round++ {
		for _, r := range regions {
			if err := r.loadApplied(ctx); err != nil {
				return nil, err
			}
		}
		open = 0
		for i, ch := range chunks {
			if round > 0 && len(states[i].keys) == 0 {
				continue
			}
			got, err := read(ch)
			if err != nil {
				return nil, err
			}
			states[i] = state{got: got, keys: differing(got)}
			if len(states[i].keys) > 0 {
				open++
			}
		}
		if open == 0 || round >= recheck {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	var diffs []csDiff
	for _, st := range states {
		diffs = append(diffs, describe(regions, t, user, st.got, st.keys)...)
	}
	return diffs, nil
}

// describe turns the differing keys of one chunk into csDiffs.
func describe(regions []*csRegion, t *schema.Table, user []string, got []map[string]csVersion, keys []string) []csDiff {
	var diffs []csDiff
	for _, k := range keys {
		d := csDiff{Table: t.Schema + "." + t.Name, Key: k, Versions: map[string]string{}}
		cols := map[string]bool{}
		var ref *csVersion
		for i, r := range regions {
			v := got[i][k]
			if !v.present {
				d.Versions[r.name] = "absent"
			} else {
				from := fmt.Sprint(v.origin)
				for _, x := range regions {
					if x.id == v.origin {
						from = x.name
					}
				}
				d.Versions[r.name] = fmt.Sprintf("stamp %d from %s", v.stamp, from)
				if ref == nil {
					ref = &v
				} else {
					for _, c := range user {
						if ref.row[c] != v.row[c] {
							cols[c] = true
						}
					}
				}
			}
			// In flight: some region has not yet applied a version another holds.
			if v.present {
				src := r // the version's origin region, if compared
				for _, x := range regions {
					if x.id == v.origin {
						src = x
					}
				}
				for _, other := range regions {
					if !other.seen(v.origin, v.stamp) && !other.caughtUp(src, regions) {
						d.InFlight = true
					}
				}
			}
		}
		for c := range cols {
			d.Columns = append(d.Columns, c)
		}
		sort.Strings(d.Columns)
		diffs = append(diffs, d)
	}
	return diffs
}

func printChecksum(w io.Writer, res []csTable, output string, rows int64, took time.Duration, regions int) {
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(map[string]any{"tables": res, "rows": rows, "seconds": took.Seconds(), "regions": regions})
		return
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TABLE\tROWS\tCHUNKS\tDIFFERENT\tIN FLIGHT\tSECONDS")
	for _, t := range res {
		real, flight := 0, 0
		for _, d := range t.Diffs {
			if d.InFlight {
				flight++
			} else {
				real++
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%.2f\n", t.Table, t.Rows, t.Chunks, real, flight, t.Seconds)
	}
	_ = tw.Flush()
	for _, t := range res {
		for _, d := range t.Diffs {
			state := "DIFFERS"
			if d.InFlight {
				state = "in flight"
			}
			regs := make([]string, 0, len(d.Versions))
			for r, v := range d.Versions {
				regs = append(regs, r+": "+v)
			}
			sort.Strings(regs)
			fmt.Fprintf(w, "%s %s key (%s): %s", state, d.Table, d.Key, strings.Join(regs, "; "))
			if len(d.Columns) > 0 {
				fmt.Fprintf(w, "; columns %s", strings.Join(d.Columns, ", "))
			}
			fmt.Fprintln(w)
		}
	}
	rate := 0.0
	if took > 0 {
		rate = float64(rows) / took.Seconds()
	}
	fmt.Fprintf(w, "%d rows in %d regions compared in %.2fs (%.0f rows/s per region)\n", rows, regions, took.Seconds(), rate)
}
