package binlog

import (
	"errors"
	"fmt"
	"strings"

	"github.com/go-mysql-org/go-mysql/replication"
)

// ErrNoColumnNames is returned when a table map event carries no column
// names: the peer logs with binlog_row_metadata other than FULL.
var ErrNoColumnNames = errors.New("binlog has no column names: set binlog_row_metadata=FULL on the peer (SET GLOBAL binlog_row_metadata=FULL and in its config file)")

// ErrNotRowFormat is returned when the peer logs changes as statements:
// mlproxy needs binlog_format=ROW.
var ErrNotRowFormat = errors.New("peer does not log rows: set binlog_format=ROW on the peer (SET GLOBAL binlog_format=ROW and in its config file)")

// ErrRowImage is returned when the peer logs partial row images: mlproxy
// needs binlog_row_image=FULL (the before image carries the version a change
// replaced).
var ErrRowImage = errors.New("peer logs partial row images: set binlog_row_image=FULL on the peer")

// ErrUnsupported is returned for binlog content mlproxy cannot replicate
// faithfully (XA transactions).
var ErrUnsupported = errors.New("binlog holds a transaction kind mlproxy cannot replicate")

// decodeRows converts a go-mysql rows event into a rowsEvent keyed by column
// name. Values keep go-mysql's decoding, with integers normalised to int64
// (signed) or uint64 (unsigned, per the table map's signedness metadata).
// Columns missing from an image (partial row image) are absent from Row.
func decodeRows(peer string, h *replication.EventHeader, re *replication.RowsEvent) (*rowsEvent, error) {
	tm := re.Table
	if tm == nil {
		return nil, fmt.Errorf("binlog from peer %s: rows event at %d without table map", peer, h.LogPos)
	}
	names, err := columnNames(peer, tm)
	if err != nil {
		return nil, err
	}
	ev := &rowsEvent{schema: string(tm.Schema), table: string(tm.Table), when: h.Timestamp}
	switch re.Type() {
	case replication.EnumRowsEventTypeInsert:
		ev.op = Insert
	case replication.EnumRowsEventTypeUpdate:
		ev.op = Update
	case replication.EnumRowsEventTypeDelete:
		ev.op = Delete
	default:
		return nil, fmt.Errorf("binlog from peer %s: %s.%s: unknown rows event type %s", peer, tm.Schema, tm.Table, h.EventType)
	}
	ev.rows = make([]Row, len(re.Rows))
	for i, vals := range re.Rows {
		r := make(Row, len(vals))
		for c, v := range vals {
			r[names[c]] = normalise(v)
		}
		if i < len(re.SkippedColumns) {
			for _, c := range re.SkippedColumns[i] {
				delete(r, names[c])
			}
			if len(re.SkippedColumns[i]) > 0 && ev.op != Insert {
				return nil, fmt.Errorf("binlog from peer %s: %s.%s: %w", peer, tm.Schema, tm.Table, ErrRowImage)
			}
		}
		ev.rows[i] = r
	}
	return ev, nil
}

// columnNames returns the table map's column names, or ErrNoColumnNames
// naming the peer and table.
func columnNames(peer string, tm *replication.TableMapEvent) ([]string, error) {
	names := tm.ColumnNameString()
	if len(names) != int(tm.ColumnCount) {
		return nil, fmt.Errorf("binlog from peer %s: table %s.%s: %w", peer, tm.Schema, tm.Table, ErrNoColumnNames)
	}
	return names, nil
}

// normalise widens go-mysql's integer types to int64 or uint64.
func normalise(v any) any {
	switch x := v.(type) {
	case int8:
		return int64(x)
	case int16:
		return int64(x)
	case int32:
		return int64(x)
	case int:
		return int64(x)
	case uint8:
		return uint64(x)
	case uint16:
		return uint64(x)
	case uint32:
		return uint64(x)
	case uint:
		return uint64(x)
	}
	return v
}

// queryKind classifies a query event's statement.
type queryKind int

const (
	queryOther    queryKind = iota // DDL, GRANT, ...: no row data
	queryBegin                     // BEGIN
	queryCommit                    // COMMIT
	queryRollback                  // ROLLBACK (not ROLLBACK TO SAVEPOINT)
	queryIgnore                    // SAVEPOINT, ROLLBACK TO, RELEASE: inside a transaction
	queryDML                       // a data change logged as a statement
	queryXA                        // XA START/END/PREPARE/COMMIT/ROLLBACK
)

// classifyQuery returns the kind of a query event's statement and its first
// keywords (for logs: never values).
func classifyQuery(q string) (queryKind, string) {
	q = skipComments(q)
	words := strings.Fields(q)
	if len(words) == 0 {
		return queryOther, ""
	}
	first := strings.ToUpper(strings.TrimRight(words[0], ";"))
	second := ""
	if len(words) > 1 {
		second = strings.ToUpper(strings.TrimRight(words[1], ";"))
	}
	verb := first
	if second != "" && first != "INSERT" && first != "UPDATE" && first != "DELETE" && first != "REPLACE" {
		verb = first + " " + second
	}
	switch first {
	case "BEGIN":
		return queryBegin, first
	case "COMMIT":
		return queryCommit, first
	case "ROLLBACK":
		if second == "TO" {
			return queryIgnore, verb
		}
		return queryRollback, first
	case "SAVEPOINT", "RELEASE":
		return queryIgnore, first
	case "START":
		if second == "TRANSACTION" {
			return queryBegin, verb
		}
	case "XA":
		return queryXA, verb
	case "INSERT", "UPDATE", "DELETE", "REPLACE":
		return queryDML, first
	case "LOAD":
		return queryDML, verb
	}
	return queryOther, verb
}

// skipComments drops leading whitespace and /* ... */ or -- / # comments;
// an executable comment (/*! ... */, /*M! ... */) is read as code.
func skipComments(q string) string {
	inExec := false
	for {
		q = strings.TrimLeft(q, " \t\r\n")
		switch {
		case strings.HasPrefix(q, "/*!"), strings.HasPrefix(q, "/*M!"):
			// An executable comment is code to the server: read on
			// inside it (its closing */ is left at the end, or skipped
			// when nothing was inside: "/*!*/ CREATE ...").
			q = strings.TrimLeft(q[strings.IndexByte(q, '!')+1:], "0123456789")
			inExec = true
		case inExec && strings.HasPrefix(q, "*/"):
			q = q[2:]
			inExec = false
		case strings.HasPrefix(q, "/*"):
			end := strings.Index(q[2:], "*/")
			if end < 0 {
				return ""
			}
			q = q[2+end+2:]
		case strings.HasPrefix(q, "--"), strings.HasPrefix(q, "#"):
			end := strings.IndexByte(q, '\n')
			if end < 0 {
				return ""
			}
			q = q[end+1:]
		default:
			return q
		}
	}
}
