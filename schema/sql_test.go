package schema

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/mlproxy/mlproxy/config"
)

func sampleTable() *Table {
	return &Table{
		Schema: "shop",
		Name:   "order`s",
		Columns: []Column{
			{Name: "region", DataType: "varchar", ColumnType: "varchar(8)", Charset: "utf8mb4", Collation: "utf8mb4_general_ci"},
			{Name: "id", DataType: "bigint", ColumnType: "bigint(20) unsigned", Unsigned: true},
			{Name: "note", DataType: "text", ColumnType: "text", Nullable: true, Charset: "utf8mb4", Collation: "utf8mb4_general_ci"},
			{Name: "total", DataType: "int", ColumnType: "int(11)", Nullable: true},
			{Name: "twice", DataType: "int", ColumnType: "int(11)", Nullable: true, Generated: true},
			{Name: ColOrigin, DataType: "smallint", ColumnType: "smallint(5) unsigned", Unsigned: true, Invisible: true},
			{Name: ColHLC, DataType: "bigint", ColumnType: "bigint(20) unsigned", Unsigned: true, Invisible: true},
			{Name: ColMeta, DataType: "text", ColumnType: "text", Nullable: true, Invisible: true, Charset: "utf8mb4", Collation: "utf8mb4_bin"},
		},
		PK: []string{"region", "id"},
	}
}

func TestSQLHelpers(t *testing.T) {
	tb := sampleTable()
	for _, tc := range []struct{ name, got, want string }{
		{"SelectVersionSQL", tb.SelectVersionSQL(),
			"SELECT `region`, `id`, `note`, `total`, `_mlr_hlc`, `_mlr_origin`, `_mlr_vv` FROM `shop`.`order``s` WHERE `region` = ? AND `id` = ? FOR UPDATE"},
		{"SelectTombstoneSQL", tb.SelectTombstoneSQL(),
			"SELECT `_mlr_hlc`, `_mlr_origin`, `_mlr_vv` FROM `mlr`.`shop.order``s` WHERE `region` = ? AND `id` = ? FOR UPDATE"},
		{"UpsertTombstoneSQL", tb.UpsertTombstoneSQL(),
			"INSERT INTO `mlr`.`shop.order``s` (`region`, `id`, `_mlr_hlc`, `_mlr_origin`, `_mlr_vv`) VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE `_mlr_hlc` = VALUES(`_mlr_hlc`), `_mlr_origin` = VALUES(`_mlr_origin`), `_mlr_vv` = VALUES(`_mlr_vv`)"},
		{"DeleteTombstoneSQL", tb.DeleteTombstoneSQL(),
			"DELETE FROM `mlr`.`shop.order``s` WHERE `region` = ? AND `id` = ?"},
		{"InsertSQL", tb.InsertSQL(),
			"INSERT INTO `shop`.`order``s` (`region`, `id`, `note`, `total`, `_mlr_hlc`, `_mlr_origin`, `_mlr_vv`) VALUES (?, ?, ?, ?, ?, ?, ?)"},
		{"ReplaceSQL", tb.ReplaceSQL(),
			"REPLACE INTO `shop`.`order``s` (`region`, `id`, `note`, `total`, `_mlr_hlc`, `_mlr_origin`, `_mlr_vv`) VALUES (?, ?, ?, ?, ?, ?, ?)"},
		{"UpdateByPKSQL", tb.UpdateByPKSQL(),
			"UPDATE `shop`.`order``s` SET `region` = ?, `id` = ?, `note` = ?, `total` = ?, `_mlr_hlc` = ?, `_mlr_origin` = ?, `_mlr_vv` = ? WHERE `region` = ? AND `id` = ?"},
		{"DeleteByPKSQL", tb.DeleteByPKSQL(),
			"DELETE FROM `shop`.`order``s` WHERE `region` = ? AND `id` = ?"},
		{"GCTombstonesSQL", tb.GCTombstonesSQL(),
			"DELETE FROM `mlr`.`shop.order``s` WHERE `_mlr_hlc` < ? LIMIT ?"},
		{"CreateTombstoneSQL", tb.CreateTombstoneSQL(), "CREATE TABLE `mlr`.`shop.order``s` (\n" +
			"  `region` varchar(8) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NOT NULL,\n" +
			"  `id` bigint(20) unsigned NOT NULL,\n" +
			"  `_mlr_hlc` BIGINT UNSIGNED NOT NULL,\n" +
			"  `_mlr_origin` SMALLINT UNSIGNED NOT NULL,\n" +
			"  `_mlr_vv` TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,\n" +
			"  PRIMARY KEY (`region`, `id`),\n" +
			"  KEY `_mlr_hlc` (`_mlr_hlc`)\n" +
			") ENGINE=InnoDB"},
	} {
		assert.Equal(t, tc.want, tc.got, tc.name)
	}
}

