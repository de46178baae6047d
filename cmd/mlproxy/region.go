package main

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/mlproxy/mlproxy/applier"
	"github.com/mlproxy/mlproxy/causal"
	"github.com/mlproxy/mlproxy/change"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/conflict"
	"github.com/mlproxy/mlproxy/schema"
)

func regionCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "region",
		Short: "Change the set of regions: add (seed) a region, reseed one that fell behind, check that one can be removed",
	}
	cmd.AddCommand(regionAddCmd(), regionReseedCmd(), regionRemoveCmd())
	return cmd
}

func regionReseedCmd() *cobra.Command {
	var path, from string
	var force bool
	var o seedOptions
	cmd := &cobra.Command{
		Use:   "reseed --from PEER -c REGION.yaml",
		Short: "Copy this region again from one peer, after a link's checkpoint was purged from the peer's binlog",
		Long: `region reseed empties this region's replicated tables and copies them again
from --from, as region add does, when a peer can no longer resume a link
(mlproxy status shows it needs_reseed: its binlog was purged past the
checkpoint). Stop every mlproxy instance of this region first: nothing may
write here meanwhile. The source must already hold everything this region
wrote (its checkpoint of this region covers this region's binlog), or
those writes would be lost here; reseed checks that and stops, saying how
many transactions are missing, unless --force.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg, local, source, src, err := openSeed(ctx, path, from)
			if err != nil {
				return err
			}
			defer local.Close()
			defer source.Close()
			var free sql.NullInt64
			if err := local.QueryRowContext(ctx, "SELECT IS_FREE_LOCK(?)", "mlproxy.replicator."+cfg.Region.Name).Scan(&free); err != nil {
				return fmt.Errorf("checking this region's replicator lock: %w", err)
			}
			if free.Int64 != 1 {
				return fmt.Errorf("an mlproxy of region %s is running (it holds the replicator lock): stop every instance of this region before reseeding it", cfg.Region.Name)
			}
			missing, err := unappliedAt(ctx, local, source, cfg.Region.ID)
			if err != nil {
				return err
			}
			if missing != "" && !force {
				return fmt.Errorf("%s has not applied everything this region wrote (%s): reseeding now would drop those writes here, "+
					"while the other regions keep them, so this region would differ from them for good in those rows. "+
					"Let %s's link from %s catch up (mlproxy status there); --force reseeds anyway", src.Name, missing, src.Name, cfg.Region.Name)
			}
			if _, err := local.ExecContext(ctx, seedStateSQL); err != nil {
				return err
			}
			if _, err := local.ExecContext(ctx, "REPLACE INTO mlr.seed (id, source, state) VALUES (1, ?, 'reseeding')", src.Name); err != nil {
				return err
			}
			rep, err := seedRegion(ctx, cfg, local, source, src, o, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "reseeded region %s from %s: %d rows (%s) in %d tables in %.1fs; snapshot at %s (%s:%d)\n",
				cfg.Region.Name, src.Name, rep.rows, mib(rep.bytes), rep.tables, rep.took.Seconds(), rep.gtid, rep.file, rep.pos)
			for _, l := range rep.checkpoints {
				fmt.Fprintln(cmd.OutOrStdout(), "  "+l)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "next: mlproxy run -c %s\n", cfg.Path)
			return nil
		},
	}
	seedFlags(cmd, &path, &from, &o)
	cmd.Flags().BoolVar(&force, "force", false, "reseed even though the source lacks some of this region's writes (this region then differs from the others in them)")
	return cmd
}

// unappliedAt says what of this region's own binlog (its GTID domains) the
// source's checkpoint of it (peer_id self) does not cover, "" when it
// covers all.
func unappliedAt(ctx context.Context, local, source *sql.DB, self uint16) (string, error) {
	var mine string
	if err := local.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&mine); err != nil {
		return "", fmt.Errorf("this region's binlog position: %w", err)
	}
	var theirs string
	err := source.QueryRowContext(ctx, "SELECT gtid FROM mlr.checkpoints WHERE peer_id = ?", self).Scan(&theirs)
	if errors.Is(err, sql.ErrNoRows) {
		// Never applied anything of this region: what came before this
		// region's replication began (schema apply) is not owed.
		err = local.QueryRowContext(ctx, "SELECT gtid FROM mlr.binlog_start WHERE id = 1").Scan(&theirs)
	}
	if err != nil {
		return "", fmt.Errorf("the source's checkpoint of this region: %w", err)
	}
	return gtidBehind(mine, theirs), nil
}

func regionAddCmd() *cobra.Command {
	var path, from string
	var o seedOptions
	cmd := &cobra.Command{
		Use:   "add --from PEER -c NEW.yaml",
		Short: "Seed this (empty) region from one existing region while every region keeps accepting writes",
		Long: `region add copies every replicated table, with its stamps, version
vectors and tombstones, from one existing region (--from, a peer of this
region's config) into this region's empty server, from one consistent
snapshot of the source (START TRANSACTION WITH CONSISTENT SNAPSHOT: no lock,
no write stall), and sets this region's checkpoints so that it applies from
the source everything after the snapshot, and from every other peer
everything the source had not applied when the snapshot was taken.

Run it after 'mlproxy schema apply -c NEW.yaml' and before this region's
'mlproxy run' (which refuses to start on a half-seeded region). The others
learn of the region by adding it to their files, 'schema apply' there (its
replication account) and a reload (SIGHUP). An interrupted seed starts over
when run again. The copy is not written to this region's binlog.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg, local, source, src, err := openSeed(ctx, path, from)
			if err != nil {
				return err
			}
			defer local.Close()
			defer source.Close()
			rep, err := seedRegion(ctx, cfg, local, source, src, o, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "seeded region %s from %s: %d rows (%s) in %d tables in %.1fs (%.0f rows/s); snapshot at %s (%s:%d)\n",
				cfg.Region.Name, src.Name, rep.rows, mib(rep.bytes), rep.tables, rep.took.Seconds(), float64(rep.rows)/max(rep.took.Seconds(), 0.001),
				rep.gtid, rep.file, rep.pos)
			fmt.Fprintf(cmd.OutOrStdout(), "write stall at %s: none (a consistent snapshot locks no row; its metadata locks made DDL on the copied tables wait until the seed ended)\n", src.Name)
			for _, l := range rep.checkpoints {
				fmt.Fprintln(cmd.OutOrStdout(), "  "+l)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "next: mlproxy run -c %s; add region %s to the other regions' files, run schema apply there and reload them (SIGHUP)\n", cfg.Path, cfg.Region.Name)
			return nil
		},
	}
	seedFlags(cmd, &path, &from, &o)
	return cmd
}

