package proxy

import (
	"errors"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/pingcap/tidb/pkg/parser"
	"github.com/pingcap/tidb/pkg/parser/ast"
	_ "github.com/pingcap/tidb/pkg/parser/test_driver" // value expressions for the parser
)

// kind is what a statement (or a packet of statements) may do.
type kind uint8

const (
	// kindRead never writes a table: SELECT without INTO, SHOW, EXPLAIN, ...
	kindRead kind = iota
	// kindSession changes session or server state but no table row the
	// triggers see: SET, BEGIN, COMMIT, USE, GRANT, PREPARE, ...
	kindSession
	// kindDDL changes a table definition (no stamp: triggers do not fire).
	kindDDL
	// kindWrite writes rows of the tables listed in class.writes; it is
	// stamped when one of them is replicated.
	kindWrite
	// kindWriteUnknown may write rows of tables the proxy cannot name:
	// CALL, EXECUTE, DO, and statements the parser cannot parse. Always
	// stamped: the triggers stamp whatever the server writes.
	kindWriteUnknown
	// kindRefused is never sent to the server.
	kindRefused
)

// tableRef is a qualified table name as the client wrote it.
type tableRef struct{ schema, table string }

// class is the cached classification of one statement text under one
// current database. It is immutable once built; the decision "is one of
// the written tables replicated" is taken per use, so a change of the
// replicated set needs no cache flush.
type class struct {
	kind kind
	// writes are the tables a kindWrite statement may write, qualified with
	// the database current when it was classified.
	writes []tableRef
	// reason and msg explain a refusal: reason is a metric label, msg the
	// client's error message.
	reason, msg string
	// code is a refusal's MySQL error code (0: 1105 ER_UNKNOWN_ERROR),
	// state its SQLSTATE ("": HY000).
	code  uint16
	state string
	// multi is set for a packet of several statements: one of them may
	// end the transaction (COMMIT, SET autocommit, DDL's implicit commit)
	// before a write, so such a packet never reuses a transaction's stamp.
	multi bool
	// uses has, per statement of a multi-statement packet, the database a
	// USE statement switches to ("" for other statements); nil when the
	// packet has no USE.
	uses []string
	// calls is set when the packet has a CALL, whose extra result sets make
	// counting results per statement impossible.
	calls bool
	// ddl are the tables a kindDDL statement defines, alters or drops,
	// and verb its kind (ALTER TABLE, ...), for the DDL policy.
	ddl  []tableRef
	verb string
	// ddlTexts are DDL statements the parser could not read (lower-cased),
	// the packet's own or prepared for EXECUTE: the DDL policy refuses
	// each that may reach a replicated schema.
	ddlTexts []string
	// text is a kindWriteUnknown statement's text, lower-cased: it is
	// stamped only when it may reach a replicated schema (the current one,
	// or one it names).
	text string
}

// Refusal reasons (refused_total{reason}).
const (
	reasonInternalSchema = "internal_schema"
	reasonStampVariable  = "stamp_variable"
	reasonTrigger        = "mlr_trigger"
	reasonMetadataColumn = "mlr_column"
	reasonSQLLogBin      = "sql_log_bin"
	reasonDamaged        = "replication_damaged"
	reasonClockFenced    = "clock_fenced"
	reasonReplicatedDDL  = "replicated_ddl"
	reasonCharset        = "client_charset"
)

// internalSchema is the schema of mlproxy's own tables (docs/internals.md).
const internalSchema = "mlr"

// maxCachedLen bounds the statement texts kept in the cache: longer texts
// (typically client-side interpolated bulk inserts) are unique and would
// only evict useful entries and hold memory.
const maxCachedLen = 16 << 10

// classifier classifies statement texts with the tidb parser and caches
// the results in an LRU keyed by (current database, text). Safe for
// concurrent use.
type classifier struct {
	cache *lru.Cache[string, *class]
	// bytes is what the cached entries hold (see cost); maxBytes bounds it.
	bytes    atomic.Int64
	maxBytes int64
	parsers  sync.Pool // *parser.Parser; a parser is not safe for concurrent use
	onHit    func()
	onMiss   func()
	// onPanic counts a parser panic (recovered; the statement is then
	// classified without the literal that caused it, or as unparsed).
	onPanic func()
}

