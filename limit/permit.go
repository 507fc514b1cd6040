package limit

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/refresher/refresher/provider"
)

// Permit is the right to make one provider call. It ends with Done once the call
// returned, or Return if no call was made. For a rate-limited service the call also
// takes a token (Fleet.Pace) just before it starts.
type Permit struct {
	a     *agent
	local bool // granted from this process's share while the bucket was unreachable
	probe bool // the open circuit's one probing call
	slot  bool // holds one of MaxInFlight
	rated bool // the service has a rate: Pace takes a token
	// admitted: counted in agent.admitted until the token is taken or the permit ends.
	admitted bool
	token    bool // took one of Rate's tokens (given back by Return)
	once     sync.Once
}

// ErrHeld means a call about to start must not: the service was paused, or its
// circuit opened, after the permit was granted. The request waits for the service
// again (Acquire).
var ErrHeld = errors.New("provider paused or failing: call held back")

// Pace takes the rate token of a call about to start, waiting for it: the rate is
// kept at the moment calls start, not when their permits were granted, so the
// variable time in between (the claim) cannot bunch calls at the provider. It
// returns ErrHeld if the service is paused or its circuit open (or opening
// meanwhile), ctx's error if ctx ends first. A probe needs no token.
func (f *Fleet) Pace(ctx context.Context, p *Permit) error {
	if p == nil || p.a == nil || p.probe {
		return nil
	}
	if f.Held(p.a.name, p) {
		return ErrHeld
	}
	if !p.rated || p.token {
		return nil
	}
	a := p.a
	w := &tokenWaiter{ch: make(chan error, 1)}
	a.mu.Lock()
	a.tokens = append(a.tokens, w)
	a.mu.Unlock()
	a.kick()
	select {
	case err := <-w.ch:
		if err != nil {
			return err
		}
		a.mu.Lock()
		p.token = true
		p.unadmit()
		a.mu.Unlock()
		a.kick()
		// A token reserved ahead: its call starts at its time, from here.
		if wait := time.Until(w.at); wait > 0 {
			t := time.NewTimer(wait)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
				return ctx.Err() // Return gives the token back
			}
			if f.Held(a.name, p) {
				return ErrHeld // paused or failing while it waited
			}
		}
		return nil
	case <-ctx.Done():
		a.mu.Lock()
		a.tokens = slices.DeleteFunc(a.tokens, func(x *tokenWaiter) bool { return x == w })
		select {
		case err := <-w.ch:
			if err == nil {
				p.token = true // granted meanwhile: Return gives it back
			}
		default:
		}
		a.mu.Unlock()
		return ctx.Err()
	}
}

// unadmit ends the permit's place among the admitted. a.mu is held.
func (p *Permit) unadmit() {
	if p.admitted {
		p.admitted = false
		p.a.admitted--
	}
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
		before, admitted := *ev, p.admitted
		if p.slot {
			ev.release++
		}
		p.unadmit()
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
		if failed || paused {
			st := &a.cur
			if p.local {
				st = &a.local
			}
			wait = paused || p.probe || st.Circuit != Closed || st.Paused(time.Now()) || a.opening(st, ev)
		}
		news := *ev != before || admitted
		a.mu.Unlock()
		if news {
			// Only a change wakes the agent: the common call of a service without
			// limits costs a lock, no more.
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
		p.unadmit()
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