// seedFlags are the flags region add and reseed share.
func seedFlags(cmd *cobra.Command, path, from *string, o *seedOptions) {
	cmd.Flags().StringVarP(path, "config", "c", "", "this region's config file (required)")
	cmd.Flags().StringVar(from, "from", "", "the region to copy from: a peer of this region's config (required)")
	cmd.Flags().IntVar(&o.chunk, "chunk", 1000, "rows per chunk read from the source, by primary key")
	cmd.Flags().IntVar(&o.writers, "writers", 2, "sessions inserting into this region at once (at most 4)")
	cmd.Flags().IntVar(&o.rate, "rows-per-second", 0, "at most this many rows a second (0: no limit)")
	_ = cmd.MarkFlagRequired("config")
	_ = cmd.MarkFlagRequired("from")
}

// openSeed loads this region's config and opens its server and the
// source's (peer from), for region add and reseed.
func openSeed(ctx context.Context, path, from string) (*config.Config, *sql.DB, *sql.DB, config.Peer, error) {
	cfg, local, err := loadLocal(ctx, path)
	if err != nil {
		return nil, nil, nil, config.Peer{}, err
	}
	src, ok := peerNamed(cfg, from)
	var source *sql.DB
	switch {
	case !ok:
		err = fmt.Errorf("--from %q: not a peer in %s (peers: %s)", from, cfg.Path, peerNames(cfg))
	case src.Server.Addr == "":
		err = fmt.Errorf("--from %s: peer %s has no server address in %s", from, from, cfg.Path)
	case cfg.Topology.Mode != "" && cfg.Topology.Mode != "all-to-all":
		err = fmt.Errorf("a region is seeded only in an all-to-all topology; %s says topology %s", cfg.Path, cfg.Topology.Mode)
	default:
		source, err = openServer(ctx, "peer "+src.Name, src.Server)
	}
	if err != nil {
		local.Close()
		return nil, nil, nil, config.Peer{}, err
	}
	return cfg, local, source, src, nil
}

func peerNamed(cfg *config.Config, name string) (config.Peer, bool) {
	for _, p := range cfg.Peers {
		if p.Name == name {
			return p, true
		}
	}
	return config.Peer{}, false
}

