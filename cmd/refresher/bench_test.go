package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/refresher/refresher/internal/bench"
	"github.com/refresher/refresher/internal/pgtest"
	"github.com/refresher/refresher/internal/testtier"
)

// TestBenchQuickJSON runs `refresher bench --quick --json` at its smallest sizes, as
// the built binary (the race detector's instrumentation would measure itself), and
// checks that the report has every figure, with its baseline, and numbers that could
// be true.
func TestBenchQuickJSON(t *testing.T) {
	t.Parallel()
	testtier.Slow(t, "a subprocess, PostgreSQL and a nats-server")
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	const requests = 200
	const slowPoints = 2 // --slow-concurrency 16,64
	cmd := exec.Command(bin, "bench", "--quick", "--json", "--rows", "1000", "--requests", fmt.Sprint(requests),
		"--concurrency", "8,32", "--slow-concurrency", "16,64")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+pgtest.Server(t).AdminURL)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("bench --quick --json: %v\n%s", err, stderr.String())
	}
	t.Logf("bench --quick took %s", time.Since(start).Round(time.Millisecond))
	out := stdout.String()

	var sections map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &sections); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	for _, s := range []string{"machine", "seed", "publish", "consume", "latency", "slow_provider", "duplicates", "skip", "targets"} {
		if len(sections[s]) == 0 || string(sections[s]) == "null" {
			t.Errorf("report has no %q section", s)
		}
	}
	var rep bench.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	positive := map[string]float64{
		"machine.cores":                  float64(rep.Machine.Cores),
		"publish.rate":                   rep.Publish.Rate,
		"publish.baseline_rate":          rep.Publish.BaselineRate,
		"publish.ratio":                  rep.Publish.Ratio,
		"publish.rss.small_kib":          float64(rep.Publish.RSS.SmallKiB),
		"publish.rss.large_kib":          float64(rep.Publish.RSS.LargeKiB),
		"consume.best.rate":              rep.Consume.Best.Rate,
		"consume.best.baseline_rate":     rep.Consume.Best.BaselineRate,
		"consume.db.commits":             float64(rep.Consume.DB.Commits),
		"latency.ack_p50_ms":             rep.Latency.AckP50Ms,
		"latency.ack_p99_ms":             rep.Latency.AckP99Ms,
		"latency.refreshed_p50_ms":       rep.Latency.RefreshedP50Ms,
		"latency.baseline_p50_ms":        rep.Latency.BaselineP50Ms,
		"duplicates.calls_per_row":       rep.Duplicates.CallsPerRow,
		"duplicates.skip_us":             rep.Duplicates.SkipMicros,
		"duplicates.refresh_us":          rep.Duplicates.RefreshMicros,
		"skip.rate":                      rep.Skip.Rate,
		"skip.baseline_rate":             rep.Skip.BaselineRate,
		"skip.db.rollbacks":              float64(rep.Skip.DB.Rollbacks),
		"skip.baseline_db.rows_updated":  float64(rep.Skip.BaselineDB.RowsUpdated),
		"slow_provider.points[0].rate":   firstSlow(rep).Rate,
		"slow_provider.points[0].ideal":  firstSlow(rep).IdealRate,
		"slow_provider.points[0].direct": firstSlow(rep).BaselineRate,
		"slow_provider.points[0].peak":   float64(firstSlow(rep).Conns.Peak),
		"consume.best.minimal_rate":      rep.Consume.Best.MinimalRate,
		"consume.best.minimal_ratio":     rep.Consume.Best.MinimalRatio,
	}
	for name, v := range positive {
		if !(v > 0) {
			t.Errorf("%s = %v, want > 0", name, v)
		}
	}
	for _, s := range []struct{ name, v string }{
		{"cpu model", rep.Machine.CPUModel}, {"PostgreSQL version", rep.Machine.PostgreSQL},
		{"nats-server version", rep.Machine.NATSServer}, {"database", rep.Database},
	} {
		if s.v == "" {
			t.Errorf("report does not name the %s", s.name)
		}
	}
	if rep.Consume.Best.Requests != requests || len(rep.Consume.Sweep) == 0 {
		t.Errorf("consume: best run of %d requests after %d sweep runs", rep.Consume.Best.Requests, len(rep.Consume.Sweep))
	}
	if len(rep.Consume.SQLMissing) != 0 {
		t.Errorf("the baseline sends statements the consumer does not: %q", rep.Consume.SQLMissing)
	}
	if rep.Duplicates.ProviderCalls < int64(rep.Duplicates.Rows) || rep.Duplicates.Refreshed != int64(rep.Duplicates.Rows) {
		t.Errorf("duplicates: %d provider calls and %d refreshes for %d rows", rep.Duplicates.ProviderCalls, rep.Duplicates.Refreshed, rep.Duplicates.Rows)
	}
	if got := len(rep.Slow.Points); got != slowPoints {
		t.Errorf("slow provider: %d points", got)
	}
	pool := bench.QuickOptions().Pool
	if c := rep.Consume.Best.Conns; rep.Consume.Best.Pool != pool || c.Peak > pool || c.Backends < 1 {
		t.Errorf("consume: pool %d, connections %+v; want at most %d", rep.Consume.Best.Pool, c, pool)
	}
	for _, p := range rep.Slow.Points {
		// A provider that takes 100 ms cannot be called faster than in flight / 100 ms.
		if p.Rate > p.IdealRate*1.05 || p.BaselineRate > p.IdealRate*1.05 {
			t.Errorf("slow provider at %d: rate %.0f, baseline %.0f above the ideal %.0f", p.InFlight, p.Rate, p.BaselineRate, p.IdealRate)
		}
		// Calls in flight hold no connection: the pool bounds the connections, not them.
		if p.Pool != pool || p.Conns.Peak > pool || p.Conns.InUse > pool || p.Conns.Backends < 1 {
			t.Errorf("slow provider at %d in flight: pool %d, connections %+v; want at most %d", p.InFlight, p.Pool, p.Conns, pool)
		}
	}
	if rep.Skip.DB.RowsUpdated != 0 || rep.Skip.DB.Rollbacks < int64(rep.Skip.Requests) {
		t.Errorf("skip path wrote: %+v", rep.Skip.DB)
	}
	if len(rep.Targets) != 9 {
		t.Errorf("%d targets, want 9", len(rep.Targets))
	}
	// The consumer's common case is one statement per step (lock, check and write in
	// one UPDATE), so it need not send the bare transaction's statements one by one;
	// what it sends instead is reported.
	if len(rep.Consume.MinimalSQL) == 0 || len(rep.Consume.SQL) == 0 {
		t.Errorf("statements not recorded: bare %q, consumer %q", rep.Consume.MinimalSQL, rep.Consume.SQL)
	}
	if len(rep.Consume.Batch) == 0 || rep.Consume.BestBatch.Rate <= 0 || rep.Consume.Best.MinimalRate <= 0 {
		t.Errorf("batch figure %+v, minimal rate %v", rep.Consume.Batch, rep.Consume.Best.MinimalRate)
	}

	// The database the run worked in is gone.
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, pgtest.Server(t).AdminURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	var left int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1", rep.Database).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("bench database %s was not dropped", rep.Database)
	}
}