func newClassifier(size int, maxBytes int64, onHit, onMiss func()) (*classifier, error) {
	cl := &classifier{maxBytes: maxBytes}
	c, err := lru.NewWithEvict[string, *class](size, func(k string, v *class) { cl.bytes.Add(-cost(k, v)) })
	if err != nil {
		return nil, err
	}
	*cl = classifier{
		maxBytes: maxBytes,
		cache:    c,
		parsers:  sync.Pool{New: func() any { return parser.New() }},
		onHit:    onHit,
		onMiss:   onMiss,
		onPanic:  func() {},
	}
	return cl, nil
}

// cost is what a cache entry holds, roughly: its key, a kindWriteUnknown
// statement's lower-cased text, the table names, and fixed overhead.
func cost(key string, cl *class) int64 {
	n := 160 + len(key) + len(cl.text) + len(cl.msg) + len(cl.verb)
	for _, t := range cl.writes {
		n += 32 + len(t.schema) + len(t.table)
	}
	for _, t := range cl.ddl {
		n += 32 + len(t.schema) + len(t.table)
	}
	for _, u := range cl.uses {
		n += 16 + len(u)
	}
	return int64(n)
}

// classify returns the class of sql run with db as the current database.
// The key includes db because unqualified names resolve against it.
func (c *classifier) classify(db, sql string) *class {
	cacheable := len(sql) <= maxCachedLen
	var key string
	if cacheable {
		text := sql
		if n, ok := normalizedKey(sql); ok {
			text = n
		}
		key = db + "\x00" + text
		if cl, ok := c.cache.Get(key); ok {
			c.onHit()
			return cl
		}
	}
	c.onMiss()
	cl := c.parse(db, sql)
	if cl.kind == kindWriteUnknown {
		cl.text = strings.ToLower(sql)
	}
	if cacheable {
		// Another connection may have cached the same key meanwhile: then
		// nothing is added (and nothing counted twice).
		if found, _ := c.cache.ContainsOrAdd(key, cl); !found {
			c.bytes.Add(cost(key, cl))
		}
		for c.maxBytes > 0 && c.bytes.Load() > c.maxBytes {
			if _, _, ok := c.cache.RemoveOldest(); !ok {
				break
			}
		}
	}
	return cl
}

// parse classifies sql as the server will run it: MariaDB executable
// comments (/*M! ... */, which the tidb parser takes for plain comments)
// are read as code, like MySQL's /*! ... */. The text sent to the server
// is never changed.
func (c *classifier) parse(db, sql string) *class {
	text := reExecComment.ReplaceAllString(sql, "/*! ")
	stmts, err, panics := parseShortening(c.parseSafe, text)
	for range panics {
		c.onPanic()
	}
	if err != nil {
		return classifyUnparsed(db, text)
	}
	return classifyStmts(db, stmts, 0)
}

// errParserPanic is a parse that panicked twice (parseShortening).
var errParserPanic = errors.New("the SQL parser failed on this statement")

// parseShortening parses text with parse; when the parser panics, once
// more with long numeric literals shortened: the parser's value driver
// panics on some literals (a 90-digit integer overflows its decimal), and
// what a statement may write does not depend on its literals' values.
// panics counts the panics.
func parseShortening(parse func(string) ([]ast.StmtNode, error, bool), text string) (stmts []ast.StmtNode, err error, panics int) {
	stmts, err, panicked := parse(text)
	if !panicked {
		return stmts, err, 0
	}
	if stmts, err, panicked = parse(reLongNumber.ReplaceAllString(text, "${1}0")); panicked {
		return nil, errParserPanic, 2
	}
	return stmts, err, 1
}

// parseSafe parses text with a pooled parser (parseRecovering).
func (c *classifier) parseSafe(text string) (stmts []ast.StmtNode, err error, panicked bool) {
	p := c.parsers.Get().(*parser.Parser)
	stmts, err, panicked = parseRecovering(p, text)
	if !panicked {
		c.parsers.Put(p)
	}
	return stmts, err, panicked
}

