package consumer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/refresher/refresher/model"
)

// state is where a group stands in claim, call, commit.
type state int

const (
	// undecided: not claimed yet, or to be decided again from the row as it now is.
	undecided state = iota
	// finished: every job of the group has its outcome.
	finished
	// waiting: another attempt's live claim holds the row (group.heldBy).
	waiting
	// lockedElsewhere: a batch's SKIP LOCKED passed the row over; it goes the per-row way.
	lockedElsewhere
	// claimed: this attempt's claim is committed; the provider may be called.
	claimed
)

// claim is this attempt's durable hold on a credential.
type claim struct {
	id   int64
	cred *model.Credential // the row as locked when the claim was taken
	// deadline is when, by the local clock, to stop trying to commit: earlier than the
	// claim's expiry by the database's clock, since it counts from before the claim.
	deadline time.Time
}

// claimGroups runs the claim step for groups in one short transaction: it locks their
// rows (in id order; with skipLocked, rows held elsewhere are passed over), decides
// each group that needs no provider call, and commits a claim, durably, for each one
// that does. The connection goes back to the pool before any call is made.
func (c *Consumer) claimGroups(ctx context.Context, groups []*group, skipLocked bool) error {
	defer endSteps(startSteps(groups, "claim"))
	ctx, cancel := context.WithTimeout(ctx, c.cfg.LockTimeout+c.cfg.statementTimeout())
	defer cancel()
	var ids []int64
	for _, g := range groups {
		if !slices.Contains(ids, g.key.ID) {
			ids = append(ids, g.key.ID)
		}
	}
	slices.Sort(ids)
	start := time.Now()
	deadline := start.Add(c.cfg.claimTTL() - claimMargin)

	tx, err := c.begin(ctx, !c.asyncClaims)
	if err != nil {
		return err
	}
	defer func() {
		// Rolled back when it wrote nothing (a skip): no commit to flush.
		tx.close(ctx)
		c.observer.Transaction(time.Since(start))
	}()
	rows, err := lockRows(ctx, tx.conn, ids, skipLocked)
	c.observer.LockWait(time.Since(start))
	if err != nil {
		return err
	}
	locked := make(map[int64]*lockedRow, len(rows))
	for _, r := range rows {
		locked[r.ID] = r
	}
	var exist []int64
	if skipLocked && len(rows) < len(ids) {
		var absent []int64
		for _, id := range ids {
			if locked[id] == nil {
				absent = append(absent, id)
			}
		}
		if exist, err = existing(ctx, tx.conn, absent); err != nil {
			return err
		}
	}

	claims := map[int64]int64{} // credential id to claim id
	var claiming []*group
	for _, g := range groups {
		row := locked[g.key.ID]
		if row == nil {
			if slices.Contains(exist, g.key.ID) {
				g.state = lockedElsewhere
			} else {
				g.setOutcome(NotFound, nil)
			}
			continue
		}
		switch o, err := c.decide(g.key, row, g.lead.req.requestedAt, g.lead.delivered); {
		case o != undecidedOutcome:
			g.setOutcome(o, err)
			continue
		case row.liveClaim() && !c.deadOwner(ctx, row):
			g.state, g.heldBy = waiting, *row.ClaimID
			continue
		case claims[row.ID] != 0:
			// Another group of this batch claimed the row already (same id, other
			// service: decide sends the wrong one to NotFound before this).
			g.state, g.heldBy = waiting, claims[row.ID]
			continue
		case row.ClaimID != nil:
			// Expired, or its owner is dead: whatever that attempt may have rotated is past
			// saving, and the provider's reuse interval is what still accepts the token
			// presented now, which the owner presented claim_age ago.
			reason := TakeoverExpired
			if row.liveClaim() {
				reason = TakeoverDeadOwner
			}
			age := time.Duration(*row.ClaimAge * float64(time.Second))
			g.log().Warn("taking over a claim", "reason", reason, "owner", deref(row.ClaimOwner),
				"claim_age", age.Round(time.Millisecond), "claim_age_seconds", age.Seconds())
			c.stats.takeover()
			c.observer.ClaimTakenOver(g.key.Service, reason, age)
		}
		cred := row.Credential
		g.claim = &claim{id: rand.Int64N(1<<62) + 1, cred: &cred, deadline: deadline}
		g.state = claimed
		claims[cred.ID] = g.claim.id
		claiming = append(claiming, g)
	}
	_, err = tx.writeAndCommit(ctx, claiming,
		func(gs []*group) (string, error) {
			var ws []claimWrite
			for _, g := range gs {
				if g.claim != nil {
					ws = append(ws, claimWrite{id: g.key.ID, claimID: g.claim.id, service: g.key.Service, requestedAt: g.lead.req.requestedAt})
				}
			}
			if len(ws) == 0 {
				return "", nil
			}
			return c.claimSQL(ws, false), nil
		},
		func(g *group, err error) string {
			g.setOutcome(Retried, fmt.Errorf("claim credential %d: %w", g.key.ID, err))
			g.claim = nil
			return ""
		})
	if err != nil {
		return c.unclaim(groups, fmt.Errorf("commit claims: %w", err))
	}
	for _, g := range claiming {
		if g.claim != nil {
			c.local.Store(g.claim.id, make(chan struct{}))
		}
	}
	return nil
}

