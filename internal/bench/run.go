package bench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/natsconn"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider"
)

// tally is the Observer of one consumer run: it counts finished messages by
// outcome, sums their handling times, and notes when the last expected one finished.
type tally struct {
	want  int64
	n     atomic.Int64
	done  chan struct{}
	endNs atomic.Int64

	mu    sync.Mutex
	count map[consumer.Outcome]int64
	sum   map[consumer.Outcome]time.Duration
}

func newTally(want int) *tally {
	return &tally{
		want:  int64(want),
		done:  make(chan struct{}),
		count: map[consumer.Outcome]int64{},
		sum:   map[consumer.Outcome]time.Duration{},
	}
}

// MessageDone counts a message; retried and interrupted ones come back, so they do
// not count towards the end of the run.
func (t *tally) MessageDone(_ string, o consumer.Outcome, d time.Duration) {
	t.mu.Lock()
	t.count[o]++
	t.sum[o] += d
	t.mu.Unlock()
	if o == consumer.Retried || o == consumer.Interrupted {
		return
	}
	if t.n.Add(1) == t.want {
		t.endNs.Store(time.Now().UnixNano())
		close(t.done)
	}
}

func (*tally) ProviderCall(string, time.Duration, error)    {}
func (*tally) LockWait(time.Duration)                       {}
func (*tally) Transaction(time.Duration)                    {}
func (*tally) InFlight(int)                                 {}
func (*tally) Discarded(string, string)                     {}
func (*tally) ClaimTakenOver(string, string, time.Duration) {}
func (*tally) BatchSplit(int)                               {}
func (*tally) MaxDeliveriesCopied(uint64, bool)             {}

// mean is the mean handling time of messages with outcome o.
func (t *tally) mean(o consumer.Outcome) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.count[o] == 0 {
		return 0
	}
	return t.sum[o] / time.Duration(t.count[o])
}

// consumerConfig is the configuration of every bench consumer at concurrency conc:
// the defaults, short retry delays (a retry would otherwise stall a run for
// seconds), and whatever Options.Tune adds.
func (r *rig) consumerConfig(conc int) consumer.Config {
	cfg := consumer.DefaultConfig()
	cfg.Concurrency = conc
	cfg.MaxAckPending = max(cfg.MaxAckPending, conc)
	cfg.Backoff = []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond}
	if r.opts.Tune != nil {
		r.opts.Tune(&cfg)
	}
	if r.batch > 1 {
		cfg.BatchSize = min(r.batch, conc)
	}
	return cfg
}

