package causal

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTokenRoundTrip(t *testing.T) {
	tok := Token{1: {1: 500}, 2: {2: 77, 9: 3}, 3: {}}
	s := tok.String()
	assert.Equal(t, "mlr1:1=1-500;2=2-77,9-3", s, "regions and domains in order; empty positions left out")
	back, err := Parse(s)
	require.NoError(t, err)
	assert.Equal(t, Token{1: {1: 500}, 2: {2: 77, 9: 3}}, back)
}

func TestParsePosition(t *testing.T) {
	p, err := ParsePosition("1-1-500, 2-7-30,1-3-499")
	require.NoError(t, err)
	assert.Equal(t, Position{1: 500, 2: 30}, p, "the highest sequence per domain")
	p, err = ParsePosition("")
	require.NoError(t, err)
	assert.Empty(t, p)
	for _, bad := range []string{"1-1", "a-1-2", "1-1-2-3", "1-1-x"} {
		_, err := ParsePosition(bad)
		assert.Error(t, err, bad)
	}
}

func TestCovers(t *testing.T) {
	have := Position{1: 500, 2: 30}
	assert.True(t, have.Covers(Position{1: 500}))
	assert.True(t, have.Covers(Position{}))
	assert.False(t, have.Covers(Position{1: 501}))
	assert.False(t, have.Covers(Position{3: 1}), "a domain not applied at all")
	assert.False(t, Position(nil).Covers(Position{1: 1}))
}

func TestParseBareGTID(t *testing.T) {
	tok, err := Parse("1-1-4711,2-2-9")
	require.NoError(t, err)
	assert.Equal(t, Token{ByDomain: {1: 4711, 2: 9}}, tok, "@@last_gtid, or the OK packet's tracked last_gtid, is a token by domain")
	_, gap := uncovered(map[uint16]Position{1: {1: 4711}, 2: {2: 8}}, tok[ByDomain])
	assert.False(t, gap, "domain 2 is not reached")
	_, ok := uncovered(map[uint16]Position{1: {1: 5000}, 3: {2: 9}}, tok[ByDomain])
	assert.True(t, ok, "any region's position may reach a domain")
}

func TestParseRefusesWhatIsNotAToken(t *testing.T) {
	for _, bad := range []string{"", "1=1-5", "mlr1:x=1-5", "mlr1:1=1-y", "mlr1:1", "mlr1:70000=1-1", "mlr1:1=1-5-6"} {
		_, err := Parse(bad)
		assert.Error(t, err, bad)
	}
	_, err := Parse(strings.Repeat("z", 10000))
	require.Error(t, err)
	assert.Less(t, len(err.Error()), 200, "the error does not echo the input")
}
