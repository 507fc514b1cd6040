package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/uptrace/bun"
)

// SlowFigure is figure 4: a provider that takes SlowLatency to answer, at several
// numbers of calls in flight, every run on a pool of Options.Pool connections. No
// connection is held during a call, so the rate should grow with the calls in flight
// up to whichever is lower: the ideal (in flight / latency), or what the pool can
// claim and commit (the instant-provider per-row rate of figure 2).
type SlowFigure struct {
	LatencyMs float64 `json:"latency_ms"`
	Pool      int     `json:"pool"`
	// InstantRate is figure 2's best per-row end-to-end rate (instant provider,
	// same pool): the most the database work of the pool lets through.
	InstantRate float64     `json:"instant_rate"`
	Points      []SlowPoint `json:"points"`
	// Flattens says where the rate stops growing with calls in flight, and why.
	Flattens string `json:"flattens"`
}

// SlowPoint is one number of calls in flight of the slow-provider figure.
type SlowPoint struct {
	// InFlight is the consumer's concurrency (REFRESHER_CONCURRENCY): provider calls
	// in flight, on a pool of Pool connections.
	InFlight int     `json:"in_flight"`
	Pool     int     `json:"pool"`
	Requests int     `json:"requests"`
	Rate     float64 `json:"rate"`
	// BaselineRate is RefreshNow (the consumer's claim, call and commit, no NATS)
	// with the same slow provider, calls in flight and pool size.
	BaselineRate float64 `json:"baseline_rate"`
	// IdealRate is InFlight / latency; InstantRate the instant-provider per-row rate
	// (SlowFigure.InstantRate); CeilingRate the lower of the two, and Ratio is
	// Rate / CeilingRate (judged at the largest InFlight).
	IdealRate   float64 `json:"ideal_rate"`
	InstantRate float64 `json:"instant_rate"`
	CeilingRate float64 `json:"ceiling_rate"`
	Ratio       float64 `json:"ratio"`
	// Conns is what the consumer run held of the database.
	Conns ConnPeaks `json:"conns"`
}

// ConnPeaks is what one run held of the database, sampled while it ran.
type ConnPeaks struct {
	// InUse is the most connections of the pool busy at once (sql.DBStats.InUse,
	// sampled every few milliseconds); Open the most open (OpenConnections).
	InUse int `json:"peak_in_use"`
	Open  int `json:"peak_open"`
	// Backends is the most client backends pg_stat_activity showed connected to the
	// bench database at once (sampled every 25 ms): the server's own count.
	Backends int `json:"peak_backends"`
	// Peak is the larger of Open and Backends: the connections the run used.
	Peak int `json:"peak"`
	// WaitCount and WaitMs are how often, and how long in all, a statement waited for
	// a free connection of the pool during the run (sql.DBStats).
	WaitCount int64   `json:"wait_count"`
	WaitMs    float64 `json:"wait_ms"`
}

// slowRowsNeeded is the most rows one slow run uses.
func (r *rig) slowRowsNeeded() int {
	n := 0
	for _, c := range r.opts.SlowConcurrencies {
		n = max(n, c*r.opts.SlowRounds)
	}
	return n
}

