package proxy

import (
	"fmt"
	"slices"
	"strconv"

	"github.com/pingcap/tidb/pkg/parser/ast"
	"github.com/pingcap/tidb/pkg/parser/opcode"
	"github.com/pingcap/tidb/pkg/parser/test_driver"

	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/home"
)

// Homes, when the Tables also implement it, gives replicated tables their
// home mapping (config.Home): the proxy refuses, or counts, a write for a
// key homed in another region before it reaches the server. The triggers
// refuse the same writes when the proxy cannot see them.
type Homes interface {
	// Home is schema.table's mapping, nil when it has none.
	Home(schema, table string) *home.Map
}

// Outcomes of the home check (homed_writes_total{outcome}).
const (
	homeLocal          = "local"           // every key is homed here, or nowhere
	homeRefused        = "refused"         // a key is homed elsewhere: refused
	homeMisrouted      = "misrouted"       // a key is homed elsewhere: written here (elsewhere: allow)
	homeUnknown        = "unknown"         // keys not in the statement: sent on, the triggers check each row
	homeUnknownRefused = "unknown_refused" // keys not in the statement: refused (unknown: reject)
	homeForwarded      = "forwarded"       // a key is homed elsewhere: sent to its home's proxy (elsewhere: forward)
)

// reasonHome is the refusal reason (refused_total{reason}) of a write for
// a key homed elsewhere, or whose keys the statement does not show.
const reasonHome = "home_region"

// erSignal is ER_SIGNAL_EXCEPTION: what the triggers' refusal of a write
// homed elsewhere returns, so a client sees one error either way.
const erSignal = 1644

// keySource is where a statement gives one key: a literal, or a
// prepared statement's parameter.
type keySource struct {
	param int    // the parameter's index, or -1 for a literal
	text  string // a literal key's text
	null  bool   // a NULL literal: no home
}

// homePlan is what a statement shows of its keys in one homed table.
type homePlan struct {
	table   tableRef
	m       *home.Map
	keys    []keySource
	unknown bool // some write to the table has keys the statement does not show
}

// prepared is what the proxy keeps of a prepared statement.
type prepared struct {
	cl     *class
	sql    string // its text, to prepare it again where it is forwarded
	params int
	// homes are the keys it writes in homed tables (nil: none homed);
	// types the parameter types it was last executed with; longData is
	// set when a parameter was sent with COM_STMT_SEND_LONG_DATA since.
	homes      []homePlan
	types      []byte
	localTypes []byte // the types the local server last saw
	longData   bool
}

// homePlans parses sql (a write of cl.writes) for the keys it writes in
// tables with a home mapping; nil when none has one. A statement is parsed
// again here, uncached: the classification cache is keyed by the text
// without its literals, which are the keys.
func (c *conn) homePlans(sql string, cl *class) []homePlan {
	homed, byKey := false, false
	for _, t := range cl.writes {
		if m := c.s.homes.Home(t.schema, t.table); m != nil {
			homed, byKey = true, byKey || !m.Strong()
		}
	}
	if !byKey {
		if homed { // strong tables only: nothing to parse
			return homePlans(c.s.homes, c.db, cl.writes, nil)
		}
		return nil
	}
	stmts, err, panics := parseShortening(c.s.cls.parseSafe, reExecComment.ReplaceAllString(sql, "/*! "))
	for range panics {
		c.s.cls.onPanic()
	}
	if err != nil {
		stmts = nil // every key unknown: the triggers check
	}
	numberParams(stmts)
	return homePlans(c.s.homes, c.db, cl.writes, stmts)
}

// numberParams sets each parameter marker's Order, its index among the
// statement's parameters (the parser leaves it 0): their order in the text.
func numberParams(stmts []ast.StmtNode) {
	for _, st := range stmts {
		var v paramCollector
		st.Accept(&v)
		slices.SortFunc(v.params, func(a, b *test_driver.ParamMarkerExpr) int { return a.Offset - b.Offset })
		for i, p := range v.params {
			p.SetOrder(i)
		}
	}
}

type paramCollector struct {
	params []*test_driver.ParamMarkerExpr
}

func (v *paramCollector) Enter(n ast.Node) (ast.Node, bool) {
	if p, ok := n.(*test_driver.ParamMarkerExpr); ok {
		v.params = append(v.params, p)
	}
	return n, false
}

func (v *paramCollector) Leave(n ast.Node) (ast.Node, bool) { return n, true }

// homePlans reads, for each table of writes that has a home mapping, the
// keys stmts write in it; nil when none of the tables has one.
func homePlans(homes Homes, db string, writes []tableRef, stmts []ast.StmtNode) []homePlan {
	var plans []homePlan
	for _, t := range writes {
		m := homes.Home(t.schema, t.table)
		if m == nil {
			continue
		}
		p := homePlan{table: t, m: m}
		if m.Strong() {
			plans = append(plans, p) // every key is the leader's: no key to read
			continue
		}
		matched := false
		for _, st := range stmts {
			keys, hit, ok := stmtKeys(st, db, t, lower(m.Column))
			if !hit {
				continue
			}
			matched = true
			p.keys = append(p.keys, keys...)
			p.unknown = p.unknown || !ok
		}
		// A write the statements do not show (inside a CALL of the same
		// packet, say) is the triggers' to check.
		p.unknown = p.unknown || !matched
		plans = append(plans, p)
	}
	return plans
}

