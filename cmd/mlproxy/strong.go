package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/mlproxy/mlproxy/causal"
	"github.com/mlproxy/mlproxy/config"
)

// strong move changes a strong table's leader without two regions ever
// writing it:
//
//  1. in every region, no leader (mlr.strong_leaders = 0): the triggers
//     refuse every write to the table at once, the proxies within a
//     second;
//  2. the old leader's binlog position then is the last of the table's
//     writes; wait until every other region applied that far;
//  3. in every region, the new leader.
//
// Interrupted, it leaves the table without a leader in some regions and
// with the old (or new) one in the others: never two. Not caught up
// within --timeout, it gives the old leader back.
func strongCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "strong", Short: "Operate strong tables (consistency: strong)"}
	var paths []string
	var to string
	var timeout time.Duration
	move := &cobra.Command{
		Use:   "move SCHEMA.TABLE [--to REGION] -c REGION.yaml [-c REGION.yaml ...]",
		Short: "Move a strong table's leader: no region writes it while every region catches up with the old leader",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			db, tbl, err := splitTable(args[0])
			if err != nil {
				return err
			}
			cfgs, err := everyRegion(paths, "strong move")
			if err != nil {
				return err
			}
			return moveLeader(cmd.Context(), cmd.OutOrStdout(), cfgs, db, tbl, to, timeout)
		},
	}
	fl := move.Flags()
	fl.StringArrayVarP(&paths, "config", "c", nil, "every region's configuration file (repeat -c)")
	fl.StringVar(&to, "to", "", "the new leader region (default: the first of the table's standby list that is not the leader now)")
	fl.DurationVar(&timeout, "timeout", 5*time.Minute, "how long the regions may take to apply the old leader's writes; past it the old leader is given back")
	cmd.AddCommand(move)
	return cmd
}

// proxyLeaderRefresh covers the proxies' reading of mlr.strong_leaders
// (every second, leaderLoop).
const proxyLeaderRefresh = 1500 * time.Millisecond

type strongRegion struct {
	cfg *config.Config
	db  *sql.DB
}

func moveLeader(ctx context.Context, out io.Writer, cfgs []*config.Config, db, tbl, to string, timeout time.Duration) error {
	ids := cfgs[0].RegionIDs()
	var newID uint16
	if to != "" {
		id, ok := ids[to]
		if !ok {
			return fmt.Errorf("--to %q: not a region of %s", to, cfgs[0].Path)
		}
		newID = id
	}
	var regions []strongRegion
	defer func() {
		for _, r := range regions {
			r.db.Close()
		}
	}()
	oldID := uint16(0)
	for _, cfg := range cfgs {
		if cfg.Topology.Mode != config.TopologyAllToAll {
			return fmt.Errorf("%s: strong move waits on each region's checkpoint of the old leader's own binlog, which needs the all-to-all topology", cfg.Path)
		}
		rule, ok := cfg.TableRule(db, tbl)
		if !ok || rule.Consistency != config.ConsistencyStrong {
			return fmt.Errorf("%s.%s is not a strong table in %s (consistency: strong, leader: ...)", db, tbl, cfg.Path)
		}
		conn, err := openServer(ctx, "local", cfg.Local)
		if err != nil {
			return fmt.Errorf("region %s: %w", cfg.Region.Name, err)
		}
		regions = append(regions, strongRegion{cfg, conn})
		leader := ids[rule.Leader]
		var moved, previous uint16
		err = conn.QueryRowContext(ctx, "SELECT leader, previous FROM mlr.strong_leaders WHERE db = ? AND tbl = ?", db, tbl).Scan(&moved, &previous)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return fmt.Errorf("region %s: read mlr.strong_leaders: %w (did `mlproxy schema apply` of this release run?)", cfg.Region.Name, err)
		case moved == 0:
			// A move was interrupted after step 1 here: the leader before
			// it may still have writes on their way.
			leader = previous
		default:
			leader = moved
		}
		if leader != 0 {
			if oldID != 0 && oldID != leader {
				return fmt.Errorf("regions disagree on %s.%s's leader (%d and %d): fix mlr.strong_leaders or the files first", db, tbl, oldID, leader)
			}
			oldID = leader
		}
	}
	if newID == 0 { // the first standby that does not lead now
		rule, _ := cfgs[0].TableRule(db, tbl)
		for _, name := range rule.Standby {
			if ids[name] != oldID {
				to, newID = name, ids[name]
				break
			}
		}
		if newID == 0 {
			return fmt.Errorf("%s.%s has no standby list in %s besides its leader: name the new leader with --to", db, tbl, cfgs[0].Path)
		}
		fmt.Fprintf(out, "%s.%s: moving to %s, its first standby\n", db, tbl, to)
	}
	if oldID == newID {
		fmt.Fprintf(out, "%s.%s: region %s already leads it\n", db, tbl, to)
		return setLeader(ctx, regions, db, tbl, newID, oldID)
	}
	if err := setLeader(ctx, regions, db, tbl, 0, oldID); err != nil {
		return fmt.Errorf("step 1, no leader: %w (some regions may have none: run the command again)", err)
	}
	fmt.Fprintf(out, "%s.%s: no region writes it now\n", db, tbl)
	start := time.Now()
	if oldID != 0 {
		if err := waitForLeader(ctx, out, regions, oldID, timeout); err != nil {
			if rerr := setLeader(context.WithoutCancel(ctx), regions, db, tbl, oldID, oldID); rerr != nil {
				return fmt.Errorf("%w; giving the old leader back failed too: %v (no region writes the table: run the command again)", err, rerr)
			}
			return fmt.Errorf("%w: the old leader has the table back", err)
		}
	}
	caughtUp := time.Since(start)
	if err := setLeader(ctx, regions, db, tbl, newID, oldID); err != nil {
		return fmt.Errorf("step 3, the new leader: %w (regions that did not take it have no leader: run the command again)", err)
	}
	// The proxies read mlr.strong_leaders every second; the triggers at
	// once. Return when the new leader's proxy takes the writes too.
	time.Sleep(proxyLeaderRefresh)
	fmt.Fprintf(out, "%s.%s: region %s leads it (every region caught up with the old leader in %s); update `leader:` in the files when convenient\n",
		db, tbl, to, caughtUp.Round(time.Millisecond))
	return nil
}

