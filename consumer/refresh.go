package consumer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/codes"

	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider"
)

// maxRounds bounds how often one request goes back to the claim step (a claim it
// waited for settled without satisfying it, an application replaced the grant during
// the call) before it is sent back to the stream with a delay.
const maxRounds = 8

// claimMargin is how long before its claim expires an attempt stops trying to commit.
const claimMargin = 2 * time.Second

// group is the requests of one message or batch that ask for the same credential: one
// claim, at most one provider call, for all of them.
type group struct {
	key  model.Key
	jobs []*job
	// lead is the latest request: a refresh it needs satisfies the others too, and if
	// it is satisfied they all are.
	lead  *job
	state state
	// heldBy is the claim another attempt holds, when waiting.
	heldBy int64
	claim  *claim
	// began is when the provider call began (what refreshed_at records).
	began time.Time
	tok   provider.Token
	err   error // the provider's answer, when it was an error
	// presented is the refresh token sent to the provider, in plaintext.
	presented string
}

// newGroup returns a group of one job.
func newGroup(j *job) *group { return &group{key: j.req.key, jobs: []*job{j}, lead: j} }

// groupJobs groups jobs by credential (service and id), in id order.
func groupJobs(jobs []*job) []*group {
	var groups []*group
	byKey := map[model.Key]*group{}
	for _, j := range jobs {
		g, ok := byKey[j.req.key]
		if !ok {
			g = &group{key: j.req.key}
			byKey[j.req.key] = g
			groups = append(groups, g)
		}
		g.jobs = append(g.jobs, j)
		if g.lead == nil || j.req.requestedAt.After(g.lead.req.requestedAt) {
			g.lead = j
		}
	}
	slices.SortFunc(groups, func(a, b *group) int { return cmp.Compare(a.key.ID, b.key.ID) })
	return groups
}

// settle gives every job of the group the same outcome.
func (g *group) settle(o Outcome, err error) {
	g.state = settled
	for _, j := range g.jobs {
		j.outcome, j.err = o, err
	}
}

// settleCall sets the outcomes of a group whose call's result was committed: the lead
// made the request the call answered; the others were satisfied by it. refused is the
// provider's invalid_grant, if that was the answer.
func (g *group) settleCall(refused error) {
	g.state = settled
	for _, j := range g.jobs {
		switch {
		case refused != nil && j == g.lead:
			j.outcome, j.err = ReauthRequired, refused
		case refused != nil:
			j.outcome, j.err = SkippedReauth, nil
		case j == g.lead:
			j.outcome, j.err = Refreshed, nil
		default:
			j.outcome, j.err = SkippedFresh, nil
		}
	}
}

func (g *group) log() *slog.Logger { return g.lead.log.With("service", g.key.Service, "id", g.key.ID) }

// refreshGroup takes one group through claim, call and commit, going back to the
// claim step when a claim it waited for settles or the row changed under its call.
func (c *Consumer) refreshGroup(g *group) {
	if c.naive {
		o, err := c.refreshNaive(g.lead.req, g.lead.prov)
		g.settle(o, err)
		return
	}
	for round := 0; g.state != settled; round++ {
		if round == maxRounds {
			g.settle(Retried, fmt.Errorf("credential %d: %w (%d rounds)", g.key.ID, ErrTooManyRounds, maxRounds))
			return
		}
		switch g.state {
		case undecided, lockedElsewhere:
			g.state = undecided
			if round == 0 {
				if ok, err := c.fastClaim(g); ok || err != nil {
					if err != nil {
						g.settle(Retried, err)
					}
					continue
				}
			}
			if err := c.claimGroups([]*group{g}, false); err != nil {
				g.settle(Retried, err)
			}
		case waiting:
			switch err := c.awaitClaim(g.key.ID, g.heldBy, g.lead.delivered); {
			case errors.Is(err, errStopping):
				g.settle(Interrupted, nil)
			case err != nil:
				g.settle(Retried, err)
			default:
				g.state = undecided
			}
		case claimed:
			c.callGroups([]*group{g})
			if !c.fastCommit(g) {
				c.commitGroups([]*group{g})
			}
		}
	}
}

