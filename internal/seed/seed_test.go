package seed

import (
	"context"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"github.com/refresher/refresher/internal/pgtest"
	"github.com/refresher/refresher/model"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestSeedIsSafeToRepeat: seeding again continues after the highest account id, and
// seeding a new database does not start again from 1, so a fake provider that saw an
// earlier database's accounts never sees one of their ids again.
func TestSeedIsSafeToRepeat(t *testing.T) {
	ctx := context.Background()
	accounts := func(db *bun.DB) []int64 {
		t.Helper()
		var out []int64
		if err := db.NewSelect().Model((*model.Credential)(nil)).Column("account_id").
			Where("service = ?", "github").OrderExpr("account_id").Scan(ctx, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	dbA, _ := pgtest.NewDB(t)
	if _, err := Insert(ctx, dbA, "github", 3, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := Insert(ctx, dbA, "github", 2, time.Minute); err != nil {
		t.Fatal(err)
	}
	a := accounts(dbA)
	if len(a) != 5 || a[0] <= 1 || a[4] != a[0]+4 {
		t.Fatalf("two seeds of one database: accounts %v, want 5 consecutive ids not starting at 1", a)
	}

	// A new database, seeded later: a second later at least, as recreating one takes.
	dbB, _ := pgtest.NewDB(t)
	clock = func() time.Time { return time.Now().Add(time.Second) }
	t.Cleanup(func() { clock = time.Now })
	if _, err := Insert(ctx, dbB, "github", 3, time.Minute); err != nil {
		t.Fatal(err)
	}
	b := accounts(dbB)
	if len(b) != 3 || b[0] <= a[4] {
		t.Fatalf("new database: accounts %v reuse ids of the first one (%v)", b, a)
	}
}
