package consumer_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider/fake"
	"github.com/refresher/refresher/publisher"
)

// TestReauthorisationRace: a user signs in again while a refresh of their credential
// is in flight, and the application stores the new grant. The application's write
// must not wait for the provider call (no lock is held across it), and the call's
// answer, made from the replaced grant, must be discarded and counted, never written
// over the application's.
func TestReauthorisationRace(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		// fresh: the application also sets refreshed_at, so its grant satisfies the
		// request; otherwise the request is decided again and refreshes the new grant.
		fresh bool
		calls int
		gen   int // generation of the application's lineage left in the row
	}{
		{"grant marked fresh", true, 1, 0},
		{"grant not marked fresh", false, 2, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fleettest.BothModes(t, func(t *testing.T, batch int) {
				const latency = 500 * time.Millisecond
				env := fleettest.New(t, fleettest.Options{Latency: latency, BatchSize: batch})
				ids := env.Seed("github", 1)
				r := env.StartConsumer(env.Config())
				ctx := context.Background()
				if _, err := env.Publisher(publisher.WithWindow(0)).Publish(ctx, "github", ids[0]); err != nil {
					t.Fatal(err)
				}
				fleettest.Eventually(t, 10*time.Second, "the provider call in flight", func() bool {
					return env.Fake.Stats().Calls == 1
				})

				lineage := fmt.Sprintf("app-regrant-%d", ids[0])
				access, refresh := fake.SeedTokens(lineage)
				tx, err := env.DB.BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				// Any lock held across the call would make this fail at once.
				if _, err := tx.ExecContext(ctx, "SET LOCAL lock_timeout = '50ms'"); err != nil {
					t.Fatal(err)
				}
				q := tx.NewUpdate().Model((*model.Credential)(nil)).
					Set("access_token = ?", access).Set("refresh_token = ?", refresh).Where("id = ?", ids[0])
				if tt.fresh {
					q = q.Set("refreshed_at = now()")
				}
				if _, err := q.Exec(ctx); err != nil {
					_ = tx.Rollback()
					t.Fatalf("application update during the provider call: %v", err)
				}
				if err := tx.Commit(); err != nil {
					t.Fatal(err)
				}
				if calls := env.Fake.Stats().Calls; calls != 1 {
					t.Fatalf("%d provider calls by the time the application committed: the update waited for the call", calls)
				}

				env.WaitIdle(30 * time.Second)
				c := env.Credential(ids[0])
				if !strings.Contains(c.RefreshToken, "."+lineage+".") {
					t.Fatalf("row holds a token of another lineage than the application's grant (%s)", lineage)
				}
				if latest, gen, ok := env.Fake.Latest(lineage); tt.gen > 0 && (!ok || latest != c.RefreshToken || gen != tt.gen) {
					t.Fatalf("row does not hold generation %d of the application's lineage (provider: gen %d)", tt.gen, gen)
				} else if tt.gen == 0 && c.RefreshToken != refresh {
					t.Fatal("row no longer holds the application's refresh token")
				}
				st := r.Stats()
				if st.Discarded != 1 {
					t.Fatalf("stats %+v: want the stale answer discarded once", st)
				}
				if fs := env.Fake.Stats(); fs.Calls != tt.calls || fs.Reuses != 0 {
					t.Fatalf("provider: %d calls, %d reuses; want %d calls, none reused", fs.Calls, fs.Reuses, tt.calls)
				}
				if !strings.Contains(env.Logs(), "reason=grant_replaced") {
					t.Fatal("the discarded answer was not logged with its reason")
				}
				if c.ClaimID != nil {
					t.Fatalf("claim %d left on the row", *c.ClaimID)
				}
			})
		})
	}
}