// wakeClaimWaiters closes the local channels of claims that are committed, dropped or
// lost, waking the duplicates of this process that wait for them (awaitClaim).
func (c *Consumer) wakeClaimWaiters(ids []int64) {
	for _, id := range ids {
		if ch, ok := c.local.LoadAndDelete(id); ok {
			close(ch.(chan struct{}))
		}
	}
}

// Why a claim was taken over, as counted.
const (
	// TakeoverExpired: the claim outlived its expiry.
	TakeoverExpired = "expired"
	// TakeoverDeadOwner: the process that holds it is dead (its liveness key expired).
	TakeoverDeadOwner = "dead_owner"
)

// deadOwner reports whether a live claim's owner is known to be dead. A claim younger
// than the owner TTL is never taken this way: its owner may be a process that has not
// registered (RefreshNow before Run) or whose first heartbeat is on its way.
func (c *Consumer) deadOwner(ctx context.Context, row *lockedRow) bool {
	if row.ClaimOwner == nil || row.ClaimAge == nil || c.cfg.OwnerTTL <= 0 {
		return false
	}
	if time.Duration(*row.ClaimAge*float64(time.Second)) < c.cfg.OwnerTTL {
		return false
	}
	return c.live.dead(ctx, *row.ClaimOwner)
}

// unclaim undoes the claimed state of groups whose claim did not commit.
func (c *Consumer) unclaim(groups []*group, err error) error {
	for _, g := range groups {
		if g.state == claimed {
			g.state, g.claim = undecided, nil
		}
	}
	return err
}

// decide applies the checks a locked row goes through before any provider call. It
// returns the outcome that settles the request without a call (with the error behind
// a Retried), or undecidedOutcome. A live claim is the caller's to handle.
func (c *Consumer) decide(key model.Key, row *lockedRow, requestedAt time.Time, delivered uint64) (Outcome, error) {
	switch {
	case row.Service != key.Service:
		return NotFound, nil
	case row.Status != model.StatusActive:
		return SkippedReauth, nil
	case satisfied(row.RefreshedAt, requestedAt):
		return SkippedFresh, nil
	case c.isStopping() && delivered < uint64(c.cfg.MaxDeliver):
		// The last delivery is worked through even during shutdown: a nak now would
		// exhaust MaxDeliver and lose the request.
		return Interrupted, nil
	}
	return undecidedOutcome, nil
}

// awaitClaim waits, holding no connection between looks, until the claim heldBy no
// longer holds credential id: committed, dropped, or expired. Waiting spends no
// delivery: the message is kept alive by its heartbeats meanwhile. It gives up with
// errStopping when shutdown begins (unless this is the last delivery), and with
// ErrClaimHeld once the claim should long have expired.
func (c *Consumer) awaitClaim(ctx context.Context, id, heldBy int64, delivered uint64) error {
	giveUp := time.Now().Add(c.cfg.claimTTL() + c.cfg.LockTimeout)
	delay := 10 * time.Millisecond
	var lastErr error
	stopping := c.stopping
	if delivered >= uint64(c.cfg.MaxDeliver) {
		stopping = nil // the last delivery waits on through shutdown
	}
	if ch, ok := c.local.Load(heldBy); ok {
		// This process holds the claim: wait for it to settle, without polling.
		t := time.NewTimer(time.Until(giveUp))
		defer t.Stop()
		select {
		case <-ch.(chan struct{}):
			return nil
		case <-stopping:
			return errStopping
		case <-t.C:
			return fmt.Errorf("credential %d: %w", id, ErrClaimHeld)
		}
	}
	for {
		if c.isStopping() && delivered < uint64(c.cfg.MaxDeliver) {
			return errStopping
		}
		if time.Now().After(giveUp) {
			if lastErr != nil {
				return fmt.Errorf("credential %d: %w (last error: %w)", id, ErrClaimHeld, lastErr)
			}
			return fmt.Errorf("credential %d: %w", id, ErrClaimHeld)
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-stopping:
			t.Stop()
		}
		delay = min(2*delay, 250*time.Millisecond)
		lctx, cancel := context.WithTimeout(ctx, c.cfg.statementTimeout())
		row, err := claimHolder(lctx, c.db, id)
		cancel()
		if err != nil {
			lastErr = err
			continue
		}
		if row == nil || row.ClaimID == nil || *row.ClaimID != heldBy || !row.liveClaim() || c.deadOwner(ctx, row) {
			return nil
		}
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
