package limit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Observer hears what the limiter does, for metrics. Calls may come from several
// goroutines.
type Observer interface {
	// LimitWaited is one permit's wait.
	LimitWaited(service string, d time.Duration)
	// LimitState is the service's state as this process last saw it; fallback
	// says the shared state cannot be reached and the process limits itself alone.
	LimitState(service string, st State, fallback bool)
	// LimitChanged is a state change this process made: one of the Change names.
	LimitChanged(service, change string)
}

// Changes, as logged and counted (refresher_limit_changes_total{change}).
const (
	ChangePaused   = "paused"
	ChangeResumed  = "resumed"
	ChangeOpened   = "circuit_opened"
	ChangeHalfOpen = "circuit_half_open"
	ChangeClosed   = "circuit_closed"
	ChangeReopened = "circuit_reopened"
	ChangeFallback = "fallback"
	ChangeShared   = "shared"
)

// Options configure a Fleet.
type Options struct {
	// Owner names this process in the shared state (its slots, its probe).
	Owner string
	// Lease is how long this process's slots count without renewal: how soon the
	// slots of a process that died come back. Default 5 s.
	Lease time.Duration
	// ProbeTimeout bounds a probe: past it, another process may probe. Default 30 s.
	ProbeTimeout time.Duration
	// FleetSize is the number of live consume processes, for the fallback share;
	// nil or 0 counts this process alone.
	FleetSize func() int
	Log       *slog.Logger
	Observer  Observer
}

// Fleet is one process's part in the fleet-wide limits of every service.
type Fleet struct {
	js     jetstream.JetStream
	o      Options
	agents map[string]*agent

	mu sync.Mutex
	kv jetstream.KeyValue

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// opTimeout bounds one operation on the bucket: past it the process falls back to
// its share rather than hold calls.
const opTimeout = 2 * time.Second

// fallbackFor is how long a process limits itself alone after the bucket failed it,
// before it tries the bucket again.
const fallbackFor = 2 * time.Second

// pollEvery is how often a service's state is read even without news from the
// watch, which may be re-establishing itself after a server restart.
const pollEvery = 2 * time.Second

// reserveAhead is how long before its time a call's rate token is taken from the
// bucket (settings.reserveAhead). A tenth of a second covers a round trip to the
// bucket on a loaded machine; the token's time is kept all the same.
const reserveAhead = 100 * time.Millisecond

// New prepares the limits of every service; Start shares them.
func New(js jetstream.JetStream, limits map[string]Limits, o Options) *Fleet {
	if o.Lease <= 0 {
		o.Lease = 5 * time.Second
	}
	if o.ProbeTimeout <= 0 {
		o.ProbeTimeout = 30 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}
	f := &Fleet{js: js, o: o, agents: make(map[string]*agent, len(limits))}
	for name, l := range limits {
		f.agents[name] = newAgent(f, name, settings{Limits: l, owner: o.Owner, lease: o.Lease, probeTimeout: o.ProbeTimeout, reserveAhead: reserveAhead})
	}
	return f
}

// Start opens the bucket (creating it when missing), reads every service's state and
// keeps it current until ctx ends or Stop. A bucket that cannot be reached is not an
// error: the process limits itself to its share and keeps trying.
func (f *Fleet) Start(ctx context.Context) {
	ctx, f.cancel = context.WithCancel(ctx)
	f.connect(ctx)
	f.wg.Add(1)
	go func() { defer f.wg.Done(); f.watch(ctx) }()
	for _, a := range f.agents {
		f.wg.Add(1)
		go func() { defer f.wg.Done(); a.run(ctx) }()
	}
}

// Stop gives back this process's slots and waits for its goroutines.
func (f *Fleet) Stop() {
	if f.cancel == nil {
		return
	}
	f.cancel()
	f.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	for _, a := range f.agents {
		a.leave(ctx)
	}
}

// bucket returns the bucket, opening it if it has not been yet.
func (f *Fleet) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	if nc := f.js.Conn(); nc != nil && !nc.IsConnected() {
		// Fail at once rather than time out: the calls waiting meanwhile are better
		// served by the fallback share.
		return nil, fmt.Errorf("bucket %s: %w", Bucket, nats.ErrConnectionClosed)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.kv != nil {
		return f.kv, nil
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	kv, err := OpenBucket(ctx, f.js)
	if err != nil {
		return nil, err
	}
	f.kv = kv
	return kv, nil
}

// OpenBucket opens Bucket, creating it when missing.
func OpenBucket(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      Bucket,
			Description: "refresher: each service's provider limits, shared by the consume fleet",
			History:     1,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, Bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", Bucket, err)
	}
	return kv, nil
}

// connect reads every service's state once.
func (f *Fleet) connect(ctx context.Context) {
	for _, a := range f.agents {
		if err := a.reload(ctx); err != nil {
			a.degrade(err)
		}
	}
}

// watch follows the bucket so a pause or an opened circuit reaches this process
// within milliseconds, not at its next write.
func (f *Fleet) watch(ctx context.Context) {
	for ctx.Err() == nil {
		kv, err := f.bucket(ctx)
		if err == nil {
			var w jetstream.KeyWatcher
			if w, err = kv.WatchAll(ctx, jetstream.IgnoreDeletes()); err == nil {
				f.follow(ctx, w)
				_ = w.Stop()
			}
		}
		t := time.NewTimer(pollEvery)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (f *Fleet) follow(ctx context.Context, w jetstream.KeyWatcher) {
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				continue // the end of the initial values
			}
			if a := f.agents[e.Key()]; a != nil {
				var st State
				if json.Unmarshal(e.Value(), &st) == nil {
					a.seen(st, e.Revision())
				}
			}
		}
	}
}

