package limit

import (
	"maps"
	"reflect"
	"time"
)

// Circuit is a service's circuit breaker position.
type Circuit string

// Circuit positions. Closed is stored as "" so a fresh state is closed.
const (
	Closed   Circuit = ""
	Open     Circuit = "open"
	HalfOpen Circuit = "half_open"
)

// String names the position as metrics and logs show it.
func (c Circuit) String() string {
	if c == Closed {
		return "closed"
	}
	return string(c)
}

// State is one service's limiter state, kept as one value in Bucket and changed only
// by compare-and-set, so every process of the fleet sees and makes the same decisions.
// Times are Unix nanoseconds by the writer's clock.
type State struct {
	// TAT is the rate's theoretical arrival time (GCRA): the pace's position. A call
	// may start while TAT is at most one burst ahead of now.
	TAT int64 `json:"tat,omitempty"`
	// Slots are provider calls in flight, per process, each entry leased: a process
	// that dies stops renewing and its slots come back when the lease runs out.
	Slots map[string]Slot `json:"slots,omitempty"`
	// PausedUntil is when a provider's Retry-After ends: no call starts before it.
	PausedUntil int64   `json:"paused_until,omitempty"`
	PauseReason string  `json:"pause_reason,omitempty"`
	Circuit     Circuit `json:"circuit,omitempty"`
	// Failures is the run of transient failures since the last success.
	Failures int   `json:"failures,omitempty"`
	OpenedAt int64 `json:"opened_at,omitempty"`
	// NextProbe is when an open circuit lets one call through; Probes counts the
	// failed probes since it opened, which grows the interval.
	NextProbe  int64  `json:"next_probe,omitempty"`
	Probes     int    `json:"probes,omitempty"`
	ProbeOwner string `json:"probe_owner,omitempty"`
	ProbeUntil int64  `json:"probe_until,omitempty"`
}

// Slot is one process's provider calls in flight.
type Slot struct {
	N       int   `json:"n"`
	Expires int64 `json:"exp"`
}

// InFlight is the fleet's provider calls in flight, leases that ran out excluded.
func (s *State) InFlight(now time.Time) int {
	n := 0
	for _, sl := range s.Slots {
		if sl.Expires > now.UnixNano() {
			n += sl.N
		}
	}
	return n
}

// Paused reports whether a Retry-After holds the service at now.
func (s *State) Paused(now time.Time) bool { return s.PausedUntil > now.UnixNano() }

func (s *State) clone() State {
	c := *s
	c.Slots = maps.Clone(s.Slots)
	return c
}

func (s *State) equal(o *State) bool {
	a, b := s.clone(), o.clone()
	a.Slots, b.Slots = nil, nil
	return reflect.DeepEqual(a, b) && maps.Equal(s.Slots, o.Slots)
}

// events are what this process has to tell the fleet since its last write.
type events struct {
	release   int           // slots to give back
	refund    int           // rate tokens taken for calls that were not made
	failures  int           // transient failures (outside a probe)
	successes int           // answered calls (outside a probe)
	pause     time.Duration // a Retry-After to apply from now
	reason    string
	probe     probeResult
}

// merge puts back events whose write failed (e) before the ones that came since.
func (e events) merge(later events) events {
	e.release += later.release
	e.refund += later.refund
	if later.successes > 0 {
		// A success since ends the run of failures e counted.
		e.successes += later.successes
		e.failures = later.failures
	} else {
		e.failures += later.failures
	}
	if later.pause > e.pause {
		e.pause, e.reason = later.pause, later.reason
	}
	if later.probe != probeNone {
		e.probe = later.probe
	}
	return e
}

type probeResult int

const (
	probeNone probeResult = iota
	probeSucceeded
	probeFailed
	probeReturned // the probe's message needed no call after all
)

// plan is one process's view of a change to the shared state: the events it has to
// report and the permits its waiters want. It returns the state to write (ok when
// nothing changed), how many permits that grants (probe: the first is the circuit's
// probe) and when to look again if some waiters are left.
type plan struct {
	next    State
	granted int // permits (slots)
	probe   bool
	tokenAt []time.Time // rate tokens for calls about to start: when each call may start
	held    bool        // token waiters must go back: the service is paused or failing
	wake    time.Time   // zero: only a change of the state can help
}

// settings are what plan needs of one service's limits.
type settings struct {
	Limits
	owner        string
	lease        time.Duration
	probeTimeout time.Duration
	// reserveAhead is how long before its time a rate token may be handed out: the
	// call waits for its time in its own process, so a slow round trip to the bucket
	// (a loaded machine, contention between processes) does not make calls late and
	// lose the rate's slots.
	reserveAhead time.Duration
}

