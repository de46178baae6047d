package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/pingcap/tidb/pkg/parser"
	"github.com/pingcap/tidb/pkg/parser/ast"
	_ "github.com/pingcap/tidb/pkg/parser/test_driver" // literal values for the parser
	"github.com/spf13/cobra"

	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/schema"
)

// everyRegion loads one configuration file per region, refusing a region
// given twice or left out (what needs every region says so).
func everyRegion(paths []string, what string) ([]*config.Config, error) {
	if len(paths) == 0 {
		return nil, errors.New("name every region's configuration with -c (one per region)")
	}
	var cfgs []*config.Config
	seen := map[string]string{}
	for _, p := range paths {
		cfg, err := config.Load(p)
		if err != nil {
			return nil, err
		}
		if other, dup := seen[cfg.Region.Name]; dup {
			return nil, fmt.Errorf("%s and %s are both region %s", other, p, cfg.Region.Name)
		}
		seen[cfg.Region.Name] = p
		cfgs = append(cfgs, cfg)
	}
	for name := range cfgs[0].RegionIDs() {
		if _, ok := seen[name]; !ok {
			return nil, fmt.Errorf("region %s (in %s) has no -c file: %s must run in every region", name, cfgs[0].Path, what)
		}
	}
	return cfgs, nil
}

// schema ddl runs one DDL statement on a replicated table in every region
// and prepares the table's stamping there: DDL does not replicate through
// the binlog (mlproxy replicates rows), and the proxy refuses it on
// replicated tables, so this is the one path that keeps every region's
// definition and triggers in step.
//
// It runs in two phases: the statement in every region (in the order the
// files are given), then `schema apply` in every region. Between them, a
// region that already has a new column receives rows without it (the
// column takes its default), and one that does not yet have it holds the
// rows that carry it until it does (its link from that peer waits a few
// seconds, shown in status). A failure stops at once and says which
// regions ran the statement; running the command again is safe for
// statements written to be (IF NOT EXISTS / IF EXISTS).
func schemaDDLCmd() *cobra.Command {
	var paths []string
	cmd := &cobra.Command{
		Use:   "ddl -c REGION.yaml [-c REGION.yaml ...] \"STATEMENT\"",
		Short: "Run one DDL statement on replicated tables in every region, then prepare its stamping everywhere",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			stmt := strings.TrimSpace(args[0])
			if err := checkDDL(stmt); err != nil {
				return err
			}
			// Every region: a region left out would hold rows it cannot apply.
			cfgs, err := everyRegion(paths, "schema ddl")
			if err != nil {
				return err
			}
			var done []string
			for _, cfg := range cfgs {
				if err := runDDL(ctx, cfg, stmt); err != nil {
					return fmt.Errorf("region %s: %w (ran in: %s; not yet in the others: fix and run the remaining regions)", cfg.Region.Name, err, orNone(done))
				}
				done = append(done, cfg.Region.Name)
				fmt.Fprintf(cmd.OutOrStdout(), "region %s: ran %s\n", cfg.Region.Name, firstWords(stmt))
			}
			for _, cfg := range cfgs {
				changes, err := applyRegion(ctx, cfg)
				if err != nil {
					return fmt.Errorf("region %s: schema apply after the DDL: %w (rerun `mlproxy schema apply -c %s`)", cfg.Region.Name, err, cfg.Path)
				}
				for _, c := range changes {
					fmt.Fprintf(cmd.OutOrStdout(), "region %s: %s\n", cfg.Region.Name, c)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&paths, "config", "c", nil, "a region's YAML configuration (repeat for every region)")
	return cmd
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

func firstWords(s string) string {
	f := strings.Fields(s)
	if len(f) > 4 {
		f = f[:4]
	}
	return strings.Join(f, " ") + " ..."
}

// checkDDL accepts one table DDL statement whose tables are all qualified
// with their schema (every region runs it in a fresh session).
func checkDDL(stmt string) error {
	nodes, _, err := parser.New().ParseSQL(stmt)
	if err != nil {
		return fmt.Errorf("parse the statement: %w", err)
	}
	if len(nodes) != 1 {
		return fmt.Errorf("give exactly one statement, got %d", len(nodes))
	}
	var tables []*ast.TableName
	switch x := nodes[0].(type) {
	case *ast.CreateTableStmt:
		tables = append(tables, x.Table)
	case *ast.AlterTableStmt:
		tables = append(tables, x.Table)
	case *ast.DropTableStmt:
		tables = append(tables, x.Tables...)
	case *ast.RenameTableStmt:
		for _, t := range x.TableToTables {
			tables = append(tables, t.OldTable, t.NewTable)
		}
	case *ast.CreateIndexStmt:
		tables = append(tables, x.Table)
	case *ast.DropIndexStmt:
		tables = append(tables, x.Table)
	case *ast.TruncateTableStmt:
		return errors.New("TRUNCATE does not replicate as row changes: delete the rows through the proxy instead")
	default:
		return errors.New("not a table DDL statement (CREATE/ALTER/DROP/RENAME TABLE, CREATE/DROP INDEX)")
	}
	for _, t := range tables {
		if t.Schema.O == "" {
			return fmt.Errorf("qualify table %s with its schema (schema.%s)", t.Name.O, t.Name.O)
		}
		if strings.EqualFold(t.Schema.O, schema.Internal) {
			return fmt.Errorf("%s is mlproxy's own schema", schema.Internal)
		}
	}
	if strings.Contains(strings.ToLower(stmt), "_mlr_") {
		return errors.New("the _mlr_ columns and triggers belong to mlproxy: `mlproxy schema apply` manages them")
	}
	return nil
}

func runDDL(ctx context.Context, cfg *config.Config, stmt string) error {
	db, err := openServer(ctx, "local", cfg.Local)
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.ExecContext(ctx, stmt)
	return err
}

// applyRegion is `schema apply` for one region, returning what it changed.
func applyRegion(ctx context.Context, cfg *config.Config) ([]string, error) {
	db, err := openServer(ctx, "local", cfg.Local)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	tables, err := schema.Inspect(ctx, db, cfg.Tables)
	if err != nil {
		return nil, err
	}
	report, err := schema.Apply(ctx, db, schema.Stamping{Region: cfg.Region.ID, MaxOffset: cfg.Clock.MaxOffset, Deployment: cfg}, tables, nil)
	return report.Changes, err
}
