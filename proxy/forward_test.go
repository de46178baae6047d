package proxy

import (
	"bytes"
	"crypto/sha1" //nolint:gosec // mysql_native_password
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestNativePasswordEquivalent: from a client's native answer to one
// scramble and the account's stored hash, the proxy recovers what answers
// any other scramble, exactly as the client would have; a wrong stored
// hash, another method or an empty password give nothing.
func TestNativePasswordEquivalent(t *testing.T) {
	scramble := []byte("abcdefghij0123456789")
	other := []byte("ZYXWVUTSRQ9876543210")
	answer := mysql.CalcNativePassword(scramble, []byte("s3cret"))
	pw := sha1.Sum([]byte("s3cret")) //nolint:gosec
	stored := sha1.Sum(pw[:])        //nolint:gosec

	a := authState{user: "app", plugin: nativePassword, scramble: scramble, answer: answer}
	got, ok := a.passwordHash([][]byte{bytes.Repeat([]byte{1}, 20), stored[:]})
	require.True(t, ok)
	assert.Equal(t, pw[:], got)
	assert.Equal(t, mysql.CalcNativePassword(other, []byte("s3cret")), nativeAnswer(other, got), "answers another scramble as the client would")

	_, ok = a.passwordHash([][]byte{bytes.Repeat([]byte{1}, 20)})
	assert.False(t, ok, "no stored hash matches")
	b := a
	b.plugin = "client_ed25519"
	_, ok = b.passwordHash([][]byte{stored[:]})
	assert.False(t, ok, "another method")
	b = a
	b.answer = nil
	_, ok = b.passwordHash([][]byte{stored[:]})
	assert.False(t, ok, "an empty password answers nothing")
}

func TestGreetingScramble(t *testing.T) {
	g := append([]byte{10}, "10.11.0-MariaDB\x00"...)
	g = append(g, 1, 0, 0, 0)              // connection id
	g = append(g, "abcdefgh"...)           // part 1
	g = append(g, 0, 0xff, 0xf7, 33, 2, 0) // filler, caps, charset, status
	g = append(g, 0xff, 0x81, 21)          // caps high, scramble length
	g = append(g, make([]byte, 10)...)     // reserved
	g = append(g, "ijklmnopqrst\x00"...)   // part 2
	g = append(g, "mysql_native_password\x00"...)
	parsed, err := parseGreeting(g)
	require.NoError(t, err)
	assert.Equal(t, []byte("abcdefghijklmnopqrst"), parsed.scramble)
	short, _ := parseGreeting(g[:30])
	assert.Nil(t, short.scramble)
}
