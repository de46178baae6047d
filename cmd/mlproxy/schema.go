package main

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/schema"
)

func schemaCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schema",
		Short: "Install or check what replication needs in the region's server",
	}
	cmd.AddCommand(schemaApplyCmd(), schemaCheckCmd(), schemaDDLCmd())
	return cmd
}

func schemaApplyCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "apply",
		Short: "Add stamp columns and triggers to replicated tables and create the mlr schema (idempotent)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg, db, err := loadLocal(ctx, path)
			if err != nil {
				return err
			}
			defer db.Close()
			log, err := newLogger(cfg)
			if err != nil {
				return err
			}
			tables, err := schema.Inspect(ctx, db, cfg.Tables)
			if err != nil {
				return err
			}
			start, err := binlogPosition(ctx, db)
			if err != nil {
				return err
			}
			report, err := schema.Apply(ctx, db, schema.Stamping{Region: cfg.Region.ID, MaxOffset: cfg.Clock.MaxOffset, Deployment: cfg}, tables, log)
			if err != nil {
				for _, c := range report.Changes { // what was done before the failure
					fmt.Fprintln(cmd.OutOrStdout(), c)
				}
				return err
			}
			recorded, err := recordBinlogStart(ctx, db, start)
			if err != nil {
				return err
			}
			if recorded {
				report.Changes = append(report.Changes, fmt.Sprintf("recorded binlog start %s %s:%d: peers replicate this region from there", start.gtid, start.file, start.pos))
			}
			printReport(cmd, report, len(tables))
			return nil
		},
	}
	configFlag(cmd, &path)
	return cmd
}

func schemaCheckCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Report every problem that would stop replication (exit 1 if any)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg, local, err := loadLocal(ctx, path)
			if err != nil {
				return err
			}
			defer local.Close()
			peers := make(map[string]*sql.DB, len(cfg.Peers))
			for _, p := range cfg.Peers {
				db, err := openServer(ctx, "peer "+p.Name, p.Server)
				if err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: %v\n", err)
					peers[p.Name] = nil
					continue
				}
				defer db.Close()
				peers[p.Name] = db
			}
			problems, err := schema.Check(ctx, local, peers, cfg.Tables, schema.Stamping{Region: cfg.Region.ID, MaxOffset: cfg.Clock.MaxOffset, Deployment: cfg})
			if err != nil {
				return err
			}
			errs := 0
			for _, p := range problems {
				fmt.Fprintln(cmd.OutOrStdout(), p.String())
				if p.Severity == schema.Error {
					errs++
				}
			}
			if errs > 0 {
				return errProblems
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: region %s is ready to replicate (%d warnings)\n", cfg.Region.Name, len(problems))
			return nil
		},
	}
	configFlag(cmd, &path)
	return cmd
}

func printReport(cmd *cobra.Command, r schema.Report, tables int) {
	if len(r.Changes) == 0 {
		fmt.Fprintf(cmd.OutOrStdout(), "nothing to do: the schema is up to date (%d replicated tables)\n", tables)
		return
	}
	for _, c := range r.Changes {
		fmt.Fprintln(cmd.OutOrStdout(), c)
	}
}

// position is a server's binlog position.
type position struct {
	gtid string
	file string
	pos  uint32
}

func binlogPosition(ctx context.Context, db *sql.DB) (position, error) {
	var p position
	if err := db.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&p.gtid); err != nil {
		return p, fmt.Errorf("local server: reading @@gtid_binlog_pos (MariaDB with log_bin on is required): %w", err)
	}
	var err error
	if p.file, p.pos, err = binlog.MasterStatus(ctx, db); err != nil {
		return p, fmt.Errorf("local server: %w", err)
	}
	return p, nil
}

// recordBinlogStart remembers, once, where this region's stamped writes
// begin in its binlog: peers that never replicated from it start there.
func recordBinlogStart(ctx context.Context, db *sql.DB, p position) (bool, error) {
	if _, err := db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS mlr.binlog_start ("+
		"id TINYINT UNSIGNED PRIMARY KEY, gtid VARCHAR(1024) NOT NULL, file VARCHAR(255) NOT NULL, "+
		"pos BIGINT UNSIGNED NOT NULL, recorded_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))"); err != nil {
		return false, fmt.Errorf("create mlr.binlog_start: %w", err)
	}
	res, err := db.ExecContext(ctx, "INSERT IGNORE INTO mlr.binlog_start (id, gtid, file, pos) VALUES (1, ?, ?, ?)", p.gtid, p.file, p.pos)
	if err != nil {
		return false, fmt.Errorf("record binlog start: %w", err)
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
}