func peerNames(cfg *config.Config) string {
	var n []string
	for _, p := range cfg.Peers {
		n = append(n, p.Name)
	}
	return strings.Join(n, ", ")
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

type seedOptions struct {
	chunk, writers, rate int
}

type seedReport struct {
	rows, bytes int64
	tables      int
	took        time.Duration
	gtid, file  string
	pos         uint64
	checkpoints []string
}

// seedStateSQL creates mlr.seed, the seed's progress: a region whose row
// says "seeding" is half-seeded, and `mlproxy run` refuses to start it.
const seedStateSQL = "CREATE TABLE IF NOT EXISTS mlr.seed (\n" +
	"  id TINYINT UNSIGNED NOT NULL PRIMARY KEY,\n" +
	"  source VARCHAR(64) NOT NULL, state VARCHAR(16) NOT NULL,\n" +
	"  started_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), finished_at TIMESTAMP(6) NULL,\n" +
	"  rows_copied BIGINT UNSIGNED NOT NULL DEFAULT 0, gtid VARCHAR(1024) NOT NULL DEFAULT ''\n" +
	") ENGINE=InnoDB"

// seedSession is how every session writing the copy starts: not in the
// binlog (the peers have these rows), as the applier (the triggers keep the
// stamps and vectors copied), without foreign key checks (tables are
// copied one after the other), with the applier's sql_mode and time zone.
const seedSession = applier.SessionSetup + ", sql_log_bin = 0, foreign_key_checks = 0"

// halfSeeded is what `mlproxy run` says of a region whose seed did not
// finish ("" when it did, or none ran).
func halfSeeded(ctx context.Context, db *sql.DB) (string, error) {
	var state, source string
	err := db.QueryRowContext(ctx, "SELECT state, source FROM mlr.seed WHERE id = 1").Scan(&state, &source)
	switch {
	case errors.Is(err, sql.ErrNoRows), isNoTable(err):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("reading mlr.seed: %w", err)
	case state == "done":
		return "", nil
	}
	verb := "add"
	if state == "reseeding" {
		verb = "reseed"
	}
	return fmt.Sprintf("this region's seed from %s did not finish (mlr.seed says %q): run `mlproxy region %s --from %s` again; it starts over", source, state, verb, source), nil
}

// seedRegion copies every replicated table of cfg from source (peer src)
// into local and sets local's checkpoints; see regionAddCmd.
func seedRegion(ctx context.Context, cfg *config.Config, local, source *sql.DB, src config.Peer, o seedOptions, progress io.Writer) (seedReport, error) {
	var rep seedReport
	start := time.Now()
	o.chunk = max(o.chunk, 1)
	o.writers = max(o.writers, 1)
	if _, err := local.ExecContext(ctx, seedStateSQL); err != nil {
		return rep, fmt.Errorf("create mlr.seed (did `mlproxy schema apply -c %s` run?): %w", cfg.Path, err)
	}
	tables, err := schema.Inspect(ctx, local, cfg.Tables)
	if err != nil {
		return rep, fmt.Errorf("this region's replicated tables (run `mlproxy schema apply -c %s` first): %w", cfg.Path, err)
	}
	// No mlproxy of this region may run meanwhile: hold its replicator
	// lock for the whole seed (an instance starting now stands by).
	lock, err := local.Conn(ctx)
	if err != nil {
		return rep, err
	}
	defer lock.Close()
	lockName := "mlproxy.replicator." + cfg.Region.Name
	var got sql.NullInt64
	if err := lock.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", lockName).Scan(&got); err != nil {
		return rep, fmt.Errorf("taking this region's replicator lock %s: %w", lockName, err)
	}
	if got.Int64 != 1 {
		return rep, fmt.Errorf("an mlproxy of region %s is running (it holds the replicator lock %s): stop every instance of this region first", cfg.Region.Name, lockName)
	}
	defer func() { _, _ = lock.ExecContext(context.WithoutCancel(ctx), "DO RELEASE_LOCK(?)", lockName) }()
	if err := prepareSeed(ctx, local, tables, src.Name, progress); err != nil {
		return rep, err
	}

	// The snapshot: one session of the source, read-only, held open for
	// the whole copy; its binlog position is the snapshot's.
	sconn, err := source.Conn(ctx)
	if err != nil {
		return rep, err
	}
	defer sconn.Close()
	for _, q := range []string{"SET time_zone = '+00:00'", "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
		"START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"} {
		if _, err := sconn.ExecContext(ctx, q); err != nil {
			return rep, fmt.Errorf("snapshot of %s: %s: %w", src.Name, q, err)
		}
	}
	defer func() { _, _ = sconn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK") }()
	st, err := statusVars(ctx, sconn, "binlog_snapshot_%")
	if err != nil {
		return rep, fmt.Errorf("snapshot of %s: %w", src.Name, err)
	}
	rep.file = st["Binlog_snapshot_file"]
	fmt.Sscan(st["Binlog_snapshot_position"], &rep.pos)
	if rep.file == "" {
		return rep, fmt.Errorf("snapshot of %s: the server gave no binlog position (Binlog_snapshot_file): is log_bin on?", src.Name)
	}
	if err := sconn.QueryRowContext(ctx, "SELECT COALESCE(BINLOG_GTID_POS(?, ?), '')", rep.file, rep.pos).Scan(&rep.gtid); err != nil {
		return rep, fmt.Errorf("snapshot of %s: GTID of %s:%d: %w", src.Name, rep.file, rep.pos, err)
	}
	// The source's own checkpoints, in the snapshot: what it had applied
	// of every other region is in the copied rows.
	theirs, err := readCheckpoints(ctx, sconn)
	if err != nil {
		return rep, fmt.Errorf("%s's mlr.checkpoints in the snapshot: %w", src.Name, err)
	}
	if err := sourceReady(ctx, sconn, src.Name); err != nil {
		return rep, err
	}
	total := estimateRows(ctx, sconn, tables)
	fmt.Fprintf(progress, "seed: snapshot of %s at %s (%s:%d); about %d rows in %d tables\n", src.Name, rep.gtid, rep.file, rep.pos, total, len(tables))

	// Reader (the snapshot session) -> batches -> writers.
	var rows, bytes atomic.Int64
	var maxStamp atomic.Uint64
	batches := make(chan seedBatch, 2*o.writers)
	g, gctx := errgroup.WithContext(ctx)
	for range o.writers {
		g.Go(func() error { return seedWriter(gctx, local, batches, &rows, &bytes) })
	}
	stopProgress := make(chan struct{})
	var pwg sync.WaitGroup
	pwg.Add(1)
	go func() {
		defer pwg.Done()
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case <-t.C:
				n := rows.Load()
				eta := "unknown"
				if el := time.Since(start).Seconds(); n > 0 && total > n {
					eta = fmt.Sprintf("%.0fs", float64(total-n)/(float64(n)/el))
				}
				fmt.Fprintf(progress, "seed: %d of about %d rows (%s), ETA %s\n", n, total, mib(bytes.Load()), eta)
			}
		}
	}()
	g.Go(func() error {
		defer close(batches)
		limit := newRowRate(o.rate)
		for _, t := range tables {
			if err := copyTable(gctx, sconn, t, o.chunk, batches, &maxStamp, limit, src.ID, cfg.Region.ID); err != nil {
				return err
			}
		}
		return nil
	})
	err = g.Wait()
	close(stopProgress)
	pwg.Wait()
	if err != nil {
		return rep, err
	}
	rep.rows, rep.bytes, rep.tables = rows.Load(), bytes.Load(), len(tables)

	// Checkpoints and "done" in one local transaction: a region either
	// has both or is half-seeded.
	cconn, err := local.Conn(ctx)
	if err != nil {
		return rep, err
	}
	defer cconn.Close()
	defer func() { _ = cconn.Raw(func(any) error { return driver.ErrBadConn }) }() // never back to the pool without the binlog
	if _, err := cconn.ExecContext(ctx, "SET sql_log_bin = 0"); err != nil {
		return rep, err
	}
	tx, err := cconn.BeginTx(ctx, nil)
	if err != nil {
		return rep, err
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, applier.UpsertCheckpointSQL, src.ID, src.Name, rep.gtid, rep.file, rep.pos, maxStamp.Load(), 0, nil); err != nil {
		return rep, fmt.Errorf("checkpoint of %s: %w", src.Name, err)
	}
	rep.checkpoints = append(rep.checkpoints, fmt.Sprintf("from %s: after the snapshot, gtid %s", src.Name, rep.gtid))
	for _, p := range cfg.Peers {
		if p.ID == src.ID {
			continue
		}
		c, ok := theirs[p.ID]
		if !ok {
			rep.checkpoints = append(rep.checkpoints, fmt.Sprintf("from %s: from where its schema apply began (%s had applied nothing of it)", p.Name, src.Name))
			continue
		}
		if _, err := tx.ExecContext(ctx, applier.UpsertCheckpointSQL, p.ID, p.Name, c.gtid, c.file, c.pos, c.hlc, 0, nil); err != nil {
			return rep, fmt.Errorf("checkpoint of %s: %w", p.Name, err)
		}
		rep.checkpoints = append(rep.checkpoints, fmt.Sprintf("from %s: where %s was, gtid %s", p.Name, src.Name, c.gtid))
	}
	if _, err := tx.ExecContext(ctx, "UPDATE mlr.seed SET state = 'done', finished_at = NOW(6), rows_copied = ?, gtid = ? WHERE id = 1", rep.rows, rep.gtid); err != nil {
		return rep, err
	}
	if err := tx.Commit(); err != nil {
		return rep, fmt.Errorf("commit the seed's checkpoints: %w", err)
	}
	rep.took = time.Since(start)
	return rep, nil
}

