package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
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
	var path string
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
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("the link from %s is not stopped at a refused change (see `mlproxy status -c %s`)", peer.Name, cfg.Path)
			}
			if err != nil {
				return fmt.Errorf("read mlr.link_stops: %w", err)
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
	cmd.Flags().DurationVar(&wait, "wait", 30*time.Second, "how long to wait for the link to act (0 = do not wait)")
	return cmd
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
