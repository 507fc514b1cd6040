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

// field is the counter of outcome o in s (nil for undecidedOutcome, which is never counted).
func (s *Stats) field(o Outcome) *int64 {
	switch o {
	case Refreshed:
		return &s.Refreshed
	case SkippedFresh:
		return &s.SkippedFresh
	case SkippedReauth:
		return &s.SkippedReauth
	case ReauthRequired:
		return &s.ReauthRequired
	case NotFound:
		return &s.NotFound
	case Retried:
		return &s.Retried
	case DeadLettered:
		return &s.DeadLettered
	case Malformed:
		return &s.Malformed
	case Interrupted:
		return &s.Interrupted
	}
	return nil
}

// Of is the number of messages that came to outcome o.
func (s Stats) Of(o Outcome) int64 {
	if f := s.field(o); f != nil {
		return *f
	}
	return 0
}

// Add sums two Stats (for fleets).
func (s Stats) Add(o Stats) Stats {
	sum := Stats{
		ProviderCalls: s.ProviderCalls + o.ProviderCalls,
		Discarded:     s.Discarded + o.Discarded,
		TakenOver:     s.TakenOver + o.TakenOver,
	}
	for _, oc := range Outcomes() {
		*sum.field(oc) = s.Of(oc) + o.Of(oc)
	}
	return sum
}

type counters struct {
	byOutcome     [numOutcomes]atomic.Int64
	providerCalls atomic.Int64
	discarded     atomic.Int64
	takenOver     atomic.Int64
}

// add counts a message's outcome (an undecided one has a slot of its own, in no
// Stats field, rather than being filed as some other outcome).
func (c *counters) add(o Outcome) { c.byOutcome[o].Add(1) }
func (c *counters) providerCall() { c.providerCalls.Add(1) }
func (c *counters) discard()      { c.discarded.Add(1) }
func (c *counters) takeover()     { c.takenOver.Add(1) }

// Stats returns a snapshot of the counters.
func (c *Consumer) Stats() Stats {
	s := Stats{
		ProviderCalls: c.stats.providerCalls.Load(),
		Discarded:     c.stats.discarded.Load(),
		TakenOver:     c.stats.takenOver.Load(),
	}
	for _, o := range Outcomes() {
		*s.field(o) = c.stats.byOutcome[o].Load()
	}
	return s
}
