package main

import (
	"regexp"
	"strings"
)

// The deadlock bench attributes every deadlock exactly instead of
// comparing two noisy runs: with innodb_print_all_deadlocks on, the server
// writes each deadlock to its error log, with the statement each
// transaction was running and which one it rolled back. The applier's
// statements name the metadata columns (_mlr_...), a client's sysbench
// statements never do.

// deadlockCount sums what a stretch of the error log says.
type deadlockCount struct {
	total          int // deadlocks detected
	applierVictim  int // the applier's transaction was rolled back (it retries; no client sees it)
	clientVictim   int // a client's was rolled back while the applier's held the lock: caused by the applier
	amongClients   int // no applier transaction involved
	unattributable int // a transaction without its statement in the log
}

var (
	reDeadlockStart = regexp.MustCompile(`(?m)Transactions deadlock detected`)
	reTxnHeader     = regexp.MustCompile(`(?m)^\*\*\* \((\d+)\) TRANSACTION:`)
	reRolledBack    = regexp.MustCompile(`\*\*\* WE ROLL BACK TRANSACTION \((\d+)\)`)
)

// countDeadlocks parses the error log text written while the bench ran.
func countDeadlocks(log string) deadlockCount {
	var c deadlockCount
	starts := reDeadlockStart.FindAllStringIndex(log, -1)
	for i, s := range starts {
		end := len(log)
		if i+1 < len(starts) {
			end = starts[i+1][0]
		}
		block := log[s[0]:end]
		c.total++
		// Each transaction's section runs from its header to the next.
		hdrs := reTxnHeader.FindAllStringSubmatchIndex(block, -1)
		applier := map[string]bool{}
		known := true
		for j, h := range hdrs {
			to := len(block)
			if j+1 < len(hdrs) {
				to = hdrs[j+1][0]
			}
			sec := block[h[0]:to]
			if k := strings.Index(sec, "*** WAITING FOR THIS LOCK"); k >= 0 {
				sec = sec[:k]
			}
			if k := strings.Index(sec, "*** WE ROLL BACK"); k >= 0 {
				sec = sec[:k]
			}
			n := block[h[2]:h[3]]
			switch {
			case strings.Contains(sec, "_mlr_") || strings.Contains(sec, "mlr."):
				applier[n] = true
			case !strings.Contains(sec, "sbtest"):
				known = false
			}
		}
		victim := ""
		if m := reRolledBack.FindStringSubmatch(block); m != nil {
			victim = m[1]
		}
		switch {
		case len(applier) > 0 && applier[victim]:
			c.applierVictim++
		case len(applier) > 0:
			c.clientVictim++
		case !known:
			c.unattributable++
		default:
			c.amongClients++
		}
	}
	return c
}