// setLeader records leader (0: none, while moving from previous) in every
// region.
func setLeader(ctx context.Context, regions []strongRegion, db, tbl string, leader, previous uint16) error {
	host, _ := os.Hostname()
	for _, r := range regions {
		if _, err := r.db.ExecContext(ctx, "INSERT INTO mlr.strong_leaders (db, tbl, leader, previous, moved_at, moved_by) VALUES (?, ?, ?, ?, NOW(6), ?) "+
			"ON DUPLICATE KEY UPDATE leader = VALUES(leader), previous = VALUES(previous), moved_at = VALUES(moved_at), moved_by = VALUES(moved_by)",
			db, tbl, leader, previous, "mlproxy strong move on "+host); err != nil {
			return fmt.Errorf("region %s: %w", r.cfg.Region.Name, err)
		}
	}
	return nil
}

// waitForLeader waits until every region applied the old leader's binlog
// as far as it reaches now (no more writes to the table come from it).
func waitForLeader(ctx context.Context, out io.Writer, regions []strongRegion, old uint16, timeout time.Duration) error {
	var leader *strongRegion
	for i := range regions {
		if regions[i].cfg.Region.ID == old {
			leader = &regions[i]
		}
	}
	if leader == nil {
		return fmt.Errorf("the old leader (region %d) has no -c file", old)
	}
	var pos string
	if err := leader.db.QueryRowContext(ctx, "SELECT @@global.gtid_binlog_pos").Scan(&pos); err != nil {
		return fmt.Errorf("region %s: read its binlog position: %w", leader.cfg.Region.Name, err)
	}
	p, err := causal.ParsePosition(pos)
	if err != nil {
		return fmt.Errorf("region %s: %w", leader.cfg.Region.Name, err)
	}
	token := causal.Token{old: p}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, r := range regions {
		if r.cfg.Region.ID == old {
			continue
		}
		if err := causal.Wait(wctx, r.db, r.cfg.Region.ID, token); err != nil {
			return fmt.Errorf("region %s did not apply region %s's writes within %s: %w", r.cfg.Region.Name, leader.cfg.Region.Name, timeout, err)
		}
		fmt.Fprintf(out, "region %s has every write of region %s\n", r.cfg.Region.Name, leader.cfg.Region.Name)
	}
	return nil
}