// openPool opens a pool of size connections (the measured runs use Options.Pool,
// as REFRESHER_DB_MAX_CONNS sizes a consumer's), with every connection open: a
// measured run should not pay for connecting, and a server whose connections other
// clients took meanwhile must fail here, not half-way through a run.
func (r *rig) openPool(ctx context.Context, size int) (*bun.DB, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		db, err := model.Open(ctx, r.dbURL, size)
		if err == nil {
			if err = fill(ctx, db, size); err == nil {
				return db, nil
			}
			_ = db.Close()
		}
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "53300" || time.Now().After(deadline) {
			return nil, fmt.Errorf("open a pool of %d connections (cap %d: %s): %w", size, r.maxConns, r.connsReason, err)
		}
		// too_many_connections: other clients of a shared server took them since the
		// budget was read; wait for them to give some back.
		r.log.Warn("bench: PostgreSQL is out of connections, waiting", "pool", size)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// fill opens n connections of db at once and returns them to its idle set.
func fill(ctx context.Context, db *bun.DB, n int) error {
	conns := make([]bun.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range n {
		c, err := db.Conn(ctx)
		if err != nil {
			return err
		}
		if err := c.PingContext(ctx); err != nil {
			_ = c.Close()
			return err
		}
		conns = append(conns, c)
	}
	return nil
}

// consumePooled is consume on a pool of Options.Pool connections of its own, closed
// when the run ends, with the connections it held sampled meanwhile.
func (r *rig) consumePooled(ctx context.Context, service string, prov provider.Refresher, conc, want int, during func(context.Context) error, opts ...consumer.Option) (consumerRun, error) {
	db, err := r.openPool(ctx, r.opts.Pool)
	if err != nil {
		return consumerRun{}, err
	}
	defer db.Close()
	stopSampling := r.sampleConns(ctx, db)
	run, err := r.consume(ctx, db, service, prov, conc, want, during, opts...)
	run.conns = stopSampling()
	return run, err
}

// directPooled is direct on a pool of Options.Pool connections of its own, closed
// when the run ends.
func (r *rig) directPooled(ctx context.Context, service string, prov provider.Refresher, conc int, ids []int64, minimal bool) (time.Duration, error) {
	db, err := r.openPool(ctx, r.opts.Pool)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	return r.direct(ctx, db, service, prov, conc, ids, minimal)
}

// consumerRun is what one run of a real consumer came to.
type consumerRun struct {
	elapsed time.Duration // from bound to the last expected message finished
	stats   consumer.Stats
	tally   *tally
	conns   ConnPeaks // sampled by consumePooled
}

// rate is finished messages per second.
func (c consumerRun) rate() float64 { return float64(c.tally.want) / c.elapsed.Seconds() }

// consume runs consumer.New/Run on db at concurrency conc, with prov for service,
// until want messages are finished, then stops it the way SIGTERM does. during, if
// set, runs once the consumer is bound (to publish while it consumes); otherwise
// the requests must be in the stream already. The time runs from the moment the
// consumer is bound to the moment the last expected message was acknowledged.
func (r *rig) consume(ctx context.Context, db *bun.DB, service string, prov provider.Refresher, conc, want int, during func(context.Context) error, opts ...consumer.Option) (consumerRun, error) {
	nc, err := natsconn.Local(r.ns.URL(), "refresher-bench-consumer", r.log)
	if err != nil {
		return consumerRun{}, err
	}
	defer nc.Close()
	t := newTally(want)
	c, err := consumer.New(db, nc, map[string]provider.Refresher{service: prov}, r.consumerConfig(conc),
		append([]consumer.Option{consumer.WithLogger(r.quiet), consumer.WithObserver(t)}, opts...)...)
	if err != nil {
		return consumerRun{}, err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(runCtx) }()
	select {
	case <-c.Ready():
	case err := <-runErr:
		return consumerRun{}, fmt.Errorf("consumer stopped before binding: %w", err)
	case <-ctx.Done():
		<-runErr //nolint:errcheck // waiting for Run to return; its error was reported or is the one being returned
		return consumerRun{}, ctx.Err()
	}
	start := time.Now()
	if during != nil {
		if err := during(ctx); err != nil {
			stop()
			<-runErr //nolint:errcheck // waiting for Run to return; its error was reported or is the one being returned
			return consumerRun{}, err
		}
	}
	limit := time.NewTimer(runLimit(want))
	defer limit.Stop()
	select {
	case <-t.done:
	case err := <-runErr:
		return consumerRun{}, fmt.Errorf("consumer stopped after %d of %d messages: %w", t.n.Load(), want, err)
	case <-limit.C:
		stop()
		<-runErr //nolint:errcheck // waiting for Run to return; its error was reported or is the one being returned
		return consumerRun{}, fmt.Errorf("consumer finished %d of %d messages in %s (stats %+v)", t.n.Load(), want, runLimit(want), c.Stats())
	case <-ctx.Done():
		<-runErr //nolint:errcheck // the drain finishes what is in flight before the pool closes; ctx.Err() is the answer
		return consumerRun{}, ctx.Err()
	}
	elapsed := time.Unix(0, t.endNs.Load()).Sub(start)
	stop()
	if err := <-runErr; err != nil {
		return consumerRun{}, fmt.Errorf("consumer shutdown: %w", err)
	}
	return consumerRun{elapsed: elapsed, stats: c.Stats(), tally: t}, nil
}

// runLimit bounds one run generously: a run that slow is broken, not slow.
func runLimit(messages int) time.Duration {
	return max(2*time.Minute, time.Duration(messages)*20*time.Millisecond)
}

// publishRequests stores one request per message that build returns for i in
// [0, n), before a consumer starts, with a bounded async window; it is set-up, not
// a measurement.
func (r *rig) publishRequests(ctx context.Context, n int, build func(i int) *nats.Msg) error {
	var failed atomic.Int64
	js, err := jetstream.New(r.nc,
		jetstream.WithPublishAsyncMaxPending(maxInFlight),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { failed.Add(1) }),
	)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	for i := range n {
		m := build(i)
		for {
			_, err := js.PublishMsgAsync(m, jetstream.WithStallWait(10*time.Second))
			if err == nil {
				break
			}
			if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				return fmt.Errorf("publish request %s: %w", m.Subject, err)
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return ctx.Err()
	}
	if f := failed.Load(); f > 0 {
		return fmt.Errorf("%d of %d requests not stored", f, n)
	}
	return nil
}

// requestMsg is a plain request for service's id, as `nats pub` would send it.
func requestMsg(service string, id int64) *nats.Msg {
	return nats.NewMsg(model.Key{Service: service, ID: id}.Subject())
}

// directTx is the baseline: the consumer's own claim, call and commit (two short
// transactions), run through (*consumer.Consumer).RefreshNow on the same bun handle and pgx driver, without NATS,
// parsing, logging or acknowledgement. Being the same code, it sends the same
// statements; sqlShapes checks that in every run. It reports whether it refreshed
// (false: the skip rule answered).
func directTx(ctx context.Context, c *consumer.Consumer, key model.Key, requestedAt time.Time) (bool, error) {
	outcome, err := c.RefreshNow(ctx, key, requestedAt)
	if err != nil {
		return false, err
	}
	switch outcome {
	case consumer.Refreshed:
		return true, nil
	case consumer.SkippedFresh:
		return false, nil
	}
	return false, fmt.Errorf("credential %d: %s", key.ID, outcome)
}

// directConsumer is a consumer on db used only for RefreshNow: the baseline side.
func (r *rig) directConsumer(db *bun.DB, prov provider.Refresher, conc int) (*consumer.Consumer, error) {
	return consumer.New(db, r.nc, map[string]provider.Refresher{serviceConsume: prov}, r.consumerConfig(conc),
		consumer.WithLogger(r.quiet))
}

// minimalTx is the least a locked refresh can be, the way the consumer worked before
// claims: one transaction, SET LOCAL lock_timeout, SELECT ... FOR UPDATE, the skip
// rule, the provider call with the row locked and the connection held, the UPDATE of
// the token columns, commit. It has no durable claim, so a crash after the provider
// rotated a token loses it, and a slow provider holds a connection per call. Beside
// it, the consumer's claim, call and commit show what that safety costs. It reports
// whether it refreshed (false: the skip rule answered).
func minimalTx(ctx context.Context, db *bun.DB, cfg consumer.Config, key model.Key, requestedAt time.Time, prov provider.Refresher) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.LockTimeout+2*cfg.ProviderTimeout+5*time.Second) // the consumer's deadline
	defer cancel()
	refreshed := false
	err := db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", cfg.LockTimeout.Milliseconds())); err != nil {
			return err
		}
		cred := new(model.Credential)
		if err := tx.NewSelect().Model(cred).
			Where("id = ?", key.ID).
			Where("service = ?", key.Service).
			For("UPDATE").
			Scan(ctx); err != nil {
			return fmt.Errorf("lock credential %d: %w", key.ID, err)
		}
		if cred.Status != model.StatusActive || (cred.RefreshedAt != nil && cred.RefreshedAt.After(requestedAt)) {
			return errSkip
		}
		began := time.Now().Truncate(time.Microsecond)
		tok, err := prov.Refresh(ctx, cred.RefreshToken)
		if err != nil {
			return err
		}
		expires := tok.Expiry
		if expires.IsZero() {
			expires = began.Add(cfg.DefaultTokenTTL)
		}
		res, err := tx.NewUpdate().Model((*model.Credential)(nil)).
			Set("access_token = ?", tok.AccessToken).
			Set("refresh_token = ?", tok.RefreshToken).
			Set("expires_at = ?", expires).
			Set("refreshed_at = ?", began).
			Set("version = version + 1").
			Set("failures = 0").
			Set("last_error = NULL").
			Set("updated_at = now()").
			Where("id = ?", cred.ID).
			Exec(ctx)
		if err != nil {
			return fmt.Errorf("write credential %d: %w", cred.ID, err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("write credential %d: %d rows updated", cred.ID, n)
		}
		refreshed = true
		return nil
	})
	if errors.Is(err, errSkip) {
		return false, nil
	}
	return refreshed, err
}

