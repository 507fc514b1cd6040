package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/internal/testtier"
	"github.com/refresher/refresher/model"
)

// defaultEnv is the environment of a subprocess run with every tuning variable at its
// default: only where things are and which services to refresh.
func defaultEnv(fx *fleettest.Env) []string {
	env := append(os.Environ(),
		"DATABASE_URL="+fx.DBURL,
		"NATS_URL="+fx.NATSURL(),
		"REFRESHER_SERVICES=github,google",
		"REFRESHER_LOG_FORMAT=json",
		"REFRESHER_HTTP_ADDR=", // several consumers on one machine: no metrics port
	)
	for _, s := range []string{"github", "google"} {
		up := strings.ToUpper(s)
		env = append(env,
			"REFRESHER_"+up+"_TOKEN_URL="+fx.FakeURL+"/"+s+"/token",
			"REFRESHER_"+up+"_CLIENT_ID=test-client",
			"REFRESHER_"+up+"_CLIENT_SECRET=test-secret",
		)
	}
	return env
}

// TestFleetFitsStockPostgres runs, as separate processes with default settings, five
// consume processes and both services' publishers against a PostgreSQL that allows 50
// connections, with a 100 ms provider, while an application keeps connecting and
// updating credentials whose provider calls are in flight. Nobody may meet "too many
// clients", and application updates of rows in flight must not wait for provider
// calls (their median stays far below the provider's latency).
func TestFleetFitsStockPostgres(t *testing.T) {
	testtier.Slow(t, "a subprocess")
	if _, err := buildBinary(); err != nil {
		t.Fatal(err)
	}
	t.Parallel()
	const latency = 100 * time.Millisecond
	fx := fleettest.New(t, fleettest.Options{
		Latency: latency, OwnPostgres: true, PoolSize: 2,
		PGSettings: []string{"max_connections = 50"},
	})
	env := defaultEnv(fx)
	const perService = 3000
	fx.Seed("github", perService)
	fx.Seed("google", perService)

	var procs []*proc
	for range 5 {
		p := start(t, env, "consume")
		p.waitBound(t)
		procs = append(procs, p)
	}

	// The application: a connection of its own, opened anew every round as a psql
	// session would be, updating a credential whose claim is live (its provider call
	// in flight). A lock held across the call would make the update wait for the rest
	// of the call, half the provider's latency on average; without one it waits at
	// most for a short claim or commit transaction.
	ctx, stopApp := context.WithCancel(context.Background())
	var (
		mu              sync.Mutex
		appErrs         []string
		connects        int
		waits, baseline []time.Duration
	)
	var appDone sync.WaitGroup
	appDone.Add(1)
	go func() {
		defer appDone.Done()
		for ctx.Err() == nil {
			err := func() error {
				conn, err := pgx.Connect(ctx, fx.DBURL)
				if err != nil {
					return fmt.Errorf("connect: %w", err)
				}
				defer conn.Close(context.Background())
				mu.Lock()
				connects++
				mu.Unlock()
				// A row in flight, and for comparison, under the same load, one that is not.
				var inFlight, idle int64
				err = conn.QueryRow(ctx, `SELECT id FROM credentials WHERE claim_expires_at > now() LIMIT 1`).Scan(&inFlight)
				if errors.Is(err, pgx.ErrNoRows) {
					return nil
				}
				if err != nil {
					return fmt.Errorf("find a credential in flight: %w", err)
				}
				if err := conn.QueryRow(ctx, `SELECT id FROM credentials WHERE claim_id IS NULL ORDER BY random() LIMIT 1`).Scan(&idle); err != nil {
					return fmt.Errorf("find a credential at rest: %w", err)
				}
				update := func(id int64) (time.Duration, error) {
					tx, err := conn.Begin(ctx)
					if err != nil {
						return 0, err
					}
					defer func() { _ = tx.Rollback(context.Background()) }() // after a commit: nothing to roll back
					if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '5s'"); err != nil {
						return 0, err
					}
					start := time.Now()
					if _, err := tx.Exec(ctx, "UPDATE credentials SET account_id = account_id WHERE id = $1", id); err != nil {
						return 0, fmt.Errorf("update credential %d: %w", id, err)
					}
					if err := tx.Commit(ctx); err != nil {
						return 0, err
					}
					return time.Since(start), nil
				}
				dIdle, err := update(idle)
				if err != nil {
					return err
				}
				dInFlight, err := update(inFlight)
				if err != nil {
					return err
				}
				mu.Lock()
				waits = append(waits, dInFlight)
				baseline = append(baseline, dIdle)
				mu.Unlock()
				return nil
			}()
			if err != nil && ctx.Err() == nil {
				mu.Lock()
				appErrs = append(appErrs, err.Error())
				mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()

	var peak int
	peakDone := make(chan struct{})
	go func() {
		defer close(peakDone)
		for ctx.Err() == nil {
			var n int
			if err := fx.DB.QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'").Scan(&n); err == nil {
				peak = max(peak, n)
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()

	started := time.Now()
	var pubs []*proc
	for _, s := range []string{"github", "google"} {
		p := start(t, env, "publish", "--service", s, "--expiring-within", "30m")
		pubs = append(pubs, p)
		procs = append(procs, p)
	}
	for _, p := range pubs {
		if code, out := p.run(t); code != 0 {
			t.Fatalf("publish: exit %d\n%s", code, out)
		}
	}
	fx.WaitIdle(3 * time.Minute)
	elapsed := time.Since(started)
	stopApp()
	appDone.Wait()
	<-peakDone
	for i, c := range procs[:5] {
		if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := c.wait(t, 30*time.Second); code != 0 {
			t.Fatalf("consumer %d exit %d on SIGTERM\n%s", i, code, c.stderr.String())
		}
	}

	for _, p := range procs {
		if out := p.stdout.String() + p.stderr.String(); strings.Contains(out, "too many clients") || strings.Contains(out, "SQLSTATE 53300") {
			t.Fatalf("%v met the connection limit:\n%s", p.cmd.Args, out)
		}
	}
	if len(appErrs) > 0 {
		t.Fatalf("the application failed %d times; first: %s", len(appErrs), appErrs[0])
	}
	if len(waits) < 10 {
		t.Fatalf("the application caught only %d credentials with their provider call in flight: the test proved too little", len(waits))
	}
	slices.Sort(waits)
	slices.Sort(baseline)
	median, slowest, atRest := waits[len(waits)/2], waits[len(waits)-1], baseline[len(baseline)/2]
	// A lock held across the call would add half the latency on average; the same
	// update of a row at rest, under the same load, is the yardstick.
	if median-atRest > latency/4 {
		t.Fatalf("median application update of a row in flight took %s, of a row at rest %s (slowest %s): it waits for provider calls (%s)",
			median, atRest, slowest, latency)
	}
	rep := fx.Verify()
	var unrefreshed int
	if err := fx.DB.NewSelect().Model((*model.Credential)(nil)).ColumnExpr("count(*)").Where("refreshed_at IS NULL").
		Scan(context.Background(), &unrefreshed); err != nil || unrefreshed != 0 {
		t.Fatalf("%d credentials never refreshed (%v)", unrefreshed, err)
	}
	t.Logf("%s in %s (%.0f/s); peak %d client connections of 50; application: %d connects, %d updates of rows in flight, median %s (a row at rest: %s), slowest %s",
		rep, elapsed.Round(time.Millisecond), float64(rep.Rows)/elapsed.Seconds(), peak, connects, len(waits),
		median.Round(time.Microsecond), atRest.Round(time.Microsecond), slowest.Round(time.Microsecond))
}
