package consumer

import "time"

// Observer receives measurements of the consumer's work, for metrics. Calls come from
// many goroutines at once. Service is "" for a message whose subject did not parse.
type Observer interface {
	// MessageDone is called once per message handled, with its outcome.
	MessageDone(service string, outcome Outcome, d time.Duration)
	// ProviderCall is called after each token request.
	ProviderCall(service string, d time.Duration, err error)
	// LockWait is the time spent acquiring row locks (successful or not).
	LockWait(d time.Duration)
	// Transaction is the duration of one short transaction of the protocol (a claim or
	// a commit), its commit included. No provider call happens inside one.
	Transaction(d time.Duration)
	// Discarded is called for a provider answer that was not written, with the reason
	// (DiscardGrantReplaced, DiscardClaimLost, DiscardDeleted).
	Discarded(service, reason string)
	// ClaimTakenOver is called when an attempt takes over another's claim, with why
	// (TakeoverExpired, TakeoverDeadOwner) and the claim's age: how long ago the token
	// about to be presented again was presented by the dead attempt.
	ClaimTakenOver(service, reason string, age time.Duration)
	// InFlight moves the number of messages being handled by delta.
	InFlight(delta int)
	// BatchSplit is called when a batch's writes failed together and are applied row
	// by row instead (each under a savepoint, so one bad row does not hold back the
	// rest), with the number of rows.
	BatchSplit(rows int)
	// MaxDeliveriesCopied is called each time WatchMaxDeliveries has copied a message
	// that ran out of deliveries to REFRESH_DLQ; duplicate means a copy was there
	// already (another process's, or the handler's).
	MaxDeliveriesCopied(streamSeq uint64, duplicate bool)
}

// WithObserver sends measurements to o.
func WithObserver(o Observer) Option { return func(c *Consumer) { c.observer = o } }

type nopObserver struct{}

func (nopObserver) MessageDone(string, Outcome, time.Duration)   {}
func (nopObserver) ProviderCall(string, time.Duration, error)    {}
func (nopObserver) LockWait(time.Duration)                       {}
func (nopObserver) Transaction(time.Duration)                    {}
func (nopObserver) InFlight(int)                                 {}
func (nopObserver) Discarded(string, string)                     {}
func (nopObserver) ClaimTakenOver(string, string, time.Duration) {}
func (nopObserver) BatchSplit(int)                               {}
func (nopObserver) MaxDeliveriesCopied(uint64, bool)             {}
