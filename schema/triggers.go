package schema

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/home"
)

// Trigger name prefixes (docs/internals.md): the table's name follows.
const (
	TriggerBeforeInsert = "_mlr_bi_"
	TriggerBeforeUpdate = "_mlr_bu_"
	TriggerAfterDelete  = "_mlr_ad_"
)

// maxIdent is the longest identifier MySQL and MariaDB accept.
const maxIdent = 64

// BypassStampSQL is the stamp a trigger gives a write that bypassed the
// proxy (no @_mlr_hlc in the session): Unix milliseconds in the high 48
// bits, bit 15 set, microseconds within the millisecond in the low 10 bits.
// The time is the statement's (NOW), so that every trigger a statement
// fires computes the same stamp (a REPLACE's BEFORE INSERT names the
// stamp its AFTER DELETE will give the tombstone). A session's SET
// timestamp moves NOW, and a stamp in the future would win every later
// conflict: the triggers refuse such a write when NOW is ahead of the
// server's clock (SYSDATE) by more than the max offset.
const BypassStampSQL = "(FLOOR(UNIX_TIMESTAMP(NOW(6))*1000) << 16) | 0x8000 | (MICROSECOND(NOW(6)) % 1000)"

// serverMillisSQL is the server's clock in Unix milliseconds: SYSDATE,
// which a session's SET timestamp does not move (NOW does).
const serverMillisSQL = "FLOOR(UNIX_TIMESTAMP(SYSDATE(6))*1000)"

// triggerMarker starts the comment that names a trigger body's version; the
// hash covers the body without the comment, so a body that still carries
// the marker of what Apply would create is up to date.
const triggerMarker = "/* mlproxy trigger v2 "

// Trigger is one trigger mlproxy installs on a replicated table.
type Trigger struct {
	Name   string // e.g. _mlr_bi_orders
	Timing string // BEFORE or AFTER, as information_schema.TRIGGERS says
	Event  string // INSERT, UPDATE or DELETE
	Body   string // BEGIN ... END, including the version marker
}

// CreateSQL is the CREATE TRIGGER statement, in the table's schema.
func (tr Trigger) CreateSQL(t *Table) string {
	return fmt.Sprintf("CREATE TRIGGER %s.%s %s %s ON %s FOR EACH ROW\n%s",
		Quote(t.Schema), Quote(tr.Name), tr.Timing, tr.Event, t.QualifiedName(), tr.Body)
}

// Stamping is what a region's triggers enforce on every session that
// writes a replicated table (docs/internals.md, "Who may write what").
type Stamping struct {
	// Region is this region's id: the origin of every local write,
	// whatever a session's @_mlr_origin says.
	Region uint16
	// Applier is the account (user name) whose sessions may write versions
	// with the stamps they carry (@_mlr_apply = 1): mlproxy's own
	// `local.user`. No other account can skip stamping, whatever it sets.
	// Empty: no account can.
	Applier string
	// MaxOffset bounds how far a session's stamp (@_mlr_hlc) may be ahead
	// of the server's clock: a write stamped further ahead is refused with
	// an error. 0 means config.DefaultMaxOffset.
	MaxOffset time.Duration
	// Deployment names the regions (ids, peers' proxy addresses) for the
	// home mappings of tables that have one (TableRule.Home): their
	// triggers refuse a write for a key homed elsewhere. Nil: such tables
	// are refused by Apply and Check.
	Deployment *config.Config
}

// LocalStamping is st with Applier, when empty, set to the account db's
// sessions are authenticated as (schema apply runs as mlproxy's own user,
// the applier's).
func LocalStamping(ctx context.Context, db *sql.DB, st Stamping) (Stamping, error) {
	if st.Applier == "" {
		if err := db.QueryRowContext(ctx, "SELECT SUBSTRING_INDEX(USER(), '@', 1)").Scan(&st.Applier); err != nil {
			return st, fmt.Errorf("read the account mlproxy connects as: %w", err)
		}
	}
	return st, nil
}

func (st Stamping) maxOffsetMillis() int64 {
	if st.MaxOffset <= 0 {
		return config.DefaultMaxOffset.Milliseconds()
	}
	return max(1, st.MaxOffset.Milliseconds())
}

