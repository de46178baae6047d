// Package redact keeps row values out of what mlproxy reports: logs,
// metrics and /status. A server error's message may quote the values of a
// row (ER_DUP_ENTRY: "Duplicate entry 'alice@example.com' for key
// 'email'"); Error keeps the error number, SQLSTATE and the message's
// shape, and replaces every quoted literal.
package redact

import (
	"errors"
	"regexp"
	"strings"
	"sync/atomic"

	"github.com/go-sql-driver/mysql"
	"go.uber.org/zap"
)

// quoted is a single- or double-quoted literal as MySQL messages write
// them (a doubled or backslash-escaped quote stays inside).
var quoted = regexp.MustCompile(`'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*"`)

// allow, when set (config log.values, for debugging), lets Error keep
// values.
var allow atomic.Bool

// AllowValues makes Error return messages unchanged (on) or redacted (off,
// the default).
func AllowValues(on bool) { allow.Store(on) }

// Error is err's text with the quoted literals of every server error in
// its chain replaced by '…'. Our own wrapping names tables, peers and
// positions, never values, and is kept.
func Error(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if allow.Load() {
		return s
	}
	for e := err; e != nil; {
		var me *mysql.MySQLError
		if !errors.As(e, &me) {
			break
		}
		if me.Message != "" {
			s = strings.ReplaceAll(s, me.Message, quoted.ReplaceAllString(me.Message, "'…'"))
		}
		e = errors.Unwrap(me)
	}
	return s
}

// Err is a zap field carrying Error(err) under the key "error", for log
// lines that must not leak values.
func Err(err error) zap.Field { return zap.String("error", Error(err)) }
