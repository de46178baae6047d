package main

import "testing"

// A deadlock between a sysbench client and the applier, in the form
// MariaDB 10.11 writes it with innodb_print_all_deadlocks, and one
// between two clients.
const sampleDeadlocks = `2026-12-07 18:00:00 0 [Note] InnoDB: Transactions deadlock detected, dumping detailed information.
2026-12-07 18:00:00 0 [Note] InnoDB: 
*** (1) TRANSACTION:
TRANSACTION 5501, ACTIVE 0 sec starting index read
mysql tables in use 1, locked 1
LOCK WAIT 4 lock struct(s), heap size 1128, 3 row lock(s)
MariaDB thread id 70, OS thread handle 1, query id 900 127.0.0.1 root Updating
UPDATE sbtest1 SET k=k+1 WHERE id=5002
*** WAITING FOR THIS LOCK TO BE GRANTED:
RECORD LOCKS space id 5 page no 40 n bits 120 index PRIMARY of table ` + "`sbtest`.`sbtest1`" + ` trx id 5501 lock_mode X locks rec but not gap waiting
*** CONFLICTING WITH:
*** (2) TRANSACTION:
TRANSACTION 5490, ACTIVE 0 sec inserting
mysql tables in use 1, locked 1
12 lock struct(s), heap size 1128, 40 row lock(s)
MariaDB thread id 12, OS thread handle 2, query id 880 127.0.0.1 root Update
INSERT INTO ` + "`sbtest`.`sbtest1`" + ` (id, k, c, pad, _mlr_hlc, _mlr_origin, _mlr_vv) VALUES (?, ?, ?, ?, ?, ?, ?)
*** WAITING FOR THIS LOCK TO BE GRANTED:
*** WE ROLL BACK TRANSACTION (1)
2026-12-07 18:00:01 0 [Note] InnoDB: Transactions deadlock detected, dumping detailed information.
2026-12-07 18:00:01 0 [Note] InnoDB: 
*** (1) TRANSACTION:
MariaDB thread id 71, OS thread handle 3, query id 901 127.0.0.1 root Updating
DELETE FROM sbtest3 WHERE id=10
*** WAITING FOR THIS LOCK TO BE GRANTED:
*** (2) TRANSACTION:
MariaDB thread id 72, OS thread handle 4, query id 902 127.0.0.1 root Updating
UPDATE sbtest3 SET c='x' WHERE id=11
*** WE ROLL BACK TRANSACTION (2)
`

func TestCountDeadlocks(t *testing.T) {
	got := countDeadlocks(sampleDeadlocks)
	want := deadlockCount{total: 2, clientVictim: 1, amongClients: 1}
	if got != want {
		t.Fatalf("countDeadlocks = %+v, want %+v", got, want)
	}
}