// prepareSeed checks that local may be seeded and marks it half-seeded: a
// region that never took data, or whose earlier seed was interrupted (its
// copy is emptied: the seed starts over).
func prepareSeed(ctx context.Context, local *sql.DB, tables []*schema.Table, source string, progress io.Writer) error {
	var state, was string
	err := local.QueryRowContext(ctx, "SELECT state, source FROM mlr.seed WHERE id = 1").Scan(&state, &was)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		var n int
		if err := local.QueryRowContext(ctx, "SELECT COUNT(*) FROM mlr.checkpoints").Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return errors.New("this region has already replicated (mlr.checkpoints has rows): region add seeds a new, empty region")
		}
		for _, t := range tables {
			var any int
			err := local.QueryRowContext(ctx, "SELECT 1 FROM "+t.QualifiedName()+" LIMIT 1").Scan(&any)
			if err == nil {
				return fmt.Errorf("table %s has rows in this region: region add seeds a new, empty region", t)
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("table %s: %w", t, err)
			}
		}
	case err != nil:
		return fmt.Errorf("reading mlr.seed: %w", err)
	case state == "done":
		return fmt.Errorf("this region was already seeded from %s (mlr.seed): nothing to do", was)
	default:
		if state == "reseeding" {
			fmt.Fprintf(progress, "seed: emptying this region's replicated tables to copy them again from %s\n", was)
		} else {
			fmt.Fprintf(progress, "seed: an earlier seed from %s did not finish; emptying its copy and starting over\n", was)
		}
		conn, err := local.Conn(ctx)
		if err != nil {
			return err
		}
		defer conn.Close()
		if _, err := conn.ExecContext(ctx, seedSession); err != nil {
			return err
		}
		defer func() { _ = conn.Raw(func(any) error { return driver.ErrBadConn }) }() // never back to the pool with @_mlr_apply
		for _, t := range tables {
			for _, q := range []string{"DELETE FROM " + t.QualifiedName(), "DELETE FROM " + t.TombstoneQualifiedName()} {
				if _, err := conn.ExecContext(ctx, q); err != nil {
					return fmt.Errorf("emptying the interrupted copy: %s: %w", q, err)
				}
			}
		}
		// Checkpoints, and changes held or stopped at positions of the old
		// checkpoints, go with the copy they described.
		for _, q := range []string{"DELETE FROM mlr.checkpoints", "DELETE FROM mlr.held", "DELETE FROM mlr.table_stops", "DELETE FROM mlr.link_stops"} {
			if _, err := conn.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("%s: %w", q, err)
			}
		}
	}
	_, err = local.ExecContext(ctx, "REPLACE INTO mlr.seed (id, source, state) VALUES (1, ?, 'seeding')", source)
	if state == "reseeding" {
		_, err = local.ExecContext(ctx, "REPLACE INTO mlr.seed (id, source, state) VALUES (1, ?, 'reseeding')", source)
	}
	return err
}

