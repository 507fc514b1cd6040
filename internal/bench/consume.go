package bench

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"slices"

	"github.com/nats-io/nats.go"
)

// ConsumeFigure is figure 2: end-to-end refreshes per second of consumer.New/Run
// with an instant provider, per row (a claim and a commit transaction per message),
// on a pool of Options.Pool connections at several calls in flight, beside the
// consumer's own claim, call and commit run directly (RefreshNow) at the same calls
// in flight and pool, and beside the bare lock-and-update transaction on as many
// connections.
type ConsumeFigure struct {
	// Mode is the consumer's commit mode measured ("per-row").
	Mode string `json:"mode"`
	// Pool is the connections of every pool of the figure, consumer and baselines.
	Pool int `json:"pool"`
	// Sweep is one smaller run of each side per concurrency, to find the best.
	Sweep []ConsumePoint `json:"sweep"`
	// Best is the full-size run at the concurrency whose end-to-end rate was best.
	Best ConsumePoint `json:"best"`
	// SQL and BaselineSQL are the statements of one consumer message and of one
	// RefreshNow, literal values blanked. SQLMissing are baseline statements the
	// consumer does not send, in order (empty, or the baseline measures other work);
	// SQLExtra are the consumer's statements beyond the baseline's, whose cost is on
	// the consumer's side of the ratio.
	SQL         []string `json:"sql"`
	BaselineSQL []string `json:"baseline_sql"`
	SQLMissing  []string `json:"sql_missing"`
	SQLExtra    []string `json:"sql_extra"`
	// MinimalSQL is the bare lock-and-update's statements. MinimalMissing and
	// MinimalExtra compare them with the consumer's by kind (stmtKind: the verb, the
	// table, FOR UPDATE, the first column an UPDATE sets), since the two are written
	// differently: MinimalExtra is what the claim protocol sends per refresh beyond
	// the bare transaction.
	MinimalSQL     []string `json:"minimal_sql"`
	MinimalMissing []string `json:"minimal_missing"`
	MinimalExtra   []string `json:"minimal_extra"`
	// DB is what the best end-to-end run did to the database.
	DB DBDelta `json:"db"`
	// Batch is the consumer with batched commits (REFRESHER_BATCH_SIZE), with calls
	// in flight for a batch per pool connection (at least the best per-row run's),
	// beside the bare transaction and the best per-row run.
	Batch []BatchPoint `json:"batch"`
	// BestBatch is the batch size with the best rate.
	BestBatch BatchPoint `json:"best_batch"`
}

// BatchPoint is one batch size's end-to-end rate beside the bare lock-and-update
// (the best per-row run's MinimalRate: same pool) and the per-row rate.
type BatchPoint struct {
	BatchSize   int     `json:"batch_size"`
	Concurrency int     `json:"concurrency"`
	Pool        int     `json:"pool"`
	Requests    int     `json:"requests"`
	Rate        float64 `json:"rate"`
	MinimalRate float64 `json:"minimal_rate"`
	// Ratio is Rate / MinimalRate (the judged one); PerRowRatio Rate / PerRowRate.
	Ratio       float64 `json:"ratio"`
	PerRowRate  float64 `json:"per_row_rate"`
	PerRowRatio float64 `json:"per_row_ratio"`
	// Conns is what the batched consumer run held of the database.
	Conns ConnPeaks `json:"conns"`
}

// ConsumePoint is one concurrency's end-to-end rate and its baselines' rates.
type ConsumePoint struct {
	// Concurrency is the provider calls in flight (REFRESHER_CONCURRENCY), on a
	// pool of Pool connections.
	Concurrency int     `json:"concurrency"`
	Pool        int     `json:"pool"`
	Requests    int     `json:"requests"`
	Rate        float64 `json:"rate"`
	// BaselineRate is RefreshNow (the consumer's claim, call and commit, no NATS) at
	// the same calls in flight on the same pool size; Ratio is Rate / BaselineRate.
	BaselineRate float64 `json:"baseline_rate"`
	Ratio        float64 `json:"ratio"`
	// MinimalRate is the bare lock-and-update (minimalTx), one worker per pool
	// connection; MinimalRatio is Rate / MinimalRate, what the durable claim, the
	// second transaction and NATS cost together.
	MinimalRate  float64 `json:"minimal_rate"`
	MinimalRatio float64 `json:"minimal_ratio"`
	// Conns is what the consumer run held of the database.
	Conns ConnPeaks `json:"conns"`
}

