package console_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/refresher/refresher/internal/console"
	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
)

// TestOverviewScale renders the overview over many credentials, most of them
// refreshed within the hour (a million credentials refreshed every 45 minutes): the
// page must render in under a second. REFRESHER_CONSOLE_ROWS sets the row count
// (default 50,000; the README's figure is for 1,000,000); REFRESHER_CONSOLE_BACKLOG=1
// also publishes a request for every row first, none consumed.
func TestOverviewScale(t *testing.T) {
	rows := 50000
	if v := os.Getenv("REFRESHER_CONSOLE_ROWS"); v != "" {
		var err error
		if rows, err = strconv.Atoi(v); err != nil || rows < 1 {
			t.Fatalf("REFRESHER_CONSOLE_ROWS=%q: want a positive number", v)
		}
	}
	env := fleettest.New(t, fleettest.Options{})
	ctx := context.Background()
	start := time.Now()
	seedCopy(t, env, rows)
	if _, err := env.DB.ExecContext(ctx, "VACUUM ANALYZE credentials"); err != nil {
		t.Fatal(err)
	}
	t.Logf("seeded %d credentials with COPY in %s", rows, time.Since(start).Round(time.Millisecond))
	p := env.Publisher() // the streams
	if os.Getenv("REFRESHER_CONSOLE_BACKLOG") != "" {
		// Every credential requested and none consumed: the overview's per-service
		// backlog counts walk a stream of rows messages.
		t0 := time.Now()
		for _, s := range []string{"github", "google"} {
			serviceDurable(t, env.JS(), s) // where the backlog is counted
			if _, err := p.PublishScan(ctx, env.DB, publisher.Scan{Service: s}); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("published a backlog of %d requests in %s", rows, time.Since(t0).Round(time.Millisecond))
	}
	c, err := console.New(env.DB, env.Conn(), console.Options{Services: env.Services})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	defer srv.Close()
	cl := client(t)
	get(t, cl, srv.URL+"/") // warm the pool and the cache, as a console open for a while is
	var worst time.Duration
	for range 3 {
		t0 := time.Now()
		code, body, _ := get(t, cl, srv.URL+"/")
		d := time.Since(t0)
		if code != 200 || len(body) < 1000 {
			t.Fatalf("overview: %d", code)
		}
		worst = max(worst, d)
	}
	ov := c.GatherOverview(ctx)
	var total int64
	for _, s := range ov.Services {
		total += s.Credentials
	}
	var backlog uint64
	for _, s := range ov.Services {
		backlog += s.Backlog
	}
	if active := uint64(rows - rows/200); os.Getenv("REFRESHER_CONSOLE_BACKLOG") != "" && backlog != active {
		t.Errorf("backlog %d, want %d (the active rows)", backlog, active)
	}
	if total != int64(rows) || len(ov.Errors) != 0 {
		t.Fatalf("overview of %d rows counts %d; errors %v", rows, total, ov.Errors)
	}
	t.Logf("overview of %d credentials: slowest of 3 renders %s (gathering %s: %v)", rows, worst.Round(time.Millisecond), ov.Took.Round(time.Millisecond), ov.Timings)
	if worst > time.Second {
		t.Errorf("the overview of %d credentials took %s to render: want under a second", rows, worst)
	}
}

// seedCopy inserts n credentials with COPY, half github and half google: refreshed
// across the last 80 minutes, 1% failing, 0.5% reauth_required, expiries across the
// next two hours.
func seedCopy(t *testing.T, env *fleettest.Env, n int) {
	t.Helper()
	ctx := context.Background()
	conn, err := env.DB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	now := time.Now()
	err = conn.Raw(func(dc any) error {
		sc := dc.(*stdlib.Conn)
		i := 0
		src := pgx.CopyFromFunc(func() ([]any, error) {
			if i == n {
				return nil, nil
			}
			i++
			svc := "github"
			if i%2 == 0 {
				svc = "google"
			}
			refreshed := now.Add(-time.Duration(i%4800) * time.Second)
			status, failures, lastErr := model.StatusActive, 0, any(nil)
			updated := refreshed
			switch {
			case i%200 == 0:
				status, failures, lastErr = model.StatusReauthRequired, 1, "invalid_grant"
			case i%100 == 0:
				failures, lastErr = 2, "provider answered 503"
				updated = refreshed.Add(30 * time.Second)
			}
			return []any{int64(i), svc, fmt.Sprintf("at-%d", i), fmt.Sprintf("rt-%d", i),
				now.Add(time.Duration(i%7200) * time.Second), refreshed, status, failures, lastErr, updated}, nil
		})
		_, err := sc.Conn().CopyFrom(ctx, pgx.Identifier{"credentials"},
			[]string{"account_id", "service", "access_token", "refresh_token", "expires_at", "refreshed_at", "status", "failures", "last_error", "updated_at"}, src)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