// parseRecovering parses text with p, recovering a parser panic (p is
// then not to be used again: its state is unknown).
func parseRecovering(p *parser.Parser, text string) (stmts []ast.StmtNode, err error, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			stmts, err, panicked = nil, nil, true
		}
	}()
	stmts, _, err = p.Parse(text, "", "")
	return stmts, err, false
}

var (
	// reExecComment opens an executable comment, MySQL's (/*!, with an
	// optional version) or MariaDB's (/*M!).
	reExecComment = regexp.MustCompile(`/\*M?!\d*`)
	// reLongNumber is a numeric literal of more than 30 digits before or
	// after its point, not part of a name.
	reLongNumber = regexp.MustCompile(`(^|[^\w$.])(\d{31,}(\.\d*)?|\d*\.\d{31,})`)
)

func refused(reason, msg string) *class {
	return &class{kind: kindRefused, reason: reason, msg: "mlproxy: " + msg}
}

// Messages for refusals: why, and what to do instead.
const (
	msgInternalSchema = "writes to the internal schema `mlr` are refused: it holds replication state (checkpoints, conflicts, tombstones); use the mlproxy command line to act on it"
	msgStampVariable  = "statements that set the @_mlr_* variables are refused: mlproxy sets them itself to stamp writes for replication; remove the assignment"
	msgTrigger        = "dropping or replacing an `_mlr_` trigger is refused: it stamps writes for replication; use `mlproxy schema apply` to change replication metadata"
	msgMetadataColumn = "changing an `_mlr_` column is refused: it holds the replication stamp; use `mlproxy schema apply` to change replication metadata"
	msgMetadataWrite  = "writing an `_mlr_` column is refused: it holds the replication stamp, origin and version vector, which mlproxy sets itself; leave the column out"
	msgCharset        = "the client character sets gbk, big5, sjis, cp932 and gb18030 are refused: a byte 0x5c (backslash) inside one of their characters reads differently to the proxy's SQL parser and to the server, which would let a statement hide from classification; use utf8mb4"
	msgSQLLogBin      = "SET sql_log_bin=0 is refused: it would hide writes from replication to the other regions; run maintenance that must not replicate directly on the server"
)

// Heuristics for statements the parser cannot parse (MariaDB-only syntax
// such as INSERT ... RETURNING or SET STATEMENT ... FOR). They are stamped,
// not refused, unless they match one of these.
var (
	reMlrSchema   = regexp.MustCompile("(?i)(^|[^\\w$])`?mlr`?\\s*\\.")
	reStampAssign = regexp.MustCompile("(?i)@[`'\"]?_mlr_\\w*[`'\"]?\\s*:?=|\\binto\\s+(@\\S+\\s*,\\s*)*@[`'\"]?_mlr_")
	reMlrTrigger  = regexp.MustCompile("(?i)\\b(drop|create)\\s+(or\\s+replace\\s+)?(definer\\s*=\\s*\\S+\\s+)?trigger\\s+(if\\s+(not\\s+)?exists\\s+)?(\\S+\\.)?`?_mlr_")
	reSQLLogBin   = regexp.MustCompile(`(?i)\bsql_log_bin\b`)
	reMlrAssign   = regexp.MustCompile("(?i)`?\\b_mlr_\\w*`?\\s*:?=[^=]")
)

// reGetDiagnostics is GET [CURRENT|STACKED] DIAGNOSTICS, which the parser
// does not know: it reads the diagnostics area, which a stamping SET
// before it would reset.
var reGetDiagnostics = regexp.MustCompile(`(?is)^\s*(/\*.*?\*/\s*)*get\s+((current|stacked)\s+)?diagnostics\b`)

// reDDLVerb is statement text the parser could not read that starts (after
// comments) like DDL, or an EXECUTE IMMEDIATE of such text.
var reDDLVerb = regexp.MustCompile(`(?is)^\s*(/\*.*?\*/\s*)*(execute\s+immediate\s+['"]?\s*)?(create|alter|drop|rename|truncate)\b`)

