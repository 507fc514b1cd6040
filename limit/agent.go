package limit

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

type waiter struct{ ch chan *Permit }

// tokenWaiter is a call about to start, waiting for a rate token; it gets nil, or
// ErrHeld when the service is paused or its circuit opens meanwhile.
type tokenWaiter struct {
	ch chan error
	at time.Time // set before nil is sent: when the call may start
}

// agent is this process's side of one service's shared state: it writes what this
// process has to report, hands out the permits the state allows, and follows what
// the other processes write.
type agent struct {
	f    *Fleet
	name string
	s    settings
	// kicks wakes run: a waiter, an event or news from the watch.
	kicks chan struct{}

	mu      sync.Mutex
	cur     State
	rev     uint64
	pending events
	waiters []*waiter
	tokens  []*tokenWaiter
	// admitted counts this process's permits of a rate-limited service that have not
	// taken their token yet: they hold claims, so their number is kept to about a
	// second of the process's share of the rate.
	admitted int
	changed  chan struct{} // closed and replaced when cur changes

	// While the bucket cannot be reached the process limits itself to its share, in
	// a state of its own.
	fallbackUntil time.Time
	inFallback    bool
	stale         bool // cur may be old: read again before writing
	local         State
	localPending  events
}

func newAgent(f *Fleet, name string, s settings) *agent {
	return &agent{f: f, name: name, s: s, kicks: make(chan struct{}, 1), changed: make(chan struct{})}
}

func (a *agent) kick() {
	select {
	case a.kicks <- struct{}{}:
	default:
	}
}

// fastPermit lets a call to a service without limits through without a round trip,
// when this process's copy of the state shows no pause and a closed circuit.
func (a *agent) fastPermit(now time.Time) *Permit {
	if a.s.limited() {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	local := a.fallback(now)
	st := &a.cur
	if local {
		st = &a.local
	}
	if st.Circuit != Closed || st.Paused(now) || a.opening(st, a.eventsFor(local)) {
		return nil
	}
	return &Permit{a: a, local: local}
}

// opening reports whether the failures this process has seen but not yet written
// make the run that opens the circuit: the process then starts no more calls by
// itself, instead of one more round for every write's round trip to the bucket (a
// loaded machine, a slow cluster). a.mu is held.
func (a *agent) opening(st *State, ev *events) bool {
	th := a.s.CircuitThreshold
	if th <= 0 || ev.failures == 0 {
		return false
	}
	run := ev.failures
	if ev.successes == 0 {
		run += st.Failures
	}
	return run >= th
}

func (a *agent) fallback(now time.Time) bool { return now.Before(a.fallbackUntil) }

// run hands out permits and reports events until ctx ends.
func (a *agent) run(ctx context.Context) {
	t := time.NewTimer(pollEvery)
	defer t.Stop()
	lastRead := time.Now()
	for {
		wake := a.step(ctx)
		next := pollEvery - time.Since(lastRead)
		if !wake.IsZero() {
			next = min(next, time.Until(wake))
		}
		t.Reset(max(next, time.Millisecond))
		select {
		case <-ctx.Done():
			return
		case <-a.kicks:
		case <-t.C:
		}
		if time.Since(lastRead) >= pollEvery {
			// The watch may be down (a server restart): read the state ourselves.
			lastRead = time.Now()
			if err := a.reload(ctx); err != nil && ctx.Err() == nil {
				a.degrade(err)
			}
		}
	}
}

// step makes one change to the shared state, if one is due, and hands out what it
// grants. It returns when to look again (zero: when something happens).
func (a *agent) step(ctx context.Context) time.Time {
	for range 20 {
		now := time.Now()
		a.mu.Lock()
		if a.fallback(now) {
			wake := a.stepLocal(now)
			a.mu.Unlock()
			return wake
		}
		stale := a.stale
		a.mu.Unlock()
		if stale {
			if err := a.reload(ctx); err != nil {
				a.degrade(err)
				continue
			}
		}
		a.mu.Lock()
		ev, want, tokens := a.pending, a.wanted(), len(a.tokens)
		a.pending = events{}
		cur, rev := a.cur.clone(), a.rev
		a.mu.Unlock()

		p := makePlan(cur, ev, want, tokens, now, a.s)
		if p.next.equal(&cur) {
			a.mu.Lock()
			a.handOut(p, false)
			a.mu.Unlock()
			return a.renewal(p)
		}
		newRev, err := a.write(ctx, p.next, rev)
		if err != nil {
			a.mu.Lock()
			a.pending = ev.merge(a.pending)
			a.mu.Unlock()
			if ctx.Err() != nil {
				return time.Time{}
			}
			if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
				if err := a.reload(ctx); err != nil {
					a.degrade(err)
				}
				continue
			}
			a.degrade(err)
			continue
		}
		a.mu.Lock()
		a.set(p.next, newRev)
		a.handOut(p, false)
		a.mu.Unlock()
		a.report(cur, p.next)
		return a.renewal(p)
	}
	// Twenty processes wrote before us: look again shortly.
	return time.Now().Add(5 * time.Millisecond)
}