func firstSlow(rep bench.Report) bench.SlowPoint {
	if len(rep.Slow.Points) == 0 {
		return bench.SlowPoint{}
	}
	return rep.Slow.Points[0]
}

func useBenchExe(t *testing.T, bin string) {
	old := benchExe
	benchExe = func() (string, error) { return bin, nil }
	t.Cleanup(func() { benchExe = old })
}

func TestBenchBadFlags(t *testing.T) {
	useBenchExe(t, "/nonexistent/refresher")
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--rows", "5"}, "rows 5"},
		{[]string{"--rows", "many"}, `invalid argument "many"`},
		{[]string{"--requests", "0"}, "requests 0"},
		{[]string{"--concurrency", "8,0"}, "concurrency 0"},
		{[]string{"--concurrency", "8,x"}, `invalid argument "8,x"`},
		{[]string{"--pool", "0"}, "pool 0"},
		{[]string{"--slow-concurrency", "64,5000"}, "concurrency 5000"},
		{[]string{"extra"}, "unknown command"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, _, stderr := runCLI(t, append([]string{"bench", "--quick"}, tt.args...)...)
			if code != 2 || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", code, stderr, tt.want)
			}
		})
	}
	var out bytes.Buffer
	if code := run(context.Background(), []string{"bench", "--help"}, &out, &out); code != 0 || !strings.Contains(out.String(), "--quick") {
		t.Fatalf("bench --help: exit %d\n%s", code, out.String())
	}
}
