package consumer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/refresher/refresher/provider"
)

// verdict is what the commit step found for one group.
type verdict int

const (
	writeToken    verdict = iota // claim ours, token unchanged, provider issued a token
	writeReauth                  // ... provider refused the grant
	writeFailure                 // ... provider failed: record it, drop the claim
	goneRow                      // the credential was deleted during the call
	lostClaim                    // the claim expired and another attempt took it
	replacedGrant                // the application stored a new grant during the call
	refusedWrite                 // the row refused the write (a trigger, a constraint)
)

// Reasons a provider's answer is discarded, as counted.
const (
	DiscardGrantReplaced = "grant_replaced"
	DiscardClaimLost     = "claim_lost"
	DiscardDeleted       = "deleted"
)

// commitGroups runs the commit step for claimed groups whose provider call returned:
// one short transaction that locks their rows again, checks each claim is still this
// attempt's and each row still holds the token presented, writes what the calls
// returned and drops the claims. Until the claims would expire it retries a database
// that cannot be reached: an issued token exists only here meanwhile.
//
// The provider has answered: the commit is not cancelled with ctx (shutdown included),
// only given up at the claims' deadline.
func (c *Consumer) commitGroups(ctx context.Context, groups []*group) {
	ctx = context.WithoutCancel(ctx)
	defer endSteps(startSteps(groups, "commit"))
	deadline := groups[0].claim.deadline
	ids := make([]int64, len(groups))
	for i, g := range groups {
		if g.claim.deadline.Before(deadline) {
			deadline = g.claim.deadline
		}
		ids[i] = g.claim.id
	}
	defer c.wakeClaimWaiters(ids)
	delay := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		verdicts, err := c.commitOnce(ctx, groups, deadline)
		if err == nil {
			c.afterCommit(groups, verdicts)
			return
		}
		wait := min(delay, time.Until(deadline))
		if !retryable(err) || wait <= 0 {
			c.commitFailed(groups, err)
			if !retryable(err) {
				// The database refused the commit itself (a deferred constraint): nothing
				// was written, the claims included. Release them so the retry need not
				// wait for them to expire.
				c.releaseClaims(ctx, groups)
			}
			return
		}
		if attempt == 1 || attempt%10 == 0 {
			groups[0].log().Warn("commit failed; retrying until the claim expires", "rows", len(groups), "attempt", attempt, "error", err)
		}
		time.Sleep(wait)
		delay = min(2*delay, time.Second)
	}
}

