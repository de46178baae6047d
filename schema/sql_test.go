package schema

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
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
		},
		PK: []string{"region", "id"},
	}
}

func TestSQLHelpers(t *testing.T) {
	tb := sampleTable()
	for _, tc := range []struct{ name, got, want string }{
		{"SelectVersionSQL", tb.SelectVersionSQL(),
			"SELECT `region`, `id`, `note`, `total`, `_mlr_hlc`, `_mlr_origin` FROM `shop`.`order``s` WHERE `region` = ? AND `id` = ? FOR UPDATE"},
		{"SelectTombstoneSQL", tb.SelectTombstoneSQL(),
			"SELECT `_mlr_hlc`, `_mlr_origin` FROM `mlr`.`shop.order``s` WHERE `region` = ? AND `id` = ? FOR UPDATE"},
		{"UpsertTombstoneSQL", tb.UpsertTombstoneSQL(),
			"INSERT INTO `mlr`.`shop.order``s` (`region`, `id`, `_mlr_hlc`, `_mlr_origin`) VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE `_mlr_hlc` = VALUES(`_mlr_hlc`), `_mlr_origin` = VALUES(`_mlr_origin`)"},
		{"DeleteTombstoneSQL", tb.DeleteTombstoneSQL(),
			"DELETE FROM `mlr`.`shop.order``s` WHERE `region` = ? AND `id` = ?"},
		{"InsertSQL", tb.InsertSQL(),
			"INSERT INTO `shop`.`order``s` (`region`, `id`, `note`, `total`, `_mlr_hlc`, `_mlr_origin`) VALUES (?, ?, ?, ?, ?, ?)"},
		{"ReplaceSQL", tb.ReplaceSQL(),
			"REPLACE INTO `shop`.`order``s` (`region`, `id`, `note`, `total`, `_mlr_hlc`, `_mlr_origin`) VALUES (?, ?, ?, ?, ?, ?)"},
		{"UpdateByPKSQL", tb.UpdateByPKSQL(),
			"UPDATE `shop`.`order``s` SET `region` = ?, `id` = ?, `note` = ?, `total` = ?, `_mlr_hlc` = ?, `_mlr_origin` = ? WHERE `region` = ? AND `id` = ?"},
		{"DeleteByPKSQL", tb.DeleteByPKSQL(),
			"DELETE FROM `shop`.`order``s` WHERE `region` = ? AND `id` = ?"},
		{"GCTombstonesSQL", tb.GCTombstonesSQL(),
			"DELETE FROM `mlr`.`shop.order``s` WHERE `_mlr_hlc` < ? LIMIT ?"},
		{"CreateTombstoneSQL", tb.CreateTombstoneSQL(), "CREATE TABLE `mlr`.`shop.order``s` (\n" +
			"  `region` varchar(8) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NOT NULL,\n" +
			"  `id` bigint(20) unsigned NOT NULL,\n" +
			"  `_mlr_hlc` BIGINT UNSIGNED NOT NULL,\n" +
			"  `_mlr_origin` SMALLINT UNSIGNED NOT NULL,\n" +
			"  PRIMARY KEY (`region`, `id`),\n" +
			"  KEY `_mlr_hlc` (`_mlr_hlc`)\n" +
			") ENGINE=InnoDB"},
	} {
		assert.Equal(t, tc.want, tc.got, tc.name)
	}
}

