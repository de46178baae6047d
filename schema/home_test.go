package schema

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/home"
)

// homeDeployment is three regions; this server is region 1 (us).
func homeDeployment() *config.Config {
	return &config.Config{
		Region: config.Region{Name: "us", ID: 1},
		Peers: []config.Peer{
			{Name: "eu", ID: 2, Proxy: "eu.example:6033"},
			{Name: "ap", ID: 3},
		},
	}
}

func i64p(n int64) *int64 { return &n }

// TestHomeSQLMatchesGo checks that the server computes every key's home
// exactly as the proxy does, for each kind of mapping, on integer and text
// columns (the triggers and the proxy must never disagree).
func TestHomeSQLMatchesGo(t *testing.T) {
	mustExec(t, dbA, "CREATE DATABASE homesql",
		"CREATE TABLE homesql.k (id INT PRIMARY KEY, n BIGINT NULL, s VARCHAR(64) CHARACTER SET utf8mb4 NULL)")
	rng := rand.New(rand.NewPCG(7, 11))
	var ints, texts []string
	for i := range 400 {
		ints = append(ints, strconv.FormatInt(rng.Int64N(4000)-500, 10))
		texts = append(texts, fmt.Sprintf("%c%c%d", "uw9xé"[rng.IntN(4)], 'a'+rune(rng.IntN(26)), i))
	}
	ints = append(ints, "0", "100", "101", "-9223372036854775808", "9223372036854775807")
	texts = append(texts, "", "7", "vip", "VIP", "é", "+5", "1234567890123456789", "u4")
	for i := range max(len(ints), len(texts)) {
		var n, s any
		if i < len(ints) {
			n = ints[i]
		}
		if i < len(texts) {
			s = texts[i]
		}
		_, err := dbA.Exec("INSERT INTO homesql.k VALUES (?, ?, ?)", i, n, s)
		require.NoError(t, err)
	}
	_, err := dbA.Exec("INSERT INTO homesql.k VALUES (100000, NULL, NULL)")
	require.NoError(t, err)

	for name, h := range map[string]config.Home{
		"list": {Column: "x", List: []config.HomeEntry{
			{Region: "us", From: i64p(1), To: i64p(100)},
			{Region: "eu", From: i64p(101), To: i64p(2000)},
			{Region: "ap", Values: []string{"7", "vip", "-3", "é"}},
		}},
		"hash":   {Column: "x", Hash: []string{"us", "eu", "ap"}},
		"prefix": {Column: "x", Prefixes: []config.HomeEntry{{Region: "eu", Prefix: "u"}, {Region: "us", Prefix: "u4"}, {Region: "ap", Prefix: "é"}}},
	} {
		t.Run(name, func(t *testing.T) {
			m, err := home.New("t", h, homeDeployment())
			require.NoError(t, err)
			q := fmt.Sprintf("SELECT id, n, s, %s, %s FROM homesql.k", m.SQL("n"), m.SQL("s"))
			rows, err := dbA.Query(q)
			require.NoError(t, err, q)
			defer rows.Close()
			seen := 0
			for rows.Next() {
				var id int
				var n, s sql.NullString
				var hn, hs uint16
				require.NoError(t, rows.Scan(&id, &n, &s, &hn, &hs))
				for _, c := range []struct {
					key  sql.NullString
					home uint16
				}{{n, hn}, {s, hs}} {
					want := uint16(0)
					if c.key.Valid {
						want = m.Of(c.key.String)
					}
					if c.home != want {
						t.Errorf("key %q: the server homes it in %d, the proxy in %d", c.key.String, c.home, want)
					}
				}
				seen++
			}
			require.NoError(t, rows.Err())
			assert.Equal(t, max(len(ints), len(texts))+1, seen)
		})
	}
}

// TestHomeTriggersRefuseWritesHomedElsewhere: a session writing straight
// to the server (as a procedure the proxy cannot see would) cannot insert,
// update or delete a row homed in another region, nor move a row there;
// keys homed here or nowhere are written; the applier writes anything.
func TestHomeTriggersRefuseWritesHomedElsewhere(t *testing.T) {
	ctx := context.Background()
	mustExec(t, dbA, "CREATE DATABASE homed",
		"CREATE TABLE homed.users (user_id INT PRIMARY KEY, name VARCHAR(20))",
		"CREATE USER IF NOT EXISTS homeapp@'%' IDENTIFIED BY 'pw'",
		"GRANT ALL ON homed.* TO homeapp@'%'")
	rule := config.TableRule{Schema: "homed", Table: "users", Rule: config.RuleLWW, Home: &config.Home{
		Column: "user_id", Elsewhere: config.HomeReject, Unknown: config.HomeAllow,
		List: []config.HomeEntry{{Region: "us", From: i64p(1), To: i64p(100)}, {Region: "eu", From: i64p(101), To: i64p(200)}},
	}}
	tables, err := Inspect(ctx, dbA, []config.TableRule{rule})
	require.NoError(t, err)
	_, err = Apply(ctx, dbA, Stamping{Region: 1}, tables, zaptest.NewLogger(t))
	require.Error(t, err, "a home mapping needs the deployment's regions")
	_, err = Apply(ctx, dbA, Stamping{Region: 1, Deployment: homeDeployment()}, tables, zaptest.NewLogger(t))
	require.NoError(t, err)

	// The applier (this connection's account, with its flag) writes a row
	// homed in eu, as it does when it applies eu's writes.
	conn, err := dbA.Conn(ctx)
	require.NoError(t, err)
	mustExec(t, conn, "SET @_mlr_apply = 1", "INSERT INTO homed.users VALUES (150, 'from eu')", "SET @_mlr_apply = NULL")
	conn.Close()

	mc := mysql.NewConfig()
	mc.User, mc.Passwd, mc.Net, mc.Addr, mc.DBName = "homeapp", "pw", "tcp", srvA.Addr(), "homed"
	app, err := sql.Open("mysql", mc.FormatDSN())
	require.NoError(t, err)
	defer app.Close()
	refused := func(stmt string) {
		t.Helper()
		_, err := app.Exec(stmt)
		var me *mysql.MySQLError
		require.ErrorAs(t, err, &me, stmt)
		assert.Equal(t, uint16(1644), me.Number, stmt)
		assert.Contains(t, me.Message, "homed in region eu", stmt)
		assert.Contains(t, me.Message, "eu.example:6033", stmt)
	}
	_, err = app.Exec("INSERT INTO users VALUES (5, 'here'), (500, 'nowhere')")
	require.NoError(t, err, "keys homed here and keys without a home are written")
	refused("INSERT INTO users VALUES (6, 'here'), (120, 'eu')")
	refused("UPDATE users SET name = 'x' WHERE user_id = 150")
	refused("DELETE FROM users WHERE user_id = 150")
	refused("UPDATE users SET user_id = 101 WHERE user_id = 5")
	refused("REPLACE INTO users VALUES (150, 'taken')")

	var n int
	require.NoError(t, app.QueryRow("SELECT COUNT(*) FROM users").Scan(&n))
	assert.Equal(t, 3, n, "nothing a refused statement wrote is left")
	var name string
	require.NoError(t, app.QueryRow("SELECT name FROM users WHERE user_id = 150").Scan(&name))
	assert.Equal(t, "from eu", name)
	_, err = app.Exec("UPDATE users SET name = 'moved' WHERE user_id = 5")
	require.NoError(t, err)
}
