package proxy

import (
	"database/sql"
	"encoding/binary"
	"testing"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/home"
)

// homedSet is a tableSet whose entries may have a home mapping.
type homedSet struct {
	tableSet
	maps map[string]*home.Map
}

func (h homedSet) Home(schema, table string) *home.Map { return h.maps[schema+"."+table] }

func i64(n int64) *int64 { return &n }

// startHomed starts a proxy (region testRegion, "here") in front of
// app.homed, whose users 1..100 are homed here and 101..200 in eu.
func startHomed(t *testing.T, elsewhere, unknown string) (*testProxy, *home.Map) {
	t.Helper()
	cfg := &config.Config{Region: config.Region{Name: "here", ID: testRegion},
		Peers: []config.Peer{{Name: "eu", ID: 2, Proxy: "eu.example:6033"}}}
	m, err := home.New("app.homed", config.Home{Column: "user_id", Elsewhere: elsewhere, Unknown: unknown, List: []config.HomeEntry{
		{Region: "here", From: i64(1), To: i64(100)}, {Region: "eu", From: i64(101), To: i64(200)},
	}}, cfg)
	require.NoError(t, err)
	mustExec(t, direct, "CREATE TABLE IF NOT EXISTS app.homed (user_id INT PRIMARY KEY, name VARCHAR(20))")
	mustExec(t, direct, "DELETE FROM app.homed")
	t.Cleanup(func() { _, _ = direct.Exec("DROP TABLE IF EXISTS app.homed") })
	p := startProxyTables(t, homedSet{tableSet{"app.homed": true}, map[string]*home.Map{"app.homed": m}}, nil)
	return p, m
}

func isHomeRefusal(t *testing.T, err error, what string) {
	t.Helper()
	var me *mysql.MySQLError
	require.ErrorAs(t, err, &me, what)
	assert.Equal(t, uint16(erSignal), me.Number, what)
	assert.Equal(t, "45000", string(me.SQLState[:]), what)
	assert.Contains(t, me.Message, "homed in region eu (proxy eu.example:6033)", what)
}

func homedCount(t *testing.T, p *testProxy, outcome string) float64 {
	return testutil.ToFloat64(p.m.homed.WithLabelValues("app.homed", outcome))
}

func TestHomeRejectsWritesHomedElsewhere(t *testing.T) {
	p, _ := startHomed(t, config.HomeReject, config.HomeAllow)
	db := p.open(t, "app")
	ok := func(q string, args ...any) {
		t.Helper()
		_, err := db.Exec(q, args...)
		require.NoError(t, err, q)
	}
	no := func(q string, args ...any) {
		t.Helper()
		_, err := db.Exec(q, args...)
		isHomeRefusal(t, err, q)
	}
	// Text protocol.
	ok("INSERT INTO homed (user_id, name) VALUES (5, 'a'), (-3, 'nowhere'), (500, 'nowhere')")
	no("INSERT INTO homed (user_id, name) VALUES (6, 'b'), (150, 'eu')")
	no("INSERT INTO app.homed SET name = 'c', user_id = '120'")
	no("REPLACE INTO homed (name, user_id) VALUES ('d', 101)")
	no("UPDATE homed SET name = 'x' WHERE user_id = 150")
	no("UPDATE homed SET name = 'x' WHERE (name = 'a' AND user_id IN (5, 199))")
	no("UPDATE homed SET user_id = 150 WHERE user_id = 5")
	no("DELETE FROM homed WHERE 150 = user_id")
	no("/*!40101 DELETE FROM homed WHERE user_id = 150 */")
	ok("UPDATE homed SET name = 'y' WHERE user_id = 5 AND name = 'a'")
	ok("DELETE FROM homed WHERE user_id = -3")
	assert.Equal(t, float64(8), homedCount(t, p, homeRefused))
	// Keys the statement does not show: sent on (the triggers check).
	ok("UPDATE homed SET name = 'z' WHERE name = 'nowhere'")
	ok("INSERT INTO homed (user_id, name) SELECT user_id + 1000, name FROM homed WHERE user_id = 5")
	assert.Equal(t, float64(2), homedCount(t, p, homeUnknown))

	// Prepared statements: the keys are parameters.
	no("INSERT INTO homed (user_id, name) VALUES (?, ?)", 150, "p")
	no("INSERT INTO homed (user_id, name) VALUES (?, ?)", "150", "p")
	no("UPDATE homed SET name = ? WHERE user_id = ?", "p", int64(200))
	no("DELETE FROM homed WHERE user_id IN (?, ?)", 5, uint64(101))
	ok("INSERT INTO homed (user_id, name) VALUES (?, ?)", 7, "p")
	ok("UPDATE homed SET name = ? WHERE user_id = ?", "q", 7)
	_, err := db.Exec("INSERT INTO homed (user_id, name) VALUES (?, ?)", nil, "null key")
	var me *mysql.MySQLError
	require.ErrorAs(t, err, &me)
	assert.Equal(t, uint16(1048), me.Number, "a NULL key has no home: the server, not the home check, refuses it")
	var n int
	require.NoError(t, direct.QueryRow("SELECT COUNT(*) FROM app.homed WHERE user_id BETWEEN 101 AND 200").Scan(&n))
	assert.Zero(t, n, "a refused write wrote nothing")

	// One prepared statement executed again with other keys.
	var st *sql.Stmt
	st, err = db.Prepare("INSERT INTO homed (user_id, name) VALUES (?, 'again')")
	require.NoError(t, err)
	defer st.Close()
	_, err = st.Exec(8)
	require.NoError(t, err)
	_, err = st.Exec(180)
	isHomeRefusal(t, err, "second execute")
	_, err = st.Exec(9)
	require.NoError(t, err)
}