// sourceReady refuses a source whose copy would not be whole: one that is
// itself half-seeded, or that holds changes back (a stopped link or table:
// its checkpoint passed changes that are in mlr.held, not in its tables,
// and would never reach the new region).
func sourceReady(ctx context.Context, conn *sql.Conn, name string) error {
	var state string
	err := conn.QueryRowContext(ctx, "SELECT state FROM mlr.seed WHERE id = 1").Scan(&state)
	switch {
	case err == nil && state != "done":
		return fmt.Errorf("%s is itself half-seeded (mlr.seed says %q): finish its seed first", name, state)
	case err != nil && !errors.Is(err, sql.ErrNoRows) && !isNoTable(err):
		return fmt.Errorf("%s's mlr.seed: %w", name, err)
	}
	for _, q := range []struct{ sql, what string }{
		{"SELECT CONCAT(db, '.', tbl) FROM mlr.link_stops LIMIT 1", "a link stopped at a refused change"},
		{"SELECT CONCAT(db, '.', tbl) FROM mlr.table_stops LIMIT 1", "a table stopped at a refused change"},
		{"SELECT CONCAT(db, '.', tbl) FROM mlr.held LIMIT 1", "changes held back for a stopped table"},
	} {
		var table string
		err := conn.QueryRowContext(ctx, q.sql).Scan(&table)
		if err == nil {
			return fmt.Errorf("%s has %s (%s): they are not in its tables and would never reach the new region; resolve it first (mlproxy status, mlproxy link retry|skip there)", name, q.what, table)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%s: %s: %w", name, q.sql, err)
		}
	}
	return nil
}

type peerCheckpoint struct {
	gtid, file string
	pos, hlc   uint64
}

func readCheckpoints(ctx context.Context, conn *sql.Conn) (map[uint16]peerCheckpoint, error) {
	rows, err := conn.QueryContext(ctx, "SELECT peer_id, gtid, file, pos, hlc FROM mlr.checkpoints")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[uint16]peerCheckpoint{}
	for rows.Next() {
		var id uint16
		var c peerCheckpoint
		if err := rows.Scan(&id, &c.gtid, &c.file, &c.pos, &c.hlc); err != nil {
			return nil, err
		}
		out[id] = c
	}
	return out, rows.Err()
}

func statusVars(ctx context.Context, conn *sql.Conn, like string) (map[string]string, error) {
	rows, err := conn.QueryContext(ctx, "SHOW SESSION STATUS LIKE '"+like+"'")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, rows.Err()
}

// estimateRows is the source's estimate of the rows to copy (InnoDB's
// statistics; for progress only).
func estimateRows(ctx context.Context, conn *sql.Conn, tables []*schema.Table) int64 {
	var total int64
	for _, t := range tables {
		var n sql.NullInt64
		_ = conn.QueryRowContext(ctx, "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?", t.Schema, t.Name).Scan(&n)
		total += n.Int64
	}
	return total
}

// seedBatch is rows of one table for one multi-row INSERT.
type seedBatch struct {
	table  string
	insert string // INSERT INTO t (cols) VALUES
	cols   int
	values []any
	bytes  int64
}