func TestGenerateTriggers(t *testing.T) {
	tb := sampleTable()
	got := GenerateTriggers(tb, 7)
	if len(got) != 3 {
		t.Fatalf("got %d triggers, want 3", len(got))
	}
	// Strip the version marker (a hash of the body) before comparing.
	strip := func(s string) string {
		i := strings.Index(s, "  "+triggerMarker)
		j := strings.Index(s[i:], "*/\n")
		return s[:i] + s[i+j+3:]
	}
	const bypass = "(FLOOR(UNIX_TIMESTAMP(NOW(6))*1000) << 16) | 0x8000 | (MICROSECOND(NOW(6)) % 1000)"
	// Every new version is stamped above the one it replaces: the old row
	// (update, delete) or the key's tombstone (insert).
	after := "IF(@_mlr_hlc IS NULL, GREATEST(" + bypass + ", (OLD.`_mlr_hlc` + 1) | 0x8000), GREATEST(@_mlr_hlc, OLD.`_mlr_hlc` + 1))"
	tomb := "COALESCE((SELECT `_mlr_hlc` FROM `mlr`.`shop.order``s` WHERE `region` = NEW.`region` AND `id` = NEW.`id`), 0)"
	inserted := "IF(@_mlr_hlc IS NULL, GREATEST(" + bypass + ", (" + tomb + " + 1) | 0x8000), GREATEST(@_mlr_hlc, " + tomb + " + 1))"
	want := []string{
		"CREATE TRIGGER `shop`.`_mlr_bi_order``s` BEFORE INSERT ON `shop`.`order``s` FOR EACH ROW\n" +
			"BEGIN\n" +
			"  IF COALESCE(@_mlr_apply, 0) = 0 THEN\n" +
			"    SET NEW.`_mlr_hlc` = " + inserted + ",\n" +
			"        NEW.`_mlr_origin` = COALESCE(@_mlr_origin, 7);\n" +
			"  END IF;\n" +
			"END",
		"CREATE TRIGGER `shop`.`_mlr_bu_order``s` BEFORE UPDATE ON `shop`.`order``s` FOR EACH ROW\n" +
			"BEGIN\n" +
			"  IF COALESCE(@_mlr_apply, 0) = 0 AND NOT (CAST(NEW.`region` AS BINARY) <=> CAST(OLD.`region` AS BINARY)\n" +
			"      AND NEW.`id` <=> OLD.`id`\n" +
			"      AND CAST(NEW.`note` AS BINARY) <=> CAST(OLD.`note` AS BINARY)\n" +
			"      AND NEW.`total` <=> OLD.`total`) THEN\n" +
			"    SET NEW.`_mlr_hlc` = " + after + ",\n" +
			"        NEW.`_mlr_origin` = COALESCE(@_mlr_origin, 7);\n" +
			"  END IF;\n" +
			"END",
		"CREATE TRIGGER `shop`.`_mlr_ad_order``s` AFTER DELETE ON `shop`.`order``s` FOR EACH ROW\n" +
			"BEGIN\n" +
			"  IF COALESCE(@_mlr_apply, 0) = 0 THEN\n" +
			"    INSERT INTO `mlr`.`shop.order``s` (`region`, `id`, `_mlr_hlc`, `_mlr_origin`)\n" +
			"    VALUES (OLD.`region`, OLD.`id`, " + after + ", COALESCE(@_mlr_origin, 7))\n" +
			"    ON DUPLICATE KEY UPDATE `_mlr_hlc` = VALUES(`_mlr_hlc`), `_mlr_origin` = VALUES(`_mlr_origin`);\n" +
			"  END IF;\n" +
			"END",
	}
	for i := range want {
		assert.Contains(t, got[i], "BEGIN\n  "+triggerMarker)
		assert.Equal(t, want[i], strip(got[i]))
	}

	// The marker changes with the body: another region, another column.
	other := GenerateTriggers(tb, 8)
	assert.NotEqual(t, got[0], other[0])
	tb.Columns = append(tb.Columns, Column{Name: "extra", DataType: "int", ColumnType: "int(11)"})
	more := GenerateTriggers(tb, 7)
	assert.Equal(t, got[0], more[0], "BEFORE INSERT does not depend on the columns")
	assert.NotEqual(t, got[1], more[1], "BEFORE UPDATE compares every user column")
	assert.Equal(t, got[2], more[2], "AFTER DELETE depends on the key only")
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