// renewal is when to look again: the plan's wake, or this process's lease renewal.
func (a *agent) renewal(p plan) time.Time {
	wake := p.wake
	if sl, ok := p.next.Slots[a.s.owner]; ok && sl.N > 0 {
		at := time.Unix(0, sl.Expires).Add(-a.s.lease * 2 / 3)
		if wake.IsZero() || at.Before(wake) {
			wake = at
		}
	}
	return wake
}

// stepLocal is step while the bucket cannot be reached: the same rules on this
// process's share of the limits. a.mu is held.
func (a *agent) stepLocal(now time.Time) time.Time {
	s := a.s
	s.Limits = s.Limits.share(a.f.fleetShare())
	s.lease = 24 * time.Hour
	p := makePlan(a.local, a.localPending, a.wanted(), len(a.tokens), now, s)
	a.local, a.localPending = p.next, events{}
	a.handOut(p, true)
	wake := p.wake
	if wake.IsZero() || a.fallbackUntil.Before(wake) {
		wake = a.fallbackUntil
	}
	return wake
}

// wanted is how many permits to ask for: every waiter, or for a rate-limited
// service as many as keep the admitted ones within about a second of this
// process's share of the rate. a.mu is held.
func (a *agent) wanted() int {
	want := len(a.waiters)
	if a.s.Rate.IsZero() {
		return want
	}
	share := float64(a.f.fleetShare())
	limit := max(1, int(math.Ceil((a.s.Rate.PerSecond()+float64(a.s.Rate.Burst))/share)))
	return min(want, max(limit-a.admitted, 0))
}

// handOut gives p's permits and tokens to the longest waiting; a permit nobody
// waits for any more goes back at once. a.mu is held.
func (a *agent) handOut(p plan, local bool) {
	for i := range p.granted {
		pm := &Permit{a: a, local: local, probe: p.probe && i == 0, slot: a.s.MaxInFlight > 0, rated: !a.s.Rate.IsZero()}
		if len(a.waiters) == 0 {
			// Its wait gave up while the state was written: it was never admitted.
			pm.giveBack(a.eventsFor(local))
			a.kick()
			continue
		}
		if pm.rated && !pm.probe {
			pm.admitted = true
			a.admitted++
		}
		w := a.waiters[0]
		a.waiters = a.waiters[1:]
		w.ch <- pm
	}
	for _, at := range p.tokenAt {
		if len(a.tokens) == 0 {
			a.eventsFor(local).refund++
			a.kick()
			continue
		}
		a.tokens[0].at = at
		a.tokens[0].ch <- nil
		a.tokens = a.tokens[1:]
	}
	if p.held {
		for _, w := range a.tokens {
			w.ch <- ErrHeld
		}
		a.tokens = nil
	}
}

func (a *agent) eventsFor(local bool) *events {
	if local {
		return &a.localPending
	}
	return &a.pending
}

// set records a state written or seen. a.mu is held.
func (a *agent) set(st State, rev uint64) {
	if rev < a.rev {
		return
	}
	a.cur, a.rev, a.stale = st, rev, false
	close(a.changed)
	a.changed = make(chan struct{})
	if a.inFallback && !a.fallback(time.Now()) {
		a.inFallback = false
		a.f.o.Log.Info("provider limits shared by the fleet again", "service", a.name)
		a.f.o.Observer.LimitChanged(a.name, ChangeShared)
	}
	a.f.o.Observer.LimitState(a.name, st, false)
}

// seen is a state another process (or this one) wrote, from the watch.
func (a *agent) seen(st State, rev uint64) {
	a.mu.Lock()
	a.set(st, rev)
	a.mu.Unlock()
	a.kick()
}

// reload reads the state from the bucket.
func (a *agent) reload(ctx context.Context) error {
	kv, err := a.f.bucket(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	e, err := kv.Get(ctx, a.name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		a.mu.Lock()
		if a.rev == 0 {
			a.stale = false
		}
		a.mu.Unlock()
		return nil
	}
	if err != nil {
		return err
	}
	var st State
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return err
	}
	a.mu.Lock()
	a.set(st, e.Revision())
	a.mu.Unlock()
	return nil
}

