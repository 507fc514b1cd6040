package consumer

import (
	"context"
	"fmt"
	"time"

	"github.com/refresher/refresher/model"
)

// RefreshNow runs, without NATS, what a refresh request for key made at requestedAt
// would get from the fleet: claim (lock, skip rule, durable claim), provider call, and
// commit (lock, checks, write). Application code can use it to refresh a credential synchronously
// (say, right after a 401) under the same lock and rules as the fleet, and the
// benchmark uses it as the baseline for the fleet's end-to-end rate.
//
// ctx is checked before starting; once started, the refresh runs to its own deadlines,
// because abandoning it after the provider answered would lose the token.
// A Retried outcome comes with the error that caused it.
func (c *Consumer) RefreshNow(ctx context.Context, key model.Key, requestedAt time.Time) (Outcome, error) {
	if err := ctx.Err(); err != nil {
		return Retried, err
	}
	prov, ok := c.providers[key.Service]
	if !ok {
		return Malformed, fmt.Errorf("unknown service %q", key.Service)
	}
	// Once started it runs to its own deadlines: abandoning it after the provider
	// answered would lose the token.
	ctx = context.WithoutCancel(ctx)
	c.live.acquire(ctx)
	defer c.live.release()
	j := &job{ctx: ctx, delivered: 1, req: request{key: key, requestedAt: requestedAt}, prov: prov, start: time.Now(), log: c.log}
	g := newGroup(j)
	c.refreshGroup(ctx, g)
	c.leaveCalls(g)
	g.returnPermit()
	return j.outcome, j.err
}
