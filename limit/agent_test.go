package limit

import (
	"log/slog"
	"testing"
)

// TestGrantNobodyWaitsForIsNotAdmitted: a permit granted while the agent wrote the
// bucket, to a wait that gave up meanwhile (a batch gives its later groups 20 ms),
// goes back at once, and must not stay among the admitted: each one would shrink
// what the process asks for (wanted) until no wait is ever granted again.
func TestGrantNobodyWaitsForIsNotAdmitted(t *testing.T) {
	r, err := ParseRate("20/s")
	if err != nil {
		t.Fatal(err)
	}
	f := New(nil, map[string]Limits{"svc": {Rate: r}}, Options{Owner: "me", Log: slog.New(slog.DiscardHandler)})
	a := f.agents["svc"]
	a.mu.Lock()
	defer a.mu.Unlock()
	for range 100 {
		a.handOut(plan{granted: 3}, false)
	}
	if a.admitted != 0 {
		t.Fatalf("%d permits nobody took still count as admitted", a.admitted)
	}
	a.waiters = []*waiter{{ch: make(chan *Permit, 1)}}
	if got := a.wanted(); got != 1 {
		t.Fatalf("a waiter after the unclaimed grants asks for %d permits, want 1", got)
	}
	if a.pending.refund != 0 || a.pending.release != 0 {
		t.Fatalf("unclaimed grants of a rate-only service recorded %+v, want nothing to give back", a.pending)
	}
}
