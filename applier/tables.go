package applier

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/conflict"
	"github.com/mlproxy/mlproxy/schema"
)

// ErrNotReplicated is returned for a change to a table no rule of this
// region names: add the table to this region's configuration (every region
// must replicate the same tables).
var ErrNotReplicated = errors.New("table is not replicated by this region: add it to the configuration's tables")

// Tables is a TableSource over the local server: tables are read with
// schema.ReadTable when first named and again on Reload; the rule is the
// configuration's rule for the table (an exact schema.table rule wins over
// a "*" one), compiled by conflict.NewRule. Safe for concurrent use by several
// appliers.
type Tables struct {
	db        *sql.DB
	rules     []config.TableRule
	regionIDs map[string]uint16

	mu    sync.Mutex
	cache map[tableKey]tableEntry // guarded by mu
}

type tableEntry struct {
	t    *schema.Table
	rule conflict.Rule
}

var _ TableSource = (*Tables)(nil)

// NewTables returns a TableSource reading db's tables under rules;
// regionIDs maps region names to ids (for origin-priority).
func NewTables(db *sql.DB, rules []config.TableRule, regionIDs map[string]uint16) *Tables {
	return &Tables{db: db, rules: rules, regionIDs: regionIDs, cache: map[tableKey]tableEntry{}}
}

// Table returns db.name, read once, and its rule.
func (s *Tables) Table(ctx context.Context, db, name string) (*schema.Table, conflict.Rule, error) {
	s.mu.Lock()
	e, ok := s.cache[tableKey{db, name}]
	s.mu.Unlock()
	if ok {
		return e.t, e.rule, nil
	}
	return s.Reload(ctx, db, name)
}

// Reload re-reads db.name from the server and returns it with its rule.
func (s *Tables) Reload(ctx context.Context, db, name string) (*schema.Table, conflict.Rule, error) {
	cfg, ok := s.ruleFor(db, name)
	if !ok {
		return nil, nil, fmt.Errorf("table %s.%s: %w", db, name, ErrNotReplicated)
	}
	t, err := schema.ReadTable(ctx, s.db, db, name)
	if err != nil {
		return nil, nil, err
	}
	if err := schema.ReadKeys(ctx, s.db, t); err != nil {
		return nil, nil, err
	}
	t.Rule = cfg
	spec, err := RuleSpec(cfg, s.regionIDs)
	if err != nil {
		return nil, nil, err
	}
	spec.Columns = tableSpelling(t, spec.Columns)
	rule, err := conflict.NewRule(spec)
	if err != nil {
		return nil, nil, fmt.Errorf("rule %q for %s.%s: %w", cfg.Rule, db, name, err)
	}
	if sh := cfg.Shadow; sh != nil {
		sspec, err := RuleSpec(config.TableRule{Schema: cfg.Schema, Table: cfg.Table, Line: cfg.Line,
			Rule: sh.Rule, Priority: sh.Priority, Columns: sh.Columns}, s.regionIDs)
		if err != nil {
			return nil, nil, fmt.Errorf("shadow: %w", err)
		}
		sspec.Columns = tableSpelling(t, sspec.Columns)
		srule, err := conflict.NewRule(sspec)
		if err != nil {
			return nil, nil, fmt.Errorf("shadow rule %q for %s.%s: %w", sh.Rule, db, name, err)
		}
		rule = shadowed{Rule: rule, shadow: srule}
	}
	s.mu.Lock()
	s.cache[tableKey{db, name}] = tableEntry{t, rule}
	s.mu.Unlock()
	return t, rule, nil
}

// tableSpelling is cols (a rule's merged columns) as t spells them: the
// server compares column names without case, rows are keyed by t's
// spelling.
func tableSpelling(t *schema.Table, cols []string) []string {
	for i, c := range cols {
		for _, col := range t.Columns {
			if strings.EqualFold(col.Name, c) {
				cols[i] = col.Name
			}
		}
	}
	return cols
}

// ruleFor picks the configuration rule of db.name (names compared as
// information_schema does, without case).
func (s *Tables) ruleFor(db, name string) (config.TableRule, bool) {
	var wild *config.TableRule
	for i, r := range s.rules {
		if !strings.EqualFold(r.Schema, db) {
			continue
		}
		if strings.EqualFold(r.Table, name) {
			return r, true
		}
		if r.Table == "*" && wild == nil {
			wild = &s.rules[i]
		}
	}
	if wild != nil {
		return *wild, true
	}
	return config.TableRule{}, false
}

// RuleSpec turns a configured table rule into the conflict package's
// Spec, resolving the region names of a priority list.
func RuleSpec(cfg config.TableRule, regionIDs map[string]uint16) (conflict.Spec, error) {
	where := fmt.Sprintf("table rule %s.%s (line %d)", cfg.Schema, cfg.Table, cfg.Line)
	spec := conflict.Spec{Name: cfg.Rule, Columns: slices.Clone(cfg.Columns), Where: where}
	for _, region := range cfg.Priority {
		id, ok := regionIDs[region]
		if !ok {
			return spec, fmt.Errorf("%s: priority names unknown region %q", where, region)
		}
		spec.Priority = append(spec.Priority, id)
	}
	return spec, nil
}