// copyTable reads t and its tombstones from the snapshot session by
// primary-key chunks (keyset: each chunk after the last key read) and
// sends them as batches.
func copyTable(ctx context.Context, conn *sql.Conn, t *schema.Table, chunk int, out chan<- seedBatch, maxStamp *atomic.Uint64, limit *rowRate, from, to uint16) error {
	var cols []string
	for _, c := range t.Columns {
		if !c.Generated {
			cols = append(cols, c.Name)
		}
	}
	rows, tombs := rehomer(t, cols, false, from, to), rehomer(t, nil, true, from, to)
	if err := copyChunks(ctx, conn, t.QualifiedName(), cols, t.PKColumns(), chunk, out, maxStamp, limit, rows); err != nil {
		return fmt.Errorf("copy %s: %w", t, err)
	}
	tomb := append(append([]string(nil), t.PK...), schema.ColHLC, schema.ColOrigin, schema.ColMeta)
	if err := copyChunks(ctx, conn, t.TombstoneQualifiedName(), tomb, t.PKColumns(), chunk, out, maxStamp, limit, tombs); err != nil {
		return fmt.Errorf("copy the tombstones of %s: %w", t, err)
	}
	return nil
}

// rehomer rewrites the metadata of a counter table's copied versions (rows,
// or tombstones when deleted) for their new home (conflict.Rehome); nil
// for other rules. cols are the copied columns of a row.
func rehomer(t *schema.Table, cols []string, deleted bool, from, to uint16) func(row []any, at map[string]int) error {
	if t.Rule.Rule != config.RuleCounter || from == to {
		return nil
	}
	var counters []string
	for _, n := range t.Rule.Columns {
		for _, c := range cols {
			if strings.EqualFold(c, n) {
				n = c
			}
		}
		counters = append(counters, n)
	}
	return func(row []any, at map[string]int) error {
		i, ok := at[schema.ColMeta]
		if !ok {
			return nil
		}
		m, err := change.ParseMeta(row[i])
		if err != nil {
			return err
		}
		var values map[string]any
		if !deleted {
			values = map[string]any{}
			for _, c := range counters {
				if j, ok := at[c]; ok {
					values[c] = row[j]
				}
			}
		}
		row[i] = []byte(conflict.Rehome(m, values, deleted, counters, from, to).Encode())
		return nil
	}
}

