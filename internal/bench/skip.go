package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/refresher/refresher/model"
)

// SkipFigure is figure 6: requests the skip rule answers (the row was refreshed
// after the request was made). They must not write: the consumer rolls the
// transaction back, so no row is updated, nothing is committed and nothing waits
// for a WAL flush.
type SkipFigure struct {
	Requests    int     `json:"requests"`
	Concurrency int     `json:"concurrency"`
	Rate        float64 `json:"rate"`
	// BaselineRate is the per-row refresh rate at the same concurrency (figure 2's
	// full run); Ratio is Rate / BaselineRate.
	BaselineRate float64 `json:"baseline_rate"`
	Ratio        float64 `json:"ratio"`
	// DB is what the skip run did to the database; BaselineDB what the refresh run
	// of figure 2 did, for comparison per message.
	DB         DBDelta `json:"db"`
	BaselineDB DBDelta `json:"baseline_db"`
}

func (r *rig) skipFigure(ctx context.Context, rep *Report) error {
	n := len(r.skipIDs)
	conc := rep.Consume.Best.Concurrency
	f := SkipFigure{Requests: n, Concurrency: conc, BaselineRate: rep.Consume.Best.Rate, BaselineDB: rep.Consume.DB}
	if err := r.vacuum(ctx); err != nil {
		return err
	}
	if err := r.resetStreams(ctx); err != nil {
		return err
	}
	// Requested a minute before the rows were (as seeded) last refreshed.
	requested := model.FormatRequestedAt(r.skipSeeded.Add(-time.Minute))
	if err := r.publishRequests(ctx, n, func(i int) *nats.Msg {
		m := requestMsg(serviceSkip, r.skipIDs[i])
		m.Header.Set(model.HeaderRequestedAt, requested)
		return m
	}); err != nil {
		return err
	}
	before, err := r.before(ctx)
	if err != nil {
		return err
	}
	run, err := r.consumePooled(ctx, serviceSkip, &instantProvider{}, conc, n, nil)
	if err != nil {
		return err
	}
	if run.stats.SkippedFresh != int64(n) || run.stats.ProviderCalls != 0 {
		return fmt.Errorf("%d requests the skip rule should answer came to %+v", n, run.stats)
	}
	f.Rate = run.rate()
	f.Ratio = ratio(f.Rate, f.BaselineRate)
	if f.DB, err = r.since(ctx, before, n); err != nil {
		return err
	}
	rep.Skip = f
	return nil
}