// makePlan applies ev, up to want permits and up to tokens rate tokens to cur at now.
func makePlan(cur State, ev events, want, tokens int, now time.Time, s settings) plan {
	st := cur.clone()
	ns := now.UnixNano()
	for o, sl := range st.Slots {
		if sl.Expires <= ns && o != s.owner || sl.N <= 0 {
			delete(st.Slots, o)
		}
	}
	mine := st.Slots[s.owner]
	mine.N = max(0, mine.N-ev.release)
	if ev.refund > 0 && !s.Rate.IsZero() && st.TAT > ns {
		st.TAT = max(st.TAT-int64(ev.refund)*int64(s.Rate.interval()), ns)
	}
	if ev.pause > 0 {
		if until := now.Add(min(ev.pause, MaxPause)).UnixNano(); until > st.PausedUntil {
			st.PausedUntil, st.PauseReason = until, ev.reason
		}
	}
	if st.PausedUntil != 0 && st.PausedUntil <= ns {
		st.PausedUntil, st.PauseReason = 0, ""
	}
	st.applyProbe(ev.probe, now, s)
	if st.Circuit == Closed {
		if ev.successes > 0 {
			st.Failures = 0 // failures counted with it came after the success
		}
		st.Failures += ev.failures
		if s.CircuitThreshold > 0 && st.Failures >= s.CircuitThreshold {
			st.Circuit, st.OpenedAt, st.Probes = Open, ns, 0
			st.NextProbe = now.Add(s.probeDelay(0)).UnixNano()
		}
	}
	if st.Circuit == HalfOpen && st.ProbeUntil <= ns {
		// The probing process died or hung: let another probe.
		st.Circuit, st.ProbeOwner, st.ProbeUntil, st.NextProbe = Open, "", 0, ns
	}

	p := plan{}
	if want > 0 {
		p = st.grant(want, now, s, &mine)
	}
	if tokens > 0 {
		st.pace(tokens, now, s, &p)
	}
	if s.MaxInFlight > 0 {
		if mine.N > 0 {
			// Renewed with every write, and when a third of the lease is gone.
			if mine.Expires-ns < int64(s.lease)*2/3 || p.granted > 0 {
				mine.Expires = now.Add(s.lease).UnixNano()
			}
			if st.Slots == nil {
				st.Slots = map[string]Slot{}
			}
			st.Slots[s.owner] = mine
		} else {
			delete(st.Slots, s.owner)
		}
		if len(st.Slots) == 0 {
			st.Slots = nil
		}
	}
	p.next = st
	return p
}

// applyProbe records how this process's probe went.
func (st *State) applyProbe(r probeResult, now time.Time, s settings) {
	if r == probeNone || st.Circuit != HalfOpen || st.ProbeOwner != s.owner {
		return
	}
	st.ProbeOwner, st.ProbeUntil = "", 0
	switch r {
	case probeSucceeded:
		st.Circuit, st.Failures, st.Probes, st.OpenedAt, st.NextProbe = Closed, 0, 0, 0, 0
	case probeFailed:
		st.Circuit = Open
		st.Probes++
		st.NextProbe = now.Add(s.probeDelay(st.Probes)).UnixNano()
	case probeReturned:
		st.Circuit, st.NextProbe = Open, now.UnixNano()
	}
}

// grant takes up to want permits from st for this process.
func (st *State) grant(want int, now time.Time, s settings, mine *Slot) plan {
	ns := now.UnixNano()
	p := plan{}
	switch {
	case st.PausedUntil > ns:
		p.wake = time.Unix(0, st.PausedUntil)
		return p
	case st.Circuit == HalfOpen:
		p.wake = time.Unix(0, st.ProbeUntil)
		return p
	case st.Circuit == Open && st.NextProbe > ns:
		p.wake = time.Unix(0, st.NextProbe)
		return p
	case st.Circuit == Open:
		want, p.probe = 1, true
	}
	k := want
	if s.MaxInFlight > 0 {
		free := s.MaxInFlight - st.InFlight(now)
		if mine.Expires <= ns {
			free -= mine.N // our own entry counts even when its lease needs renewing
		}
		if free < k {
			k = max(free, 0)
			// Another process's lease running out frees its slots.
			for _, sl := range st.Slots {
				if sl.Expires > ns && (p.wake.IsZero() || sl.Expires < p.wake.UnixNano()) {
					p.wake = time.Unix(0, sl.Expires)
				}
			}
		}
	}
	if k == 0 {
		p.probe = false
		return p
	}
	p.granted = k
	mine.N += k
	if p.probe {
		st.Circuit, st.ProbeOwner = HalfOpen, s.owner
		st.ProbeUntil = now.Add(s.probeTimeout).UnixNano()
	}
	return p
}

// pace takes up to want rate tokens for calls about to start: the rate is kept at
// the moment of the call, so the variable time between a permit and its call (the
// claim) cannot bunch calls at the provider.
func (st *State) pace(want int, now time.Time, s settings, p *plan) {
	ns := now.UnixNano()
	if st.PausedUntil > ns || st.Circuit != Closed {
		p.held = true
		return
	}
	iv := int64(s.Rate.interval())
	burst := int64(s.Rate.sendBurst())
	tat := max(st.TAT, ns)
	// Token j conforms from tat + (j - burst + 1) intervals on; it is handed out up to
	// reserveAhead before that, with that time to start at.
	ahead := int64(s.reserveAhead)
	k := 0
	for ; k < want; k++ {
		at := tat + (int64(k)-burst+1)*iv
		if at > ns+ahead {
			wake := time.Unix(0, at-ahead)
			if p.wake.IsZero() || wake.Before(p.wake) {
				p.wake = wake
			}
			break
		}
		p.tokenAt = append(p.tokenAt, time.Unix(0, max(at, ns)))
	}
	if k > 0 {
		st.TAT = tat + int64(k)*iv
	}
}

// MaxPause bounds a Retry-After: a header of days must not stop a service past what
// an operator would notice and the stream keeps.
const MaxPause = time.Hour
