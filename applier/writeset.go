package applier

import (
	"context"
	"fmt"
	"hash/maphash"
	"strings"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/schema"
)

// A batch's writeset is the set of hashes of every key its changes may
// lock, as MySQL's writeset-based dependency tracking builds it: per row
// image (before and after), the table and primary key, and the table and
// each secondary unique key whose columns are all non-NULL. Two batches
// whose writesets are disjoint touch disjoint rows of the tables, their
// tombstones and their pending conflicts, so they may run at once in any
// order. A table that takes part in a foreign key (either side) adds one
// key shared by all such tables: a child row and its parent are then
// never applied out of order by two workers. Text values are folded to
// lower case without trailing spaces, so two spellings a case-insensitive
// collation equates share a key (a false dependency costs only waiting).

// fkKey is the writeset entry of every batch touching a table with
// foreign keys.
const fkKey = "\x00fk"

// writeset computes txns' key hashes (distinct). It fails when a change's
// table cannot be resolved or an image lacks a key column: the batch then
// goes the serial way, which reports the error as it always has.
func (a *Applier) writeset(ctx context.Context, seed maphash.Seed, txns []*binlog.Txn) ([]uint64, error) {
	seen := map[uint64]struct{}{}
	add := func(s string) {
		seen[maphash.String(seed, s)] = struct{}{}
	}
	tables := map[tableKey]*schema.Table{}
	var b strings.Builder
	for _, t := range txns {
		for i := range t.Changes {
			rc := &t.Changes[i]
			tk := tableKey{rc.Schema, rc.Table}
			st, ok := tables[tk]
			if !ok {
				var err error
				if st, _, err = a.tables.Table(ctx, rc.Schema, rc.Table); err != nil {
					return nil, err
				}
				tables[tk] = st
			}
			if st.ForeignKeys {
				add(fkKey)
			}
			for _, img := range []binlog.Row{rc.Before, rc.After} {
				if img == nil {
					continue
				}
				b.Reset()
				if !keyText(&b, "p", tk, st.PK, img) {
					return nil, fmt.Errorf("%s: a row image lacks a primary key column", tk)
				}
				add(b.String())
				for j, cols := range st.Unique {
					b.Reset()
					if keyText(&b, fmt.Sprintf("u%d", j), tk, cols, img) {
						add(b.String())
					}
				}
			}
		}
	}
	out := make([]uint64, 0, len(seen))
	for h := range seen {
		out = append(out, h)
	}
	return out, nil
}

// keyText writes one key of img (kind, table, values) to b; false when a
// column is missing or NULL.
func keyText(b *strings.Builder, kind string, tk tableKey, cols []string, img binlog.Row) bool {
	fmt.Fprintf(b, "%s\x00%s\x00%s", kind, tk.db, tk.table)
	for _, c := range cols {
		v, ok := img[c]
		if !ok || v == nil {
			return false
		}
		switch x := localValue(v).(type) {
		case string:
			x = strings.ToLower(strings.TrimRight(x, " "))
			fmt.Fprintf(b, "\x00s%d:%s", len(x), x)
		default:
			fmt.Fprintf(b, "\x00%v", x)
		}
	}
	return true
}