// GenerateTriggers returns the CREATE TRIGGER statements that stamp writes
// to t under st, in the order BEFORE INSERT, BEFORE UPDATE, AFTER
// DELETE (docs/internals.md, "How a write gets its stamp"). The statements
// depend only on t's schema, name, user columns, primary key and rule
// (its name and columns), and on st: Apply recreates a trigger exactly
// when its statement changed.
func GenerateTriggers(t *Table, st Stamping) []string {
	trs := triggers(t, st)
	out := make([]string, len(trs))
	for i, tr := range trs {
		out[i] = tr.CreateSQL(t)
	}
	return out
}

// Trigger-local variables (DECLAREd: a client can neither read nor set
// them, unlike @variables). The _mlr_ prefix keeps them apart from the
// columns of the table and its tombstone table, which the triggers'
// subqueries name unqualified (a local variable would shadow a column of
// the same name).
const (
	varStamp   = "_mlr_stamp"    // the new version's stamp (AFTER DELETE)
	varPrevHLC = "_mlr_prev_hlc" // BEFORE INSERT: the stamp of the version replaced, 0 for none
	varPrevVV  = "_mlr_prev_vv"  // BEFORE INSERT: the metadata of the version replaced, NULL for none
	varHome    = "_mlr_home"     // the home region of the row's key (tables with a home mapping)
	varHomeMsg = "_mlr_home_msg" // the error naming it
)

// declareHome declares varHome and varHomeMsg when m is set.
func declareHome(m *home.Map) string {
	if m == nil {
		return ""
	}
	return fmt.Sprintf("  DECLARE %s SMALLINT UNSIGNED;\n  DECLARE %s VARCHAR(1024);\n", varHome, varHomeMsg)
}

// declareMeta is the type of a local variable that holds metadata.
const declareMeta = "TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"

// legacyMeta is the metadata of a version written before version vectors
// (its _mlr_vv is NULL): one entry, the writer's region at the version's
// stamp; nothing for a row that was never stamped. prefix is "OLD." or ""
// (the row of a subquery: a tombstone, or the live row a REPLACE deletes).
func legacyMeta(prefix string) string {
	h, o := prefix+Quote(ColHLC), prefix+Quote(ColOrigin)
	return fmt.Sprintf("IF(%s = 0, '{}', JSON_OBJECT(CAST(%s & 0xFFFF AS CHAR), %s))", h, o, h)
}

// sqlString is s as a string literal (for the default sql_mode, in which
// trigger bodies are created).
func sqlString(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, "'", "''").Replace(s) + "'"
}

// jsonPath is the path of a member key under prefix ("$" or "$.m"), as a
// string literal.
func jsonPath(prefix, key string) string {
	return sqlString(prefix + `."` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(key) + `"`)
}

// ruleColumns are the columns t's rule merges by value (counter, max,
// min: t.Rule.Columns), in the rule's order and as the table spells them;
// nil for other rules. A name that is not a user column is an error.
func (t *Table) ruleColumns() ([]Column, error) {
	switch t.Rule.Rule {
	case config.RuleCounter, config.RuleMax, config.RuleMin:
	default:
		return nil, nil
	}
	user := t.UserColumns()
	var cs []Column
	seen := map[string]bool{}
	for _, n := range t.Rule.Columns {
		i := slices.IndexFunc(user, func(c Column) bool { return strings.EqualFold(c.Name, n) })
		if i < 0 {
			return nil, fmt.Errorf("rule %s names column %q, which is not a writable column of the table", t.Rule.Rule, n)
		}
		if !seen[user[i].Name] {
			seen[user[i].Name] = true
			cs = append(cs, user[i])
		}
	}
	return cs, nil
}

// homeMap is the home mapping of t's rule under st, nil when t has none
// or its writes homed elsewhere are allowed (nothing for the triggers to
// refuse). A column the table lacks is an error.
func (t *Table) homeMap(st Stamping) (*home.Map, error) {
	h := t.Rule.Homing()
	if h == nil || h.Elsewhere == config.HomeAllow {
		return nil, nil
	}
	if _, ok := t.Column(h.Column); !ok && h.Leader == "" {
		return nil, fmt.Errorf("home.column %q is not a column of the table", h.Column)
	}
	if st.Deployment == nil {
		return nil, fmt.Errorf("home mapping without the deployment's regions")
	}
	return home.New(t.Rule.Schema+"."+t.Rule.Table, *h, st.Deployment)
}

