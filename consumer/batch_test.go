package consumer_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/publisher"
)

// TestBatchRowFailureIsolated: in a batch, a row whose write fails is rolled back
// alone (its own savepoint) while the rest of the batch commits.
func TestBatchRowFailureIsolated(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{BatchSize: 8})
	ids := env.Seed("github", 8)
	bad := ids[3]
	ctx := context.Background()
	// A trigger that refuses one row's token write (not its claim) stands in for a
	// row-level failure at commit.
	for _, stmt := range []string{
		`CREATE FUNCTION refuse_row() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'row refused'; END $$ LANGUAGE plpgsql`,
		fmt.Sprintf(`CREATE TRIGGER refuse BEFORE UPDATE ON credentials FOR EACH ROW WHEN (OLD.id = %d AND NEW.version <> OLD.version) EXECUTE FUNCTION refuse_row()`, bad),
	} {
		if _, err := env.DB.ExecContext(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	cfg := env.Config()
	cfg.MaxDeliver = 2
	// Publish first so that one batch takes them all.
	if _, err := env.Publisher(publisher.WithWindow(0)).Publish(ctx, "github", ids...); err != nil {
		t.Fatal(err)
	}
	obs := &events{}
	r := env.StartConsumer(cfg, consumer.WithObserver(obs))
	env.WaitIdle(time.Minute)
	if obs.batchSplits.Load() == 0 {
		t.Fatal("the batch never took the row-by-row path: the test did not exercise it")
	}
	for _, id := range ids {
		c := env.Credential(id)
		switch {
		case id == bad && c.Version != 0:
			t.Fatalf("the refused row was written: %+v", c)
		case id != bad && c.Version != 1:
			t.Fatalf("credential %d version %d: a row of the batch was rolled back with the failing one", id, c.Version)
		}
	}
	// The refused row's rotated token is lost with its write, so its retry presents a
	// replaced token and ends reauth_required; the point is that it ends alone.
	if st := r.Stats(); st.Refreshed != int64(len(ids)-1) || st.Retried == 0 {
		t.Fatalf("stats %+v: want %d refreshed and the refused row retried", st, len(ids)-1)
	}
}

// TestSameIDOtherService: a request naming an existing id under another service is
// a request for a row that does not exist; in a batch next to a good request for that
// id, it must not stop the good one.
func TestSameIDOtherService(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{BatchSize: batch})
		ids := env.Seed("github", 1)
		ctx := context.Background()
		p := env.Publisher(publisher.WithWindow(0))
		if _, err := p.Publish(ctx, "google", ids[0]); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Publish(ctx, "github", ids[0]); err != nil {
			t.Fatal(err)
		}
		r := env.StartConsumer(env.Config())
		env.WaitIdle(30 * time.Second)
		if c := env.Credential(ids[0]); c.Version != 1 || c.Service != "github" {
			t.Fatalf("credential %d: service %s version %d, want github refreshed once", c.ID, c.Service, c.Version)
		}
		if st := r.Stats(); st.NotFound != 1 || st.Refreshed != 1 {
			t.Fatalf("stats %+v: want one not found (google) and one refreshed (github)", st)
		}
	})
}
