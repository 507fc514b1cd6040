package model_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/pgtest"
	"github.com/refresher/refresher/model"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestMigrateTwiceIsNoop: a second run applies nothing and leaves the table usable.
func TestMigrateTwiceIsNoop(t *testing.T) {
	db, _ := pgtest.NewDB(t) // already migrated once
	applied, err := model.Migrate(context.Background(), db)
	if err != nil || len(applied) != 0 {
		t.Fatalf("second migrate applied %v, %v", applied, err)
	}
	c := &model.Credential{AccountID: 1, Service: "github", AccessToken: "a", RefreshToken: "r", ExpiresAt: time.Now()}
	if _, err := db.NewInsert().Model(c).Exec(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c.ID == 0 || c.Status != model.StatusActive || c.Version != 0 {
		t.Fatalf("defaults not applied: %+v", c)
	}
	// (account_id, service) is unique.
	dup := &model.Credential{AccountID: 1, Service: "github", AccessToken: "a", RefreshToken: "r", ExpiresAt: time.Now()}
	if _, err := db.NewInsert().Model(dup).Exec(context.Background()); err == nil {
		t.Fatal("duplicate (account_id, service) accepted")
	}
	// status is one of the two known values.
	if _, err := db.NewUpdate().Model((*model.Credential)(nil)).Set("status = 'paused'").Where("id = ?", c.ID).Exec(context.Background()); err == nil {
		t.Fatal("unknown status accepted")
	}
}

// TestMigrateConcurrently: several migrate runs at once on an empty database (pods
// starting together) all succeed and apply each migration exactly once.
func TestMigrateConcurrently(t *testing.T) {
	s := pgtest.Server(t)
	ctx := context.Background()
	name := "rt_migrate_" + time.Now().Format("150405000000")
	url, err := s.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.DropDatabase(context.Background(), name) })

	const runs = 4
	var wg sync.WaitGroup
	results := make([][]string, runs)
	errs := make([]error, runs)
	for i := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db, err := model.Open(ctx, url, 2)
			if err != nil {
				errs[i] = err
				return
			}
			defer db.Close()
			results[i], errs[i] = model.Migrate(ctx, db)
		}()
	}
	wg.Wait()
	total := 0
	for i := range runs {
		if errs[i] != nil {
			t.Fatalf("run %d: %v", i, errs[i])
		}
		total += len(results[i])
	}
	ms, err := model.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	if want := len(ms.Sorted()); total != want {
		t.Fatalf("%d migrations applied across %d runs, want %d", total, runs, want)
	}
	db, err := model.Open(ctx, url, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM bun_migrations").Scan(&n); err != nil || n != total {
		t.Fatalf("bun_migrations holds %d rows (%v), want %d", n, err, total)
	}
}

func TestOpenBadURL(t *testing.T) {
	for _, url := range []string{"", "postgres://user:hunter2@127.0.0.1:1/x?sslmode=disable&connect_timeout=1", "::not a url"} {
		_, err := model.Open(context.Background(), url, 1)
		if err == nil {
			t.Fatalf("Open(%q) succeeded", url)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Fatalf("error shows the password: %v", err)
		}
	}
}