// homeCheck is the trigger statements that refuse a row whose key (the
// column prefix names: "NEW." or "OLD.") is homed in a region other than
// this one; "" when m is nil.
func homeCheck(m *home.Map, t *Table, prefix string, region uint16) string {
	if m == nil {
		return ""
	}
	var b strings.Builder
	if m.Strong() {
		// The leader `mlproxy strong move` set, else the configured one;
		// 0 while it moves: nobody writes the table.
		// Read under a shared lock: `strong move` changing it waits for
		// the transactions that wrote under the old leader to end, so the
		// old leader's position it then reads covers all of them.
		fmt.Fprintf(&b, "    SET %s = COALESCE((SELECT leader FROM %s.strong_leaders WHERE db = %s AND tbl = %s LOCK IN SHARE MODE), %d);\n",
			varHome, Quote(Internal), sqlString(t.Schema), sqlString(t.Name), m.Leader())
		fmt.Fprintf(&b, "    IF %s <> %d THEN\n", varHome, region)
		fmt.Fprintf(&b, "      SET %s = CASE %s WHEN 0 THEN %s", varHomeMsg, varHome, sqlString("mlproxy: "+m.Refusal(t.Schema, t.Name, 0)))
	} else {
		key := "NULL"
		if c, ok := t.Column(m.Column); ok {
			key = prefix + Quote(c.Name)
		}
		fmt.Fprintf(&b, "    SET %s = %s;\n", varHome, m.SQL(key))
		fmt.Fprintf(&b, "    IF %s <> 0 AND %s <> %d THEN\n", varHome, varHome, region)
		fmt.Fprintf(&b, "      SET %s = CASE %s", varHomeMsg, varHome)
	}
	for _, id := range m.Regions() {
		if id != region {
			fmt.Fprintf(&b, " WHEN %d THEN %s", id, sqlString("mlproxy: "+m.Refusal(t.Schema, t.Name, id)))
		}
	}
	b.WriteString(" END;\n")
	fmt.Fprintf(&b, "      SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = %s;\n", varHomeMsg)
	b.WriteString("    END IF;\n")
	return b.String()
}

// castType is the CAST target that reads a column's value back from JSON
// (JSON_VALUE returns text) so that it compares as the column does.
func (c Column) castType() string {
	ct := strings.ToLower(c.ColumnType)
	paren := func() string { // "(p,s)" or "(n)" of the column type, if any
		if i := strings.IndexByte(ct, '('); i >= 0 {
			if j := strings.IndexByte(ct[i:], ')'); j >= 0 {
				return ct[i : i+j+1]
			}
		}
		return ""
	}
	switch c.DataType {
	case "tinyint", "smallint", "mediumint", "int", "integer", "bigint", "bit":
		if c.Unsigned || c.DataType == "bit" {
			return "UNSIGNED"
		}
		return "SIGNED"
	case "year":
		return "UNSIGNED"
	case "decimal", "numeric":
		return "DECIMAL" + paren()
	case "float", "double", "real":
		return "DOUBLE"
	case "date":
		return "DATE"
	case "datetime", "timestamp":
		return "DATETIME" + paren()
	case "time":
		return "TIME" + paren()
	case "binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob":
		return "BINARY"
	}
	return "CHAR"
}

// fromJSON reads column c's value at path from the metadata in v, typed as
// the column (a JSON null, or a missing path, is NULL).
func (c Column) fromJSON(v, path string) string {
	val := "JSON_VALUE(" + v + ", " + path + ")"
	if ct := c.castType(); ct != "CHAR" || c.Charset == "" {
		return "CAST(" + val + " AS " + ct + ")"
	}
	e := "CONVERT(" + val + " USING " + c.Charset + ")"
	if c.Collation != "" {
		e += " COLLATE " + c.Collation
	}
	return e
}