// stripMarker removes a trigger's version marker (a hash of its body).
func stripMarker(s string) string {
	i := strings.Index(s, "  "+triggerMarker)
	j := strings.Index(s[i:], "*/\n")
	return s[:i] + s[i+j+3:]
}

func TestGenerateTriggers(t *testing.T) {
	tb := sampleTable()
	got := GenerateTriggers(tb, Stamping{Region: 7, Applier: "mlproxy"})
	if len(got) != 3 {
		t.Fatalf("got %d triggers, want 3", len(got))
	}
	const bypass = "(FLOOR(UNIX_TIMESTAMP(NOW(6))*1000) << 16) | 0x8000 | (MICROSECOND(NOW(6)) % 1000)"
	// Every new version is stamped above the one it replaces: the old row
	// (update, delete) or the key's tombstone (insert).
	// ... and above this region's own entry in the replaced version's
	// vector (a merge keeps the winner's stamp, which may be lower).
	floor := func(stamp, meta string) string {
		return "GREATEST(" + stamp + ", COALESCE(CAST(JSON_VALUE(" + meta + ", '$.\"7\"') AS UNSIGNED), 0))"
	}
	newer := func(stamp, meta string) string {
		f := floor(stamp, meta)
		return "IF(@_mlr_hlc IS NULL, GREATEST(" + bypass + ", (" + f + " + 1) | 0x8000), GREATEST(CAST(@_mlr_hlc AS UNSIGNED), " + f + " + 1))"
	}
	// setNewer is newer as statements, one per branch.
	setNewer := func(indent, target, stamp, meta string) string {
		f := floor(stamp, meta)
		return indent + "IF @_mlr_hlc IS NULL THEN\n" +
			indent + "  SET " + target + " = GREATEST(" + bypass + ", (" + f + " + 1) | 0x8000);\n" +
			indent + "ELSE\n" +
			indent + "  SET " + target + " = GREATEST(CAST(@_mlr_hlc AS UNSIGNED), " + f + " + 1);\n" +
			indent + "END IF;\n"
	}
	where := " FROM `mlr`.`shop.order``s` WHERE `region` = NEW.`region` AND `id` = NEW.`id`"
	live := " FROM `shop`.`order``s` WHERE `region` = NEW.`region` AND `id` = NEW.`id`"
	legacy := "COALESCE(`_mlr_vv`, IF(`_mlr_hlc` = 0, '{}', JSON_OBJECT(CAST(`_mlr_origin` & 0xFFFF AS CHAR), `_mlr_hlc`)))"
	// The metadata of a version written before version vectors.
	oldMeta := "COALESCE(OLD.`_mlr_vv`, IF(OLD.`_mlr_hlc` = 0, '{}', JSON_OBJECT(CAST(OLD.`_mlr_origin` & 0xFFFF AS CHAR), OLD.`_mlr_hlc`)))"
	// A REPLACE of a live row: the stamp its delete gives the tombstone.
	replaced := newer("`_mlr_hlc`", legacy)
	// Only mlproxy's own account (the applier's) skips stamping; a stamp
	// too far ahead of the server's clock is refused.
	const guard = "  _mlr_stamping: BEGIN\n" +
		"    IF @_mlr_apply = 1 THEN\n" +
		"      IF CAST(SUBSTRING_INDEX(USER(), '@', 1) AS BINARY) = CAST('mlproxy' AS BINARY) THEN\n" +
		"        LEAVE _mlr_stamping;\n" +
		"      END IF;\n" +
		"    END IF;\n" +
		"    IF @_mlr_hlc IS NULL THEN\n" +
		"      IF NOW(6) > SYSDATE(6) + INTERVAL 500000 MICROSECOND THEN\n" +
		"        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'mlproxy: this session''s clock (SET timestamp) is more than 500ms ahead of the server''s (clock.max_offset); SET timestamp = DEFAULT';\n" +
		"      END IF;\n" +
		"    ELSEIF CAST(@_mlr_hlc AS UNSIGNED) > ((FLOOR(UNIX_TIMESTAMP(SYSDATE(6))*1000) + 500) << 16) | 0xFFFF THEN\n" +
		"      SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'mlproxy: this write''s stamp is more than 500ms ahead of the server''s clock (clock.max_offset): check the clocks (NTP) of this region''s proxy and server';\n" +
		"    END IF;\n" +
		// A traced statement's first row carries its trace context.
		"    IF @_mlr_tp IS NOT NULL THEN\n" +
		"      INSERT INTO `mlr`.`traces` (traceparent) VALUES (LEFT(@_mlr_tp, 55));\n" +
		"      SET @_mlr_tp = NULL;\n" +
		"    END IF;\n"
	want := []string{
		"CREATE TRIGGER `shop`.`_mlr_bi_order``s` BEFORE INSERT ON `shop`.`order``s` FOR EACH ROW\n" +
			"BEGIN\n" +
			"  DECLARE _mlr_prev_hlc BIGINT UNSIGNED;\n" +
			"  DECLARE _mlr_prev_vv TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;\n" +
			guard +
			"    SET _mlr_prev_vv = (SELECT " + legacy + live + ");\n" +
			"    IF _mlr_prev_vv IS NULL THEN\n" +
			"      SET _mlr_prev_vv = (SELECT " + legacy + where + "),\n" +
			"          _mlr_prev_hlc = IF(_mlr_prev_vv IS NULL, 0, COALESCE((SELECT `_mlr_hlc`" + where + "), 0));\n" +
			"    ELSE\n" +
			"      SET _mlr_prev_hlc = (SELECT " + replaced + live + ");\n" +
			"    END IF;\n" +
			setNewer("    ", "NEW.`_mlr_hlc`", "_mlr_prev_hlc", "COALESCE(_mlr_prev_vv, '{}')") +
			"    SET NEW.`_mlr_origin` = 7,\n" +
			"        NEW.`_mlr_vv` = JSON_COMPACT(JSON_SET(JSON_REMOVE(COALESCE(_mlr_prev_vv, '{}'), '$.m', '$.w'), '$.\"7\"', NEW.`_mlr_hlc`));\n" +
			"  END _mlr_stamping;\n" +
			"END",
		"CREATE TRIGGER `shop`.`_mlr_bu_order``s` BEFORE UPDATE ON `shop`.`order``s` FOR EACH ROW\n" +
			"BEGIN\n" +
			guard +
			"    IF NOT (CAST(NEW.`region` AS BINARY) <=> CAST(OLD.`region` AS BINARY)\n" +
			"        AND NEW.`id` <=> OLD.`id`\n" +
			"        AND CAST(NEW.`note` AS BINARY) <=> CAST(OLD.`note` AS BINARY)\n" +
			"        AND NEW.`total` <=> OLD.`total`) THEN\n" +
			setNewer("      ", "NEW.`_mlr_hlc`", "OLD.`_mlr_hlc`", oldMeta) +
			"      SET NEW.`_mlr_origin` = 7,\n" +
			"          NEW.`_mlr_vv` = JSON_COMPACT(JSON_SET(" + oldMeta + ", '$.\"7\"', NEW.`_mlr_hlc`));\n" +
			// A new primary key: the old key gets its tombstone.
			"      IF NOT (NEW.`region` <=> OLD.`region` AND NEW.`id` <=> OLD.`id`) THEN\n" +
			"        INSERT INTO `mlr`.`shop.order``s` (`region`, `id`, `_mlr_hlc`, `_mlr_origin`, `_mlr_vv`)\n" +
			"        VALUES (OLD.`region`, OLD.`id`, NEW.`_mlr_hlc`, 7, JSON_COMPACT(JSON_SET(" + oldMeta + ", '$.\"7\"', NEW.`_mlr_hlc`)))\n" +
			"        ON DUPLICATE KEY UPDATE `_mlr_hlc` = VALUES(`_mlr_hlc`), `_mlr_origin` = VALUES(`_mlr_origin`), `_mlr_vv` = VALUES(`_mlr_vv`);\n" +
			"      END IF;\n" +
			"    ELSE\n" +
			"      SET NEW.`_mlr_hlc` = OLD.`_mlr_hlc`,\n" +
			"          NEW.`_mlr_origin` = OLD.`_mlr_origin`,\n" +
			"          NEW.`_mlr_vv` = OLD.`_mlr_vv`;\n" +
			"    END IF;\n" +
			"  END _mlr_stamping;\n" +
			"END",
		"CREATE TRIGGER `shop`.`_mlr_ad_order``s` AFTER DELETE ON `shop`.`order``s` FOR EACH ROW\n" +
			"BEGIN\n" +
			"  DECLARE _mlr_stamp BIGINT UNSIGNED;\n" +
			guard +
			setNewer("    ", "_mlr_stamp", "OLD.`_mlr_hlc`", oldMeta) +
			"    INSERT INTO `mlr`.`shop.order``s` (`region`, `id`, `_mlr_hlc`, `_mlr_origin`, `_mlr_vv`)\n" +
			"    VALUES (OLD.`region`, OLD.`id`, _mlr_stamp, 7, JSON_COMPACT(JSON_SET(" + oldMeta + ", '$.\"7\"', _mlr_stamp)))\n" +
			"    ON DUPLICATE KEY UPDATE `_mlr_hlc` = VALUES(`_mlr_hlc`), `_mlr_origin` = VALUES(`_mlr_origin`), `_mlr_vv` = VALUES(`_mlr_vv`);\n" +
			"  END _mlr_stamping;\n" +
			"END",
	}
	for i := range want {
		assert.Contains(t, got[i], "BEGIN\n  "+triggerMarker)
		assert.Equal(t, want[i], stripMarker(got[i]))
	}

	// The marker changes with the body: another region, another column.
	other := GenerateTriggers(tb, Stamping{Region: 8, Applier: "mlproxy"})
	assert.NotEqual(t, got[0], other[0])
	tb.Columns = append(tb.Columns, Column{Name: "extra", DataType: "int", ColumnType: "int(11)"})
	more := GenerateTriggers(tb, Stamping{Region: 7, Applier: "mlproxy"})
	assert.Equal(t, got[0], more[0], "BEFORE INSERT does not depend on the columns")
	assert.NotEqual(t, got[1], more[1], "BEFORE UPDATE compares every user column")
	assert.Equal(t, got[2], more[2], "AFTER DELETE depends on the key only")
}