func (r *rig) consumeFigure(ctx context.Context, rep *Report) error {
	f := ConsumeFigure{Mode: r.opts.Mode, Pool: r.opts.Pool}
	if f.Mode == "" {
		f.Mode = "per-row"
	}
	var err error
	if f.SQL, f.BaselineSQL, f.MinimalSQL, err = r.sqlShapes(ctx); err != nil {
		return err
	}
	f.SQLMissing, f.SQLExtra = compareSQL(f.SQL, f.BaselineSQL, nil)
	if len(f.SQLMissing) > 0 {
		r.log.Warn("bench: the consumer no longer sends the baseline's statements; the ratio compares unlike work", "missing", f.SQLMissing)
	}
	f.MinimalMissing, f.MinimalExtra = compareSQL(f.SQL, f.MinimalSQL, stmtKind)
	var tried []int
	for _, c := range r.opts.Concurrencies {
		if slices.Contains(tried, c) {
			continue
		}
		tried = append(tried, c)
		pt, _, err := r.consumePoint(ctx, c, r.opts.SweepRequests, false)
		if err != nil {
			return err
		}
		f.Sweep = append(f.Sweep, pt)
		r.log.Info("bench: consume sweep", "concurrency", c, "pool", pt.Pool, "rate", int(pt.Rate),
			"baseline", int(pt.BaselineRate), "minimal", int(pt.MinimalRate))
	}
	best := slices.MaxFunc(f.Sweep, func(a, b ConsumePoint) int { return cmp.Compare(a.Rate, b.Rate) })
	f.Best, f.DB, err = r.consumePoint(ctx, best.Concurrency, r.opts.Requests, true)
	if err != nil {
		return err
	}
	for _, k := range r.opts.BatchSizes {
		// A batch takes a call slot per message: enough calls in flight for a batch per
		// pool connection, and no fewer than the best per-row run had.
		bp, err := r.batchPoint(ctx, min(max(f.Best.Concurrency, k*r.opts.Pool), 4096), k, r.opts.Requests)
		if err != nil {
			return err
		}
		bp.MinimalRate, bp.PerRowRate = f.Best.MinimalRate, f.Best.Rate
		bp.Ratio, bp.PerRowRatio = ratio(bp.Rate, bp.MinimalRate), ratio(bp.Rate, bp.PerRowRate)
		f.Batch = append(f.Batch, bp)
		r.log.Info("bench: consume batch", "batch", k, "rate", int(bp.Rate), "minimal", int(bp.MinimalRate), "per_row", int(bp.PerRowRate))
	}
	if len(f.Batch) > 0 {
		f.BestBatch = slices.MaxFunc(f.Batch, func(a, b BatchPoint) int { return cmp.Compare(a.Rate, b.Rate) })
	}
	rep.Consume = f
	return nil
}

// batchPoint measures n requests through a consumer with batch size k at
// concurrency conc.
func (r *rig) batchPoint(ctx context.Context, conc, k, n int) (BatchPoint, error) {
	bp := BatchPoint{BatchSize: k, Concurrency: conc, Pool: r.opts.Pool, Requests: n}
	ids := r.consIDs[:n]
	if err := r.vacuum(ctx); err != nil {
		return bp, err
	}
	if err := r.resetStreams(ctx); err != nil {
		return bp, err
	}
	if err := r.publishRequests(ctx, n, func(i int) *nats.Msg { return requestMsg(serviceConsume, ids[i]) }); err != nil {
		return bp, err
	}
	r.batch = k
	defer func() { r.batch = 0 }()
	run, err := r.consumePooled(ctx, serviceConsume, &instantProvider{}, conc, n, nil)
	if err != nil {
		return bp, err
	}
	if run.stats.Refreshed != int64(n) {
		return bp, fmt.Errorf("batch consumer (%d) refreshed %d of %d requests: %+v", k, run.stats.Refreshed, n, run.stats)
	}
	bp.Rate, bp.Conns = run.rate(), run.conns
	return bp, nil
}

