package dbtest

import "testing"

func TestStartRestart(t *testing.T) {
	s, err := Start(Options{ServerID: 9, AutoIncrementIncrement: 3, AutoIncrementOffset: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	db, err := s.Open("")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var name, format string
	if err := db.QueryRow("SHOW VARIABLES LIKE 'binlog_row_metadata'").Scan(&name, &format); err != nil {
		t.Fatal(err)
	}
	if format != "FULL" {
		t.Fatalf("binlog_row_metadata = %q, want FULL", format)
	}
	if _, err := db.Exec("CREATE DATABASE d; CREATE TABLE d.t (id INT AUTO_INCREMENT PRIMARY KEY); INSERT INTO d.t VALUES (),()"); err != nil {
		t.Fatal(err)
	}
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	var n, maxID int
	if err := db.QueryRow("SELECT COUNT(*), MAX(id) FROM d.t").Scan(&n, &maxID); err != nil {
		t.Fatal(err)
	}
	if n != 2 || maxID != 5 {
		t.Fatalf("after crash: %d rows, max id %d; want 2 rows, max id 5 (offset 2, increment 3)", n, maxID)
	}
}
