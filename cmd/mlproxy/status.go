package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/redact"
	"github.com/mlproxy/mlproxy/replicator"
)

func statusCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Per peer: link state, last applied position, lag in seconds and transactions",
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg, local, err := loadLocal(ctx, path)
			if err != nil {
				return err
			}
			defer local.Close()
			page := livePage(ctx, cfg)
			links := page.links()
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(w, "PEER\tLINK\tAPPLIED GTID\tFILE:POS\tLAG (s)\tLAG (txns)\tAPPLIED TXNS\tLAST ERROR")
			for _, p := range cfg.Sources() {
				row := peerStatus(ctx, local, p, links)
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", p.Name, row.link, orDash(row.gtid), row.filePos, row.lagSec, row.lagTxns, row.txns, orDash(row.lastErr))
			}
			if err := w.Flush(); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout())
			fmt.Fprintln(cmd.OutOrStdout(), replicatorLine(ctx, local, cfg, page))
			if page == nil || len(page.Clock.Peers) == 0 {
				return nil
			}
			fmt.Fprintln(cmd.OutOrStdout())
			fence := "no"
			if page.Clock.Fenced {
				fence = "YES: " + page.Clock.Reason
			}
			fmt.Fprintf(cmd.OutOrStdout(), "clock fenced (max_offset %dms): %s\n", page.Clock.MaxOffsetMs, fence)
			w = tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(w, "PEER\tCLOCK OFFSET (ms)\tRTT (ms)\tMEASURED\tERROR")
			for _, c := range page.Clock.Peers {
				at := "-"
				if !c.MeasuredAt.IsZero() {
					at = time.Since(c.MeasuredAt).Round(time.Second).String() + " ago"
				}
				fmt.Fprintf(w, "%s\t%+.1f\t%.1f\t%s\t%s\n", c.Peer, c.OffsetMs, c.RTTMs, at, orDash(c.Error))
			}
			return w.Flush()
		},
	}
	configFlag(cmd, &path)
	return cmd
}

// replicatorLine says which instance of the region runs its replicator
// (mlr.replicator), and whether it is the one this config describes.
func replicatorLine(ctx context.Context, local *sql.DB, cfg *config.Config, page *statusPage) string {
	var epoch uint64
	var holder, since string
	var held bool
	err := local.QueryRowContext(ctx, "SELECT epoch, holder, DATE_FORMAT(since, '%Y-%m-%d %H:%i:%s'), IS_USED_LOCK(?) IS NOT NULL FROM mlr.replicator WHERE id = 1",
		replicator.LockName(cfg.Region.Name)).Scan(&epoch, &holder, &since, &held)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return "replicator: no instance has run it yet"
	case err != nil:
		return "replicator: unknown (" + err.Error() + ")"
	}
	here := ""
	if page != nil {
		here = "; this instance: " + page.Replicator
	}
	if !held {
		return fmt.Sprintf("replicator: NOT RUNNING on any instance (last on %s, epoch %d, since %s UTC)%s", holder, epoch, since, here)
	}
	return fmt.Sprintf("replicator: active on %s (epoch %d, since %s UTC)%s", holder, epoch, since, here)
}

type statusRow struct {
	link, gtid, filePos, lagSec, lagTxns, lastErr string
	txns                                          uint64
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// livePage asks the running `mlproxy run` (its metrics listener) for its
// status page; nil when it is not reachable.
func livePage(ctx context.Context, cfg *config.Config) *statusPage {
	if cfg.Metrics.Listen == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+cfg.Metrics.Listen+"/status", nil)
	if err != nil {
		return nil
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var page statusPage
	if json.NewDecoder(resp.Body).Decode(&page) != nil {
		return nil
	}
	return &page
}

// links is the page's links by peer name (nil for no page).
func (page *statusPage) links() map[string]replicator.LinkStatus {
	if page == nil {
		return nil
	}
	m := make(map[string]replicator.LinkStatus, len(page.Links))
	for _, l := range page.Links {
		m[l.Peer] = l
	}
	return m
}

func peerStatus(ctx context.Context, local *sql.DB, p config.Peer, links map[string]replicator.LinkStatus) statusRow {
	row := statusRow{link: "unknown (mlproxy run not reachable)", filePos: "-", lagSec: "-", lagTxns: "-"}
	if l, ok := links[p.Name]; ok {
		row.link, row.lastErr = l.State, l.LastError
	}
	var file string
	var pos uint64
	var sourceTS sql.NullFloat64
	err := local.QueryRowContext(ctx, "SELECT gtid, file, pos, txns, UNIX_TIMESTAMP(source_ts) FROM mlr.checkpoints WHERE peer_id = ?", p.ID).
		Scan(&row.gtid, &file, &pos, &row.txns, &sourceTS)
	switch {
	case err == sql.ErrNoRows:
		row.gtid = "(nothing applied yet)"
	case err != nil:
		row.lastErr = "reading mlr.checkpoints: " + err.Error()
		return row
	default:
		row.filePos = fmt.Sprintf("%s:%d", file, pos)
	}
	// A stopped link names its change here, key values included (the
	// operator's own credentials read it; /status shows only a hash).
	var sdb, stbl, spk, serr, sgtid string
	if err := local.QueryRowContext(ctx, "SELECT db, tbl, pk, error, gtid FROM mlr.link_stops WHERE peer_id = ?", p.ID).Scan(&sdb, &stbl, &spk, &serr, &sgtid); err == nil {
		row.link = "stopped"
		row.lastErr = fmt.Sprintf("stopped at %s.%s key %s (gtid %s): %s; fix it and `mlproxy link retry %s`, or `mlproxy link skip %s`", sdb, stbl, spk, sgtid, serr, p.Name, p.Name)
	} else if stops, err := tableStops(ctx, local, p); err != nil {
		row.lastErr = redact.Error(err)
	} else if len(stops) > 0 {
		// Tables stopped alone: the link runs for the others.
		row.link = "waiting_for_ddl"
		msgs := make([]string, len(stops))
		for i, ts := range stops {
			if ts.kind == "ddl" {
				msgs[i] = fmt.Sprintf("%s waits for DDL (%d changes held): %s; run the DDL here (`mlproxy schema ddl`, then `mlproxy schema apply`): it resumes by itself",
					ts.table, ts.held, ts.err)
				continue
			}
			row.link = "tables_stopped" // at least one waits for an operator
			msgs[i] = fmt.Sprintf("%s stopped at key %s (gtid %s, %d changes held): %s; fix it and `mlproxy link retry %s --table %s`, or `mlproxy link skip %s --table %s`",
				ts.table, ts.pk, ts.gtid, ts.held, ts.err, p.Name, ts.table, p.Name, ts.table)
		}
		row.lastErr = strings.Join(msgs, " | ")
	}
	pdb, err := openServer(ctx, "peer "+p.Name, p.Server)
	if err != nil {
		if row.lastErr == "" {
			row.lastErr = err.Error()
		}
		return row
	}
	defer pdb.Close()
	var peerPos string
	var domain uint32
	if err := pdb.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos, @@gtid_domain_id").Scan(&peerPos, &domain); err != nil {
		row.lastErr = err.Error()
		return row
	}
	behind, secs, known := lagBehind(peerPos, domain, row.gtid, sourceTS, time.Now())
	row.lagTxns = strconv.FormatInt(behind, 10)
	switch {
	case behind == 0:
		row.lagSec = "0"
	case known:
		row.lagSec = fmt.Sprintf("%.1f", secs)
	}
	return row
}