func TestHomeUnknownRejectAndElsewhereAllow(t *testing.T) {
	p, _ := startHomed(t, config.HomeAllow, config.HomeReject)
	db := p.open(t, "app")
	_, err := db.Exec("INSERT INTO homed (user_id, name) VALUES (150, 'misrouted')")
	require.NoError(t, err, "elsewhere: allow writes here")
	assert.Equal(t, float64(1), homedCount(t, p, homeMisrouted))
	_, err = db.Exec("UPDATE homed SET name = 'x' WHERE name = 'misrouted'")
	var me *mysql.MySQLError
	require.ErrorAs(t, err, &me)
	assert.Contains(t, me.Message, "does not show which region homes the rows it writes in app.homed")
	assert.Equal(t, float64(1), homedCount(t, p, homeUnknownRefused))
	var name string
	require.NoError(t, direct.QueryRow("SELECT name FROM app.homed WHERE user_id = 150").Scan(&name))
	assert.Equal(t, "misrouted", name)
}

// TestExecParams reads parameters as a key: integers of every width,
// signed and not, strings, NULL, and types sent only on the first execute.
func TestExecParams(t *testing.T) {
	pkt := []byte{0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0}
	pkt = append(pkt, 0b00001000, 1) // null bitmap: param 3; new types
	types := []byte{8, 0, 3, 0x80, 253, 0, 6, 0, 1, 0}
	pkt = append(pkt, types...)
	pkt = binary.LittleEndian.AppendUint64(pkt, uint64(0xFFFFFFFFFFFFFFFB)) // -5
	pkt = binary.LittleEndian.AppendUint32(pkt, 4000000000)
	pkt = append(pkt, 3, 'a', 'b', 'c')
	pkt = append(pkt, 0xFF) // tiny -1
	vals, got := execParams(pkt, 5, nil)
	require.Len(t, vals, 5)
	assert.Equal(t, types, got)
	assert.Equal(t, []paramValue{{text: "-5", ok: true}, {text: "4000000000", ok: true}, {text: "abc", ok: true}, {null: true, ok: true}, {text: "-1", ok: true}}, vals)

	// Executed again without types: the previous ones hold.
	again := append([]byte{0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0b00001000, 0}, pkt[22:]...)
	vals, _ = execParams(again, 5, got)
	assert.Equal(t, "abc", vals[2].text)
	// Cut short anywhere: no values, no panic.
	for i := range pkt {
		if v, _ := execParams(pkt[:i], 5, nil); v != nil {
			t.Fatalf("a packet cut at %d read as values %v", i, v)
		}
	}
}

// FuzzExecParams: no EXECUTE packet makes the parameter reader panic or
// return values it did not read.
func FuzzExecParams(f *testing.F) {
	f.Add([]byte{0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8}, 1)
	f.Add([]byte{0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 253, 0, 0xfc, 0xff, 0xff}, 1)
	f.Fuzz(func(t *testing.T, p []byte, n int) {
		n %= 300
		if n < 0 {
			n = -n
		}
		vals, types := execParams(p, n, nil)
		if vals != nil && (len(vals) != n || len(types) != 2*n) {
			t.Fatalf("%d parameters read as %d values, %d type bytes", n, len(vals), len(types))
		}
	})
}