// commitOnce is one try of the commit step's transaction.
func (c *Consumer) commitOnce(ctx context.Context, groups []*group, deadline time.Time) (map[*group]verdict, error) {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	ids := make([]int64, 0, len(groups))
	for _, g := range groups {
		ids = append(ids, g.key.ID)
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	start := time.Now()
	tx, err := c.begin(ctx, true)
	if err != nil {
		return nil, err
	}
	defer tx.close(ctx)
	rows, err := lockRows(ctx, tx.conn, ids, false)
	c.observer.LockWait(time.Since(start))
	if err != nil {
		return nil, err
	}
	locked := make(map[int64]*lockedRow, len(rows))
	for _, r := range rows {
		locked[r.ID] = r
	}
	verdicts := make(map[*group]verdict, len(groups))
	for _, g := range groups {
		verdicts[g] = c.check(g, locked[g.key.ID])
	}
	_, err = tx.writeAndCommit(ctx, groups,
		func(gs []*group) (string, error) { return c.writeSQL(gs, locked, verdicts) },
		func(g *group, werr error) string {
			// The row refuses the write: keep the call's result out, drop the claim if the
			// row lets us (otherwise it expires), and retry like a provider failure.
			g.err = fmt.Errorf("write credential %d: %w", g.key.ID, werr)
			if verdicts[g] == writeToken {
				g.log().Error("rotated token could not be stored: the row refused the write", "error", werr)
			}
			verdicts[g] = refusedWrite
			return c.dropClaimsSQL(map[int64]int64{g.key.ID: g.claim.id})
		})
	if err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	c.observer.Transaction(time.Since(start))
	return verdicts, nil
}

// check is the commit step's fencing: the claim must still be this attempt's and the
// row must still hold the refresh token that was presented.
func (c *Consumer) check(g *group, row *lockedRow) verdict {
	switch {
	case row == nil || row.Service != g.key.Service:
		return goneRow
	case row.ClaimID == nil || *row.ClaimID != g.claim.id:
		return lostClaim
	case !c.samePresented(row.RefreshToken, g):
		return replacedGrant
	case g.err == nil:
		return writeToken
	case errors.Is(g.err, provider.ErrInvalidGrant):
		return writeReauth
	}
	return writeFailure
}

// samePresented reports whether stored holds the refresh token g presented. Stored
// forms are compared first; a re-sealed copy of the same token (rekey) is the same.
func (c *Consumer) samePresented(stored string, g *group) bool {
	if stored == g.claim.cred.RefreshToken {
		return true
	}
	plain, err := c.keyring.Open("refresh_token", stored)
	return err == nil && g.presented != "" && plain == g.presented
}

// sealed is what a refresh stores for row: the tokens in their stored form (sealed
// when a keyring is configured; the row's refresh token when the provider did not
// rotate) and the expiry.
func (c *Consumer) sealed(row *lockedRow, g *group) (tokenWrite, error) {
	w := tokenWrite{id: row.ID, service: row.Service, refreshedAt: g.began, claimID: g.claim.id, refresh: row.RefreshToken,
		expires: g.tok.Expiry, presented: g.claim.cred.RefreshToken}
	var err error
	if w.access, err = c.keyring.Seal("access_token", g.tok.AccessToken); err != nil {
		return w, err
	}
	if g.tok.RefreshToken != "" {
		if w.refresh, err = c.keyring.Seal("refresh_token", g.tok.RefreshToken); err != nil {
			return w, err
		}
	}
	if w.expires.IsZero() {
		w.expires = g.began.Add(c.cfg.DefaultTokenTTL)
	}
	return w, nil
}

// afterCommit sets each group's outcome from what its committed verdict was.
func (c *Consumer) afterCommit(groups []*group, verdicts map[*group]verdict) {
	for _, g := range groups {
		switch v := verdicts[g]; v {
		case writeToken:
			g.setCallOutcomes(nil)
		case writeReauth:
			g.setCallOutcomes(g.err)
		case writeFailure:
			if g.wait {
				// The provider is paused or its circuit open: wait for it (admit) with the
				// claim dropped, instead of spending a delivery.
				g.state, g.claim = undecided, nil
				continue
			}
			g.setOutcome(Retried, g.err)
		case refusedWrite:
			g.setOutcome(Retried, g.err)
		case goneRow:
			c.discard(g, DiscardDeleted)
			g.setOutcome(NotFound, nil)
		case lostClaim:
			c.discard(g, DiscardClaimLost)
			g.state, g.claim = undecided, nil
		case replacedGrant:
			c.discard(g, DiscardGrantReplaced)
			g.state, g.claim = undecided, nil
		}
	}
}

// discard counts and logs a provider answer that is not written, without its tokens.
func (c *Consumer) discard(g *group, reason string) {
	c.stats.discard()
	c.observer.Discarded(g.key.Service, reason)
	g.log().Warn("provider answer discarded", "reason", reason, "provider_error", g.err != nil)
}

// commitFailed settles groups whose commit could not be made before their claims
// expire. A token the provider issued is lost here unless the provider still accepts
// the one it replaced (its reuse interval).
func (c *Consumer) commitFailed(groups []*group, err error) {
	for _, g := range groups {
		if g.err == nil {
			g.log().Error("rotated token could not be stored before the claim expired", "error", err)
		}
		g.setOutcome(Retried, err)
	}
}

// releaseClaims drops the groups' claims in a transaction of its own, at best.
func (c *Consumer) releaseClaims(ctx context.Context, groups []*group) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.LockTimeout+c.cfg.statementTimeout())
	defer cancel()
	drop := make(map[int64]int64, len(groups))
	for _, g := range groups {
		drop[g.key.ID] = g.claim.id
	}
	tx, err := c.begin(ctx, true)
	if err == nil {
		defer tx.close(ctx)
		err = tx.commitWith(ctx, c.dropClaimsSQL(drop))
	}
	if err != nil {
		groups[0].log().Warn("could not release claims; they expire on their own", "rows", len(groups), "error", err)
	}
}
