// Package bench measures refresher on the machine it runs on, and measures beside each
// figure the baseline it should be judged against, in the same run: the publisher
// against a raw PublishAsync loop, the consumer against its own claim, call and
// commit run directly (RefreshNow) and against the bare lock-and-update transaction
// on as many connections, the slow provider against the ideal and the instant one,
// the skip path against a refresh. Every consumer and baseline works on a pool of
// Options.Pool connections, whatever its calls in flight. It
// starts its own nats-server, finds PostgreSQL like the demo does, works in a
// database of its own and drops it at the end. `refresher bench` drives it.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/natsconn"
	"github.com/refresher/refresher/internal/natsserver"
	"github.com/refresher/refresher/internal/pgserver"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/stream"
)

// ErrOptions wraps every invalid Options value, so the command can exit 2 on it.
var ErrOptions = errors.New("bad bench option")

// Options shape a bench run. DefaultOptions is the full run, QuickOptions one that
// finishes in seconds.
type Options struct {
	// Quick is recorded in the report; QuickOptions sets it.
	Quick bool
	// Rows is how many credentials the publish figure scans; its peak RSS is measured
	// at Rows/10 and at Rows.
	Rows int
	// Requests is the size of the final per-row consume run, at the best concurrency.
	Requests int
	// SweepRequests is the size of each consume run while looking for that concurrency.
	SweepRequests int
	// Pool is the size of every database pool a measured run opens: each consumer's
	// (REFRESHER_DB_MAX_CONNS) and each baseline's. Provider calls in flight no longer
	// hold a connection, so it does not follow the concurrency.
	Pool int
	// Concurrencies are the calls in flight (REFRESHER_CONCURRENCY) tried for the
	// per-row consume figure, all on a pool of Pool connections.
	Concurrencies []int
	// BatchSizes are tried with batched commits at the best per-row concurrency.
	BatchSizes []int
	// SlowConcurrencies are the slow-provider figure's calls in flight, on a pool of
	// Pool connections; the last, largest one is judged.
	SlowConcurrencies []int
	// SlowLatency is the slow provider's answer time.
	SlowLatency time.Duration
	// SlowRounds is how many provider round trips each slow run lasts.
	SlowRounds int
	// LatencyRate is the fixed request rate (per second) of the latency figure.
	LatencyRate int
	// LatencyDuration is how long requests are sent at that rate.
	LatencyDuration time.Duration
	// DuplicateRows get DuplicateFactor requests each in the duplicates figure.
	DuplicateRows   int
	DuplicateFactor int
	// SkipRequests are requests the skip rule answers, in the skip-path figure.
	SkipRequests int
	// MaxConns is the most connections one pool may hold; 0 means what the server's
	// max_connections leaves free, less a margin for other clients. Pool must fit.
	MaxConns int
	// Exe and ExeArgs are the command line the peak-RSS figure runs as a child
	// process, so that seeding and the in-process nats-server do not count: it must
	// take `refresher publish` flags, publish, and then print PeakRSSKey=<KiB>
	// (`refresher bench publish-child`). Required.
	Exe     string
	ExeArgs []string
	// CPUProfile and MemProfile, when set, are files the final per-row consume run is
	// profiled into (MemProfile gets the allocations; MemProfile+".base" those before
	// the run, for `go tool pprof -diff_base`).
	CPUProfile string
	MemProfile string
	// Tune, when set, adjusts the consumer configuration of every consume run (for
	// modes the consumer grows later, such as batching), and Mode names that mode in
	// the report ("" means "per-row").
	Tune func(*consumer.Config)
	Mode string
	// Log receives progress lines; nil discards them.
	Log *slog.Logger
}

// DefaultOptions is the full run the README reports: several minutes on two cores.
func DefaultOptions() Options {
	return Options{
		Rows:              1_000_000,
		Requests:          100_000,
		SweepRequests:     20_000,
		Pool:              8,
		Concurrencies:     []int{8, 32, 128, 256},
		BatchSizes:        []int{8, 16, 32},
		SlowConcurrencies: []int{64, 256, 1024},
		SlowLatency:       100 * time.Millisecond,
		SlowRounds:        20,
		LatencyRate:       200,
		LatencyDuration:   10 * time.Second,
		DuplicateRows:     5_000,
		DuplicateFactor:   10,
		SkipRequests:      20_000,
	}
}

// QuickOptions exercises every figure at a small size, in well under a minute.
func QuickOptions() Options {
	return Options{
		Quick:             true,
		Rows:              5_000,
		Requests:          500,
		SweepRequests:     300,
		Pool:              8,
		Concurrencies:     []int{8, 32},
		BatchSizes:        []int{4, 16},
		SlowConcurrencies: []int{16, 64, 256},
		SlowLatency:       100 * time.Millisecond,
		SlowRounds:        2,
		LatencyRate:       200,
		LatencyDuration:   500 * time.Millisecond,
		DuplicateRows:     100,
		DuplicateFactor:   10,
		SkipRequests:      500,
		// Quick runs happen inside test suites sharing the server with other tests.
		MaxConns: 24,
	}
}

