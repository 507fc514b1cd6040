package consumer_test

import (
	"context"
	"testing"
	"time"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/internal/verify"
	"github.com/refresher/refresher/publisher"
)

// duplicateWorkload publishes dups requests for each of rows credentials, each row's
// requests back to back so that several workers of several consumers hold them at
// once, and runs a fleet of three consumers over them.
func duplicateWorkload(t *testing.T, batch, rows, dups int, opts ...consumer.Option) (*fleettest.Env, verify.Report) {
	env := fleettest.New(t, fleettest.Options{Latency: 10 * time.Millisecond, BatchSize: batch})
	ids := env.Seed("github", rows)
	cfg := env.Config()
	for range 3 {
		env.StartConsumer(cfg, opts...)
	}
	p := env.Publisher(publisher.WithWindow(0))
	for _, id := range ids {
		batch := make([]int64, dups)
		for i := range batch {
			batch[i] = id
		}
		if _, err := p.Publish(context.Background(), "github", batch...); err != nil {
			t.Fatal(err)
		}
	}
	env.WaitIdle(2 * time.Minute)
	rep, err := verify.Check(context.Background(), env.DB, verify.Local{P: env.Fake})
	if err != nil {
		t.Fatal(err)
	}
	return env, rep
}

// TestNoLostUpdate is the regression test for the bug this project exists to fix:
// many duplicate requests for the same rows across several consumers must leave every
// row with the refresh token the provider issued last, and never send a replaced one.
func TestNoLostUpdate(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, testNoLostUpdate)
}

func testNoLostUpdate(t *testing.T, batch int) {
	const rows, dups = 40, 10
	env, rep := duplicateWorkload(t, batch, rows, dups)
	if !rep.OK() || rep.Rows != rows {
		t.Fatalf("lost updates with the row lock: %s %v", rep, rep.Examples)
	}
	st := env.Fake.Stats()
	if st.Reuses != 0 || st.Unrecognized != 0 {
		t.Fatalf("replaced tokens sent to the provider: reuses=%d unrecognized=%d", st.Reuses, st.Unrecognized)
	}
	if st.Rotations < rows {
		t.Fatalf("only %d rotations for %d rows: some rows were never refreshed", st.Rotations, rows)
	}
	// Duplicates cost a lock, not a provider call: most of the 400 requests are
	// answered by the skip rule.
	if st.Calls >= rows*dups/2 {
		t.Fatalf("%d provider calls for %d rows x %d duplicates: the skip rule is not working", st.Calls, rows, dups)
	}
	t.Logf("%s; provider calls %d for %d requests", rep, st.Calls, rows*dups)
}

// TestNaivePathLosesUpdates is the control: the same workload through read, call,
// write-back without the lock must lose updates, which shows TestNoLostUpdate can fail.
func TestNaivePathLosesUpdates(t *testing.T) {
	t.Parallel()
	const rows, dups = 40, 10
	env, rep := duplicateWorkload(t, 1, rows, dups, consumer.WithoutLock())
	st := env.Fake.Stats()
	if rep.OK() && st.Reuses == 0 {
		t.Fatalf("the naive path lost nothing (%s, reuses %d): the lost-update test cannot tell the lock matters", rep, st.Reuses)
	}
	t.Logf("naive path: %s; replaced tokens sent %d", rep, st.Reuses)
}
