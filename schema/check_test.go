package schema

import (
	"context"
	"database/sql"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/config"
)

// findProblem asserts one problem at where whose message holds substr, and
// returns the problems without it.
func findProblem(t *testing.T, ps []Problem, sev Severity, where, substr string) []Problem {
	t.Helper()
	for i, p := range ps {
		if p.Where == where && strings.Contains(p.Message, substr) {
			assert.Equal(t, sev, p.Severity, p.String())
			return append(ps[:i:i], ps[i+1:]...)
		}
	}
	t.Errorf("no problem at %q containing %q in:\n%s", where, substr, problemList(ps))
	return ps
}

func problemList(ps []Problem) string {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString(p.String() + "\n")
	}
	return b.String()
}

func TestCheckClean(t *testing.T) {
	mustExec(t, dbA, "CREATE DATABASE clean", "CREATE TABLE clean.t (id INT PRIMARY KEY, v TEXT)")
	rules := []config.TableRule{{Schema: "clean", Table: "*"}}
	_, _, err := applyTables(t, rules, region)
	require.NoError(t, err)
	ps, err := Check(context.Background(), dbA, nil, rules, Stamping{Region: region})
	require.NoError(t, err)
	assert.Empty(t, ps, problemList(ps))
}

func TestCheckFindsEveryProblem(t *testing.T) {
	ctx := context.Background()
	mustExec(t, dbA,
		"CREATE DATABASE chk",
		"CREATE TABLE chk.nopk (a INT)",
		"CREATE TABLE chk.bare (id INT PRIMARY KEY)",
		"CREATE TABLE chk.vis (id INT PRIMARY KEY)",
		"CREATE TABLE chk.stale (id INT PRIMARY KEY)",
		"CREATE TABLE chk.gone (id INT PRIMARY KEY)",
	)
	_, _, err := applyTables(t, []config.TableRule{{Schema: "chk", Table: "vis"}, {Schema: "chk", Table: "gone"}}, region)
	require.NoError(t, err)
	_, _, err = applyTables(t, []config.TableRule{{Schema: "chk", Table: "stale"}}, region+1)
	require.NoError(t, err)
	mustExec(t, dbA,
		"ALTER TABLE chk.vis MODIFY COLUMN _mlr_hlc BIGINT UNSIGNED NOT NULL DEFAULT 0",
		"DROP TRIGGER chk._mlr_ad_gone",
		"DROP TABLE mlr.`chk.gone`",
	)
	rules := []config.TableRule{{Schema: "chk", Table: "*"}, {Schema: "chk", Table: "ghost"}}

	// Two regions: A (offset 1) and B (offset 3), both increment 2.
	ps, err := Check(ctx, dbA, map[string]*sql.DB{"peerB": dbB}, rules, Stamping{Region: region})
	require.NoError(t, err)
	t.Logf("problems:\n%s", problemList(ps))
	ps = findProblem(t, ps, Error, "peerB", "log_bin is OFF")
	ps = findProblem(t, ps, Error, "peerB", "binlog_format is STATEMENT")
	ps = findProblem(t, ps, Error, "peerB", "binlog_row_image is MINIMAL")
	ps = findProblem(t, ps, Error, "peerB", "binlog_row_metadata is NO_LOG")
	ps = findProblem(t, ps, Error, Local, "server_id 4101 is also the server_id of peerB")
	ps = findProblem(t, ps, Warning, Local, "gtid_domain_id 4101")
	ps = findProblem(t, ps, Error, Local, "generate the same ids")
	ps = findProblem(t, ps, Error, "chk.ghost", "no such base table")
	ps = findProblem(t, ps, Error, "chk.nopk", "no primary key")
	ps = findProblem(t, ps, Error, "chk.nopk", "_mlr_origin is missing")
	ps = findProblem(t, ps, Error, "chk.nopk", "_mlr_hlc is missing")
	ps = findProblem(t, ps, Error, "chk.nopk", "_mlr_vv is missing")
	ps = findProblem(t, ps, Error, "chk.bare", "_mlr_origin is missing")
	ps = findProblem(t, ps, Error, "chk.bare", "_mlr_hlc is missing")
	ps = findProblem(t, ps, Error, "chk.bare", "_mlr_vv is missing")
	ps = findProblem(t, ps, Error, "chk.bare", "tombstone table mlr.chk.bare is missing")
	ps = findProblem(t, ps, Error, "chk.bare", "_mlr_bi_bare (BEFORE INSERT) is missing")
	ps = findProblem(t, ps, Error, "chk.bare", "_mlr_bu_bare (BEFORE UPDATE) is missing")
	ps = findProblem(t, ps, Error, "chk.bare", "_mlr_ad_bare (AFTER DELETE) is missing")
	ps = findProblem(t, ps, Error, "chk.vis", "_mlr_hlc is visible")
	ps = findProblem(t, ps, Error, "chk.stale", "trigger _mlr_bi_stale is stale")
	ps = findProblem(t, ps, Error, "chk.stale", "trigger _mlr_bu_stale is stale")
	ps = findProblem(t, ps, Error, "chk.stale", "trigger _mlr_ad_stale is stale")
	ps = findProblem(t, ps, Error, "chk.gone", "_mlr_ad_gone (AFTER DELETE) is missing")
	ps = findProblem(t, ps, Error, "chk.gone", "tombstone table mlr.chk.gone is missing")
	assert.Empty(t, ps, "unexpected problems")

	// Three regions, one unreachable: increment 2 is too small everywhere,
	// and the missing peer is named rather than crashing the check.
	closed, err := srvB.Open("")
	require.NoError(t, err)
	closed.Close() // a *sql.DB that fails every query
	ps, err = Check(ctx, dbA, map[string]*sql.DB{"peerB": dbB, "down": nil, "closed": closed}, nil, Stamping{Region: region})
	require.NoError(t, err)
	t.Logf("problems:\n%s", problemList(ps))
	ps = findProblem(t, ps, Error, "down", "no connection")
	ps = findProblem(t, ps, Error, "closed", "cannot read server settings")
	ps = findProblem(t, ps, Error, Local, "auto_increment_increment is 2 but there are 4 regions")
	ps = findProblem(t, ps, Error, "peerB", "auto_increment_increment is 2 but there are 4 regions")
	for _, p := range ps {
		assert.NotContains(t, p.Message, "generate the same ids", "already said by the increment problem")
	}

	// Apply fixes everything on the local tables that has a fix there.
	_, _, err = applyTables(t, []config.TableRule{{Schema: "chk", Table: "*"}}, region)
	assert.ErrorIs(t, err, ErrNoPrimaryKey)
	ps, err = Check(ctx, dbA, nil, []config.TableRule{{Schema: "chk", Table: "*"}}, Stamping{Region: region})
	require.NoError(t, err)
	for _, p := range ps {
		assert.Equal(t, "chk.nopk", p.Where, p.String())
	}
}

