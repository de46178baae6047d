package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mlproxy/mlproxy/config"
)

// link skip|retry act on a link stopped at a remote change that a key the
// conflict rule cannot place refused (on_constraint: stop). The request
// goes through this region's own server (mlr.link_requests), where the
// running applier polls for it, so it needs no other channel and survives
// a restart.

func linkCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "link",
		Short: "Act on a replication link stopped at a refused change: skip it or retry it",
	}
	cmd.AddCommand(linkActionCmd("skip", "Skip the change the link from PEER is stopped at (it is recorded whole in the conflict log) and go on"),
		linkActionCmd("retry", "Retry the change the link from PEER is stopped at now (after fixing the local row it collides with)"))
	return cmd
}

func linkActionCmd(action, short string) *cobra.Command {
	var path, table string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   action + " PEER",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cfg, db, err := loadLocal(ctx, path)
			if err != nil {
				return err
			}
			defer db.Close()
			peer, err := findPeer(cfg, args[0])
			if err != nil {
				return err
			}
			var gtid, tbl, pk, msg string
			err = db.QueryRowContext(ctx, "SELECT gtid, CONCAT(db, '.', tbl), pk, error FROM mlr.link_stops WHERE peer_id = ?", peer.ID).Scan(&gtid, &tbl, &pk, &msg)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				return tableAction(ctx, cmd, cfg, db, peer, action, table, wait)
			case err != nil:
				return fmt.Errorf("read mlr.link_stops: %w", err)
			case table != "" && table != tbl:
				return fmt.Errorf("the link from %s is stopped as a whole, at a change to %s (not %s): run the command without --table", peer.Name, tbl, table)
			}
			if action == "retry" {
				gtid = ""
			}
			if _, err := db.ExecContext(ctx, "REPLACE INTO mlr.link_requests (peer_id, action, gtid, requested_by) VALUES (?, ?, ?, ?)",
				peer.ID, action, gtid, truncate(operator(), 128)); err != nil {
				return fmt.Errorf("write mlr.link_requests: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "asked the link from %s to %s the change to %s key %s (%s)\n", peer.Name, action, tbl, pk, msg)
			return waitResumed(ctx, cmd, db, peer, gtid, action, wait)
		},
	}
	configFlag(cmd, &path)
	cmd.Flags().StringVar(&table, "table", "", "the stopped table (db.table) to act on, when the link stopped tables alone and more than one")
	cmd.Flags().DurationVar(&wait, "wait", 30*time.Second, "how long to wait for the link to act (0 = do not wait)")
	return cmd
}

// tableStop is a row of mlr.table_stops: a table stopped alone.
type tableStop struct {
	db, tbl, table               string
	kind, gtid, keyHash, pk, err string
	held                         int
}

// tableStops reads the tables stopped alone on the link from p. A region
// without mlr.table_stops (not yet upgraded by schema apply) has none; any
// other error is returned, so that a caller never shows "nothing stopped"
// when it could not look.
func tableStops(ctx context.Context, db *sql.DB, p config.Peer) ([]tableStop, error) {
	rows, err := db.QueryContext(ctx, `SELECT s.db, s.tbl, s.kind, s.gtid, s.key_hash, s.pk, s.error,
  (SELECT COUNT(*) FROM mlr.held h WHERE h.peer_id = s.peer_id AND h.db = s.db AND h.tbl = s.tbl)
FROM mlr.table_stops s WHERE s.peer_id = ? ORDER BY s.db, s.tbl`, p.ID)
	if isNoTable(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the tables stopped on the link from %s (mlr.table_stops): %w", p.Name, err)
	}
	defer rows.Close()
	var out []tableStop
	for rows.Next() {
		var s tableStop
		if err := rows.Scan(&s.db, &s.tbl, &s.kind, &s.gtid, &s.keyHash, &s.pk, &s.err, &s.held); err != nil {
			return nil, fmt.Errorf("reading the tables stopped on the link from %s (mlr.table_stops): %w", p.Name, err)
		}
		s.table = s.db + "." + s.tbl
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading the tables stopped on the link from %s (mlr.table_stops): %w", p.Name, err)
	}
	return out, nil
}

