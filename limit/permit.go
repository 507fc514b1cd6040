package limit

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/refresher/refresher/provider"
)

// Permit is the right to make one provider call. It ends with Done once the call
// returned, or Return if no call was made.
type Permit struct {
	a     *agent
	local bool // granted from this process's share while the bucket was unreachable
	probe bool // the open circuit's one probing call
	slot  bool // holds one of MaxInFlight
	token bool // took one of Rate's tokens
	once  sync.Once
}

// Probe reports whether the call is the probe of an open circuit.
func (p *Permit) Probe() bool { return p != nil && p.probe }

// Done reports the call's result: nil or a refused grant are answers (a success for
// the circuit); a 429 or 503 with Retry-After pauses the service fleet-wide; any
// other transient error counts toward opening the circuit. wait reports that the
// failure paused the service or found (or made) its circuit open: the request should
// wait for the service rather than spend one of its deliveries on a retry.
func (p *Permit) Done(err error) (wait bool) {
	if p == nil || p.a == nil {
		return false
	}
	p.once.Do(func() {
		a := p.a
		a.mu.Lock()
		ev := a.eventsFor(p.local)
		if p.slot {
			ev.release++
		}
		failed, neutral, paused := false, false, false
		var te *provider.TransientError
		switch {
		case err == nil || !errors.As(err, &te):
		case errors.Is(err, context.Canceled):
			neutral = true // our own shutdown, not the provider
		case te.RetryAfter > 0 && (te.Status == http.StatusTooManyRequests || te.Status == http.StatusServiceUnavailable):
			if te.RetryAfter > ev.pause {
				ev.pause = te.RetryAfter
				ev.reason = "HTTP " + strconv.Itoa(te.Status) + " Retry-After " + te.RetryAfter.String()
			}
			// A 503 says the provider is down: it counts toward the circuit too; a 429
			// says it is up and counting.
			failed = te.Status == http.StatusServiceUnavailable
			neutral, paused = !failed, true
		default:
			failed = true
		}
		if failed || paused {
			st := &a.cur
			if p.local {
				st = &a.local
			}
			th := a.s.CircuitThreshold
			wait = paused || p.probe || st.Circuit != Closed || st.Paused(time.Now()) ||
				(th > 0 && st.Failures+ev.failures+1 >= th)
		}
		switch {
		case p.probe && neutral:
			ev.probe = probeReturned
		case p.probe && failed:
			ev.probe = probeFailed
		case p.probe:
			ev.probe = probeSucceeded
		case failed:
			ev.failures++
		case !neutral && (a.cur.Failures > 0 || ev.failures > 0):
			ev.successes++
			ev.failures = 0
		}
		write := !ev.empty()
		a.mu.Unlock()
		if write {
			a.kick()
		}
	})
	return wait
}

// Return gives the permit back unused: its slot, its rate token, and, for a probe,
// the chance to probe.
func (p *Permit) Return() {
	if p == nil || p.a == nil {
		return
	}
	p.once.Do(func() {
		p.a.mu.Lock()
		p.giveBack(p.a.eventsFor(p.local))
		p.a.mu.Unlock()
		p.a.kick()
	})
}

// giveBack records what an unused permit returns. a.mu is held.
func (p *Permit) giveBack(ev *events) {
	if p.slot {
		ev.release++
	}
	if p.token {
		ev.refund++
	}
	if p.probe {
		ev.probe = probeReturned
	}
}