func (r *rig) slowFigure(ctx context.Context, rep *Report) error {
	pool := r.opts.Pool
	f := SlowFigure{LatencyMs: ms(r.opts.SlowLatency), Pool: pool, InstantRate: rep.Consume.Best.Rate}
	for _, inFlight := range r.opts.SlowConcurrencies {
		n := inFlight * r.opts.SlowRounds
		pt := SlowPoint{InFlight: inFlight, Pool: pool, Requests: n,
			IdealRate: float64(inFlight) / r.opts.SlowLatency.Seconds(), InstantRate: f.InstantRate}
		pt.CeilingRate = min(pt.IdealRate, pt.InstantRate)
		ids := r.consIDs[:n]
		prov := &slowProvider{latency: r.opts.SlowLatency}
		err := func() error {
			if err := r.vacuum(ctx); err != nil {
				return err
			}
			elapsed, err := r.directPooled(ctx, serviceConsume, prov, inFlight, ids, false)
			if err != nil {
				return err
			}
			pt.BaselineRate = float64(n) / elapsed.Seconds()
			if err := r.vacuum(ctx); err != nil {
				return err
			}
			if err := r.resetStreams(ctx); err != nil {
				return err
			}
			if err := r.publishRequests(ctx, n, func(i int) *nats.Msg { return requestMsg(serviceConsume, ids[i]) }); err != nil {
				return err
			}
			run, err := r.consumePooled(ctx, serviceConsume, prov, inFlight, n, nil)
			pt.Conns = run.conns
			if err != nil {
				return err
			}
			if run.stats.Refreshed != int64(n) {
				return fmt.Errorf("refreshed %d of %d requests with %d in flight: %+v", run.stats.Refreshed, n, inFlight, run.stats)
			}
			pt.Rate = run.rate()
			return nil
		}()
		if err != nil {
			return err
		}
		pt.Ratio = ratio(pt.Rate, pt.CeilingRate)
		f.Points = append(f.Points, pt)
		r.log.Info("bench: slow provider", "in_flight", inFlight, "pool", pool, "rate", int(pt.Rate), "baseline", int(pt.BaselineRate),
			"ideal", int(pt.IdealRate), "instant", int(pt.InstantRate), "peak_conns", pt.Conns.Peak, "peak_in_use", pt.Conns.InUse)
	}
	f.Flattens = r.flattens(f)
	rep.Slow = f
	return nil
}

// flattens explains the slow figure's largest point: which ceiling bounds it.
func (r *rig) flattens(f SlowFigure) string {
	if len(f.Points) == 0 {
		return ""
	}
	last := f.Points[len(f.Points)-1]
	bound := fmt.Sprintf("the provider latency: %s in flight / %s = %s/s is below what the pool of %d commits with an instant provider (%s/s)",
		num(float64(last.InFlight)), r.opts.SlowLatency, num(last.IdealRate), f.Pool, num(f.InstantRate))
	if last.InstantRate < last.IdealRate {
		bound = fmt.Sprintf("the database work of the pool of %d (claim and commit per refresh: the instant-provider per-row rate, %s/s), below the ideal %s in flight / %s = %s/s",
			f.Pool, num(f.InstantRate), num(float64(last.InFlight)), r.opts.SlowLatency, num(last.IdealRate))
	}
	return fmt.Sprintf("with %s calls in flight the rate is %s/s, %.2f of its ceiling, which is %s; "+
		"at most %d connections were open (%d busy at once), whatever the calls in flight",
		num(float64(last.InFlight)), num(last.Rate), last.Ratio, bound, last.Conns.Peak, last.Conns.InUse)
}

// sampleConns samples, until stop is called, how many connections db has open and
// busy, and how many backends the server shows connected to the bench database. It
// uses the admin connection, which nothing else uses while a run is measured.
func (r *rig) sampleConns(ctx context.Context, db *bun.DB) (stop func() ConnPeaks) {
	start := db.DB.Stats()
	var (
		mu    sync.Mutex
		peaks ConnPeaks
		done  = make(chan struct{})
		wg    sync.WaitGroup
	)
	wg.Add(2)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			s := db.DB.Stats()
			mu.Lock()
			peaks.InUse, peaks.Open = max(peaks.InUse, s.InUse), max(peaks.Open, s.OpenConnections)
			mu.Unlock()
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	go func() {
		defer wg.Done()
		tick := time.NewTicker(25 * time.Millisecond)
		defer tick.Stop()
		for {
			var n int
			err := r.admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
				WHERE datname = $1 AND backend_type = 'client backend'`, r.dbName).Scan(&n)
			if err == nil {
				mu.Lock()
				peaks.Backends = max(peaks.Backends, n)
				mu.Unlock()
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() ConnPeaks {
		close(done)
		wg.Wait()
		end := db.DB.Stats()
		peaks.WaitCount = end.WaitCount - start.WaitCount
		peaks.WaitMs = ms(end.WaitDuration - start.WaitDuration)
		peaks.Peak = max(peaks.Open, peaks.Backends)
		return peaks
	}
}