// tableAction asks the applier of the link from peer to skip or retry the
// change a table stopped alone at (mlr.table_stops), and waits for it.
func tableAction(ctx context.Context, cmd *cobra.Command, cfg *config.Config, db *sql.DB, peer config.Peer, action, table string, wait time.Duration) error {
	stops, err := tableStops(ctx, db, peer)
	if err != nil {
		return err
	}
	var names []string
	var s *tableStop
	for i := range stops {
		names = append(names, stops[i].table)
		if stops[i].table == table || (table == "" && len(stops) == 1) {
			s = &stops[i]
		}
	}
	switch {
	case len(stops) == 0:
		return fmt.Errorf("the link from %s is not stopped at a refused change (see `mlproxy status -c %s`)", peer.Name, cfg.Path)
	case s == nil && table == "":
		return fmt.Errorf("the link from %s has several stopped tables (%s): name one with --table", peer.Name, strings.Join(names, ", "))
	case s == nil:
		return fmt.Errorf("table %s is not stopped on the link from %s; stopped: %s", table, peer.Name, strings.Join(names, ", "))
	}
	if s.kind == "ddl" && action == "skip" {
		return fmt.Errorf("table %s on the link from %s waits for DDL (%s), not at a refused row: run the DDL in this region "+
			"(`mlproxy schema ddl`, then `mlproxy schema apply`); the table resumes by itself, or at once with `mlproxy link retry %s --table %s`",
			s.table, peer.Name, s.err, peer.Name, s.table)
	}
	if _, err := db.ExecContext(ctx, "UPDATE mlr.table_stops SET request = ?, request_gtid = ?, requested_by = ? WHERE peer_id = ? AND db = ? AND tbl = ?",
		action, s.gtid, truncate(operator(), 128), peer.ID, s.db, s.tbl); err != nil {
		return fmt.Errorf("write the request into mlr.table_stops: %w", err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "asked the link from %s to %s the change to %s key %s (%s); %d changes to the table are held behind it\n",
		peer.Name, action, s.table, s.pk, s.err, s.held)
	if wait <= 0 {
		return nil
	}
	// Taken (request cleared) and the stop unchanged with nothing applied
	// for this many polls: the change is still refused.
	const unchangedPolls = 10
	still, held := 0, s.held
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); {
		var gtid, kh, msg string
		var pending sql.NullString
		err := db.QueryRowContext(ctx, "SELECT gtid, key_hash, error, request FROM mlr.table_stops WHERE peer_id = ? AND db = ? AND tbl = ?",
			peer.ID, s.db, s.tbl).Scan(&gtid, &kh, &msg, &pending)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			fmt.Fprintf(cmd.OutOrStdout(), "table %s on the link from %s resumed\n", s.table, peer.Name)
			return nil
		case err == nil && !pending.Valid && (gtid != s.gtid || kh != s.keyHash):
			return fmt.Errorf("table %s on the link from %s got past the change it was stopped at (gtid %s) and stopped again at gtid %s: %s",
				s.table, peer.Name, s.gtid, gtid, msg)
		case err == nil && !pending.Valid:
			// Taken: held changes are applied a chunk per transaction
			// (a first chunk may wait on row locks); judge by progress.
			var now int
			_ = db.QueryRowContext(ctx, "SELECT COUNT(*) FROM mlr.held WHERE peer_id = ? AND db = ? AND tbl = ?", peer.ID, s.db, s.tbl).Scan(&now)
			if now < held {
				still, held = 0, now
			} else if still++; still > unchangedPolls {
				return fmt.Errorf("table %s on the link from %s took the %s and is still stopped at the same change: %s (see the log of `mlproxy run`)",
					s.table, peer.Name, action, msg)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("the link from %s has not acted on the request within %s: is `mlproxy run` running? (the request stays until it does)", peer.Name, wait)
}

func findPeer(cfg *config.Config, name string) (config.Peer, error) {
	for _, p := range cfg.Sources() {
		if p.Name == name {
			return p, nil
		}
	}
	return config.Peer{}, fmt.Errorf("%q is not a peer this region pulls from in %s", name, cfg.Path)
}

// waitResumed waits until the link moved past the stop (its mlr.link_stops
// row is gone or names another change) or wait passes.
func waitResumed(ctx context.Context, cmd *cobra.Command, db *sql.DB, peer config.Peer, gtid, action string, wait time.Duration) error {
	if wait <= 0 {
		return nil
	}
	deadline := time.Now().Add(wait)
	consumed := 0
	for time.Now().Before(deadline) {
		var now, msg string
		err := db.QueryRowContext(ctx, "SELECT gtid, error FROM mlr.link_stops WHERE peer_id = ?", peer.ID).Scan(&now, &msg)
		if errors.Is(err, sql.ErrNoRows) {
			fmt.Fprintf(cmd.OutOrStdout(), "the link from %s resumed\n", peer.Name)
			return nil
		}
		if err == nil && action == "skip" && now != gtid {
			return fmt.Errorf("the link from %s got past %s and stopped again at %s: %s", peer.Name, gtid, now, msg)
		}
		var pending int
		if action == "retry" && db.QueryRowContext(ctx, "SELECT COUNT(*) FROM mlr.link_requests WHERE peer_id = ? AND action = 'retry'", peer.ID).Scan(&pending) == nil && pending == 0 {
			consumed++
			if consumed > 4 { // the retry was taken two seconds ago and the stop is still there
				return fmt.Errorf("the link from %s retried and is still stopped: %s", peer.Name, msg)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("the link from %s has not acted on the request within %s: is `mlproxy run` running? (the request stays until it does)", peer.Name, wait)
}