// parseInner parses the text of a PREPARE (classifyStmt has no
// classifier: a parser of its own), panics recovered as in parse.
func parseInner(text string) ([]ast.StmtNode, error) {
	stmts, err, _ := parseShortening(func(text string) ([]ast.StmtNode, error, bool) {
		return parseRecovering(parser.New(), text)
	}, text)
	return stmts, err
}

// splitStatements splits text at the semicolons outside quotes (”, "",
// “, with backslash escapes) and comments: the statements of a packet
// the parser could not read.
func splitStatements(text string) []string {
	var out []string
	start := 0
	var quote byte
	for i := 0; i < len(text); i++ {
		c := text[i]
		switch {
		case quote != 0:
			if c == '\\' && quote != '`' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"' || c == '`':
			quote = c
		case c == '/' && strings.HasPrefix(text[i:], "/*") && !reExecComment.MatchString(text[i:min(len(text), i+4)]):
			if end := strings.Index(text[i+2:], "*/"); end >= 0 {
				i += end + 3
			} else {
				i = len(text)
			}
		case c == ';':
			out = append(out, text[start:i])
			start = i + 1
		}
	}
	return append(out, text[start:])
}

// ddlStatements are the statements of text that read as DDL (isDDLText),
// lower-cased.
func ddlStatements(text string) []string {
	var out []string
	for _, st := range splitStatements(text) {
		if isDDLText(st) {
			out = append(out, strings.ToLower(st))
		}
	}
	return out
}

// isDDLText reports whether text starts like DDL, reading executable
// comments as code: `/*! TRUNCATE TABLE t NOWAIT */` is a TRUNCATE to the
// server.
func isDDLText(text string) bool {
	return reDDLVerb.MatchString(text) || reDDLVerb.MatchString(execAsCode(text))
}

// execAsCode is text with its executable comments' markers removed (the
// opener with its version, and the */ that closes it), so their content
// reads as code. A comment versioned above the server is ignored by it:
// isDDLText reads text both ways.
func execAsCode(text string) string {
	var b strings.Builder
	inside := false
	for i := 0; i < len(text); {
		rest := text[i:]
		if !inside && strings.HasPrefix(rest, "/*") {
			if loc := reExecComment.FindStringIndex(rest[:min(len(rest), 16)]); loc != nil && loc[0] == 0 {
				b.WriteByte(' ')
				i += loc[1]
				inside = true
				continue
			}
		}
		if inside && strings.HasPrefix(rest, "*/") {
			b.WriteByte(' ')
			i += 2
			inside = false
			continue
		}
		b.WriteByte(text[i])
		i++
	}
	return b.String()
}

// reUnsafeCharset is a SET NAMES / CHARACTER SET (or character_set_client)
// naming a character set unsafeCharset refuses, in text the parser could
// not read.
var reUnsafeCharset = regexp.MustCompile("(?i)\\b(names|character\\s+set|charset|character_set_client|character_set_connection)\\s*(=\\s*)?['\"`]?(gbk|big5|sjis|cp932|gb18030)\\b")

func classifyUnparsed(db, sql string) *class {
	ddl := ddlStatements(sql)
	switch {
	case reUnsafeCharset.MatchString(sql):
		return refused(reasonCharset, msgCharset)
	case reGetDiagnostics.MatchString(sql):
		return &class{kind: kindRead}
	case reMlrTrigger.MatchString(sql):
		return refused(reasonTrigger, msgTrigger)
	case reStampAssign.MatchString(sql):
		return refused(reasonStampVariable, msgStampVariable)
	case reSQLLogBin.MatchString(sql):
		return refused(reasonSQLLogBin, msgSQLLogBin)
	case reMlrAssign.MatchString(sql):
		return refused(reasonMetadataColumn, msgMetadataWrite)
	case len(ddl) > 0:
		// CREATE OR REPLACE TABLE, ALTER TABLE IF EXISTS, ALTER ONLINE
		// TABLE, CREATE TRIGGER ...: DDL the parser cannot read, alone
		// or in a multi-statement packet. The proxy's DDL policy checks
		// its text against the replicated schemas.
		return &class{kind: kindWriteUnknown, verb: "DDL", ddlTexts: ddl}
	case reMlrSchema.MatchString(sql) || strings.EqualFold(db, internalSchema):
		return refused(reasonInternalSchema, "a statement mlproxy cannot parse that may touch the internal schema `mlr` is refused: it holds replication state; use the mlproxy command line to act on it")
	}
	return &class{kind: kindWriteUnknown}
}

