package consumer

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/refresher/refresher/limit"
)

// WithLimits sets each service's provider limits (package limit), shared by every
// consume process through NATS. A service without an entry gets limit.DefaultLimits:
// no rate or concurrency cap, and a circuit that opens after a run of failures.
func WithLimits(l map[string]limit.Limits) Option { return func(c *Consumer) { c.limits = l } }

// limiter runs the fleet-wide limits: started by the first message or RefreshNow,
// stopped when Run returns.
type limiter struct {
	mu      sync.Mutex
	fleet   *limit.Fleet
	running bool
}

// newLimiter prepares the limits of c's services.
func (c *Consumer) newLimiter() {
	all := make(map[string]limit.Limits, len(c.providers))
	for name := range c.providers {
		l, ok := c.limits[name]
		if !ok {
			l = limit.DefaultLimits()
		}
		all[name] = l
	}
	var obs limit.Observer
	if o, ok := c.observer.(limit.Observer); ok {
		obs = o
	}
	c.lim.fleet = limit.New(c.js, all, limit.Options{
		Owner:        c.owner,
		Lease:        c.cfg.LimitLease,
		ProbeTimeout: c.cfg.ProviderTimeout + c.cfg.LimitLease,
		FleetSize:    c.live.fleetSize,
		Log:          c.log,
		Observer:     obs,
	})
}

// limitFleet returns the running limits.
func (c *Consumer) limitFleet(ctx context.Context) *limit.Fleet {
	c.lim.mu.Lock()
	defer c.lim.mu.Unlock()
	if !c.lim.running {
		c.lim.fleet.Start(context.WithoutCancel(ctx))
		c.lim.running = true
	}
	return c.lim.fleet
}

func (c *Consumer) stopLimits() {
	c.lim.mu.Lock()
	defer c.lim.mu.Unlock()
	if c.lim.running {
		c.lim.fleet.Stop()
		c.lim.running = false
	}
}

// admit waits for the permit a group needs before its provider call. The wait holds
// no claim, lock or connection, and the message's heartbeats keep it from being
// redelivered, so it spends no delivery however long a pause or an outage lasts.
// Shutdown ends the wait (errStopping) except on a message's last delivery.
func (c *Consumer) admit(ctx context.Context, g *group) error {
	return c.admitWithin(ctx, g, 0)
}

// admitWithin is admit that gives up after d (0: no limit) with errNoPermit. A batch
// waits for its first group's permit only, and takes the others' if they come at
// once: holding permits while waiting for more would let processes deadlock on a cap
// of calls in flight.
func (c *Consumer) admitWithin(ctx context.Context, g *group, d time.Duration) error {
	if g.permit != nil || c.naive {
		return nil
	}
	// The wait ends with shutdown (below) or d, not with the message's context.
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	if d > 0 {
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), d)
	}
	defer cancel()
	if g.lead.delivered < uint64(c.cfg.MaxDeliver) {
		go func() {
			select {
			case <-c.stopping:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	p, err := c.limitFleet(ctx).Acquire(ctx, g.key.Service)
	if err != nil {
		if d > 0 && !c.isStopping() {
			return errNoPermit
		}
		return errStopping
	}
	g.permit = p
	return nil
}

// sendBack drops the claims of groups whose call did not start (callGroups) and
// sends them back to wait for their service, holding nothing: their claims are
// released, their permits given back.
func (c *Consumer) sendBack(ctx context.Context, back []*group) {
	if len(back) == 0 {
		return
	}
	c.releaseClaims(ctx, back)
	ids := make([]int64, len(back))
	for i, g := range back {
		ids[i] = g.claim.id
		g.returnPermit()
		g.state, g.claim, g.wait, g.heldBack = undecided, nil, true, false
	}
	c.wakeClaimWaiters(ids)
}

// errNoPermit: no permit came within the time given.
var errNoPermit = errors.New("no permit at once")

// batchPermitWait is how long a batch waits for the permits of its groups after the
// first; a group without one goes the per-row way after the batch.
const batchPermitWait = 20 * time.Millisecond

// callDone reports a call's result to its permit. A failure that paused the service
// or opened its circuit makes the group wait for the service (g.wait) instead of
// spending a delivery on a retry.
func (g *group) callDone() {
	if g.permit != nil {
		g.wait = g.permit.Done(g.err)
		g.permit = nil
	}
}

// returnPermit gives back a permit the group did not use for a call.
func (g *group) returnPermit() {
	if g.permit != nil {
		g.permit.Return()
		g.permit = nil
	}
}

// blocked waits while service's requests should stay in the stream (paused, or its
// circuit open): it returns when that may have changed, or ctx ends.
func (c *Consumer) waitUnblocked(ctx context.Context, service string) bool {
	blocked, wake, changed := c.limitFleet(ctx).Blocked(service)
	if !blocked {
		return false
	}
	d := time.Second
	if !wake.IsZero() {
		d = max(min(time.Until(wake), d), time.Millisecond)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-c.stopping:
	case <-changed:
	case <-t.C:
	}
	return true
}
