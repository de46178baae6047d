package applier

import "testing"

func TestLimiterYieldsToDeadlocks(t *testing.T) {
	l := newLimiter(512)
	if l.get() != 512 {
		t.Fatalf("starts at %d, want the configured 512", l.get())
	}
	l.observe(3)
	if l.get() != 128 {
		t.Fatalf("after deadlocks: %d, want 128 (a quarter)", l.get())
	}
	for range 10 {
		l.observe(1)
	}
	if l.get() != 1 {
		t.Fatalf("under steady deadlocks: %d, want 1", l.get())
	}
	for range quietPolls - 1 {
		l.observe(0)
		if l.get() != 1 {
			t.Fatalf("grew to %d before %d quiet polls", l.get(), quietPolls)
		}
	}
	for want := 2; want <= 512; want *= 2 {
		l.observe(0)
		if l.get() != want {
			t.Fatalf("quiet polls: %d, want %d (doubling)", l.get(), want)
		}
	}
	l.observe(0)
	if l.get() != 512 {
		t.Fatalf("never above the configured size: %d", l.get())
	}
}