// Acquire waits until a call to service may start and returns its permit, which
// must end with Done (the call was made) or Return (it was not). A service without
// limits is let through at once unless it is paused or its circuit is open.
func (f *Fleet) Acquire(ctx context.Context, service string) (*Permit, error) {
	a := f.agents[service]
	if a == nil {
		return &Permit{}, nil
	}
	start := time.Now()
	if p := a.fastPermit(start); p != nil {
		return p, nil
	}
	w := &waiter{ch: make(chan *Permit, 1)}
	a.mu.Lock()
	a.waiters = append(a.waiters, w)
	a.mu.Unlock()
	a.kick()
	select {
	case p := <-w.ch:
		f.o.Observer.LimitWaited(service, time.Since(start))
		return p, nil
	case <-ctx.Done():
		a.mu.Lock()
		a.waiters = slices.DeleteFunc(a.waiters, func(x *waiter) bool { return x == w })
		a.mu.Unlock()
		select {
		case p := <-w.ch: // granted meanwhile
			p.Return()
		default:
		}
		return nil, ctx.Err()
	}
}

// Blocked reports whether no call to service may start for a while: paused, or its
// circuit open with no probe due or a probe already waiting here. wake is when that
// may change by itself (zero: only a change of the state can), changed is closed
// when the state changes. A fetch loop uses it to leave requests in the stream.
func (f *Fleet) Blocked(service string) (blocked bool, wake time.Time, changed <-chan struct{}) {
	a := f.agents[service]
	if a == nil {
		return false, time.Time{}, nil
	}
	return a.blocked(time.Now())
}

// Held reports whether a call to service that has its permit should not start now
// after all: the service was paused, or its circuit opened, since the permit was
// granted (a probe's permit is never held).
func (f *Fleet) Held(service string, p *Permit) bool {
	if p.Probe() {
		return false
	}
	a := f.agents[service]
	if a == nil {
		return false
	}
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	st := &a.cur
	if a.fallback(now) {
		st = &a.local
	}
	return st.Paused(now) || st.Circuit != Closed
}

// Probing reports whether service's circuit is not closed: its requests are let
// through one at a time.
func (f *Fleet) Probing(service string) bool {
	st, _ := f.Snapshot(service)
	return st.Circuit != Closed
}

// Snapshot is service's state as this process last saw it.
func (f *Fleet) Snapshot(service string) (State, bool) {
	a := f.agents[service]
	if a == nil {
		return State{}, false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cur.clone(), true
}

// fleetShare is the number of processes the limits are divided by when the shared
// state cannot be reached.
func (f *Fleet) fleetShare() int {
	if f.o.FleetSize == nil {
		return 1
	}
	return max(1, f.o.FleetSize())
}

// ReadStates reads every service's shared state (for status and the console). A
// bucket that does not exist yet means no state.
func ReadStates(ctx context.Context, js jetstream.JetStream) (map[string]State, error) {
	out := map[string]State{}
	kv, err := js.KeyValue(ctx, Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", Bucket, err)
	}
	keys, err := kv.Keys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bucket %s keys: %w", Bucket, err)
	}
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if err != nil {
			continue // deleted meanwhile
		}
		var st State
		if err := json.Unmarshal(e.Value(), &st); err != nil {
			return nil, fmt.Errorf("bucket %s key %s: %w", Bucket, k, err)
		}
		out[k] = st
	}
	return out, nil
}

// share divides l among n processes, rounding up so that each keeps at least one call.
func (l Limits) share(n int) Limits {
	if n <= 1 {
		return l
	}
	if !l.Rate.IsZero() {
		l.Rate.Per *= time.Duration(n)
		l.Rate.Burst = max(1, int(math.Ceil(float64(l.Rate.Burst)/float64(n))))
	}
	if l.MaxInFlight > 0 {
		l.MaxInFlight = max(1, int(math.Ceil(float64(l.MaxInFlight)/float64(n))))
	}
	return l
}

type nopObserver struct{}

func (nopObserver) LimitWaited(string, time.Duration) {}
func (nopObserver) LimitState(string, State, bool)    {}
func (nopObserver) LimitChanged(string, string)       {}