// Validate names the first bad value.
func (o Options) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrOptions}, a...)...)
	}
	switch {
	case o.Rows < 10:
		return bad("rows %d: want at least 10", o.Rows)
	case o.Pool < 1 || o.Pool > 64:
		return bad("pool %d: want 1 to 64 connections", o.Pool)
	case o.Requests < 1:
		return bad("requests %d: want at least 1", o.Requests)
	case o.SweepRequests < 1:
		return bad("sweep requests %d: want at least 1", o.SweepRequests)
	case len(o.Concurrencies) == 0:
		return bad("no consume concurrency to try")
	case len(o.SlowConcurrencies) == 0:
		return bad("no slow-provider concurrency to try")
	case o.SlowLatency <= 0:
		return bad("slow provider latency %s: must be positive", o.SlowLatency)
	case o.SlowRounds < 1:
		return bad("slow rounds %d: want at least 1", o.SlowRounds)
	case o.LatencyRate < 1 || o.LatencyRate > 10_000:
		return bad("latency rate %d/s: want 1 to 10000", o.LatencyRate)
	case o.LatencyDuration <= 0:
		return bad("latency duration %s: must be positive", o.LatencyDuration)
	case o.DuplicateRows < 1 || o.DuplicateFactor < 2:
		return bad("duplicates %d rows x %d: want at least 1 row and 2 requests per row", o.DuplicateRows, o.DuplicateFactor)
	case o.SkipRequests < 1:
		return bad("skip requests %d: want at least 1", o.SkipRequests)
	case o.MaxConns < 0 || (o.MaxConns > 0 && o.MaxConns < o.Pool):
		return bad("max connections %d: want 0 (automatic) or at least the pool (%d)", o.MaxConns, o.Pool)
	case o.Exe == "":
		return bad("no refresher binary for the peak-RSS child process")
	}
	for _, c := range append(append([]int{}, o.Concurrencies...), o.SlowConcurrencies...) {
		if c < 1 || c > 4096 {
			return bad("concurrency %d: want 1 to 4096", c)
		}
	}
	return nil
}

// Services the bench seeds, one per purpose so that the figures do not share rows.
const (
	servicePublish = "pub"
	serviceConsume = "cons"
	serviceSkip    = "skip"
)

// rig is the world one run measures in.
type rig struct {
	opts  Options
	log   *slog.Logger
	quiet *slog.Logger // for the consumers: info level, as deployed, written nowhere

	pg     *pgserver.Server
	dbName string
	dbURL  string
	admin  *pgx.Conn // to the admin URL's database, so reading statistics is no transaction in ours
	setup  *bun.DB   // seeding, vacuum, checks
	ns     *natsserver.Server
	nc     *nats.Conn
	batch  int // consumer batch size of the run under way (0: per row)
	js     jetstream.JetStream

	maxConns    int // connections one pool may hold
	connsReason string
	consIDs     []int64 // ids of serviceConsume, in order
	skipIDs     []int64
	skipSeeded  time.Time // refreshed_at of every serviceSkip row
}

