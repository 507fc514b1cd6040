package consumer

import (
	"context"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// handleBatch handles up to BatchSize messages with one claim transaction and one
// commit transaction (two WAL flushes for all their rows instead of two per row).
func (c *Consumer) handleBatch(ctx context.Context, msgs []jetstream.Msg) {
	// A message's work is its own: it outlives Run's ctx (the drain finishes it), so
	// nothing above it is there to cancel it.
	jobs := make([]*job, 0, len(msgs))
	for _, m := range msgs {
		if j, ok := c.prepare(ctx, m); ok {
			jobs = append(jobs, j)
		}
	}
	if len(jobs) == 0 {
		return
	}
	stop := c.keepAlive(msgs...)
	groups := groupJobs(jobs)
	var entered, later []*group
	for i, g := range groups {
		switch {
		case i == 0 && c.enter(ctx, g):
			entered = append(entered, g)
		case i == 0 || len(entered) == 0:
			// The first was interrupted: so are the others.
			g.setOutcome(Interrupted, nil)
		case c.admitWithin(ctx, g, batchPermitWait) == nil && c.tryEnterCalls(g):
			entered = append(entered, g)
		case g.state != finished:
			// Nothing held while the batch runs: its groups may need permits again.
			g.returnPermit()
			later = append(later, g)
		}
	}
	if len(entered) > 0 {
		c.refreshBatch(ctx, entered)
		for _, g := range entered {
			c.leaveCalls(g) // before the others wait for places: no holding while waiting
		}
	}
	// Groups whose permit did not come at once wait for it alone, holding nothing.
	var wg sync.WaitGroup
	for _, g := range later {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c.enter(ctx, g) {
				c.refreshGroup(ctx, g)
			}
		}()
	}
	wg.Wait()
	for _, g := range groups {
		c.leaveCalls(g)
		g.returnPermit()
	}
	stop()
	for _, j := range jobs {
		c.respond(j)
	}
}

// refreshBatch takes a batch's groups through claim, call and commit together.
//
// The claim locks rows in id order, so two consumers' batches cannot deadlock, with
// SKIP LOCKED, so a row held elsewhere does not hold up the batch: such a row, one
// whose claim another attempt holds, and one that changed under its call each go on
// alone, the per-row way, once the batch has committed.
func (c *Consumer) refreshBatch(ctx context.Context, groups []*group) {
	if !c.naive {
		if err := c.claimGroups(ctx, groups, true); err != nil {
			for _, g := range groups {
				if g.state != finished {
					g.setOutcome(Retried, err)
				}
			}
			return
		}
		var called []*group
		for _, g := range groups {
			if g.state == claimed {
				called = append(called, g)
			}
		}
		if len(called) > 0 {
			if called = c.callGroups(ctx, called); len(called) > 0 {
				c.commitGroups(ctx, called)
			}
		}
	}
	var wg sync.WaitGroup
	for _, g := range groups {
		if g.state == finished {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.refreshGroup(ctx, g)
		}()
	}
	wg.Wait()
}
