package bench

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/refresher/refresher/consumer"
)

// DuplicatesFigure is figure 5: DuplicateFactor requests per row, published back to
// back per row (a burst, the way twin schedules and impatient clients send them),
// all before the consumer starts. The first request of a row refreshes it; the
// others should cost a row lock and a rollback, not a provider call.
type DuplicatesFigure struct {
	Rows        int     `json:"rows"`
	PerRow      int     `json:"per_row"`
	Messages    int     `json:"messages"`
	Concurrency int     `json:"concurrency"`
	Rate        float64 `json:"rate"`
	// ProviderCalls / Rows is CallsPerRow: 1 is the ideal.
	ProviderCalls int64   `json:"provider_calls"`
	CallsPerRow   float64 `json:"calls_per_row"`
	Refreshed     int64   `json:"refreshed"`
	Skipped       int64   `json:"skipped"`
	// SkipMicros is the mean time the consumer spent on a skipped duplicate (lock
	// wait included, from receipt to acknowledgement); RefreshMicros, its baseline,
	// the mean for a refresh in the same run; Ratio is SkipMicros / RefreshMicros.
	SkipMicros    float64 `json:"skip_us"`
	RefreshMicros float64 `json:"refresh_us"`
	Ratio         float64 `json:"ratio"`
}

func (r *rig) duplicatesFigure(ctx context.Context, rep *Report) error {
	rows, per := r.opts.DuplicateRows, r.opts.DuplicateFactor
	conc := rep.Consume.Best.Concurrency
	f := DuplicatesFigure{Rows: rows, PerRow: per, Messages: rows * per, Concurrency: conc}
	ids := r.consIDs[:rows]
	if err := r.vacuum(ctx); err != nil {
		return err
	}
	if err := r.resetStreams(ctx); err != nil {
		return err
	}
	if err := r.publishRequests(ctx, f.Messages, func(i int) *nats.Msg { return requestMsg(serviceConsume, ids[i/per]) }); err != nil {
		return err
	}
	run, err := r.consumePooled(ctx, serviceConsume, &instantProvider{}, conc, f.Messages, nil)
	if err != nil {
		return err
	}
	st := run.stats
	if st.Refreshed+st.SkippedFresh != int64(f.Messages) {
		return fmt.Errorf("%d messages came to %+v", f.Messages, st)
	}
	f.Rate = run.rate()
	f.ProviderCalls, f.Refreshed, f.Skipped = st.ProviderCalls, st.Refreshed, st.SkippedFresh
	f.CallsPerRow = float64(st.ProviderCalls) / float64(rows)
	f.SkipMicros = float64(run.tally.mean(consumer.SkippedFresh).Nanoseconds()) / 1e3
	f.RefreshMicros = float64(run.tally.mean(consumer.Refreshed).Nanoseconds()) / 1e3
	f.Ratio = ratio(f.SkipMicros, f.RefreshMicros)
	rep.Duplicates = f
	return nil
}