// Run measures every figure and returns the report. ctx cancels the run; the
// database it created is dropped whatever happens.
func Run(ctx context.Context, o Options) (rep *Report, err error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &rig{
		opts:  o,
		log:   log,
		quiet: slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	started := time.Now()
	defer r.close(context.WithoutCancel(ctx))
	if err := r.start(ctx); err != nil {
		return nil, err
	}
	rep = &Report{Quick: o.Quick, Started: started.UTC(), Database: r.dbName}
	if rep.Machine, err = r.machine(ctx); err != nil {
		return nil, err
	}
	rep.Machine.PoolCap, rep.Machine.PoolCapReason = r.maxConns, r.connsReason
	if rep.Seed, err = r.seedAll(ctx); err != nil {
		return nil, err
	}
	steps := []struct {
		name string
		run  func(context.Context, *Report) error
	}{
		{"publish", r.publishFigure},
		{"consume", r.consumeFigure},
		{"latency", r.latencyFigure},
		{"slow provider", r.slowFigure},
		{"duplicates", r.duplicatesFigure},
		{"skip path", r.skipFigure},
		{"provider limits", r.limitsFigure},
	}
	for _, s := range steps {
		t := time.Now()
		r.log.Info("bench: " + s.name)
		if err := s.run(ctx, rep); err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		r.log.Info("bench: "+s.name+" done", "elapsed", time.Since(t).Round(time.Millisecond))
	}
	rep.Machine.LoadAvgEnd = loadAvg()
	rep.judge()
	rep.Elapsed = time.Since(started).Seconds()
	return rep, nil
}

// start finds PostgreSQL, creates the bench database and starts nats-server.
func (r *rig) start(ctx context.Context) error {
	pg, err := pgserver.Discover(ctx, r.log)
	if err != nil {
		return err
	}
	r.pg = pg
	admin, err := connectAdmin(ctx, pg.AdminURL)
	if err != nil {
		return err
	}
	r.admin = admin
	name := "refresher_bench_" + randomHex(4)
	url, err := pg.CreateDatabase(ctx, name)
	if err != nil {
		return err
	}
	r.dbName, r.dbURL = name, url
	if r.setup, err = model.Open(ctx, url, 4); err != nil {
		return err
	}
	// An idle connection may sit on its statistics for seconds; without idle
	// connections, the set-up work is counted before a measured run starts.
	r.setup.DB.SetMaxIdleConns(0)
	if _, err := model.Migrate(ctx, r.setup); err != nil {
		return err
	}
	// The bench vacuums before every run, so that no run pays for its predecessor's
	// dead rows, and no autovacuum worker competes with a run for the two cores.
	if _, err := r.setup.ExecContext(ctx, "ALTER TABLE credentials SET (autovacuum_enabled = false)"); err != nil {
		return fmt.Errorf("turn autovacuum off on the bench table: %w", err)
	}
	if err := r.connectionBudget(ctx); err != nil {
		return err
	}
	r.ns, err = natsserver.Start(natsserver.Options{Name: "refresher-bench"})
	if err != nil {
		return fmt.Errorf("start nats-server: %w", err)
	}
	if r.nc, err = natsconn.Local(r.ns.URL(), "refresher-bench", r.log); err != nil {
		return err
	}
	if r.js, err = jetstream.New(r.nc); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	r.log.Info("bench: ready", "database", name, "nats", r.ns.URL(), "pool_cap", r.maxConns)
	return nil
}

// connectionBudget decides how many connections one pool may hold: what
// max_connections leaves free now, less a margin so that other clients of a shared
// server keep working, and less what this process holds already. The pool of every
// measured run must fit in it.
func (r *rig) connectionBudget(ctx context.Context) error {
	var maxConn, reserved, inUse int
	err := r.admin.QueryRow(ctx, `SELECT current_setting('max_connections')::int,
		current_setting('superuser_reserved_connections')::int,
		(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int`).
		Scan(&maxConn, &reserved, &inUse)
	if err != nil {
		return fmt.Errorf("read max_connections: %w", err)
	}
	// Other clients of a shared server (test suites open pools of 20 to 64) keep
	// working, and a pool the bench opens later still fits if they grow a little.
	const margin = 25
	free := maxConn - reserved - inUse - margin
	r.maxConns = free
	r.connsReason = fmt.Sprintf("max_connections %d - %d reserved - %d in use at start - %d left for other clients", maxConn, reserved, inUse, margin)
	if r.opts.MaxConns > 0 && r.opts.MaxConns < free {
		r.maxConns = r.opts.MaxConns
		r.connsReason = fmt.Sprintf("capped by option at %d (server would allow %d: %s)", r.opts.MaxConns, free, r.connsReason)
	}
	if r.maxConns < r.opts.Pool {
		return fmt.Errorf("PostgreSQL has %d connections to spare (%s): the pool needs %d", r.maxConns, r.connsReason, r.opts.Pool)
	}
	return nil
}

// close stops everything start started and drops the database.
func (r *rig) close(ctx context.Context) {
	if r.nc != nil {
		r.nc.Close()
	}
	if r.ns != nil {
		r.ns.Shutdown()
	}
	if r.setup != nil {
		_ = r.setup.Close()
	}
	if r.admin != nil {
		_ = r.admin.Close(ctx)
	}
	if r.dbName != "" {
		if err := r.pg.DropDatabase(ctx, r.dbName); err != nil {
			r.log.Warn("bench: could not drop the bench database", "database", r.dbName, "error", err)
		}
	}
	if r.pg != nil {
		_ = r.pg.Stop(ctx)
	}
}

// resetStreams deletes and recreates the streams, so that a measurement starts on
// an empty stream with no durable consumer and no dedupe history.
func (r *rig) resetStreams(ctx context.Context) error {
	for _, s := range []string{stream.Stream, stream.DLQStream} {
		if err := r.js.DeleteStream(ctx, s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("delete stream %s: %w", s, err)
		}
	}
	// The server may still be removing the deleted stream's files, and then refuses
	// to create its store ("error creating store for stream") for a moment.
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := stream.EnsureStreams(ctx, r.js, stream.DefaultStreamConfig())
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		r.log.Debug("bench: recreating the streams", "error", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// vacuum settles the table between measurements, so that a run does not pay for
// the dead rows of the one before it.
func (r *rig) vacuum(ctx context.Context) error {
	if _, err := r.setup.ExecContext(ctx, "VACUUM (ANALYZE) credentials"); err != nil {
		return fmt.Errorf("vacuum credentials: %w", err)
	}
	return nil
}

// connectAdmin opens one connection to the admin URL.
func connectAdmin(ctx context.Context, url string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("%s is not a valid PostgreSQL URL", model.RedactURL(url))
	}
	cfg.ConnectTimeout = 5 * time.Second
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL at %s: %w", model.RedactURL(url), err)
	}
	return conn, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b)
}