// errSkip rolls back a direct transaction the skip rule answered, as the consumer does.
var errSkip = errors.New("skip")

// direct runs the baseline for every id with conc workers and returns the wall time:
// the consumer's own claim, call and commit (directTx), or with minimal set the bare
// lock-and-update (minimalTx), which holds a connection per worker, so it is run
// with as many workers as the pool has connections. Every refresh must refresh: the
// rows were last refreshed before requestedAt.
func (r *rig) direct(ctx context.Context, db *bun.DB, service string, prov provider.Refresher, conc int, ids []int64, minimal bool) (time.Duration, error) {
	cfg := r.consumerConfig(conc)
	c, err := r.directConsumer(db, prov, conc)
	if err != nil {
		return 0, err
	}
	tx := func(key model.Key, at time.Time) (bool, error) {
		if minimal {
			return minimalTx(ctx, db, cfg, key, at, prov)
		}
		return directTx(ctx, c, key, at)
	}
	requestedAt := time.Now()
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
	)
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(len(ids)) || ctx.Err() != nil {
					return
				}
				ok, err := tx(model.Key{Service: service, ID: ids[i]}, requestedAt)
				if err == nil && !ok {
					err = fmt.Errorf("credential %d: skipped, want a refresh", ids[i])
				}
				if err != nil {
					errOnce.Do(func() { first = err })
					next.Store(int64(len(ids)))
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if first != nil {
		return 0, fmt.Errorf("direct transactions: %w", first)
	}
	return elapsed, ctx.Err()
}

// refreshedAt reads refreshed_at of ids.
func (r *rig) refreshedAt(ctx context.Context, ids []int64) (map[int64]time.Time, error) {
	var rows []struct {
		ID          int64        `bun:"id"`
		RefreshedAt sql.NullTime `bun:"refreshed_at"`
	}
	if err := r.setup.NewSelect().Model((*model.Credential)(nil)).Column("id", "refreshed_at").
		Where("id IN (?)", bun.In(ids)).Scan(ctx, &rows); err != nil {
		return nil, fmt.Errorf("read refreshed_at: %w", err)
	}
	out := make(map[int64]time.Time, len(rows))
	for _, row := range rows {
		if row.RefreshedAt.Valid {
			out[row.ID] = row.RefreshedAt.Time
		}
	}
	return out, nil
}
