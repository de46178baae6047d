package tracing

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func TestParseFormat(t *testing.T) {
	sc, ok := Parse(tp)
	if !ok {
		t.Fatalf("Parse(%q) refused a valid traceparent", tp)
	}
	assert.True(t, sc.IsSampled())
	assert.True(t, sc.IsRemote())
	assert.Equal(t, tp, Format(sc), "Format(Parse(x)) == x")

	for _, bad := range []string{
		"",
		tp[:54],
		tp + "0",
		"01" + tp[2:], // another version
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero span id
		"00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-'; DROP TABLE x; --",
	} {
		_, ok := Parse(bad)
		assert.False(t, ok, "Parse(%q) accepted it", bad)
	}
	unsampled, ok := Parse(tp[:53] + "00")
	assert.True(t, ok)
	assert.False(t, unsampled.IsSampled())
	assert.Equal(t, tp[:53]+"00", Format(unsampled))
}

func TestFromSQL(t *testing.T) {
	for sql, want := range map[string]string{
		"/*traceparent='" + tp + "'*/ INSERT INTO t VALUES (1)":                        tp,
		"INSERT INTO t VALUES (1) /*traceparent='" + tp + "',route='%2Fpay'*/":         tp,
		"UPDATE t SET a = 1 /* controller='x',traceparent='" + tp + "' */":             tp,
		"/* traceparent=" + tp + " */ SELECT 1":                                        tp,
		"INSERT INTO t VALUES ('traceparent=" + tp + "')":                              "", // a value, not a comment
		"/*traceparent='00-zzz'*/ INSERT INTO t VALUES (1)":                            "",
		"/* nothing */ SELECT 'traceparent'":                                           "",
		"/* a */ SELECT 1 /* traceparent='" + tp[:40] + "' */":                         "",
		"/*traceparent='bad'*/ /*traceparent='" + tp + "'*/ DELETE FROM t WHERE a = 1": tp,
	} {
		assert.Equal(t, want, FromSQL(sql), "FromSQL(%q)", sql)
	}
}

// TestFromSQLLinear: a statement made of "traceparent" and comment
// openers costs a scan, not a scan per occurrence (a client's statement
// is read with tracing on before sampling is decided). Quadratic, these
// few MB took hours: the suite's timeout fails it; there is no timed
// assertion here.
func TestFromSQLLinear(t *testing.T) {
	for _, sql := range []string{
		"SELECT '" + strings.Repeat("traceparent", 400_000) + "'",
		"/*" + strings.Repeat("traceparent=", 400_000),
		strings.Repeat("/*traceparent=*/", 300_000),
	} {
		if got := FromSQL(sql); got != "" {
			t.Errorf("FromSQL found %q in junk", got)
		}
	}
}

func FuzzFromSQL(f *testing.F) {
	f.Add("/*traceparent='" + tp + "'*/ SELECT 1")
	f.Add("/*traceparent=")
	f.Fuzz(func(t *testing.T, sql string) {
		if got := FromSQL(sql); got != "" {
			if _, ok := Parse(got); !ok {
				t.Fatalf("FromSQL returned %q, which Parse refuses", got)
			}
		}
	})
}