func copyChunks(ctx context.Context, conn *sql.Conn, table string, cols []string, pk []schema.Column, chunk int, out chan<- seedBatch, maxStamp *atomic.Uint64, limit *rowRate, fix func(row []any, at map[string]int) error) error {
	quoted := make([]string, len(cols))
	at := map[string]int{}
	for i, c := range cols {
		quoted[i] = schema.Quote(c)
		at[c] = i
	}
	pkq := make([]string, len(pk))
	pki := make([]int, len(pk))
	for i, c := range pk {
		j, ok := at[c.Name]
		if !ok {
			return fmt.Errorf("primary key column %s is not copied (a generated column?): region add cannot page through %s", c.Name, table)
		}
		pkq[i] = schema.Quote(c.Name)
		pki[i] = j
	}
	hlcAt, hasHLC := at[schema.ColHLC]
	sel := "SELECT " + strings.Join(quoted, ", ") + " FROM " + table
	order := " ORDER BY " + strings.Join(pkq, ", ") + fmt.Sprintf(" LIMIT %d", chunk)
	after, bound := keysetAfter(pk)
	insert := "INSERT INTO " + table + " (" + strings.Join(quoted, ", ") + ") VALUES "
	var last []any
	for {
		// Every chunk, the first too, runs as a prepared statement: the
		// binary protocol returns FLOAT and DOUBLE exactly, where the text
		// protocol would round FLOAT to 6 digits.
		q, args := sel+" WHERE ? = 1"+order, []any{1}
		if last != nil {
			q, args = sel+after+order, bound(last)
		}
		rows, err := conn.QueryContext(ctx, q, args...)
		if err != nil {
			return err
		}
		b := seedBatch{table: table, insert: insert, cols: len(cols)}
		n := 0
		for rows.Next() {
			raw := make([]sql.RawBytes, len(cols))
			ptrs := make([]any, len(cols))
			for i := range raw {
				ptrs[i] = &raw[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				rows.Close()
				return err
			}
			for _, v := range raw {
				var cp any
				if v != nil {
					c := make([]byte, len(v))
					copy(c, v)
					cp = c
					b.bytes += int64(len(v))
				}
				b.values = append(b.values, cp)
			}
			if fix != nil {
				if err := fix(b.values[len(b.values)-len(cols):], at); err != nil {
					rows.Close()
					return fmt.Errorf("metadata of a row of %s: %w", table, err)
				}
			}
			if hasHLC && raw[hlcAt] != nil {
				var s uint64
				fmt.Sscan(string(raw[hlcAt]), &s)
				for old := maxStamp.Load(); s > old && !maxStamp.CompareAndSwap(old, s); old = maxStamp.Load() {
				}
			}
			n++
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		row := b.values[len(b.values)-len(cols):]
		last = make([]any, len(pk))
		for i, j := range pki {
			last[i] = row[j]
		}
		if err := limit.wait(ctx, n); err != nil {
			return err
		}
		select {
		case out <- b:
		case <-ctx.Done():
			return ctx.Err()
		}
		if n < chunk {
			return nil
		}
	}
}

// keysetAfter is the WHERE clause of the chunk after a key, expanded so
// that the server can range-scan the primary key (a row comparison
// (a, b) > (?, ?) is not range-optimised): a > ? OR (a = ? AND b > ?) ...,
// and bound, which gives its arguments from the last key read. Integer
// keys are bound as integers and decimals cast, so they never compare as
// DOUBLE.
func keysetAfter(pk []schema.Column) (string, func(last []any) []any) {
	ph := make([]string, len(pk))
	for i, c := range pk {
		ph[i] = "?"
		switch c.DataType {
		case "decimal", "numeric":
			ph[i] = "CAST(? AS DECIMAL(65,30))"
		}
	}
	var ors []string
	var order []int // which key column each placeholder takes
	for i := range pk {
		var ands []string
		for j := 0; j < i; j++ {
			ands = append(ands, schema.Quote(pk[j].Name)+" = "+ph[j])
			order = append(order, j)
		}
		ands = append(ands, schema.Quote(pk[i].Name)+" > "+ph[i])
		order = append(order, i)
		ors = append(ors, "("+strings.Join(ands, " AND ")+")")
	}
	bound := func(last []any) []any {
		args := make([]any, len(order))
		for k, j := range order {
			args[k] = keyArg(pk[j], last[j])
		}
		return args
	}
	return " WHERE " + strings.Join(ors, " OR "), bound
}

// keyArg is a key value read from the source, typed for comparing with
// its column.
func keyArg(c schema.Column, v any) any {
	b, ok := v.([]byte)
	if !ok {
		return v
	}
	switch c.DataType {
	case "tinyint", "smallint", "mediumint", "int", "integer", "bigint":
		if c.Unsigned {
			if n, err := strconv.ParseUint(string(b), 10, 64); err == nil {
				return n
			}
		} else if n, err := strconv.ParseInt(string(b), 10, 64); err == nil {
			return n
		}
	}
	return b
}

// seedWriter inserts batches on a session of its own (seedSession), in
// transactions of one batch each.
func seedWriter(ctx context.Context, local *sql.DB, in <-chan seedBatch, rows, bytes *atomic.Int64) error {
	conn, err := local.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	defer func() { _ = conn.Raw(func(any) error { return driver.ErrBadConn }) }() // never back to the pool with @_mlr_apply
	if _, err := conn.ExecContext(ctx, seedSession); err != nil {
		return fmt.Errorf("seed session: %w", err)
	}
	for b := range in {
		n := len(b.values) / b.cols
		one := "(" + strings.TrimSuffix(strings.Repeat("?, ", b.cols), ", ") + ")"
		// At most 500 rows per statement, and fewer for wide tables: a
		// statement takes at most 65,535 placeholders.
		per := max(1, min(500, 65535/b.cols))
		for from := 0; from < n; from += per {
			to := min(n, from+per)
			q := b.insert + strings.TrimSuffix(strings.Repeat(one+", ", to-from), ", ")
			if _, err := conn.ExecContext(ctx, q, b.values[from*b.cols:to*b.cols]...); err != nil {
				return fmt.Errorf("insert into %s in this region: %w", b.table, err)
			}
		}
		rows.Add(int64(n))
		bytes.Add(b.bytes)
	}
	return nil
}

// rowRate paces the reader to a number of rows a second (0: no limit).
type rowRate struct {
	perSec int
	start  time.Time
	done   int64
}

func newRowRate(perSec int) *rowRate { return &rowRate{perSec: perSec, start: time.Now()} }

func (r *rowRate) wait(ctx context.Context, n int) error {
	if r.perSec <= 0 {
		return nil
	}
	r.done += int64(n)
	due := r.start.Add(time.Duration(float64(r.done) / float64(r.perSec) * float64(time.Second)))
	if d := time.Until(due); d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func regionRemoveCmd() *cobra.Command {
	var path string
	var force bool
	cmd := &cobra.Command{
		Use:   "remove NAME -c REGION.yaml",
		Short: "Check that region NAME can leave: every other region has applied everything it wrote; list its pending conflicts",
		Long: `region remove reads every region of the config (this one and its peers)
and says, for each region that stays, whether it has applied everything
region NAME wrote (NAME's binlog position against that region's checkpoint
of it). When all have, it lists the conflicts still pending with NAME's
versions and says what to do next: remove NAME from every region's file and
reload them (SIGHUP); their links to NAME stop, and tombstone garbage
collection stops waiting for NAME. When some have not, or NAME cannot be
reached, it says exactly which transactions each region would lose and
exits 1, unless --force.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cfg, local, err := loadLocal(ctx, path)
			if err != nil {
				return err
			}
			defer local.Close()
			gone, ok := peerNamed(cfg, args[0])
			if !ok {
				return fmt.Errorf("%q is not a peer in %s (peers: %s)", args[0], cfg.Path, peerNames(cfg))
			}
			w := cmd.OutOrStdout()
			staying := []struct {
				name string
				db   *sql.DB
			}{{cfg.Region.Name, local}}
			for _, p := range cfg.Peers {
				if p.ID == gone.ID {
					continue
				}
				db, err := openServer(ctx, "peer "+p.Name, p.Server)
				if err != nil {
					return fmt.Errorf("region %s stays and must be checked: %w", p.Name, err)
				}
				defer db.Close()
				staying = append(staying, struct {
					name string
					db   *sql.DB
				}{p.Name, db})
			}
			var wrote string
			if db, err := openServer(ctx, "peer "+gone.Name, gone.Server); err != nil {
				fmt.Fprintf(w, "region %s cannot be reached (%v): what it wrote after the positions below cannot be checked, and is lost if it never comes back\n", gone.Name, err)
			} else {
				defer db.Close()
				if err := db.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&wrote); err != nil {
					return fmt.Errorf("region %s's binlog position: %w", gone.Name, err)
				}
				fmt.Fprintf(w, "region %s's binlog is at %s\n", gone.Name, wrote)
			}
			lost := wrote == ""
			for _, r := range staying {
				var cp string
				err := r.db.QueryRowContext(ctx, "SELECT gtid FROM mlr.checkpoints WHERE peer_id = ?", gone.ID).Scan(&cp)
				if err != nil && !errors.Is(err, sql.ErrNoRows) {
					return fmt.Errorf("region %s's checkpoint of %s: %w", r.name, gone.Name, err)
				}
				var held int
				if err := r.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM mlr.held WHERE peer_id = ?", gone.ID).Scan(&held); err != nil {
					return fmt.Errorf("region %s's held changes of %s: %w", r.name, gone.Name, err)
				}
				if held > 0 {
					lost = true
					fmt.Fprintf(w, "  %s holds %d changes of %s back for a stopped table (mlproxy status there): they are lost if its link to %s goes\n", r.name, held, gone.Name, gone.Name)
				}
				missing := gtidBehind(wrote, cp)
				switch {
				case wrote == "":
					fmt.Fprintf(w, "  %s has applied %s up to %q\n", r.name, gone.Name, cp)
				case missing != "":
					lost = true
					fmt.Fprintf(w, "  %s has applied %s up to %q: it lacks %s\n", r.name, gone.Name, cp, missing)
				default:
					fmt.Fprintf(w, "  %s has applied everything %s wrote\n", r.name, gone.Name)
				}
				rows, err := r.db.QueryContext(ctx, "SELECT id, db, tbl, CAST(pk AS CHAR) FROM mlr.conflicts WHERE outcome = 'pending' AND resolved_at IS NULL "+
					"AND (peer_id = ? OR remote_origin = ? OR local_origin = ?) ORDER BY id", gone.ID, gone.ID, gone.ID)
				if err != nil {
					return fmt.Errorf("region %s's pending conflicts: %w", r.name, err)
				}
				for rows.Next() {
					var id uint64
					var db, tbl, pk string
					if err := rows.Scan(&id, &db, &tbl, &pk); err != nil {
						rows.Close()
						return err
					}
					fmt.Fprintf(w, "    pending conflict %d on %s.%s key %s involves %s: mlproxy conflicts show %d (in %s)\n", id, db, tbl, pk, gone.Name, id, r.name)
				}
				rows.Close()
			}
			if lost && !force {
				return fmt.Errorf("removing region %s now would lose what is listed above: let the regions catch up (mlproxy status), bring %s back, or pass --force", gone.Name, gone.Name)
			}
			fmt.Fprintf(w, "next: stop every mlproxy of %s (no more writes there), run this again until it passes, then remove region %s from every region's file (peers:) and reload each (SIGHUP): their links to it stop and tombstone GC stops waiting for it\n", gone.Name, gone.Name)
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "the config of a region that stays (required)")
	cmd.Flags().BoolVar(&force, "force", false, "report only: succeed even when something would be lost")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

// gtidBehind says, per GTID domain of pos (a binlog position), which
// transactions the position have (a checkpoint) does not cover ("" when
// it covers all). A position that does not parse is reported as such.
func gtidBehind(pos, have string) string {
	want, err := causal.ParsePosition(pos)
	if err != nil {
		return fmt.Sprintf("binlog position %q: %v", pos, err)
	}
	got, err := causal.ParsePosition(have)
	if err != nil {
		return fmt.Sprintf("checkpoint %q: %v", have, err)
	}
	domains := make([]uint32, 0, len(want))
	for d := range want {
		domains = append(domains, d)
	}
	slices.Sort(domains)
	var gaps []string
	for _, d := range domains {
		if n, h := want[d], got[d]; h < n {
			gaps = append(gaps, fmt.Sprintf("%d transactions of domain %d (%d to %d)", n-h, d, h+1, n))
		}
	}
	return strings.Join(gaps, ", ")
}
