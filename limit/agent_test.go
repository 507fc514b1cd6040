package limit

import (
	"log/slog"
	"testing"
	"time"

	"github.com/refresher/refresher/provider"
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

// TestFailuresStopCallsBeforeTheirWrite: once a process has itself seen the run of
// failures that opens the circuit, it lets no more calls through on its own copy of
// the state, which still says closed until the agent has written the run.
func TestFailuresStopCallsBeforeTheirWrite(t *testing.T) {
	f := New(nil, map[string]Limits{"svc": DefaultLimits()}, Options{Owner: "me", Log: slog.New(slog.DiscardHandler)})
	a := f.agents["svc"]
	down := &provider.TransientError{Status: 503, Reason: "down"}
	th := DefaultLimits().CircuitThreshold
	for i := range th {
		p := a.fastPermit(time.Now())
		if p == nil {
			t.Fatalf("call %d refused after %d failures, want calls until %d", i+1, i, th)
		}
		// The failure that completes the run sends its request to wait for the
		// service; the ones before it retry as usual.
		if wait := p.Done(down); wait != (i == th-1) {
			t.Fatalf("failure %d of %d: wait %t", i+1, th, wait)
		}
	}
	if p := a.fastPermit(time.Now()); p != nil {
		t.Fatalf("a call let through after %d failures not yet written (threshold %d)", th, th)
	}
	// A success among them ends the run: calls go on.
	a.mu.Lock()
	a.pending = events{failures: 2, successes: 1}
	a.mu.Unlock()
	if p := a.fastPermit(time.Now()); p == nil {
		t.Fatal("refused after a success ended the run of failures")
	}
}