// classifyStmts merges the classes of the statements of one packet: a
// refusal refuses the packet, else the most writing kind wins. USE
// statements change the database later statements are qualified with.
func classifyStmts(db string, stmts []ast.StmtNode, depth int) *class {
	out := &class{kind: kindRead}
	hasUse := false
	uses := make([]string, len(stmts))
	for i, st := range stmts {
		cl := classifyStmt(db, st, depth)
		if cl.kind == kindRefused {
			return cl
		}
		if u, ok := st.(*ast.UseStmt); ok {
			db = u.DBName
			uses[i] = u.DBName
			hasUse = true
		}
		if _, ok := st.(*ast.CallStmt); ok {
			out.calls = true
		}
		if cl.kind > out.kind {
			out.kind = cl.kind
		}
		if len(cl.ddl) > 0 {
			out.ddl = append(out.ddl, cl.ddl...)
			out.verb = cl.verb
		}
		out.ddlTexts = append(out.ddlTexts, cl.ddlTexts...)
		out.writes = append(out.writes, cl.writes...)
	}
	if hasUse {
		out.uses = uses
	}
	out.multi = len(stmts) > 1
	return out
}

func classifyStmt(db string, st ast.StmtNode, depth int) *class {
	if cl := refuseVariables(st); cl != nil {
		return cl
	}
	switch n := st.(type) {
	case *ast.SelectStmt, *ast.SetOprStmt, *ast.ShowStmt, *ast.HelpStmt:
		return &class{kind: kindRead}
	case *ast.ExplainStmt:
		if n.Analyze && n.Stmt != nil {
			return classifyStmt(db, n.Stmt, depth)
		}
		return &class{kind: kindRead}
	case *ast.InsertStmt:
		if writesMetadata(n.Columns, n.OnDuplicate) {
			return refused(reasonMetadataColumn, msgMetadataWrite)
		}
		var ws []tableRef
		if n.Table != nil {
			ws = joinTables(db, n.Table.TableRefs, nil)
		}
		return writeClass(ws)
	case *ast.UpdateStmt:
		if writesMetadata(nil, n.List, nil) {
			return refused(reasonMetadataColumn, msgMetadataWrite)
		}
		return writeClass(updateTargets(db, n))
	case *ast.DeleteStmt:
		return writeClass(deleteTargets(db, n))
	case *ast.LoadDataStmt:
		if n.Table == nil {
			return &class{kind: kindWriteUnknown}
		}
		return writeClass([]tableRef{qualify(db, n.Table)})
	case *ast.CallStmt, *ast.ExecuteStmt, *ast.DoStmt:
		return &class{kind: kindWriteUnknown}
	case *ast.SetStmt:
		return classifySet(n)
	case *ast.PrepareStmt:
		// The prepared text is checked for refusals now; its EXECUTE is
		// stamped as kindWriteUnknown.
		if n.SQLText != "" && depth == 0 {
			text := reExecComment.ReplaceAllString(n.SQLText, "/*! ")
			inner, err := parseInner(text)
			if err == nil && len(inner) > 0 {
				cl := classifyStmts(db, inner, depth+1)
				if cl.kind == kindRefused {
					return cl
				}
				if len(cl.ddl) > 0 || len(cl.ddlTexts) > 0 { // checked against the DDL policy like the statement itself
					return &class{kind: kindSession, ddl: cl.ddl, verb: cl.verb, ddlTexts: cl.ddlTexts}
				}
				return &class{kind: kindSession}
			}
			// Text the parser could not read, or read as nothing (an
			// executable comment it cannot parse is dropped as a comment).
			if cl := classifyUnparsed(db, text); cl.kind == kindRefused {
				return cl
			}
			if isDDLText(text) {
				return &class{kind: kindSession, verb: "DDL", ddlTexts: []string{strings.ToLower(n.SQLText)}}
			}
		}
		return &class{kind: kindSession}
	case *ast.UseStmt, *ast.BeginStmt, *ast.CommitStmt, *ast.RollbackStmt,
		*ast.SavepointStmt, *ast.ReleaseSavepointStmt, *ast.DeallocateStmt,
		*ast.LockTablesStmt, *ast.UnlockTablesStmt, *ast.SetPwdStmt,
		*ast.SetRoleStmt, *ast.SetDefaultRoleStmt,
		*ast.FlushStmt, *ast.KillStmt, *ast.GrantStmt, *ast.GrantRoleStmt,
		*ast.GrantProxyStmt, *ast.RevokeStmt, *ast.RevokeRoleStmt,
		*ast.CreateUserStmt, *ast.AlterUserStmt, *ast.DropUserStmt,
		*ast.RenameUserStmt, *ast.AnalyzeTableStmt, *ast.BinlogStmt:
		return &class{kind: kindSession}
	case ast.DDLNode:
		return classifyDDL(db, n)
	}
	// Anything else the parser knows (mostly TiDB extensions the server
	// will reject) is treated as a possible write: a stamp is harmless.
	return &class{kind: kindWriteUnknown}
}

