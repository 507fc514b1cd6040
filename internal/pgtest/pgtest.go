// Package pgtest gives each test its own real, migrated PostgreSQL database, so tests
// can run in parallel and a failing test leaves nothing behind for the next one.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"github.com/refresher/refresher/internal/pgserver"
	"github.com/refresher/refresher/internal/testtier"
	"github.com/refresher/refresher/model"
)

// MaxConns caps each database handle NewDB returns. Many test binaries share one
// server and its max_connections; a test that needs more opens its own pool on
// the URL.
const MaxConns = 20

var (
	mu        sync.Mutex
	discovery sync.Once
	server    *pgserver.Server
	serverErr error
)

// Server returns the PostgreSQL server for this test process, discovering it (or
// starting a throwaway cluster) on first use. With no PostgreSQL at all the test
// fails with an error saying what to install: a database test that skips would
// let a broken set-up pass.
func Server(t testing.TB) *pgserver.Server {
	t.Helper()
	testtier.Slow(t, "PostgreSQL")
	discovery.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
		s, err := pgserver.Discover(ctx, log)
		mu.Lock()
		server, serverErr = s, err
		mu.Unlock()
	})
	mu.Lock()
	s, err := server, serverErr
	mu.Unlock()
	if err != nil {
		t.Fatalf("pgtest: no PostgreSQL for tests: %v", err)
	}
	return s
}

// NewDB creates a database named rt_<random> on the test server, applies the
// migrations and returns a handle (at most MaxConns connections) and its URL. The
// handle is closed and the database dropped when the test ends.
func NewDB(t testing.TB) (*bun.DB, string) {
	t.Helper()
	s := Server(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	name := "rt_" + randomHex(8)
	url, err := s.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	// Registered before Open so a failure below still drops the database; it runs
	// after the Close registered later (cleanups run last-in first-out), and
	// DropDatabase forces out any connection the test leaked anyway.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.DropDatabase(ctx, name); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	db, err := model.Open(ctx, url, MaxConns)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if _, err := model.Migrate(ctx, db); err != nil {
		t.Fatalf("pgtest: migrate %s: %v", name, err)
	}
	return db, url
}

// Main runs the tests of a package and then stops the throwaway cluster if this
// process started one; call it from TestMain. Without it the cluster still dies
// with the process, but its temp dir stays until the next throwaway start.
func Main(m *testing.M) {
	code := m.Run()
	mu.Lock()
	s := server
	mu.Unlock()
	if s != nil && s.Owned {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := s.Stop(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: stop throwaway PostgreSQL: %v\n", err)
		}
		cancel()
	}
	os.Exit(code)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b)
}