// write is one compare-and-set of the state.
func (a *agent) write(ctx context.Context, st State, rev uint64) (uint64, error) {
	kv, err := a.f.bucket(ctx)
	if err != nil {
		return 0, err
	}
	data, err := json.Marshal(st)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if rev == 0 {
		return kv.Create(ctx, a.name, data)
	}
	return kv.Update(ctx, a.name, data, rev)
}

// degrade makes the process limit itself to its share for a while.
func (a *agent) degrade(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	a.fallbackUntil, a.stale = now.Add(fallbackFor), true
	if a.inFallback {
		return
	}
	a.inFallback = true
	// The local state starts from what the fleet last agreed: a pause or an open
	// circuit holds here too.
	a.local = a.cur.clone()
	a.local.Slots, a.local.TAT = nil, 0
	a.f.o.Log.Warn("provider limits cannot be read from NATS; this process limits itself to its share until they can",
		"service", a.name, "bucket", Bucket, "share_of", a.f.fleetShare(), "error", err)
	a.f.o.Observer.LimitChanged(a.name, ChangeFallback)
	a.f.o.Observer.LimitState(a.name, a.local, true)
}

// blocked is Fleet.Blocked for this service.
func (a *agent) blocked(now time.Time) (bool, time.Time, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := &a.cur
	if a.fallback(now) {
		st = &a.local
	}
	switch {
	case st.Paused(now):
		return true, time.Unix(0, st.PausedUntil), a.changed
	case st.Circuit == HalfOpen:
		return true, time.Unix(0, st.ProbeUntil), a.changed
	case st.Circuit == Open && st.NextProbe > now.UnixNano():
		return true, time.Unix(0, st.NextProbe), a.changed
	case st.Circuit == Open && len(a.waiters) > 0:
		return true, time.Time{}, a.changed // a request here will probe
	}
	return false, time.Time{}, a.changed
}

// report logs and counts the changes this process made, once each.
func (a *agent) report(old, next State) {
	log := a.f.o.Log.With("service", a.name)
	changed := func(change string) { a.f.o.Observer.LimitChanged(a.name, change) }
	now := time.Now()
	switch {
	case next.PausedUntil > old.PausedUntil && next.PausedUntil > now.UnixNano():
		log.Warn("provider asked to wait: no call to it starts anywhere in the fleet until then",
			"until", time.Unix(0, next.PausedUntil).UTC().Format(time.RFC3339Nano), "reason", next.PauseReason)
		changed(ChangePaused)
	case old.PausedUntil != 0 && next.PausedUntil == 0:
		log.Info("provider's wait is over; calls resume at the service's limits")
		changed(ChangeResumed)
	}
	if old.Circuit == next.Circuit {
		return
	}
	probeIn := time.Until(time.Unix(0, next.NextProbe)).Round(time.Millisecond)
	switch {
	case old.Circuit == Closed && next.Circuit == Open:
		log.Warn("circuit opened: the provider keeps failing; its requests wait in the stream", "failures", next.Failures, "probe_in", probeIn)
		changed(ChangeOpened)
	case next.Circuit == HalfOpen:
		log.Info("circuit half-open: probing the provider with one call")
		changed(ChangeHalfOpen)
	case next.Circuit == Closed:
		log.Info("circuit closed: the provider answered; calls resume at the service's limits")
		changed(ChangeClosed)
	case next.Circuit == Open:
		log.Warn("probe failed; circuit stays open", "failed_probes", next.Probes, "probe_in", probeIn)
		changed(ChangeReopened)
	}
}

// leave gives back this process's slots and probe on a clean exit.
func (a *agent) leave(ctx context.Context) {
	for range 5 {
		if err := a.reload(ctx); err != nil {
			return
		}
		a.mu.Lock()
		cur, rev := a.cur.clone(), a.rev
		a.mu.Unlock()
		next := cur.clone()
		delete(next.Slots, a.s.owner)
		if next.Circuit == HalfOpen && next.ProbeOwner == a.s.owner {
			next.Circuit, next.ProbeOwner, next.ProbeUntil, next.NextProbe = Open, "", 0, time.Now().UnixNano()
		}
		if next.equal(&cur) || rev == 0 {
			return
		}
		if _, err := a.write(ctx, next, rev); err == nil || !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return
		}
	}
}
