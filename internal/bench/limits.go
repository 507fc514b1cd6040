package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/limit"
	"github.com/refresher/refresher/model"
)

// LimitsFigure is figure 7: what the fleet-wide provider limits (package limit) cost
// per call. The same per-row consumer refreshes the same rows with limits that
// never bind (a rate of 1,000,000/s and 100,000 calls in flight: every call still
// takes its permit, its slot and its rate token through the shared bucket), beside
// the unlimited path (no rate, no cap: a circuit check from memory), in one run.
type LimitsFigure struct {
	Requests    int     `json:"requests"`
	Concurrency int     `json:"concurrency"`
	Rate        float64 `json:"rate"`
	// BaselineRate is the unlimited path's; Ratio is Rate / BaselineRate.
	BaselineRate float64 `json:"baseline_rate"`
	Ratio        float64 `json:"ratio"`
	// CostMicros is the limiter's cost per call: 1/Rate - 1/BaselineRate, in µs of
	// the consumer's wall time at this concurrency.
	CostMicros float64 `json:"cost_us"`
}

func (r *rig) limitsFigure(ctx context.Context, rep *Report) error {
	ids := r.consIDs
	if len(ids) > 4000 {
		ids = ids[:4000]
	}
	conc := rep.Consume.Best.Concurrency
	f := LimitsFigure{Requests: len(ids), Concurrency: conc}
	rate, err := limit.ParseRate("1000000/s")
	if err != nil {
		return err
	}
	rate.Burst = 100_000
	limited := consumer.WithLimits(map[string]limit.Limits{serviceConsume: {Rate: rate, MaxInFlight: 100_000, CircuitThreshold: 5, ProbeInterval: time.Second, ProbeMax: time.Minute}})
	run := func(opts ...consumer.Option) (float64, error) {
		if err := r.vacuum(ctx); err != nil {
			return 0, err
		}
		if err := r.resetStreams(ctx); err != nil {
			return 0, err
		}
		// Requested now: after every earlier figure's refresh, so each is a refresh.
		requested := model.FormatRequestedAt(time.Now())
		if err := r.publishRequests(ctx, len(ids), func(i int) *nats.Msg {
			m := requestMsg(serviceConsume, ids[i])
			m.Header.Set(model.HeaderRequestedAt, requested)
			return m
		}); err != nil {
			return 0, err
		}
		res, err := r.consumePooled(ctx, serviceConsume, &instantProvider{}, conc, len(ids), nil, opts...)
		if err != nil {
			return 0, err
		}
		if res.stats.ProviderCalls != int64(len(ids)) {
			return 0, fmt.Errorf("%d requests came to %+v", len(ids), res.stats)
		}
		return res.rate(), nil
	}
	if f.BaselineRate, err = run(); err != nil {
		return fmt.Errorf("unlimited: %w", err)
	}
	if f.Rate, err = run(limited); err != nil {
		return fmt.Errorf("limited: %w", err)
	}
	f.Ratio = ratio(f.Rate, f.BaselineRate)
	f.CostMicros = (1/f.Rate - 1/f.BaselineRate) * 1e6
	rep.Limits = f
	return nil
}
