package schema

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
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
const BypassStampSQL = "(FLOOR(UNIX_TIMESTAMP(NOW(6))*1000) << 16) | 0x8000 | (MICROSECOND(NOW(6)) % 1000)"

// triggerMarker starts the comment that names a trigger body's version; the
// hash covers the body without the comment, so a body that still carries
// the marker of what Apply would create is up to date.
const triggerMarker = "/* mlproxy trigger v1 "

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

// GenerateTriggers returns the CREATE TRIGGER statements that stamp writes
// to t for region regionID, in the order BEFORE INSERT, BEFORE UPDATE, AFTER
// DELETE (docs/internals.md, "How a write gets its stamp"). The statements
// depend only on t's schema, name, user columns and primary key, and on
// regionID: Apply recreates a trigger exactly when its statement changed.
func GenerateTriggers(t *Table, regionID uint16) []string {
	trs := triggers(t, regionID)
	out := make([]string, len(trs))
	for i, tr := range trs {
		out[i] = tr.CreateSQL(t)
	}
	return out
}

// triggers builds the three triggers of t.
func triggers(t *Table, regionID uint16) []Trigger {
	origin := fmt.Sprintf("COALESCE(@_mlr_origin, %d)", regionID)
	hlc, origCol := Quote(ColHLC), Quote(ColOrigin)
	// A new version is always stamped above the version it replaces: the
	// old row's stamp (update, delete) or the key's tombstone (insert).
	// The proxy takes its stamp before the statement waits for the row
	// lock, so two sessions can commit in the other order than their
	// stamps; without this the later commit would carry the smaller stamp
	// and last-writer-wins elsewhere would disagree with this region.
	// Bypass stamps keep the bypass bit.
	newer := func(prev string) string {
		return fmt.Sprintf("IF(@_mlr_hlc IS NULL, GREATEST(%s, (%s + 1) | 0x8000), GREATEST(@_mlr_hlc, %s + 1))",
			BypassStampSQL, prev, prev)
	}
	after := newer("OLD." + hlc)
	pkMatch := make([]string, 0, len(t.PK))
	for _, c := range t.PK {
		pkMatch = append(pkMatch, Quote(c)+" = NEW."+Quote(c))
	}
	tomb := fmt.Sprintf("COALESCE((SELECT %s FROM %s WHERE %s), 0)", hlc, t.TombstoneQualifiedName(), strings.Join(pkMatch, " AND "))

	bi := "BEGIN\n" +
		"  IF COALESCE(@_mlr_apply, 0) = 0 THEN\n" +
		fmt.Sprintf("    SET NEW.%s = %s,\n", hlc, newer(tomb)) +
		fmt.Sprintf("        NEW.%s = %s;\n", origCol, origin) +
		"  END IF;\n" +
		"END"

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
		changed = "NOT (" + strings.Join(same, "\n      AND ") + ")"
	}
	bu := "BEGIN\n" +
		"  IF COALESCE(@_mlr_apply, 0) = 0 AND " + changed + " THEN\n" +
		fmt.Sprintf("    SET NEW.%s = %s,\n", hlc, after) +
		fmt.Sprintf("        NEW.%s = %s;\n", origCol, origin) +
		"  END IF;\n" +
		"END"

	cols := make([]string, 0, len(t.PK)+2)
	vals := make([]string, 0, len(t.PK)+2)
	for _, c := range t.PK {
		cols = append(cols, Quote(c))
		vals = append(vals, "OLD."+Quote(c))
	}
	cols = append(cols, hlc, origCol)
	vals = append(vals, after, origin)
	ad := "BEGIN\n" +
		"  IF COALESCE(@_mlr_apply, 0) = 0 THEN\n" +
		fmt.Sprintf("    INSERT INTO %s (%s)\n", t.TombstoneQualifiedName(), strings.Join(cols, ", ")) +
		fmt.Sprintf("    VALUES (%s)\n", strings.Join(vals, ", ")) +
		fmt.Sprintf("    ON DUPLICATE KEY UPDATE %s = VALUES(%s), %s = VALUES(%s);\n", hlc, hlc, origCol, origCol) +
		"  END IF;\n" +
		"END"

	return []Trigger{
		{Name: TriggerBeforeInsert + t.Name, Timing: "BEFORE", Event: "INSERT", Body: marked(bi)},
		{Name: TriggerBeforeUpdate + t.Name, Timing: "BEFORE", Event: "UPDATE", Body: marked(bu)},
		{Name: TriggerAfterDelete + t.Name, Timing: "AFTER", Event: "DELETE", Body: marked(ad)},
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
