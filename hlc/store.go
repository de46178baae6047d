package hlc

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// SQLStore keeps the high-water mark in row id=1 of mlr.hlc:
//
//	CREATE TABLE mlr.hlc (id TINYINT UNSIGNED PRIMARY KEY, high_water BIGINT UNSIGNED NOT NULL)
//
// Save never lowers the stored value (GREATEST), so concurrent or stale
// saves are harmless.
type SQLStore struct {
	db *sql.DB
}

var _ Store = (*SQLStore)(nil)

// NewSQLStore returns a store over db; the table must exist (schema apply
// creates it).
func NewSQLStore(db *sql.DB) *SQLStore { return &SQLStore{db: db} }

// Load returns the stored high-water mark, 0 when the row does not exist.
func (s *SQLStore) Load(ctx context.Context) (Timestamp, error) {
	var v uint64
	err := s.db.QueryRowContext(ctx, "SELECT high_water FROM mlr.hlc WHERE id = 1").Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("hlc: load mlr.hlc: %w", err)
	}
	return Timestamp(v), nil
}

// Save raises the stored high-water mark to ts (never lowers it). It runs
// in autocommit, so a nil error means the value is committed.
func (s *SQLStore) Save(ctx context.Context, ts Timestamp) error {
	_, err := s.db.ExecContext(ctx,
		"INSERT INTO mlr.hlc (id, high_water) VALUES (1, ?) ON DUPLICATE KEY UPDATE high_water = GREATEST(high_water, VALUES(high_water))",
		uint64(ts))
	if err != nil {
		return fmt.Errorf("hlc: save mlr.hlc: %w", err)
	}
	return nil
}
