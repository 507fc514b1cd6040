package consumer

import "sync/atomic"

// Stats counts what one Consumer did since it started.
type Stats struct {
	Refreshed      int64
	SkippedFresh   int64
	SkippedReauth  int64
	ReauthRequired int64
	NotFound       int64
	Retried        int64
	DeadLettered   int64
	Malformed      int64
	Interrupted    int64
	// ProviderCalls counts token requests made, whatever their result.
	ProviderCalls int64
	// Discarded counts provider answers not written: the application replaced the grant
	// during the call, the claim was taken over, or the credential was deleted.
	Discarded int64
	// TakenOver counts expired claims of other attempts taken over.
	TakenOver int64
}

// Add sums two Stats (for fleets).
func (s Stats) Add(o Stats) Stats {
	return Stats{
		Refreshed:      s.Refreshed + o.Refreshed,
		SkippedFresh:   s.SkippedFresh + o.SkippedFresh,
		SkippedReauth:  s.SkippedReauth + o.SkippedReauth,
		ReauthRequired: s.ReauthRequired + o.ReauthRequired,
		NotFound:       s.NotFound + o.NotFound,
		Retried:        s.Retried + o.Retried,
		DeadLettered:   s.DeadLettered + o.DeadLettered,
		Malformed:      s.Malformed + o.Malformed,
		Interrupted:    s.Interrupted + o.Interrupted,
		ProviderCalls:  s.ProviderCalls + o.ProviderCalls,
		Discarded:      s.Discarded + o.Discarded,
		TakenOver:      s.TakenOver + o.TakenOver,
	}
}

type counters struct {
	byOutcome     [9]atomic.Int64
	providerCalls atomic.Int64
	discarded     atomic.Int64
	takenOver     atomic.Int64
}

var outcomeIndex = map[Outcome]int{
	Refreshed: 0, SkippedFresh: 1, SkippedReauth: 2, ReauthRequired: 3, NotFound: 4,
	Retried: 5, DeadLettered: 6, Malformed: 7, Interrupted: 8,
}

func (c *counters) add(o Outcome) { c.byOutcome[outcomeIndex[o]].Add(1) }
func (c *counters) providerCall() { c.providerCalls.Add(1) }
func (c *counters) discard()      { c.discarded.Add(1) }
func (c *counters) takeover()     { c.takenOver.Add(1) }

// Stats returns a snapshot of the counters.
func (c *Consumer) Stats() Stats {
	n := func(o Outcome) int64 { return c.stats.byOutcome[outcomeIndex[o]].Load() }
	return Stats{
		Refreshed:      n(Refreshed),
		SkippedFresh:   n(SkippedFresh),
		SkippedReauth:  n(SkippedReauth),
		ReauthRequired: n(ReauthRequired),
		NotFound:       n(NotFound),
		Retried:        n(Retried),
		DeadLettered:   n(DeadLettered),
		Malformed:      n(Malformed),
		Interrupted:    n(Interrupted),
		ProviderCalls:  c.stats.providerCalls.Load(),
		Discarded:      c.stats.discarded.Load(),
		TakenOver:      c.stats.takenOver.Load(),
	}
}