func TestGenerateTriggersByRule(t *testing.T) {
	gen := func(rule string, cols ...string) []string {
		tb := sampleTable()
		tb.Rule = config.TableRule{Rule: rule, Columns: cols}
		out := GenerateTriggers(tb, Stamping{Region: 7, Applier: "mlproxy"})
		for i := range out {
			out[i] = stripMarker(out[i])
		}
		return out
	}
	lww := gen(config.RuleLWW)
	prio := gen(config.RuleOriginPriority)
	assert.Contains(t, prio[1], "JSON_REMOVE("+"COALESCE(OLD.`_mlr_vv`", "origin-priority: a merged version's own vector is dropped by the next write")
	assert.Equal(t, lww, gen(config.RuleLWW, "total"), "columns matter only to counter, max, min")

	fww := gen(config.RuleFirstWriterWins)
	assert.Contains(t, fww[0], "JSON_INSERT(JSON_SET(JSON_REMOVE(COALESCE(_mlr_prev_vv, '{}'), '$.m', '$.w'), '$.\"7\"', NEW.`_mlr_hlc`), '$.b', JSON_ARRAY(GREATEST(NEW.`_mlr_hlc`, (FLOOR(UNIX_TIMESTAMP(SYSDATE(6))*1000) - 500) << 16), NEW.`_mlr_origin`))",
		"insert: the tombstone's birth, else this version's, never before the server's clock minus the max offset")
	assert.Contains(t, fww[1], "'$.\"7\"', NEW.`_mlr_hlc`), '$.b', JSON_ARRAY(OLD.`_mlr_hlc`, OLD.`_mlr_origin`))", "update: a legacy row's birth is its stamp")
	assert.Contains(t, fww[2], "'$.\"7\"', _mlr_stamp), '$.b', JSON_ARRAY(OLD.`_mlr_hlc`, OLD.`_mlr_origin`))")

	counter := gen(config.RuleCounter, "TOTAL", "total")
	assert.Equal(t, lww[0], counter[0])
	assert.Contains(t, counter[1], "'$.\"7\"', NEW.`_mlr_hlc`), '$.m', JSON_OBJECT('total', OLD.`total`))",
		"a moved row's old key keeps them too")
	assert.Contains(t, counter[2], "'$.\"7\"', _mlr_stamp), '$.m', JSON_OBJECT('total', OLD.`total`))",
		"the tombstone keeps the merged columns' values, as the table spells them, once")

	mx := gen(config.RuleMax, "total", "note")
	assert.Contains(t, mx[0], "    SET NEW.`total` = COALESCE(GREATEST(NEW.`total`, CAST(JSON_VALUE(_mlr_prev_vv, '$.m.\"total\"') AS SIGNED)), NEW.`total`, CAST(JSON_VALUE(_mlr_prev_vv, '$.m.\"total\"') AS SIGNED));\n")
	assert.Contains(t, mx[0], "CONVERT(JSON_VALUE(_mlr_prev_vv, '$.m.\"note\"') USING utf8mb4) COLLATE utf8mb4_general_ci")
	assert.Contains(t, mx[1], "    END IF;\n    SET NEW.`total` = COALESCE(GREATEST(NEW.`total`, OLD.`total`), NEW.`total`, OLD.`total`);\n",
		"the clamp comes before the changed check")
	assert.Contains(t, mx[2], "'$.m', JSON_OBJECT('total', OLD.`total`, 'note', OLD.`note`))")

	mn := gen(config.RuleMin, "total")
	assert.Contains(t, mn[0], "    SET NEW.`total` = IF(JSON_CONTAINS_PATH(_mlr_prev_vv, 'one', '$.m.\"total\"'), LEAST(NEW.`total`, CAST(JSON_VALUE(_mlr_prev_vv, '$.m.\"total\"') AS SIGNED)), NEW.`total`);\n")
	assert.Contains(t, mn[1], "    SET NEW.`total` = LEAST(NEW.`total`, OLD.`total`);\n")

	tb := sampleTable()
	tb.Rule = config.TableRule{Rule: config.RuleMax, Columns: []string{"nosuch"}}
	_, err := tb.ruleColumns()
	assert.ErrorContains(t, err, `rule max names column "nosuch"`)
	tb.Rule.Columns = []string{"twice"}
	_, err = tb.ruleColumns()
	assert.Error(t, err, "a generated column cannot be merged")
}