// callGroups calls the provider for every claimed group, concurrently, with no
// connection or lock held.
func (c *Consumer) callGroups(groups []*group) {
	var wg sync.WaitGroup
	for _, g := range groups {
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.ProviderTimeout)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cancel()
			g.presented, g.err = c.keyring.Open("refresh_token", g.claim.cred.RefreshToken)
			if g.err != nil {
				return
			}
			// Truncated to what timestamptz stores: rounding up could make the refresh look
			// later than a request made just after it began.
			g.began = c.now().Truncate(time.Microsecond)
			start := time.Now()
			span := startSteps([]*group{g}, "provider call")[0]
			g.tok, g.err = g.lead.prov.Refresh(ctx, g.presented)
			if g.err != nil {
				span.SetStatus(codes.Error, errOf(g.err))
			}
			span.End()
			c.stats.providerCall()
			c.observer.ProviderCall(g.key.Service, time.Since(start), g.err)
		}()
	}
	wg.Wait()
}

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
func (c *Consumer) commitGroups(groups []*group) {
	defer endSteps(startSteps(groups, "commit"))
	deadline := groups[0].claim.deadline
	ids := make([]int64, len(groups))
	for i, g := range groups {
		if g.claim.deadline.Before(deadline) {
			deadline = g.claim.deadline
		}
		ids[i] = g.claim.id
	}
	defer c.settled(ids)
	delay := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		verdicts, err := c.commitOnce(groups, deadline)
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
				c.releaseClaims(groups)
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
func (c *Consumer) commitOnce(groups []*group, deadline time.Time) (map[*group]verdict, error) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
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
	defer tx.close()
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

// writeSQL renders every group's verdict: tokens, reauth marks, failures, dropped
// claims ("" when nothing is to be written).
func (c *Consumer) writeSQL(groups []*group, locked map[int64]*lockedRow, verdicts map[*group]verdict) (string, error) {
	var (
		stmts  []string
		tokens []tokenWrite
		reauth []int64
		drop   = map[int64]int64{}
	)
	for _, g := range groups {
		switch verdicts[g] {
		case writeToken:
			w, err := c.sealed(locked[g.key.ID], g)
			if err != nil {
				return "", err
			}
			tokens = append(tokens, w)
		case writeReauth:
			reauth = append(reauth, g.key.ID)
			drop[g.key.ID] = g.claim.id
		case writeFailure:
			stmts = append(stmts, c.failureSQL(g.key.ID, errOf(g.err)))
			drop[g.key.ID] = g.claim.id
		case replacedGrant, refusedWrite:
			drop[g.key.ID] = g.claim.id
		}
	}
	if len(tokens) > 0 {
		stmts = append(stmts, c.tokensSQL(tokens))
	}
	if len(reauth) > 0 {
		stmts = append(stmts, c.reauthSQL(reauth, errOf(groupsErr(groups, verdicts, writeReauth))))
	}
	if len(drop) > 0 {
		stmts = append(stmts, c.dropClaimsSQL(drop))
	}
	return strings.Join(stmts, "; "), nil
}

// groupsErr is the provider error of the first group with verdict v.
func groupsErr(groups []*group, verdicts map[*group]verdict, v verdict) error {
	for _, g := range groups {
		if verdicts[g] == v {
			return g.err
		}
	}
	return nil
}

// sealed is what a refresh stores for row: the tokens in their stored form (sealed
// when a keyring is configured; the row's refresh token when the provider did not
// rotate) and the expiry.
func (c *Consumer) sealed(row *lockedRow, g *group) (tokenWrite, error) {
	w := tokenWrite{id: row.ID, refreshedAt: g.began, claimID: g.claim.id, refresh: row.RefreshToken, expires: g.tok.Expiry}
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
			g.settleCall(nil)
		case writeReauth:
			g.settleCall(g.err)
		case writeFailure, refusedWrite:
			g.settle(Retried, g.err)
		case goneRow:
			c.discard(g, DiscardDeleted)
			g.settle(NotFound, nil)
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
		g.settle(Retried, err)
	}
}

// releaseClaims drops the groups' claims in a transaction of its own, at best.
func (c *Consumer) releaseClaims(groups []*group) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.LockTimeout+c.cfg.statementTimeout())
	defer cancel()
	drop := make(map[int64]int64, len(groups))
	for _, g := range groups {
		drop[g.key.ID] = g.claim.id
	}
	tx, err := c.begin(ctx, true)
	if err == nil {
		defer tx.close()
		err = tx.commitWith(ctx, c.dropClaimsSQL(drop))
	}
	if err != nil {
		groups[0].log().Warn("could not release claims; they expire on their own", "rows", len(groups), "error", err)
	}
}
