package chaos

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Summary adds up the results of several schedules.
type Summary struct {
	Duration   time.Duration // write phase of each schedule
	Results    []*Result
	FailedSeed []uint64
}

// Add records one schedule's result.
func (s *Summary) Add(r *Result) {
	s.Results = append(s.Results, r)
	if len(r.Problems) > 0 {
		s.FailedSeed = append(s.FailedSeed, r.Seed)
	}
}

// Markdown renders the summary as a markdown section.
func (s *Summary) Markdown() string {
	var b strings.Builder
	inj, skip := map[Class]int{}, map[Class]int{}
	var why []string
	var t Result
	var conv []time.Duration
	for _, r := range s.Results {
		for c, n := range r.Injected {
			inj[c] += n
		}
		for c, n := range r.Skipped {
			skip[c] += n
		}
		for _, w := range r.Why {
			if !slices.Contains(why, w) {
				why = append(why, w)
			}
		}
		t.Txns += r.Txns
		t.Acked += r.Acked
		t.Refused += r.Refused
		t.Failed += r.Failed
		t.InDoubt += r.InDoubt
		t.InDoubtCommitted += r.InDoubtCommitted
		t.Lost += r.Lost
		t.Duplicated += r.Duplicated
		t.Phantom += r.Phantom
		t.ExplainedErrors += r.ExplainedErrors
		t.ProxyExits += r.ProxyExits
		if r.Converge > 0 {
			conv = append(conv, r.Converge)
		}
		t.SlowestStop = max(t.SlowestStop, r.SlowestStop)
	}
	slices.Sort(conv)
	fmt.Fprintf(&b, "## mlproxy chaos summary\n\n")
	fmt.Fprintf(&b, "- schedules run: %d (write phase %v each), failed: %d", len(s.Results), s.Duration, len(s.FailedSeed))
	if len(s.FailedSeed) > 0 {
		fmt.Fprintf(&b, " (seeds %v)", s.FailedSeed)
	}
	b.WriteString("\n")
	var seeds []string
	for _, r := range s.Results {
		seeds = append(seeds, fmt.Sprint(r.Seed))
	}
	fmt.Fprintf(&b, "- seeds: %s\n", strings.Join(seeds, ", "))
	fmt.Fprintf(&b, "- transactions: %d; acknowledged: %d, refused (clock): %d, failed before COMMIT: %d, in doubt: %d (committed: %d, not: %d)\n",
		t.Txns, t.Acked, t.Refused, t.Failed, t.InDoubt, t.InDoubtCommitted, t.InDoubt-t.InDoubtCommitted)
	fmt.Fprintf(&b, "- lost: %d, duplicated: %d, committed though told failed: %d\n", t.Lost, t.Duplicated, t.Phantom)
	if len(conv) > 0 {
		fmt.Fprintf(&b, "- time to converge after the heal: p50 %v, max %v (%d schedules converged)\n",
			conv[(len(conv)-1)/2].Round(time.Millisecond), conv[len(conv)-1].Round(time.Millisecond), len(conv))
	} else {
		b.WriteString("- time to converge: no schedule converged\n")
	}
	fmt.Fprintf(&b, "- error log lines explained by injected faults: %d; mlproxy exits by itself: %d; slowest graceful stop of mlproxy (SIGTERM to exit): %v\n\n",
		t.ExplainedErrors, t.ProxyExits, t.SlowestStop.Round(time.Millisecond))
	b.WriteString("| fault class | injected | skipped |\n| --- | ---: | ---: |\n")
	total := 0
	for _, c := range Classes {
		fmt.Fprintf(&b, "| %s | %d | %d |\n", c, inj[c], skip[c])
		total += inj[c]
	}
	fmt.Fprintf(&b, "| total | %d | |\n", total)
	b.WriteString("\n| seed | faults | acknowledged | refused | in doubt (committed) | converged in | result |\n| ---: | ---: | ---: | ---: | ---: | ---: | --- |\n")
	for _, r := range s.Results {
		n := 0
		for _, k := range r.Injected {
			n += k
		}
		result := "pass"
		if len(r.Problems) > 0 {
			result = fmt.Sprintf("FAIL (%d checks)", len(r.Problems))
		}
		conv := "-"
		if r.Converge > 0 {
			conv = r.Converge.Round(time.Millisecond).String()
		}
		fmt.Fprintf(&b, "| %d | %d | %d | %d | %d (%d) | %s | %s |\n", r.Seed, n, r.Acked, r.Refused, r.InDoubt, r.InDoubtCommitted, conv, result)
	}
	if len(why) > 0 {
		b.WriteString("\nskipped because:\n")
		for _, w := range why {
			b.WriteString("- " + w + "\n")
		}
	}
	return b.String()
}
