package consumer

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/refresher/refresher/model"
)

// The common case of each step, in one statement instead of a transaction of three
// round trips. A conditional UPDATE is itself the row lock, the check and the write,
// and it commits on its own, with synchronous_commit set on for that commit as the
// transactions set it. Its conditions are the case where the full step would claim
// (or write) without a second thought; whenever one does not hold — a skip, another
// attempt's claim, a row that changed — the statement changes nothing and the full
// step runs: SELECT … FOR UPDATE, the decisions in Go, the writes.

// fastClaim claims g's credential in one statement when it is active, not refreshed
// since the request, and holds no claim at all. It reports whether it claimed.
func (c *Consumer) fastClaim(ctx context.Context, g *group) (bool, error) {
	if c.isStopping() || c.asyncClaims {
		return false, nil // the full step decides (Interrupted) or runs the control
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.LockTimeout+c.cfg.statementTimeout())
	defer cancel()
	start := time.Now()
	spans := startSteps([]*group{g}, "claim")
	defer endSteps(spans)
	id := rand.Int64N(1<<62) + 1
	cred := new(model.Credential)
	query := c.claimSQL([]claimWrite{{id: g.key.ID, claimID: id, service: g.key.Service, requestedAt: g.lead.req.requestedAt}}, true)
	err := c.db.NewRaw(query).Scan(ctx, cred)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("claim credential %d: %w", g.key.ID, lockError([]int64{g.key.ID}, err))
	}
	d := time.Since(start)
	c.observer.LockWait(d)
	c.observer.Transaction(d)
	g.claim = &claim{id: id, cred: cred, deadline: start.Add(c.cfg.claimTTL() - claimMargin)}
	g.state = claimed
	c.local.Store(id, make(chan struct{}))
	return true, nil
}

// fastCommit stores a successful answer in one statement when the claim is still
// this attempt's and the row still holds the stored token it presented. It reports
// whether it wrote; when not (or on an error), the full commit step runs.
// The provider has answered: the write must not be cancelled with ctx, only given up
// at the claim's deadline.
func (c *Consumer) fastCommit(ctx context.Context, g *group) bool {
	if g.err != nil {
		return false
	}
	ctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), g.claim.deadline)
	defer cancel()
	start := time.Now()
	spans := startSteps([]*group{g}, "commit")
	defer endSteps(spans)
	row := &lockedRow{Credential: *g.claim.cred}
	w, err := c.sealed(row, g)
	if err != nil {
		return false
	}
	res, err := c.db.ExecContext(ctx, c.tokensSQL([]tokenWrite{w}, true))
	if err != nil {
		return false
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return false
	}
	d := time.Since(start)
	c.observer.LockWait(d)
	c.observer.Transaction(d)
	c.wakeClaimWaiters([]int64{g.claim.id})
	g.setCallOutcomes(nil)
	return true
}