// stmtKeys returns the keys st writes in table t (column col, lower-case): hit says st
// writes t, ok that every key it writes there is among keys.
func stmtKeys(st ast.StmtNode, db string, t tableRef, col string) (keys []keySource, hit, ok bool) {
	switch n := st.(type) {
	case *ast.InsertStmt:
		if n.Table == nil || !singleTable(db, n.Table.TableRefs, t) {
			return nil, false, false
		}
		if n.Select != nil || assigns(n.OnDuplicate, col) {
			return nil, true, false
		}
		idx := -1
		for i, c := range n.Columns {
			if c.Name.L == col {
				idx = i
			}
		}
		if idx < 0 {
			// No column list (the table's order), or the key left to its
			// default: the server knows.
			return nil, true, false
		}
		for _, row := range n.Lists {
			if idx >= len(row) {
				return nil, true, false
			}
			k, isKey := keyOf(row[idx])
			if !isKey {
				return nil, true, false
			}
			keys = append(keys, k)
		}
		return keys, true, true
	case *ast.UpdateStmt:
		if n.TableRefs == nil || !singleTable(db, n.TableRefs.TableRefs, t) {
			if n.TableRefs != nil && writesTable(db, n.TableRefs.TableRefs, t) {
				return nil, true, false // multi-table
			}
			return nil, false, false
		}
		for _, a := range n.List {
			if a.Column != nil && a.Column.Name.L == col {
				k, isKey := keyOf(a.Expr)
				if !isKey {
					return nil, true, false
				}
				keys = append(keys, k) // the row's new home must be here too
			}
		}
		where, isKey := whereKeys(n.Where, col)
		return append(keys, where...), true, isKey
	case *ast.DeleteStmt:
		if n.TableRefs == nil || n.IsMultiTable || !singleTable(db, n.TableRefs.TableRefs, t) {
			if n.TableRefs != nil && writesTable(db, n.TableRefs.TableRefs, t) {
				return nil, true, false
			}
			return nil, false, false
		}
		keys, isKey := whereKeys(n.Where, col)
		return keys, true, isKey
	}
	return nil, false, false
}

func lower(s string) string { return ast.NewCIStr(s).L }

// singleTable reports whether j is exactly the table t.
func singleTable(db string, j *ast.Join, t tableRef) bool {
	if j == nil || j.Right != nil {
		return false
	}
	ts, ok := j.Left.(*ast.TableSource)
	if !ok {
		return false
	}
	tn, ok := ts.Source.(*ast.TableName)
	return ok && qualify(db, tn) == t
}

// writesTable reports whether the join j names t anywhere.
func writesTable(db string, j *ast.Join, t tableRef) bool {
	for _, r := range joinTables(db, j, nil) {
		if r == t {
			return true
		}
	}
	return false
}

// assigns reports whether the assignments set column col.
func assigns(as []*ast.Assignment, col string) bool {
	for _, a := range as {
		if a.Column != nil && a.Column.Name.L == col {
			return true
		}
	}
	return false
}

// whereKeys reads the keys a WHERE clause confines the rows to: col = k,
// col IN (k, ...), or either side of an AND that does. ok is false when
// it does not confine them.
func whereKeys(e ast.ExprNode, col string) (keys []keySource, ok bool) {
	switch n := e.(type) {
	case *ast.ParenthesesExpr:
		return whereKeys(n.Expr, col)
	case *ast.BinaryOperationExpr:
		switch n.Op {
		case opcode.LogicAnd:
			if keys, ok := whereKeys(n.L, col); ok {
				return keys, true
			}
			return whereKeys(n.R, col)
		case opcode.EQ:
			for _, side := range [][2]ast.ExprNode{{n.L, n.R}, {n.R, n.L}} {
				if isColumn(side[0], col) {
					if k, ok := keyOf(side[1]); ok {
						return []keySource{k}, true
					}
				}
			}
		}
	case *ast.PatternInExpr:
		if n.Not || n.Sel != nil || !isColumn(n.Expr, col) {
			return nil, false
		}
		for _, v := range n.List {
			k, ok := keyOf(v)
			if !ok {
				return nil, false
			}
			keys = append(keys, k)
		}
		return keys, true
	}
	return nil, false
}

func isColumn(e ast.ExprNode, col string) bool {
	c, ok := e.(*ast.ColumnNameExpr)
	return ok && c.Name != nil && c.Name.Name.L == col
}