func TestCastType(t *testing.T) {
	for _, tc := range []struct {
		c    Column
		want string
	}{
		{Column{DataType: "int", ColumnType: "int(11)"}, "SIGNED"},
		{Column{DataType: "bigint", ColumnType: "bigint(20) unsigned", Unsigned: true}, "UNSIGNED"},
		{Column{DataType: "decimal", ColumnType: "decimal(12,3) unsigned", Unsigned: true}, "DECIMAL(12,3)"},
		{Column{DataType: "double", ColumnType: "double"}, "DOUBLE"},
		{Column{DataType: "float", ColumnType: "float"}, "DOUBLE"},
		{Column{DataType: "date", ColumnType: "date"}, "DATE"},
		{Column{DataType: "datetime", ColumnType: "datetime(6)"}, "DATETIME(6)"},
		{Column{DataType: "timestamp", ColumnType: "timestamp"}, "DATETIME"},
		{Column{DataType: "time", ColumnType: "time(3)"}, "TIME(3)"},
		{Column{DataType: "varchar", ColumnType: "varchar(10)", Charset: "latin1"}, "CHAR"},
		{Column{DataType: "varbinary", ColumnType: "varbinary(10)"}, "BINARY"},
	} {
		assert.Equal(t, tc.want, tc.c.castType(), tc.c.ColumnType)
	}
}

