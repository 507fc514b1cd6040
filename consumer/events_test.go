package consumer_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/fleettest"
)

// events is a consumer.Observer that counts what tests wait for or assert on, so that
// they need not read the consumer's log.
type events struct {
	tx          atomic.Int64 // short transactions (claims and commits) ended
	batchSplits atomic.Int64 // batches applied row by row
	copies      atomic.Int64 // max-deliveries copies made, duplicates included

	mu        sync.Mutex
	discarded map[string]int // by reason
}

func (o *events) MessageDone(string, consumer.Outcome, time.Duration) {}
func (o *events) ProviderCall(string, time.Duration, error)           {}
func (o *events) LockWait(time.Duration)                              {}
func (o *events) Transaction(time.Duration)                           { o.tx.Add(1) }
func (o *events) ClaimTakenOver(string, string, time.Duration)        {}
func (o *events) InFlight(int)                                        {}
func (o *events) BatchSplit(int)                                      { o.batchSplits.Add(1) }
func (o *events) MaxDeliveriesCopied(uint64, bool)                    { o.copies.Add(1) }

func (o *events) Discarded(_, reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.discarded == nil {
		o.discarded = map[string]int{}
	}
	o.discarded[reason]++
}

// waitTransaction waits until more than after transactions have ended.
func (o *events) waitTransaction(t *testing.T, what string, after int64) {
	t.Helper()
	fleettest.Eventually(t, 10*time.Second, what, func() bool { return o.tx.Load() > after })
}
