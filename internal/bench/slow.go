package bench

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
)

// SlowFigure is figure 4: a provider that takes SlowLatency to answer, at several
// concurrencies. Each message holds a connection idle in its transaction while the
// provider answers, so the pool, and behind it max_connections, bounds the rate.
type SlowFigure struct {
	LatencyMs float64     `json:"latency_ms"`
	Points    []SlowPoint `json:"points"`
	// Flattens says where the rate stops growing with concurrency, and why.
	Flattens string `json:"flattens"`
}

// SlowPoint is one concurrency of the slow-provider figure.
type SlowPoint struct {
	// Concurrency is the one asked for; Effective what the connection budget let
	// run, with a pool of Pool connections.
	Concurrency int     `json:"concurrency"`
	Effective   int     `json:"effective"`
	Pool        int     `json:"pool"`
	Requests    int     `json:"requests"`
	Rate        float64 `json:"rate"`
	// BaselineRate is the direct transaction with the same slow provider at the
	// same effective concurrency; IdealRate is Effective / latency.
	BaselineRate float64 `json:"baseline_rate"`
	Ratio        float64 `json:"ratio"`
	IdealRate    float64 `json:"ideal_rate"`
}

// slowRowsNeeded is the most rows one slow run uses.
func (r *rig) slowRowsNeeded() int {
	n := 0
	for _, c := range r.opts.SlowConcurrencies {
		n = max(n, r.capConcurrency(c)*r.opts.SlowRounds)
	}
	return n
}

func (r *rig) slowFigure(ctx context.Context, rep *Report) error {
	f := SlowFigure{LatencyMs: ms(r.opts.SlowLatency)}
	capped := 0
	for _, asked := range r.opts.SlowConcurrencies {
		eff := r.capConcurrency(asked)
		n := eff * r.opts.SlowRounds
		pt := SlowPoint{Concurrency: asked, Effective: eff, Pool: eff + poolSpare, Requests: n,
			IdealRate: float64(eff) / r.opts.SlowLatency.Seconds()}
		if eff < asked && capped == 0 {
			capped = asked
		}
		ids := r.consIDs[:n]
		prov := &slowProvider{latency: r.opts.SlowLatency}
		err := func() error {
			elapsed, err := r.directPooled(ctx, serviceConsume, prov, eff, ids, false)
			if err != nil {
				return err
			}
			pt.BaselineRate = float64(n) / elapsed.Seconds()
			if err := r.resetStreams(ctx); err != nil {
				return err
			}
			if err := r.publishRequests(ctx, n, func(i int) *nats.Msg { return requestMsg(serviceConsume, ids[i]) }); err != nil {
				return err
			}
			run, err := r.consumePooled(ctx, serviceConsume, prov, eff, n, nil)
			if err != nil {
				return err
			}
			if run.stats.Refreshed != int64(n) {
				return fmt.Errorf("refreshed %d of %d requests at concurrency %d: %+v", run.stats.Refreshed, n, eff, run.stats)
			}
			pt.Rate = run.rate()
			return nil
		}()
		if err != nil {
			return err
		}
		pt.Ratio = ratio(pt.Rate, pt.BaselineRate)
		f.Points = append(f.Points, pt)
		r.log.Info("bench: slow provider", "concurrency", asked, "effective", eff, "rate", int(pt.Rate), "baseline", int(pt.BaselineRate))
	}
	limit := r.maxConns - poolSpare
	if capped > 0 {
		f.Flattens = fmt.Sprintf("from concurrency %d on, the rate flattens near %d / %s = %.0f/s: every message in flight holds "+
			"a database connection, idle in its transaction, for the whole provider call, so concurrency cannot exceed the pool, "+
			"and the pool is capped at %d connections (%s)",
			capped, limit, r.opts.SlowLatency, float64(limit)/r.opts.SlowLatency.Seconds(), r.maxConns, r.connsReason)
	} else {
		f.Flattens = fmt.Sprintf("not reached: every concurrency asked for fitted in the pool cap of %d connections (%s); "+
			"the rate grows with concurrency up to concurrency / %s", r.maxConns, r.connsReason, r.opts.SlowLatency)
	}
	rep.Slow = f
	return nil
}
