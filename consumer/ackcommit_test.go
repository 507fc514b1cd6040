package consumer_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/publisher"
)

// TestAckOnlyAfterCommit: a message is acknowledged only once its commit has
// succeeded. A deferred constraint trigger makes the COMMIT itself fail for one row's
// token write (the statements before it succeed), so an ack sent any earlier, inside
// the transaction, would settle a request whose refresh was never stored. With a
// small MaxDeliver the request must instead be delivered again, and end in the
// dead-letter stream after its last delivery, with the row as it was.
//
// It catches the break "ack inside the transaction" (go run ./internal/mutants).
func TestAckOnlyAfterCommit(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		// A reuse interval keeps the second delivery on the commit path: its call
		// presents the token the first call replaced, which was never stored.
		env := fleettest.New(t, fleettest.Options{BatchSize: batch, Grace: time.Minute})
		ids := env.Seed("github", 1)
		ctx := context.Background()
		for _, stmt := range []string{
			`CREATE FUNCTION refuse_at_commit() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$ LANGUAGE plpgsql`,
			fmt.Sprintf(`CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER UPDATE ON credentials DEFERRABLE INITIALLY DEFERRED
				FOR EACH ROW WHEN (NEW.id = %d AND NEW.refresh_token IS DISTINCT FROM OLD.refresh_token) EXECUTE FUNCTION refuse_at_commit()`, ids[0]),
		} {
			if _, err := env.DB.ExecContext(ctx, stmt); err != nil {
				t.Fatal(err)
			}
		}
		cfg := env.Config()
		cfg.MaxDeliver = 2
		r := env.StartConsumer(cfg)
		if _, err := env.Publisher(publisher.WithWindow(0)).Publish(ctx, "github", ids[0]); err != nil {
			t.Fatal(err)
		}
		env.WaitIdle(30 * time.Second)

		if calls := env.Fake.Stats().Calls; calls != cfg.MaxDeliver {
			t.Errorf("%d provider calls, want %d (one per delivery): a refused commit did not lead to a redelivery", calls, cfg.MaxDeliver)
		}
		dls := env.DeadLetters()
		if len(dls) != 1 || dls[0].Original != subj(ids[0]) || dls[0].Deliveries != fmt.Sprint(cfg.MaxDeliver) {
			t.Fatalf("dead letters %+v: want the request, after %d deliveries (acknowledged before its commit?)", dls, cfg.MaxDeliver)
		}
		if c := env.Credential(ids[0]); c.Version != 0 || c.RefreshedAt != nil || c.ClaimID != nil {
			t.Fatalf("row after refused commits: version %d refreshed_at %v claim %v", c.Version, c.RefreshedAt, c.ClaimID)
		}
		if st := r.Stats(); st.Refreshed != 0 || st.DeadLettered != 1 || st.Retried != int64(cfg.MaxDeliver-1) {
			t.Fatalf("stats %+v: want %d retried, then dead-lettered, nothing refreshed", st, cfg.MaxDeliver-1)
		}
	})
}