// writesMetadata reports whether an INSERT's column list or an
// assignment names an _mlr_ column.
func writesMetadata(cols []*ast.ColumnName, lists ...[]*ast.Assignment) bool {
	for _, c := range cols {
		if c != nil && strings.HasPrefix(c.Name.L, "_mlr_") {
			return true
		}
	}
	for _, l := range lists {
		for _, a := range l {
			if a.Column != nil && strings.HasPrefix(a.Column.Name.L, "_mlr_") {
				return true
			}
		}
	}
	return false
}

func writeClass(ws []tableRef) *class {
	for _, t := range ws {
		if isInternal(t.schema) {
			return refused(reasonInternalSchema, msgInternalSchema)
		}
	}
	return &class{kind: kindWrite, writes: ws}
}

// qualify names t in db when it has no schema; names keep the case the
// client wrote them in (the server compares them case-sensitively unless
// lower_case_table_names says otherwise).
func qualify(db string, t *ast.TableName) tableRef {
	s := t.Schema.O
	if s == "" {
		s = db
	}
	return tableRef{schema: s, table: t.Name.O}
}

func isInternal(schema string) bool { return strings.EqualFold(schema, internalSchema) }

// joinTables lists the base tables of a FROM/join tree (not those inside
// subqueries, which are only read). aliases, if not nil, collects alias →
// table.
func joinTables(db string, n ast.ResultSetNode, aliases map[string]tableRef) []tableRef {
	var out []tableRef
	var walk func(ast.ResultSetNode)
	walk = func(n ast.ResultSetNode) {
		switch x := n.(type) {
		case *ast.Join:
			if x.Left != nil {
				walk(x.Left)
			}
			if x.Right != nil {
				walk(x.Right)
			}
		case *ast.TableSource:
			if tn, ok := x.Source.(*ast.TableName); ok {
				r := qualify(db, tn)
				out = append(out, r)
				if aliases != nil {
					name := x.AsName.L
					if name == "" {
						name = tn.Name.L
					}
					aliases[name] = r
				}
			} else if j, ok := x.Source.(*ast.Join); ok {
				walk(j)
			}
		case *ast.TableName:
			out = append(out, qualify(db, x))
		}
	}
	if n != nil {
		walk(n)
	}
	return out
}

// updateTargets names the tables an UPDATE assigns to: in a multi-table
// update, those named by the qualified assignment columns (all joined
// tables when a column is unqualified, as the proxy does not know the
// columns of each table).
func updateTargets(db string, n *ast.UpdateStmt) []tableRef {
	if n.TableRefs == nil {
		return nil
	}
	aliases := map[string]tableRef{}
	all := joinTables(db, n.TableRefs.TableRefs, aliases)
	if len(all) <= 1 {
		return all
	}
	var out []tableRef
	for _, a := range n.List {
		if a.Column == nil || a.Column.Table.L == "" {
			return all
		}
		if a.Column.Schema.L != "" {
			out = append(out, tableRef{schema: a.Column.Schema.O, table: a.Column.Table.O})
			continue
		}
		r, ok := aliases[a.Column.Table.L]
		if !ok {
			return all
		}
		out = append(out, r)
	}
	return out
}

