// Package demo runs the whole system on embedded parts and checks the result against
// the fake provider: the `refresher demo` command.
package demo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/natsconn"
	"github.com/refresher/refresher/internal/natsserver"
	"github.com/refresher/refresher/internal/pgserver"
	"github.com/refresher/refresher/internal/progress"
	"github.com/refresher/refresher/internal/seed"
	"github.com/refresher/refresher/internal/verify"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider"
	"github.com/refresher/refresher/provider/fake"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

// Services are the two services the demo refreshes.
var Services = []string{"github", "google"}

// Options shape a demo run.
type Options struct {
	Count       int
	Consumers   int
	Concurrency int
	Latency     time.Duration
	Duplicates  int
	Keep        bool
	Timeout     time.Duration
	// Progress, if set, shows the fleet's running counts while the demo waits.
	Progress *progress.Line
}

// DefaultOptions is what `refresher demo` runs without flags.
func DefaultOptions() Options {
	return Options{Count: 2000, Consumers: 3, Concurrency: 16, Latency: 2 * time.Millisecond, Duplicates: 1, Timeout: 5 * time.Minute}
}

// ErrLost is returned when the verification finds a credential that does not hold
// its provider's latest refresh token.
var ErrLost = errors.New("verification failed")

// Run executes the demo and prints its report to out.
func Run(ctx context.Context, o Options, out io.Writer, log *slog.Logger) error {
	if o.Count < 2 || o.Consumers < 1 || o.Concurrency < 1 || o.Duplicates < 0 {
		return fmt.Errorf("demo: want --count >= 2, --consumers >= 1, --concurrency >= 1, --duplicates >= 0")
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultOptions().Timeout
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	quiet := log.With("component", "demo")

	// PostgreSQL: DATABASE_URL, the local server, or a throwaway cluster.
	pg, err := pgserver.Discover(ctx, quiet)
	if err != nil {
		return err
	}
	defer func() { _ = pg.Stop(context.WithoutCancel(ctx)) }() // best effort: the cluster dies with the process anyway
	dbName := "refresher_demo_" + randomHex(4)
	dbURL, err := pg.CreateDatabase(ctx, dbName)
	if err != nil {
		return err
	}
	if !o.Keep {
		defer func() { _ = pg.DropDatabase(context.WithoutCancel(ctx), dbName) }() // best effort: a leftover demo database is harmless
	}
	db, err := model.Open(ctx, dbURL, o.Consumers*o.Concurrency+8)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := model.Migrate(ctx, db); err != nil {
		return err
	}
	fmt.Fprintf(out, "PostgreSQL: database %s on %s\n", dbName, model.RedactURL(pg.AdminURL))

	// NATS in-process, JetStream on a temp dir.
	ns, err := natsserver.Start(natsserver.Options{Name: "refresher-demo"})
	if err != nil {
		return fmt.Errorf("start nats-server: %w", err)
	}
	defer ns.Shutdown()
	fmt.Fprintf(out, "NATS: in-process JetStream at %s\n", ns.URL())

	// The fake provider and one real OAuth2 client per service pointing at it.
	fp := fake.New(fake.Options{ClientID: "demo-client", ClientSecret: "demo-secret", Latency: o.Latency, Logger: quiet})
	fpURL, stopFake, err := fp.Start("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer func() { _ = stopFake(context.WithoutCancel(ctx)) }() // the demo's result is already decided
	cfg := consumer.DefaultConfig()
	cfg.Concurrency = o.Concurrency
	cfg.Backoff = []time.Duration{100 * time.Millisecond, 500 * time.Millisecond, time.Second}
	cfg.ProviderTimeout = 10 * time.Second
	cfg.DrainTimeout = 20 * time.Second
	providers := map[string]provider.Refresher{}
	for _, s := range Services {
		r, err := provider.NewOAuth2(provider.Config{
			TokenURL: fpURL + "/" + s + "/token", ClientID: "demo-client", ClientSecret: "demo-secret",
			AuthStyle: provider.AuthStyleHeader, Timeout: cfg.ProviderTimeout,
		})
		if err != nil {
			return err
		}
		providers[s] = r
	}
	fmt.Fprintf(out, "fake provider: %s (rotates refresh tokens, rejects reuse, latency %s)\n", fpURL, o.Latency)

	perService := o.Count / len(Services)
	for _, s := range Services {
		if _, err := seed.Insert(ctx, db, s, perService, 10*time.Minute); err != nil {
			return err
		}
	}
	total := perService * len(Services)
	fmt.Fprintf(out, "seeded %d credentials (%d per service)\n", total, perService)

	// The fleet.
	fleetCtx, stopFleet := context.WithCancel(context.Background())
	defer stopFleet()
	var fleet []*consumer.Consumer
	var wg sync.WaitGroup
	runErrs := make(chan error, o.Consumers)
	for i := range o.Consumers {
		nc, err := natsconn.Local(ns.URL(), fmt.Sprintf("demo-consumer-%d", i), quiet)
		if err != nil {
			return err
		}
		defer nc.Close()
		c, err := consumer.New(db, nc, providers, cfg, consumer.WithLogger(quiet))
		if err != nil {
			return err
		}
		fleet = append(fleet, c)
		wg.Add(1)
		go func() { defer wg.Done(); runErrs <- c.Run(fleetCtx) }()
	}
	for _, c := range fleet {
		select {
		case <-c.Ready():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	fmt.Fprintf(out, "fleet: %d consumers x %d in flight, a durable consumer per service (%s)\n", o.Consumers, o.Concurrency, consumer.ServiceDurable("<service>"))

	pubConn, err := natsconn.Local(ns.URL(), "demo-publisher", quiet)
	if err != nil {
		return err
	}
	defer pubConn.Close()
	started := time.Now()
	sched, err := publishAll(ctx, db, pubConn, o.Duplicates, quiet)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "published: scheduled=%d deduplicated=%d extra_requests=%d garbage=%d\n",
		sched.scheduled.Published, sched.scheduled.Duplicate, sched.extra, len(garbage))

	js, err := jetstream.New(pubConn)
	if err != nil {
		return err
	}
	stopProgress := showProgress(o.Progress, fleet)
	err = consumer.WaitIdle(ctx, js, 100*time.Millisecond)
	stopProgress()
	if err != nil {
		return err
	}
	elapsed := time.Since(started)
	stopFleet()
	wg.Wait()
	close(runErrs)
	for err := range runErrs {
		if err != nil {
			return fmt.Errorf("consumer: %w", err)
		}
	}

	var st consumer.Stats
	for _, c := range fleet {
		st = st.Add(c.Stats())
	}
	dlq, err := js.Stream(ctx, stream.DLQStream)
	if err != nil {
		return err
	}
	dlqInfo, err := dlq.Info(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "refreshed=%d skipped_already_fresh=%d not_found=%d dead_lettered=%d retried=%d provider_calls=%d\n",
		st.Refreshed, st.SkippedFresh, st.NotFound, dlqInfo.State.Msgs, st.Retried, st.ProviderCalls)
	fmt.Fprintf(out, "throughput: %.0f refreshes/s (%d in %s)\n",
		float64(st.Refreshed)/elapsed.Seconds(), st.Refreshed, elapsed.Round(time.Millisecond))

	rep, err := verify.Check(ctx, db, verify.Local{P: fp})
	if err != nil {
		return err
	}
	var unrefreshed int
	if err := db.NewSelect().Model((*model.Credential)(nil)).ColumnExpr("count(*)").
		Where("refreshed_at IS NULL").Scan(ctx, &unrefreshed); err != nil {
		return err
	}
	fmt.Fprintf(out, "verification: %s never_refreshed=%d\n", rep, unrefreshed)
	for _, ex := range rep.Examples {
		fmt.Fprintln(out, "  ", ex)
	}
	if !rep.OK() || unrefreshed != 0 || int(dlqInfo.State.Msgs) != len(garbage) {
		return fmt.Errorf("%w: %s, never refreshed %d, dead letters %d (expected %d)",
			ErrLost, rep, unrefreshed, dlqInfo.State.Msgs, len(garbage))
	}
	fmt.Fprintln(out, "OK: every credential holds the refresh token its provider issued last; no replaced token was sent")
	return nil
}

type published struct {
	scheduled publisher.Result
	extra     int
}

// garbage is what a careless client might send; each must end in REFRESH_DLQ.
var garbage = []struct {
	subject, body, header string
}{
	{subject: "refresh.github.not-a-number"},
	{subject: "refresh.GitHub.1"},
	{subject: "refresh.github"},
	{subject: "refresh.nosuchservice.1"},
	{subject: "refresh.github.1", body: "{not json"},
	{subject: "refresh.google.1", header: "yesterday"},
}

// publishAll runs each service's scheduled publish twice at the same moment (the two
// overlapping periodic jobs), then extra requests through the Go API, then garbage.
func publishAll(ctx context.Context, db *bun.DB, nc *nats.Conn, dups int, log *slog.Logger) (published, error) {
	var (
		out published
		mu  sync.Mutex
		wg  sync.WaitGroup
	)
	errs := make(chan error, 2*len(Services))
	// The two schedulers of a service dedupe each other only within one publish
	// window: starting seconds before a window ends, they could straddle its end and
	// request some rows twice (correctly, as two windows). The demo shows the dedupe,
	// so it starts in a window with time left.
	window := publisher.DefaultWindow
	if left := time.Until(time.Now().Truncate(window).Add(window)); left < 10*time.Second {
		select {
		case <-time.After(left + 100*time.Millisecond):
		case <-ctx.Done():
			return out, ctx.Err()
		}
	}
	for _, s := range Services {
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p, err := publisher.New(nc, publisher.WithLogger(log), publisher.WithReason("demo schedule"))
				if err != nil {
					errs <- err
					return
				}
				res, err := p.PublishScan(ctx, db, publisher.Scan{Service: s, ExpiringWithin: 30 * time.Minute})
				mu.Lock()
				out.scheduled.Published += res.Published
				out.scheduled.Duplicate += res.Duplicate
				out.scheduled.Failed += res.Failed
				mu.Unlock()
				if err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return out, err
	}

	// Application code asking again for every row: no dedupe id, so each is a new
	// request that the skip rule answers without a provider call.
	app, err := publisher.New(nc, publisher.WithWindow(0), publisher.WithLogger(log))
	if err != nil {
		return out, err
	}
	for _, s := range Services {
		var ids []int64
		if err := db.NewSelect().Model((*model.Credential)(nil)).Column("id").
			Where("service = ?", s).OrderExpr("id").Scan(ctx, &ids); err != nil {
			return out, err
		}
		for range dups {
			res, err := app.Publish(ctx, s, ids...)
			if err != nil {
				return out, err
			}
			out.extra += res.Published
		}
	}
	for _, g := range garbage {
		m := nats.NewMsg(g.subject)
		m.Data = []byte(g.body)
		if g.header != "" {
			m.Header.Set(model.HeaderRequestedAt, g.header)
		}
		if _, err := app.JetStream().PublishMsg(ctx, m); err != nil {
			return out, fmt.Errorf("publish garbage %q: %w", g.subject, err)
		}
	}
	return out, nil
}

// showProgress redraws the fleet's counts until the returned func is called.
func showProgress(line *progress.Line, fleet []*consumer.Consumer) (stop func()) {
	if !line.Enabled() {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			var st consumer.Stats
			for _, c := range fleet {
				st = st.Add(c.Stats())
			}
			line.Printf("refreshed %d, skipped %d, dead-lettered %d", st.Refreshed, st.SkippedFresh, st.DeadLettered)
			select {
			case <-done:
				line.Clear()
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); <-finished }
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