// consumePoint measures n requests at concurrency conc (calls in flight): first
// RefreshNow at conc, then the bare lock-and-update with one worker per pool
// connection, then the consumer at conc, each after a vacuum and on a fresh pool of
// Options.Pool connections. With final set it profiles the consumer run (when the
// options ask for it) and measures what that run did to the database.
func (r *rig) consumePoint(ctx context.Context, conc, n int, final bool) (ConsumePoint, DBDelta, error) {
	pt := ConsumePoint{Concurrency: conc, Pool: r.opts.Pool, Requests: n}
	ids := r.consIDs[:n]
	prov := &instantProvider{}
	if err := r.vacuum(ctx); err != nil {
		return pt, DBDelta{}, err
	}
	elapsed, err := r.directPooled(ctx, serviceConsume, prov, conc, ids, false)
	if err != nil {
		return pt, DBDelta{}, err
	}
	pt.BaselineRate = float64(n) / elapsed.Seconds()
	if err := r.vacuum(ctx); err != nil {
		return pt, DBDelta{}, err
	}
	if elapsed, err = r.directPooled(ctx, serviceConsume, prov, r.opts.Pool, ids, true); err != nil {
		return pt, DBDelta{}, err
	}
	pt.MinimalRate = float64(n) / elapsed.Seconds()

	if err := r.vacuum(ctx); err != nil {
		return pt, DBDelta{}, err
	}
	if err := r.resetStreams(ctx); err != nil {
		return pt, DBDelta{}, err
	}
	if err := r.publishRequests(ctx, n, func(i int) *nats.Msg { return requestMsg(serviceConsume, ids[i]) }); err != nil {
		return pt, DBDelta{}, err
	}
	var before dbSnapshot
	stopProfiles := func() {}
	if final {
		if before, err = r.before(ctx); err != nil {
			return pt, DBDelta{}, err
		}
		if stopProfiles, err = r.startProfiles(); err != nil {
			return pt, DBDelta{}, err
		}
	}
	run, err := r.consumePooled(ctx, serviceConsume, prov, conc, n, nil)
	stopProfiles()
	if err != nil {
		return pt, DBDelta{}, err
	}
	if run.stats.Refreshed != int64(n) {
		return pt, DBDelta{}, fmt.Errorf("consumer at concurrency %d refreshed %d of %d requests: %+v", conc, run.stats.Refreshed, n, run.stats)
	}
	pt.Rate, pt.Conns = run.rate(), run.conns
	pt.Ratio = ratio(pt.Rate, pt.BaselineRate)
	pt.MinimalRatio = ratio(pt.Rate, pt.MinimalRate)
	if !final {
		return pt, DBDelta{}, nil
	}
	d, err := r.since(ctx, before, n)
	return pt, d, err
}

// startProfiles starts the CPU profile and takes the allocation baseline, if the
// options ask for them; stop writes them.
func (r *rig) startProfiles() (stop func(), err error) {
	var cpu *os.File
	if r.opts.CPUProfile != "" {
		if cpu, err = os.Create(r.opts.CPUProfile); err != nil {
			return nil, fmt.Errorf("cpu profile: %w", err)
		}
		if err := pprof.StartCPUProfile(cpu); err != nil {
			cpu.Close()
			return nil, fmt.Errorf("cpu profile: %w", err)
		}
	}
	if r.opts.MemProfile != "" {
		if err := writeAllocs(r.opts.MemProfile + ".base"); err != nil {
			return nil, err
		}
	}
	return func() {
		if cpu != nil {
			pprof.StopCPUProfile()
			_ = cpu.Close()
			r.log.Info("bench: CPU profile of the final consume run written", "file", r.opts.CPUProfile)
		}
		if r.opts.MemProfile != "" {
			if err := writeAllocs(r.opts.MemProfile); err != nil {
				r.log.Warn("bench: allocation profile", "error", err)
				return
			}
			r.log.Info("bench: allocation profile written; subtract the base with -diff_base",
				"file", r.opts.MemProfile, "base", r.opts.MemProfile+".base")
		}
	}, nil
}

func writeAllocs(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("allocation profile: %w", err)
	}
	defer f.Close()
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		return fmt.Errorf("allocation profile %s: %w", path, err)
	}
	return nil
}