// deleteTargets names the tables a DELETE removes rows from.
func deleteTargets(db string, n *ast.DeleteStmt) []tableRef {
	aliases := map[string]tableRef{}
	var all []tableRef
	if n.TableRefs != nil {
		all = joinTables(db, n.TableRefs.TableRefs, aliases)
	}
	if !n.IsMultiTable || n.Tables == nil {
		return all
	}
	var out []tableRef
	for _, t := range n.Tables.Tables {
		if t.Schema.L == "" {
			if r, ok := aliases[t.Name.L]; ok {
				out = append(out, r)
				continue
			}
		}
		out = append(out, qualify(db, t))
	}
	return out
}

// classifySet refuses SET statements that touch the stamp variables or turn
// sql_log_bin off; other SETs are session statements.
func classifySet(n *ast.SetStmt) *class {
	for _, v := range n.Variables {
		name := strings.ToLower(v.Name)
		switch {
		case name == strings.ToLower(ast.SetNames) || name == strings.ToLower(ast.SetCharset),
			v.IsSystem && (name == "character_set_client" || name == "character_set_connection"):
			if unsafeCharset(exprText(v.Value)) {
				return refused(reasonCharset, msgCharset)
			}
		}
		if !v.IsSystem && strings.HasPrefix(name, "_mlr_") {
			return refused(reasonStampVariable, msgStampVariable)
		}
		if v.IsSystem && name == "sql_log_bin" && !truthy(v.Value) {
			return refused(reasonSQLLogBin, msgSQLLogBin)
		}
	}
	return &class{kind: kindSession}
}

// unsafeCharset reports the character sets in which a multi-byte
// character may end in 0x5c, the backslash: the parser (which reads
// utf8) and the server would then disagree on where a string ends.
func unsafeCharset(name string) bool {
	switch strings.ToLower(strings.Trim(name, "'\"` ")) {
	case "gbk", "big5", "sjis", "cp932", "gb18030":
		return true
	}
	return false
}

// unsafeCollation is unsafeCharset for a handshake's collation id (MariaDB
// numbers NO PAD variants 1024 above their base collation).
func unsafeCollation(id byte) bool {
	switch id {
	case 1, 84, 13, 88, 28, 87, 95, 96, 248, 249, 250:
		return true
	}
	return false
}

// exprText is a SET value as text: a string literal's value, or a bare
// name.
func exprText(e ast.ExprNode) string {
	switch x := e.(type) {
	case ast.ValueExpr:
		if s, ok := x.GetValue().(string); ok {
			return s
		}
	case *ast.ColumnNameExpr:
		if x.Name != nil {
			return x.Name.Name.O
		}
	}
	return ""
}

// truthy reports whether a SET value certainly turns a boolean variable on
// (1, ON, TRUE, DEFAULT); anything else counts as off.
func truthy(e ast.ExprNode) bool {
	switch x := e.(type) {
	case *ast.DefaultExpr:
		return true
	case *ast.ColumnNameExpr:
		return x.Name != nil && x.Name.Name.L == "on"
	case ast.ValueExpr:
		switch v := x.GetValue().(type) {
		case int64:
			return v != 0
		case uint64:
			return v != 0
		case string:
			s := strings.ToLower(v)
			return s == "on" || s == "1" || s == "true"
		}
	}
	return false
}

// refuseVariables refuses statements that assign a @_mlr_* user variable
// anywhere in an expression (SELECT @_mlr_hlc := ...).
func refuseVariables(st ast.StmtNode) *class {
	v := &varFinder{}
	st.Accept(v)
	if v.found {
		return refused(reasonStampVariable, msgStampVariable)
	}
	return nil
}

type varFinder struct{ found bool }

