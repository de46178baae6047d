package schema

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"strings"
)

// Damage reports the replicated tables that lost what stamping needs:
// one of their three triggers (by name, with mlproxy's marker in its
// body) or one of the metadata columns. Such damage comes from DDL the
// proxy could not see (inside a procedure or a prepared statement, or on
// the server directly); writes to the table would then not replicate
// correctly. A table a wildcard rule matches that was never prepared, or
// that has no primary key, is reported too. The result maps
// "schema.table" to why writes to it cannot replicate; tables that no
// longer exist are not damaged (nothing to replicate).
func Damage(ctx context.Context, db *sql.DB, tables []*Table) (map[string]string, error) {
	if len(tables) == 0 {
		return nil, nil
	}
	schemas := map[string]bool{}
	for _, t := range tables {
		schemas[t.Schema] = true
	}
	names := make([]string, 0, len(schemas))
	args := make([]any, 0, len(schemas))
	for s := range schemas {
		names = append(names, s)
	}
	sort.Strings(names)
	for _, s := range names {
		args = append(args, s)
	}
	in := placeholders(len(args))
	exists := map[string]bool{}
	cols := map[string]map[string]bool{}
	trs := map[string]map[string]bool{}
	scan := func(q string, each func(r *sql.Rows) error) error {
		rows, err := db.QueryContext(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			if err := each(rows); err != nil {
				return err
			}
		}
		return rows.Err()
	}
	err := scan("SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA IN ("+in+")", func(r *sql.Rows) error {
		var s, t string
		if err := r.Scan(&s, &t); err != nil {
			return err
		}
		exists[s+"."+t] = true
		return nil
	})
	if err == nil {
		err = scan("SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA IN ("+in+") AND COLUMN_NAME IN ('"+ColHLC+"', '"+ColOrigin+"', '"+ColMeta+"')", func(r *sql.Rows) error {
			var s, t, c string
			if err := r.Scan(&s, &t, &c); err != nil {
				return err
			}
			if cols[s+"."+t] == nil {
				cols[s+"."+t] = map[string]bool{}
			}
			cols[s+"."+t][c] = true
			return nil
		})
	}
	if err == nil {
		err = scan("SELECT EVENT_OBJECT_SCHEMA, EVENT_OBJECT_TABLE, TRIGGER_NAME, ACTION_STATEMENT FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA IN ("+in+") AND TRIGGER_NAME LIKE '\\_mlr\\_%'", func(r *sql.Rows) error {
			var s, t, n, body string
			if err := r.Scan(&s, &t, &n, &body); err != nil {
				return err
			}
			if strings.Contains(body, triggerMarker) {
				if trs[s+"."+t] == nil {
					trs[s+"."+t] = map[string]bool{}
				}
				trs[s+"."+t][n] = true
			}
			return nil
		})
	}
	if err != nil {
		return nil, fmt.Errorf("check replication metadata: %w", err)
	}
	out := map[string]string{}
	for _, t := range tables {
		k := t.Schema + "." + t.Name
		if !exists[k] {
			continue
		}
		var missing []string
		for _, c := range []string{ColHLC, ColOrigin, ColMeta} {
			if !cols[k][c] {
				missing = append(missing, "column "+c)
			}
		}
		for _, n := range []string{TriggerBeforeInsert, TriggerBeforeUpdate, TriggerAfterDelete} {
			if !trs[k][n+t.Name] {
				missing = append(missing, "trigger "+n+t.Name)
			}
		}
		switch {
		case len(t.PK) == 0:
			out[k] = "it has no primary key, which replication needs to address its rows: add one in every region (`mlproxy schema ddl`)"
		case len(missing) == 6:
			out[k] = "it matches a replicated table rule but was never prepared for replication (created outside `mlproxy schema ddl`): " +
				"create it in every region and run `mlproxy schema apply` in each"
		case len(missing) > 0:
			out[k] = "its replication metadata was changed outside the proxy (missing " + strings.Join(missing, ", ") +
				"), so they would not replicate correctly; an operator must run `mlproxy schema apply`"
		}
	}
	return out, nil
}