// TestCheckRiskyAccounts: accounts that could escape replication (drop
// the triggers, switch binary logging off, write mlproxy's state) are
// named, each with the REVOKE that fixes it; mlproxy's own is not.
func TestCheckRiskyAccounts(t *testing.T) {
	mustExec(t, dbA,
		"CREATE DATABASE risky",
		"CREATE TABLE risky.t (id INT PRIMARY KEY)",
		"CREATE USER IF NOT EXISTS 'tricky'@'%'",
		"GRANT SELECT, INSERT, TRIGGER ON risky.* TO 'tricky'@'%'",
		"GRANT BINLOG ADMIN ON *.* TO 'tricky'@'%'",
		"GRANT SELECT ON mlr.* TO 'tricky'@'%'",
		"GRANT DROP ON risky.* TO 'tricky'@'%'",
		"GRANT ALTER ON risky.t TO 'tricky'@'%'",
		"GRANT CREATE USER ON *.* TO 'tricky'@'%'",
		"CREATE USER IF NOT EXISTS ''@'nowhere.invalid'",
	)
	t.Cleanup(func() {
		mustExec(t, dbA, "DROP USER IF EXISTS 'tricky'@'%'", "DROP USER IF EXISTS ''@'nowhere.invalid'")
	})
	rules := []config.TableRule{{Schema: "risky", Table: "*"}}
	_, _, err := applyTables(t, rules, region)
	require.NoError(t, err)
	ps, err := Check(context.Background(), dbA, nil, rules, Stamping{Region: region})
	require.NoError(t, err)
	var got []string
	for _, p := range ps {
		if strings.Contains(p.Where, "tricky") {
			assert.Equal(t, Warning, p.Severity)
			got = append(got, p.Message)
		}
		assert.NotContains(t, p.Where, "'root'@'localhost'", "mlproxy's own account (root in tests) is not reported")
	}
	all := strings.Join(got, "\n")
	assert.Contains(t, all, "REVOKE TRIGGER ON `risky`.* FROM 'tricky'@'%'")
	assert.Contains(t, all, "REVOKE BINLOG ADMIN ON *.* FROM 'tricky'@'%'")
	assert.Contains(t, all, "REVOKE SELECT ON `mlr`.* FROM 'tricky'@'%'")
	assert.Contains(t, all, "REVOKE DROP ON `risky`.* FROM 'tricky'@'%'", "DDL rights on a replicated schema allow a RENAME swap past the triggers")
	assert.Contains(t, all, "REVOKE ALTER ON `risky`.`t` FROM 'tricky'@'%'", "table-level grants count too")
	assert.Contains(t, all, "REVOKE CREATE USER ON *.* FROM 'tricky'@'%'")
	anonymous := false
	for _, p := range ps {
		if strings.Contains(p.Where, "''@'nowhere.invalid'") {
			anonymous = true
			assert.Contains(t, p.Message, "DROP USER ''@'nowhere.invalid'")
		}
	}
	assert.True(t, anonymous, "the anonymous account is reported")
}

