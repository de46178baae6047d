package applier

import (
	"reflect"

	"github.com/mlproxy/mlproxy/conflict"
)

// A table may name a shadow rule beside its live one (config.Shadow): on
// every conflict the applier also asks the shadow what it would have
// decided, and logs that beside the live outcome (mlr.conflicts.shadow_*,
// `mlproxy conflicts list --shadow`). The shadow decides nothing: an
// operator reads what switching rules would change before switching.

// shadowed is a table's rule with its shadow, as Tables returns it.
type shadowed struct {
	conflict.Rule
	shadow conflict.Rule
}

// shadowRule is the shadow of rule, nil when it has none.
func shadowRule(rule conflict.Rule) conflict.Rule {
	if s, ok := rule.(shadowed); ok {
		return s.shadow
	}
	return nil
}

// shadowResult is what a shadow rule would have done with one conflict.
type shadowResult struct {
	d conflict.Decision
	// row is the row it would have left (nil: none, the key deleted);
	// differs says whether that is not the row the live rule left.
	row     map[string]any
	differs bool
}

// shadowOf runs shadow on the conflict between local and remote that the
// live rule decided as live.
func shadowOf(shadow conflict.Rule, local, remote conflict.Version, live conflict.Decision) *shadowResult {
	d := shadow.Resolve(local, remote)
	liveRow, liveExists := leftRow(local, live)
	row, exists := leftRow(local, d)
	return &shadowResult{d: d, row: row, differs: exists != liveExists || !reflect.DeepEqual(row, liveRow)}
}

// leftRow is the row a decision leaves in place of local: the row it
// writes, none for a delete, or local's own when it writes nothing.
func leftRow(local conflict.Version, d conflict.Decision) (map[string]any, bool) {
	switch d.Write.Action {
	case conflict.WriteRow:
		return d.Write.Row, true
	case conflict.WriteDelete:
		return nil, false
	}
	if local.Exists {
		return local.Row, true
	}
	return nil, false
}
