package proxy

import "strings"

// normalizedKey is the classification cache's key for statements whose
// class cannot depend on their literals: a SELECT, INSERT, UPDATE, DELETE
// or REPLACE with its single-quoted strings and numbers replaced by '?'.
// sysbench-style traffic (the same statement with other values each time)
// then hits the cache instead of being parsed again. A statement's class
// depends on its names (tables, columns, variables), never on its values.
//
// ok is false, and the exact text must be the key, where the lexer could
// be wrong about what is a literal: a backslash inside a string (its
// meaning depends on NO_BACKSLASH_ESCAPES), an unterminated string or
// comment, or any other first keyword (SET, PREPARE ... FROM 'text', CALL:
// their literals can carry names). Double-quoted text is kept as written
// (under ANSI_QUOTES it is a name), and so are comments (executable ones
// are code).
func normalizedKey(sql string) (key string, ok bool) {
	i := skipSpaceAndComments(sql, 0)
	if i < 0 || !dmlStart(sql[i:]) {
		return "", false
	}
	// Where the server's lexer and this one could disagree, the exact
	// text is the key: executable comments (a string inside one may hold
	// "*/"), line comments (the server ends "--" at any control byte), and
	// user variables named by a quoted string (@'x').
	if strings.Contains(sql, "/*!") || strings.Contains(sql, "/*M!") || strings.Contains(sql, "/*m!") ||
		strings.Contains(sql, "--") || strings.IndexByte(sql, '#') >= 0 ||
		strings.Contains(sql, "@'") || strings.Contains(sql, "@\"") || strings.Contains(sql, "@`") {
		return "", false
	}
	// Runs without literals are copied whole; a statement without any
	// (a prepared statement's text) is its own key, without a copy.
	var b []byte
	last := 0
	literal := func(from, to int) {
		if b == nil {
			b = make([]byte, 0, len(sql))
		}
		b = append(b, sql[last:from]...)
		b = append(b, '?')
		last = to
	}
	for i < len(sql) {
		c := sql[i]
		switch {
		case c == '\'':
			j := i + 1
			for {
				if j >= len(sql) {
					return "", false // unterminated
				}
				if sql[j] == '\\' {
					return "", false // escapes depend on the session's sql_mode
				}
				if sql[j] == '\'' {
					if j+1 < len(sql) && sql[j+1] == '\'' {
						j += 2 // doubled quote inside the string
						continue
					}
					break
				}
				j++
			}
			literal(i, j+1)
			i = j + 1
		case c == '"' || c == '`':
			j := strings.IndexByte(sql[i+1:], c)
			if j < 0 || strings.IndexByte(sql[i+1:i+1+j], '\\') >= 0 {
				return "", false
			}
			i += 2 + j
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			j := strings.Index(sql[i+2:], "*/")
			if j < 0 {
				return "", false
			}
			i += 4 + j
		case c == '#' || (c == '-' && i+2 < len(sql) && sql[i+1] == '-' && (sql[i+2] == ' ' || sql[i+2] == '\t')):
			j := strings.IndexByte(sql[i:], '\n')
			if j < 0 {
				j = len(sql) - i
			}
			i += j
		case isDigit(c) && i > 0 && sql[i-1] == '.':
			// After a dot the server reads a name (app.1 is table 1):
			// the exact text is the key.
			return "", false
		case isDigit(c) && (i == 0 || !isWordByte(sql[i-1])):
			if j, ok := numberEnd(sql, i); ok {
				literal(i, j)
				i = j
				continue
			}
			// A name that starts with a digit (1abc is a valid table
			// name): kept as written.
			for i < len(sql) && isWordByte(sql[i]) {
				i++
			}
		case isWordByte(c):
			for i < len(sql) && isWordByte(sql[i]) {
				i++
			}
		default:
			i++
		}
	}
	if b == nil {
		return sql, true
	}
	return string(append(b, sql[last:]...)), true
}

// numberEnd is the end of the numeric literal at s[i] (123, 1.5, .5 is not
// handled, 1e-3, 0x1F): ok is false when a word byte follows, so that the
// token is a name rather than a number.
func numberEnd(s string, i int) (int, bool) {
	j := i
	if strings.HasPrefix(s[i:], "0x") {
		// Only lower-case 0x with at least one hex digit is a number
		// (0X1F and a bare 0x are names to the server).
		j += 2
		k := j
		for j < len(s) && (isDigit(s[j]) || (s[j]|0x20 >= 'a' && s[j]|0x20 <= 'f')) {
			j++
		}
		if j == k {
			return 0, false
		}
	} else {
		for j < len(s) && isDigit(s[j]) {
			j++
		}
		if j < len(s) && s[j] == '.' {
			j++
			for j < len(s) && isDigit(s[j]) {
				j++
			}
		}
		if j < len(s) && (s[j] == 'e' || s[j] == 'E') {
			k := j + 1
			if k < len(s) && (s[k] == '+' || s[k] == '-') {
				k++
			}
			if k < len(s) && isDigit(s[k]) {
				for k < len(s) && isDigit(s[k]) {
					k++
				}
				j = k
			}
		}
	}
	if j < len(s) && isWordByte(s[j]) {
		return 0, false
	}
	return j, true
}

// skipSpaceAndComments returns the index of the first byte after leading
// whitespace and ordinary comments, or -1 at an executable comment (a
// statement may be hidden in it) or an unterminated one.
func skipSpaceAndComments(s string, i int) int {
	for i < len(s) {
		switch {
		case s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r':
			i++
		case strings.HasPrefix(s[i:], "/*"):
			if strings.HasPrefix(s[i:], "/*!") || strings.HasPrefix(s[i:], "/*M!") {
				return -1
			}
			j := strings.Index(s[i+2:], "*/")
			if j < 0 {
				return -1
			}
			i += 4 + j
		default:
			return i
		}
	}
	return -1
}

// dmlStart reports whether s starts with one of the keywords whose
// statements normalizedKey handles, followed by a non-word byte.
func dmlStart(s string) bool {
	for _, kw := range [...]string{"select", "insert", "update", "delete", "replace"} {
		if len(s) > len(kw) && strings.EqualFold(s[:len(kw)], kw) && !isWordByte(s[len(kw)]) {
			return true
		}
	}
	return false
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// isWordByte is a byte of an unquoted identifier or keyword (ASCII letters,
// digits, '_', '$', and any byte of a multi-byte UTF-8 character).
func isWordByte(c byte) bool {
	return c == '_' || c == '$' || isDigit(c) || (c|0x20 >= 'a' && c|0x20 <= 'z') || c >= 0x80
}
