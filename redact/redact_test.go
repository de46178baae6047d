package redact

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/go-sql-driver/mysql"
)

func TestError(t *testing.T) {
	dup := &mysql.MySQLError{Number: 1062, SQLState: [5]byte{'2', '3', '0', '0', '0'}, Message: "Duplicate entry 'alice@example.com' for key 'email'"}
	err := fmt.Errorf("apply 3 changes (shop.users) from peer eu at gtid 1-1-9: %w", dup)
	got := Error(err)
	if strings.Contains(got, "alice") {
		t.Fatalf("value leaked: %s", got)
	}
	for _, want := range []string{"shop.users", "peer eu", "1-1-9", "1062", "Duplicate entry '…' for key '…'"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
	esc := &mysql.MySQLError{Number: 1366, Message: `Incorrect integer value: 'it''s \' "x"' for column 'n'`}
	if got := Error(esc); strings.Contains(got, "it") || strings.Contains(got, "x\"") {
		t.Errorf("escaped quotes leaked: %s", got)
	}
	if got := Error(errors.New("plain")); got != "plain" {
		t.Errorf("non-server error changed: %s", got)
	}
	if Error(nil) != "" {
		t.Error("nil error not empty")
	}
}

func TestAllowValues(t *testing.T) {
	dup := &mysql.MySQLError{Number: 1062, Message: "Duplicate entry 'alice' for key 'email'"}
	AllowValues(true)
	defer AllowValues(false)
	if got := Error(dup); !strings.Contains(got, "alice") {
		t.Errorf("with values allowed, %q lost the value", got)
	}
	AllowValues(false)
	if got := Error(dup); strings.Contains(got, "alice") {
		t.Errorf("values leaked after AllowValues(false): %q", got)
	}
}