func TestSameBody(t *testing.T) {
	assert.True(t, sameBody("BEGIN\n  SET a = 1;\nEND", "BEGIN SET a = 1;   END"))
	assert.False(t, sameBody("BEGIN SET a = 1; END", "BEGIN SET a = 2; END"))
}

func TestCrossProblems(t *testing.T) {
	sv := func(name string, id, inc, off string) serverVars {
		return serverVars{name: name, vars: map[string]string{"server_id": id, "gtid_domain_id": id,
			"auto_increment_increment": inc, "auto_increment_offset": off}}
	}
	assert.Empty(t, crossProblems([]serverVars{sv("a", "1", "2", "1"), sv("b", "2", "2", "2")}, 2))
	// 4 and 6 share a factor 2: offsets 1 and 3 are both odd, so both
	// sequences hold 7, 13, ...
	ps := crossProblems([]serverVars{sv("a", "1", "4", "1"), sv("b", "2", "6", "3")}, 2)
	if assert.Len(t, ps, 1) {
		assert.Contains(t, ps[0].Message, "generate the same ids")
	}
	assert.Empty(t, crossProblems([]serverVars{sv("a", "1", "4", "1"), sv("b", "2", "6", "2")}, 2))
	ps = crossProblems([]serverVars{sv("a", "5", "2", "1"), sv("b", "5", "2", "2")}, 2)
	if assert.Len(t, ps, 2) {
		assert.Equal(t, Error, ps[0].Severity)
		assert.Contains(t, ps[0].Message, "server_id 5")
		assert.Equal(t, Warning, ps[1].Severity)
	}
}