// keyOf reads a key from a literal (an integer, a string, NULL; a negative
// integer) or a parameter marker.
func keyOf(e ast.ExprNode) (keySource, bool) {
	switch v := e.(type) {
	case *test_driver.ParamMarkerExpr:
		return keySource{param: v.Order}, true
	case *test_driver.ValueExpr:
		switch x := v.GetValue().(type) {
		case nil:
			return keySource{param: -1, null: true}, true
		case int64:
			return keySource{param: -1, text: strconv.FormatInt(x, 10)}, true
		case uint64:
			return keySource{param: -1, text: strconv.FormatUint(x, 10)}, true
		case string:
			return keySource{param: -1, text: x}, true
		}
	case *ast.UnaryOperationExpr:
		if v.Op == opcode.Minus {
			if k, ok := keyOf(v.V); ok && k.param < 0 && !k.null {
				if _, err := strconv.ParseUint(k.text, 10, 64); err == nil && k.text != "0" {
					return keySource{param: -1, text: "-" + k.text}, true
				}
			}
		}
	case *ast.ParenthesesExpr:
		return keyOf(v.Expr)
	}
	return keySource{}, false
}

// homeDecision is what the home policies say about one statement: go on
// here, be refused, or be forwarded to region forward's proxy.
type homeDecision struct {
	refusal *class
	forward uint16
	addr    string
}

// checkHomes applies the tables' home policies to the keys plans show,
// with params the values of a prepared statement's parameters (nil for a
// text statement; a parameter it lacks makes the keys unknown), for a
// statement that runs in region here (this one, or the home a forwarded
// transaction runs in). It counts each table's outcome.
func (c *conn) checkHomes(plans []homePlan, params []paramValue, here uint16) homeDecision {
	var d homeDecision
	localKeys := false // some key is homed in here
	refuse := func(msg string) {
		if d.refusal == nil {
			d.refusal = refused(reasonHome, msg)
			d.refusal.code = erSignal
			d.refusal.state = "45000"
		}
	}
	for _, p := range plans {
		outcome := homeLocal
		elsewhere := uint16(0)
		unknown := p.unknown
		moving := p.m.Strong() && p.m.Leader() == 0 // nobody writes it
		if p.m.Strong() && p.m.Leader() != here {
			elsewhere = p.m.Leader()
		}
		for _, k := range p.keys {
			text, null := k.text, k.null
			if k.param >= 0 {
				if k.param >= len(params) || !params[k.param].ok {
					unknown = true
					continue
				}
				text, null = params[k.param].text, params[k.param].null
			}
			if null {
				continue
			}
			h := p.m.Of(text)
			if h == here {
				localKeys = true
			}
			if h != 0 && h != here {
				if elsewhere != 0 && h != elsewhere {
					elsewhere = 0xFFFF // homes in two other regions
					break
				}
				elsewhere = h
			}
		}
		table := func() string { return p.table.schema + "." + p.table.table }
		switch {
		case moving:
			outcome = homeRefused
			refuse(p.m.Refusal(p.table.schema, p.table.table, 0))
		case elsewhere == 0xFFFF:
			outcome = homeRefused
			refuse("this statement writes keys of " + table() + " homed in more than one other region: write each region's keys there")
		case elsewhere != 0 && here != c.s.cfg.RegionID:
			outcome = homeRefused
			refuse(fmt.Sprintf("this transaction was forwarded to region %s, and writes %s for a key homed elsewhere: a transaction writes the keys of one home region",
				p.m.Name(here), table()))
		case elsewhere != 0 && p.m.Elsewhere == config.HomeAllow:
			outcome = homeMisrouted
		case elsewhere != 0 && p.m.Elsewhere == config.HomeForward && c.s.cfg.Accounts != nil && !c.noForward:
			switch {
			case d.forward != 0 && d.forward != elsewhere:
				outcome = homeRefused
				refuse("this statement writes rows homed in two other regions: write each region's rows there")
			default:
				outcome = homeForwarded
				d.forward, d.addr = elsewhere, p.m.Proxy(elsewhere)
			}
		case elsewhere != 0:
			outcome = homeRefused
			refuse(p.m.Refusal(p.table.schema, p.table.table, elsewhere))
		case unknown && p.m.Unknown == config.HomeReject:
			outcome = homeUnknownRefused
			refuse("this statement does not show which region homes the rows it writes in " + table() +
				" (its home.unknown is reject): name the rows by their " + p.m.Column +
				" (= or IN with values or parameters; an INSERT with a column list)")
		case unknown:
			outcome = homeUnknown
		}
		c.s.m.homed.WithLabelValues(p.m.Label, outcome).Inc()
	}
	if d.forward != 0 && localKeys && d.refusal == nil {
		// Sent there whole, its keys homed here would come back: refused.
		refuse(fmt.Sprintf("this statement writes keys homed here and in another region (proxy %s): write each region's keys there", d.addr))
	}
	if d.refusal != nil {
		d.forward = 0
	}
	return d
}
