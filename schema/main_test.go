package schema

import (
	"database/sql"
	"fmt"
	"os"
	"testing"

	"github.com/mlproxy/mlproxy/dbtest"
)

// Servers shared by the package's tests, started once in TestMain.
var (
	// srvA is a correctly configured region server (region 1 of 2).
	srvA *dbtest.Server
	dbA  *sql.DB
	// srvB is misconfigured on purpose: binlog off, STATEMENT format,
	// MINIMAL row image, no row metadata, and server_id, gtid_domain_id and
	// auto_increment_offset equal to srvA's.
	srvB *dbtest.Server
	dbB  *sql.DB
)

const region = 1

func TestMain(m *testing.M) {
	code := run(m)
	dbtest.Cleanup()
	os.Exit(code)
}

func run(m *testing.M) int {
	var err error
	srvA, err = dbtest.Start(dbtest.Options{ServerID: 4101, AutoIncrementIncrement: 2, AutoIncrementOffset: 1})
	if err != nil {
		fmt.Fprintln(os.Stderr, "schema tests: start server A:", err)
		return 1
	}
	defer srvA.Destroy()
	srvB, err = dbtest.Start(dbtest.Options{ServerID: 4101, AutoIncrementIncrement: 2, AutoIncrementOffset: 3,
		Args: []string{"--skip-log-bin", "--binlog-format=STATEMENT", "--binlog-row-image=MINIMAL", "--binlog-row-metadata=NO_LOG"}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "schema tests: start server B:", err)
		return 1
	}
	defer srvB.Destroy()
	if dbA, err = srvA.Open(""); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer dbA.Close()
	if dbB, err = srvB.Open(""); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer dbB.Close()
	return m.Run()
}