func TestCheckUniqueKeys(t *testing.T) {
	mustExec(t, dbA,
		"CREATE DATABASE uk",
		"CREATE TABLE uk.users (id INT PRIMARY KEY, email VARCHAR(64) NOT NULL, org INT, nick VARCHAR(16), UNIQUE KEY email (email), UNIQUE KEY org_nick (org, nick))",
		"CREATE TABLE uk.plain (id INT PRIMARY KEY, v INT, KEY v (v))",
	)
	rules := []config.TableRule{{Schema: "uk", Table: "*"}, {Schema: "uk", Table: "users", OnConstraint: "log"}}
	_, _, err := applyTables(t, rules, region)
	require.NoError(t, err)
	ps, err := Check(context.Background(), dbA, nil, rules, Stamping{Region: region})
	require.NoError(t, err)
	var got []string
	for _, p := range ps {
		if strings.Contains(p.Message, "can collide across regions") {
			assert.Equal(t, Warning, p.Severity)
			got = append(got, p.Where+": "+p.Message[:strings.Index(p.Message, ":")])
			assert.Contains(t, p.Message, "on_constraint is log")
		}
	}
	assert.Equal(t, []string{"uk.users: unique key email (email) can collide across regions", "uk.users: unique key org_nick (org,nick) can collide across regions"}, got)
}

func TestGrantCovers(t *testing.T) {
	replicated := map[string]bool{"app": true, "shop_eu": true}
	for pattern, want := range map[string]bool{
		"app": true, "APP": true, "ap%": true, "a_p": true, "%": true,
		`shop\_eu`: true, "shop_eu": true, `shop\_%`: true,
		"other": false, `ap\%`: false, "app_x": false, "shop": false,
	} {
		if got := grantCovers(pattern, replicated); got != want {
			t.Errorf("grantCovers(%q) = %v, want %v", pattern, got, want)
		}
	}
}