// triggers builds the three triggers of t (docs/internals.md): each
// stamps the new version above the one it replaces and maintains its
// metadata (_mlr_vv, change.Meta): the vector's entry for regionID is the
// new stamp, other entries are carried over; first-writer-wins tables keep
// the lineage's birth, counter/max/min tables record the merged columns'
// values in the tombstone, and max/min tables never let a local write
// lower (raise) a merged column below (above) the version it replaces.
func triggers(t *Table, st Stamping) []Trigger {
	regionID := st.Region
	// The origin of a local write is this region, whatever the session set.
	origin := fmt.Sprint(regionID)
	// The stamping block runs unless the session is the applier's: its
	// account, which a client cannot take, and the flag it sets. The
	// server prepares every expression of each trigger statement it runs,
	// row after row, so the common path runs few and small ones: a
	// client's write tests the flag alone and never reaches USER().
	const block = "_mlr_stamping"
	stamping := "  " + block + ": BEGIN\n"
	if st.Applier != "" {
		// Compared as bytes: USER() compares case-, accent- and
		// trailing-space-insensitively, and another account named
		// "MLProxy" must not pass for mlproxy's.
		stamping += fmt.Sprintf("    IF @_mlr_apply = 1 THEN\n"+
			"      IF CAST(SUBSTRING_INDEX(USER(), '@', 1) AS BINARY) = CAST(%s AS BINARY) THEN\n"+
			"        LEAVE %s;\n"+
			"      END IF;\n"+
			"    END IF;\n", sqlString(st.Applier), block)
	}
	endStamping := "  END " + block + ";\n"
	maxMs := st.maxOffsetMillis()
	// A session's stamp may be no further ahead of the server's clock than
	// the offset: refused, not capped (a write stamped in the future would
	// win every later conflict; one stamped in the past only loses its
	// own). Without a stamp (a write around the proxy), the session's
	// clock may not be: SET timestamp moves NOW, which stamps it.
	tooFar := fmt.Sprintf("    IF @_mlr_hlc IS NULL THEN\n"+
		"      IF NOW(6) > SYSDATE(6) + INTERVAL %d MICROSECOND THEN\n"+
		"        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = %s;\n"+
		"      END IF;\n"+
		"    ELSEIF CAST(@_mlr_hlc AS UNSIGNED) > ((%s + %d) << 16) | 0xFFFF THEN\n"+
		"      SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = %s;\n"+
		"    END IF;\n",
		maxMs*1000, sqlString(fmt.Sprintf("mlproxy: this session's clock (SET timestamp) is more than %dms ahead of the server's (clock.max_offset); SET timestamp = DEFAULT", maxMs)),
		serverMillisSQL, maxMs, sqlString(fmt.Sprintf("mlproxy: this write's stamp is more than %dms ahead of the server's clock (clock.max_offset): check the clocks (NTP) of this region's proxy and server", maxMs)))
	// A traced statement's first row carries its trace context into the
	// binlog (package tracing); the variable is cleared so the statement's
	// other rows do not repeat it. Only the proxy sets it.
	tooFar += fmt.Sprintf("    IF @_mlr_tp IS NOT NULL THEN\n"+
		"      INSERT INTO %s.`traces` (traceparent) VALUES (LEFT(@_mlr_tp, 55));\n"+
		"      SET @_mlr_tp = NULL;\n"+
		"    END IF;\n", Quote(Internal))
	hlc, origCol, meta := Quote(ColHLC), Quote(ColOrigin), Quote(ColMeta)
	entry := jsonPath("$", fmt.Sprint(regionID))
	fww := t.Rule.Rule == config.RuleFirstWriterWins
	merged, _ := t.ruleColumns() // Apply and Check refuse a rule naming unknown columns
	homes, _ := t.homeMap(st)    // and a home mapping naming an unknown column
	clampMax, clampMin := t.Rule.Rule == config.RuleMax, t.Rule.Rule == config.RuleMin
	// A new version is always stamped above the version it replaces: the
	// old row's stamp (update, delete) or the key's tombstone (insert).
	// The proxy takes its stamp before the statement waits for the row
	// lock, so two sessions can commit in the other order than their
	// stamps; without this the later commit would carry the smaller stamp
	// and last-writer-wins elsewhere would disagree with this region.
	// Bypass stamps keep the bypass bit. The CAST gives both branches an
	// integer type: with a NULL (or unset) @_mlr_hlc, which has no integer
	// type, the IF is computed in DOUBLE, which rounds stamps (they exceed
	// 2^53) and can lose the + 1 (a bypass REPLACE then stamped the row it
	// inserts equal to the tombstone it wrote).
	newer := func(prev string) string {
		return fmt.Sprintf("IF(@_mlr_hlc IS NULL, GREATEST(%s, (%s + 1) | 0x8000), GREATEST(CAST(@_mlr_hlc AS UNSIGNED), %s + 1))",
			BypassStampSQL, prev, prev)
	}
	// The metadata of the version an update or delete replaces.
	oldMeta := fmt.Sprintf("COALESCE(OLD.%s, %s)", meta, legacyMeta("OLD."))
	if t.Rule.Rule == config.RuleOriginPriority {
		// "w", a merged version's rank, belongs to that version only.
		oldMeta = fmt.Sprintf("JSON_REMOVE(%s, '$.w')", oldMeta)
	}
	// floor is the replaced version's stamp, or this region's entry in its
	// vector when that is higher (a merge keeps the winner's stamp, which
	// may be below an entry it joined): every region's entries only grow.
	floor := func(stamp, m string) string {
		return fmt.Sprintf("GREATEST(%s, COALESCE(CAST(JSON_VALUE(%s, %s) AS UNSIGNED), 0))", stamp, m, entry)
	}
	// setNewer sets target to newer(prev) as two statements, one per
	// branch: the server prepares only the one it runs.
	setNewer := func(indent, target, prev string) string {
		return fmt.Sprintf("%[1]sIF @_mlr_hlc IS NULL THEN\n"+
			"%[1]s  SET %[2]s = GREATEST(%[3]s, (%[4]s + 1) | 0x8000);\n"+
			"%[1]sELSE\n"+
			"%[1]s  SET %[2]s = GREATEST(CAST(@_mlr_hlc AS UNSIGNED), %[4]s + 1);\n"+
			"%[1]sEND IF;\n", indent, target, BypassStampSQL, prev)
	}
	oldFloor := floor("OLD."+hlc, oldMeta)
	// withBirth adds a legacy version's birth (first-writer-wins): the
	// birth of a lineage is carried by every later version.
	withBirth := func(m, stamp, origin string) string {
		if !fww {
			return m
		}
		return fmt.Sprintf("JSON_INSERT(%s, '$.b', JSON_ARRAY(%s, %s))", m, stamp, origin)
	}
	// tombMeta is the metadata of the tombstone that deleting the row
	// (columns named with prefix: "OLD." or "" in a subquery on the
	// table) makes, with this region's entry at stamp ("": left as is)
	// and, when values, the merged columns' values.
	tombMeta := func(prefix, stamp string, values bool) string {
		m := fmt.Sprintf("COALESCE(%s%s, %s)", prefix, meta, legacyMeta(prefix))
		if t.Rule.Rule == config.RuleOriginPriority {
			m = fmt.Sprintf("JSON_REMOVE(%s, '$.w')", m)
		}
		if stamp != "" {
			m = fmt.Sprintf("JSON_SET(%s, %s, %s)", m, entry, stamp)
		}
		m = withBirth(m, prefix+hlc, prefix+origCol)
		if values && len(merged) > 0 {
			kv := make([]string, 0, 2*len(merged))
			for _, c := range merged {
				kv = append(kv, sqlString(c.Name), prefix+Quote(c.Name))
			}
			m = fmt.Sprintf("JSON_SET(%s, '$.m', JSON_OBJECT(%s))", m, strings.Join(kv, ", "))
		}
		return m
	}
	pkMatch := make([]string, 0, len(t.PK))
	for _, c := range t.PK {
		pkMatch = append(pkMatch, Quote(c)+" = NEW."+Quote(c))
	}
	byKey := " WHERE " + strings.Join(pkMatch, " AND ")
	liveWhere := " FROM " + t.QualifiedName() + byKey
	tombWhere := " FROM " + t.TombstoneQualifiedName() + byKey

	// BEFORE INSERT: above the version the new row replaces, inheriting
	// its metadata (without the deleted values), so that a re-insert has
	// seen the delete. That version is the key's tombstone, or, for a
	// REPLACE of a live row, the tombstone its delete is about to write:
	// REPLACE fires BEFORE INSERT first, then deletes the row it
	// conflicts with, then inserts. (For INSERT ... ON DUPLICATE KEY
	// UPDATE, what this trigger sets is dropped and BEFORE UPDATE runs.)
	var bi strings.Builder
	bi.WriteString("BEGIN\n")
	fmt.Fprintf(&bi, "  DECLARE %s BIGINT UNSIGNED;\n", varPrevHLC)
	fmt.Fprintf(&bi, "  DECLARE %s %s;\n", varPrevVV, declareMeta)
	bi.WriteString(declareHome(homes))
	bi.WriteString(stamping + homeCheck(homes, t, "NEW.", regionID) + tooFar)
	// Metadata first: it is NULL exactly when there is no such row, the
	// common case, which then costs one index lookup per table.
	fmt.Fprintf(&bi, "    SET %s = (SELECT %s%s);\n", varPrevVV, tombMeta("", "", clampMax || clampMin), liveWhere)
	fmt.Fprintf(&bi, "    IF %s IS NULL THEN\n", varPrevVV)
	fmt.Fprintf(&bi, "      SET %s = (SELECT COALESCE(%s, %s)%s),\n", varPrevVV, meta, legacyMeta(""), tombWhere)
	fmt.Fprintf(&bi, "          %s = IF(%s IS NULL, 0, COALESCE((SELECT %s%s), 0));\n", varPrevHLC, varPrevVV, hlc, tombWhere)
	bi.WriteString("    ELSE\n")
	fmt.Fprintf(&bi, "      SET %s = (SELECT %s%s);\n", varPrevHLC, newer(floor(hlc, fmt.Sprintf("COALESCE(%s, %s)", meta, legacyMeta("")))), liveWhere)
	bi.WriteString("    END IF;\n")
	if clampMax || clampMin {
		for _, c := range merged {
			n, path := "NEW."+Quote(c.Name), jsonPath("$.m", c.Name)
			v := c.fromJSON(varPrevVV, path)
			if clampMax {
				fmt.Fprintf(&bi, "    SET %s = COALESCE(GREATEST(%s, %s), %s, %s);\n", n, n, v, n, v)
			} else {
				fmt.Fprintf(&bi, "    SET %s = IF(JSON_CONTAINS_PATH(%s, 'one', %s), LEAST(%s, %s), %s);\n", n, varPrevVV, path, n, v, n)
			}
		}
	}
	insMeta := fmt.Sprintf("JSON_SET(JSON_REMOVE(COALESCE(%s, '{}'), '$.m', '$.w'), %s, NEW.%s)", varPrevVV, entry, hlc)
	// A lineage's birth decides first-writer-wins, where the lower stamp
	// wins: a session's stamp may be stale or set low on purpose (the
	// upper bound above does not stop that), so the birth is never
	// earlier than the server's clock minus the max offset.
	insMeta = withBirth(insMeta, fmt.Sprintf("GREATEST(NEW.%s, (%s - %d) << 16)", hlc, serverMillisSQL, maxMs), "NEW."+origCol)
	bi.WriteString(setNewer("    ", "NEW."+hlc, floor(varPrevHLC, fmt.Sprintf("COALESCE(%s, '{}')", varPrevVV))))
	fmt.Fprintf(&bi, "    SET NEW.%s = %s,\n", origCol, origin)
	fmt.Fprintf(&bi, "        NEW.%s = JSON_COMPACT(%s);\n", meta, insMeta)
	bi.WriteString(endStamping)
	bi.WriteString("END")

	// BEFORE UPDATE: a new version only when a user column changed, so
	// that affected-rows stay what a direct connection reports; otherwise
	// the metadata stays the old version's, whatever the client wrote.
	var same []string
	for _, c := range t.UserColumns() {
		n, o := "NEW."+Quote(c.Name), "OLD."+Quote(c.Name)
		if c.textual() {
			// Under a _ci collation 'a' <=> 'A'; the row still changed.
			n, o = "CAST("+n+" AS BINARY)", "CAST("+o+" AS BINARY)"
		}
		same = append(same, n+" <=> "+o)
	}
	changed := "TRUE"
	if len(same) > 0 {
		changed = "NOT (" + strings.Join(same, "\n        AND ") + ")"
	}
	var bu strings.Builder
	bu.WriteString("BEGIN\n")
	bu.WriteString(declareHome(homes))
	// Both keys: a row may not leave another region's home, nor enter it.
	bu.WriteString(stamping + homeCheck(homes, t, "OLD.", regionID) + homeCheck(homes, t, "NEW.", regionID) + tooFar)
	if clampMax || clampMin {
		for _, c := range merged {
			n, o := "NEW."+Quote(c.Name), "OLD."+Quote(c.Name)
			if clampMax {
				fmt.Fprintf(&bu, "    SET %s = COALESCE(GREATEST(%s, %s), %s, %s);\n", n, n, o, n, o)
			} else {
				fmt.Fprintf(&bu, "    SET %s = LEAST(%s, %s);\n", n, n, o)
			}
		}
	}
	// tombInsert upserts the tombstone of the row OLD names, stamped stamp:
	// a version of its own.
	tombInsert := func(indent, stamp string) string {
		cols := make([]string, 0, len(t.PK)+3)
		vals := make([]string, 0, len(t.PK)+3)
		for _, c := range t.PK {
			cols = append(cols, Quote(c))
			vals = append(vals, "OLD."+Quote(c))
		}
		cols = append(cols, hlc, origCol, meta)
		vals = append(vals, stamp, origin, "JSON_COMPACT("+tombMeta("OLD.", stamp, true)+")")
		return fmt.Sprintf("%sINSERT INTO %s (%s)\n%sVALUES (%s)\n%sON DUPLICATE KEY UPDATE %s = VALUES(%s), %s = VALUES(%s), %s = VALUES(%s);\n",
			indent, t.TombstoneQualifiedName(), strings.Join(cols, ", "), indent, strings.Join(vals, ", "),
			indent, hlc, hlc, origCol, origCol, meta, meta)
	}
	sameKey := make([]string, 0, len(t.PK))
	for _, c := range t.PK {
		sameKey = append(sameKey, "NEW."+Quote(c)+" <=> OLD."+Quote(c))
	}
	updMeta := withBirth(fmt.Sprintf("JSON_SET(%s, %s, NEW.%s)", oldMeta, entry, hlc), "OLD."+hlc, "OLD."+origCol)
	bu.WriteString("    IF " + changed + " THEN\n")
	bu.WriteString(setNewer("      ", "NEW."+hlc, oldFloor))
	fmt.Fprintf(&bu, "      SET NEW.%s = %s,\n", origCol, origin)
	fmt.Fprintf(&bu, "          NEW.%s = JSON_COMPACT(%s);\n", meta, updMeta)
	// A new primary key moves the row: the old key gets its tombstone, so
	// that every region removes it as a delete of its own.
	bu.WriteString("      IF NOT (" + strings.Join(sameKey, " AND ") + ") THEN\n")
	bu.WriteString(tombInsert("        ", "NEW."+hlc))
	bu.WriteString("      END IF;\n")
	bu.WriteString("    ELSE\n")
	fmt.Fprintf(&bu, "      SET NEW.%s = OLD.%s,\n", hlc, hlc)
	fmt.Fprintf(&bu, "          NEW.%s = OLD.%s,\n", origCol, origCol)
	fmt.Fprintf(&bu, "          NEW.%s = OLD.%s;\n", meta, meta)
	bu.WriteString("    END IF;\n")
	bu.WriteString(endStamping)
	bu.WriteString("END")

	// AFTER DELETE: the tombstone, a version of its own.
	var ad strings.Builder
	ad.WriteString("BEGIN\n")
	fmt.Fprintf(&ad, "  DECLARE %s BIGINT UNSIGNED;\n", varStamp)
	ad.WriteString(declareHome(homes))
	ad.WriteString(stamping + homeCheck(homes, t, "OLD.", regionID) + tooFar)
	ad.WriteString(setNewer("    ", varStamp, oldFloor))
	ad.WriteString(tombInsert("    ", varStamp))
	ad.WriteString(endStamping)
	ad.WriteString("END")

	return []Trigger{
		{Name: TriggerBeforeInsert + t.Name, Timing: "BEFORE", Event: "INSERT", Body: marked(bi.String())},
		{Name: TriggerBeforeUpdate + t.Name, Timing: "BEFORE", Event: "UPDATE", Body: marked(bu.String())},
		{Name: TriggerAfterDelete + t.Name, Timing: "AFTER", Event: "DELETE", Body: marked(ad.String())},
	}
}

// marked inserts the version marker after the body's BEGIN.
func marked(body string) string {
	sum := sha256.Sum256([]byte(body))
	rest, _ := strings.CutPrefix(body, "BEGIN\n")
	return "BEGIN\n  " + triggerMarker + hex.EncodeToString(sum[:8]) + " */\n" + rest
}

// sameBody reports whether a stored trigger body (information_schema
// ACTION_STATEMENT) is the body Apply would create, ignoring differences in
// whitespace a server might introduce.
func sameBody(stored, want string) bool {
	return strings.Join(strings.Fields(stored), " ") == strings.Join(strings.Fields(want), " ")
}
