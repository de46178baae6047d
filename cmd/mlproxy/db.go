package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/config"
)

// openServer opens a database/sql pool to s (the local server or a peer's),
// with TLS when s says so, and checks that it answers. The pool is sized
// explicitly (poolConns open and idle): the commands and the clock fence
// use a connection or two at a time; `mlproxy run` sizes its local pool
// itself.
func openServer(ctx context.Context, name string, s config.Server) (*sql.DB, error) {
	mc := mysql.NewConfig()
	mc.User = s.User
	mc.Passwd = s.Password
	mc.Net = "tcp"
	mc.Addr = s.Addr
	mc.Timeout = 5 * time.Second
	mc.ReadTimeout = 60 * time.Second
	mc.WriteTimeout = 60 * time.Second
	mc.MultiStatements = true
	mc.Params = map[string]string{"time_zone": "'+00:00'"}
	if s.TLS != nil {
		tc, err := s.TLSConfig()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		key := "mlproxy-" + name
		if err := mysql.RegisterTLSConfig(key, tc); err != nil {
			return nil, err
		}
		mc.TLSConfig = key
	}
	conn, err := mysql.NewConnector(mc)
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(poolConns)
	db.SetMaxIdleConns(poolConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("%s server %s: %w", name, s.Addr, err)
	}
	return db, nil
}

// poolConns bounds a pool openServer opens.
const poolConns = 4

// loadLocal loads the region's config and opens its local server.
func loadLocal(ctx context.Context, path string) (*config.Config, *sql.DB, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, nil, err
	}
	db, err := openServer(ctx, "local", cfg.Local)
	if err != nil {
		return nil, nil, err
	}
	return cfg, db, nil
}

// isNoTable says err is the server's ER_NO_SUCH_TABLE (1146): an mlr table
// a release before this one's `schema apply` did not create.
func isNoTable(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1146
}