func (v *varFinder) Enter(n ast.Node) (ast.Node, bool) {
	if x, ok := n.(*ast.VariableExpr); ok && !x.IsSystem && x.Value != nil &&
		strings.HasPrefix(strings.ToLower(x.Name), "_mlr_") {
		v.found = true
	}
	return n, v.found
}

func (v *varFinder) Leave(n ast.Node) (ast.Node, bool) { return n, true }

// classifyDDL refuses DDL on the internal schema, on _mlr_ columns; other
// DDL passes unstamped.
func classifyDDL(db string, n ast.DDLNode) *class {
	var targets []tableRef
	var schemas []string
	verb := ""
	switch x := n.(type) {
	case *ast.CreateDatabaseStmt:
		schemas = append(schemas, x.Name.O)
	case *ast.AlterDatabaseStmt:
		schemas = append(schemas, x.Name.O)
	case *ast.DropDatabaseStmt:
		schemas = append(schemas, x.Name.O)
	case *ast.CreateTableStmt:
		targets = append(targets, qualify(db, x.Table))
	case *ast.DropTableStmt:
		for _, t := range x.Tables {
			targets = append(targets, qualify(db, t))
		}
	case *ast.TruncateTableStmt:
		targets = append(targets, qualify(db, x.Table))
	case *ast.RenameTableStmt:
		for _, t := range x.TableToTables {
			targets = append(targets, qualify(db, t.OldTable), qualify(db, t.NewTable))
		}
	case *ast.CreateIndexStmt:
		targets = append(targets, qualify(db, x.Table))
	case *ast.DropIndexStmt:
		targets = append(targets, qualify(db, x.Table))
	case *ast.CreateViewStmt:
		targets = append(targets, qualify(db, x.ViewName))
	case *ast.AlterTableStmt:
		targets = append(targets, qualify(db, x.Table))
		for _, sp := range x.Specs {
			if sp.NewTable != nil { // RENAME TO, EXCHANGE PARTITION ... WITH TABLE
				targets = append(targets, qualify(db, sp.NewTable))
			}
			switch sp.Tp {
			case ast.AlterTableDropColumn, ast.AlterTableModifyColumn,
				ast.AlterTableChangeColumn, ast.AlterTableRenameColumn:
				if sp.OldColumnName != nil && strings.HasPrefix(sp.OldColumnName.Name.L, "_mlr_") {
					return refused(reasonMetadataColumn, msgMetadataColumn)
				}
				for _, c := range sp.NewColumns {
					if c.Name != nil && strings.HasPrefix(c.Name.Name.L, "_mlr_") {
						return refused(reasonMetadataColumn, msgMetadataColumn)
					}
				}
			}
		}
	}
	for _, t := range targets {
		schemas = append(schemas, t.schema)
	}
	for _, s := range schemas {
		if isInternal(s) {
			return refused(reasonInternalSchema, msgInternalSchema)
		}
	}
	switch x := n.(type) {
	case *ast.DropDatabaseStmt:
		return &class{kind: kindDDL, ddl: []tableRef{{schema: x.Name.O}}, verb: "DROP DATABASE"}
	case *ast.AlterDatabaseStmt:
		return &class{kind: kindDDL, ddl: []tableRef{{schema: x.Name.O}}, verb: "ALTER DATABASE"}
	case *ast.CreateTableStmt:
		if x.TemporaryKeyword != ast.TemporaryNone {
			return &class{kind: kindDDL} // session-local: nothing to replicate
		}
		verb = "CREATE TABLE"
	case *ast.DropTableStmt:
		if x.TemporaryKeyword != ast.TemporaryNone || x.IsView {
			return &class{kind: kindDDL}
		}
		verb = "DROP TABLE"
	case *ast.TruncateTableStmt:
		verb = "TRUNCATE TABLE"
	case *ast.RenameTableStmt:
		verb = "RENAME TABLE"
	case *ast.CreateIndexStmt:
		verb = "CREATE INDEX"
	case *ast.DropIndexStmt:
		verb = "DROP INDEX"
	case *ast.AlterTableStmt:
		verb = "ALTER TABLE"
	default:
		return &class{kind: kindDDL}
	}
	return &class{kind: kindDDL, ddl: targets, verb: verb}
}
