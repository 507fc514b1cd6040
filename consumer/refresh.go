package consumer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel/codes"

	"github.com/refresher/refresher/limit"
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
	// permit is the group's right to call the provider (package limit), from
	// before its claim until its call returned.
	permit *limit.Permit
	// wait: the provider failed in a way that paused its service or opened its
	// circuit; the group waits for the service again rather than being retried.
	wait bool
	// inCalls: the group holds a place among the calls in flight
	// (REFRESHER_CONCURRENCY), which it gives up while it waits for a permit.
	inCalls bool
	// heldBack: the call did not start (see callGroups).
	heldBack bool
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

// setOutcome gives every job of the group the same outcome.
func (g *group) setOutcome(o Outcome, err error) {
	g.state = finished
	for _, j := range g.jobs {
		j.outcome, j.err = o, err
	}
}

// setCallOutcomes sets the outcomes of a group whose call's result was committed: the lead
// made the request the call answered; the others were satisfied by it. refused is the
// provider's invalid_grant, if that was the answer.
func (g *group) setCallOutcomes(refused error) {
	g.state = finished
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
func (c *Consumer) refreshGroup(ctx context.Context, g *group) {
	if c.naive {
		o, err := c.refreshNaive(ctx, g.lead.req, g.lead.prov)
		g.setOutcome(o, err)
		return
	}
	for round := 0; g.state != finished; round++ {
		if g.wait {
			// Waiting for a paused or failing provider is not a round.
			g.wait = false
			round--
		}
		if round == maxRounds {
			g.setOutcome(Retried, fmt.Errorf("credential %d: %w (%d rounds)", g.key.ID, ErrTooManyRounds, maxRounds))
			return
		}
		switch g.state {
		case undecided, lockedElsewhere:
			g.state = undecided
			if g.permit == nil {
				// Waiting for a permit (again: the provider paused or failed, the call was
				// held back) holds no place among the calls in flight: another
				// service's requests may use it meanwhile.
				c.leaveCalls(g)
				if err := c.admit(ctx, g); err != nil || !c.enterCalls(g) {
					g.setOutcome(Interrupted, nil)
					continue
				}
			}
			if round == 0 {
				if ok, err := c.fastClaim(ctx, g); ok || err != nil {
					if err != nil {
						g.setOutcome(Retried, err)
					}
					continue
				}
			}
			if err := c.claimGroups(ctx, []*group{g}, false); err != nil {
				g.setOutcome(Retried, err)
			}
		case waiting:
			switch err := c.awaitClaim(ctx, g.key.ID, g.heldBy, g.lead.delivered); {
			case errors.Is(err, errStopping):
				g.setOutcome(Interrupted, nil)
			case err != nil:
				g.setOutcome(Retried, err)
			default:
				g.state = undecided
			}
		case claimed:
			if len(c.callGroups(ctx, []*group{g})) == 0 {
				continue // sent back to wait for its service
			}
			if !c.fastCommit(ctx, g) {
				c.commitGroups(ctx, []*group{g})
			}
		}
	}
}

// callGroups calls the provider for every claimed group, concurrently, with no
// connection or lock held. A call under way is never abandoned to a cancellation
// (the provider may rotate the token all the same): only ProviderTimeout bounds it.
// It returns the groups it called. Each call first takes its rate token (limit's
// Pace) in the goroutine that makes it, so the pace is kept as close to the provider
// as the process can; a group whose service was paused or whose circuit opened since
// its permit, or whose token did not come while its claim had room for the call, is
// sent back to wait (sendBack).
func (c *Consumer) callGroups(ctx context.Context, groups []*group) []*group {
	fleet := c.limitFleet(ctx)
	var wg sync.WaitGroup
	for _, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if g.permit != nil {
				// The call and the commit must still fit in the claim once the token came.
				pctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), g.claim.deadline.Add(-c.cfg.ProviderTimeout-c.cfg.LockTimeout))
				err := fleet.Pace(pctx, g.permit)
				cancel()
				if err != nil {
					g.heldBack = true
					return
				}
			}
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.ProviderTimeout)
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
			g.callDone()
			c.stats.providerCall()
			c.observer.ProviderCall(g.key.Service, time.Since(start), g.err)
		}()
	}
	wg.Wait()
	var called, back []*group
	for _, g := range groups {
		if g.heldBack {
			back = append(back, g)
		} else {
			called = append(called, g)
		}
	}
	c.sendBack(ctx, back)
	return called
}
