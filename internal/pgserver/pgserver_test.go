package pgserver_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/refresher/refresher/internal/pgserver"
	"github.com/refresher/refresher/internal/testtier"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not true after %s: %v", what, timeout, err)
		}
		<-tick.C
	}
}

func connect(ctx context.Context, url string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.ConnectTimeout = 2 * time.Second
	return pgx.ConnectConfig(ctx, cfg)
}

func mustConnect(t testing.TB, ctx context.Context, url string) *pgx.Conn {
	t.Helper()
	conn, err := connect(ctx, url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestThrowaway walks the whole life of a throwaway cluster, the path taken on a
// machine without a running server.
func TestThrowaway(t *testing.T) {
	testtier.Slow(t, "PostgreSQL")
	ctx := testContext(t)
	t.Setenv(pgserver.EnvThrowaway, "1")
	t.Setenv("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none") // must be ignored

	start := time.Now()
	s, err := pgserver.Discover(ctx, testLogger(t))
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	t.Logf("throwaway cluster up in %s at %s", time.Since(start).Round(time.Millisecond), s.AdminURL)
	if !s.Owned || strings.Contains(s.AdminURL, ":5432/") {
		t.Fatalf("want an owned cluster on a random port, got Owned=%v %s", s.Owned, s.AdminURL)
	}
	dir := s.DataDir()
	if _, err := os.Stat(filepath.Join(dir, "sock")); err != nil {
		t.Errorf("unix socket dir not inside the temp dir: %v", err)
	}

	url, err := s.CreateDatabase(ctx, "rt_throwaway")
	if err != nil {
		t.Fatalf("CreateDatabase: %v", err)
	}
	if !strings.Contains(url, "/rt_throwaway?") {
		t.Errorf("database URL %s does not name the database", url)
	}
	if _, err := s.CreateDatabase(ctx, "rt_throwaway"); err == nil {
		t.Error("creating an existing database succeeded")
	}
	if _, err := s.CreateDatabase(ctx, "Bad-Name"); err == nil {
		t.Error("CreateDatabase accepted an invalid name")
	}
	conn := mustConnect(t, ctx, url)
	var db string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil || db != "rt_throwaway" {
		t.Fatalf("current_database() = %q, %v", db, err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	t.Run("DATABASE_URL is used as is", func(t *testing.T) {
		t.Setenv(pgserver.EnvThrowaway, "")
		t.Setenv("DATABASE_URL", s.AdminURL)
		other, err := pgserver.Discover(ctx, testLogger(t))
		if err != nil {
			t.Fatalf("Discover: %v", err)
		}
		if other.Owned || other.AdminURL != s.AdminURL {
			t.Errorf("got Owned=%v %s, want not owned %s", other.Owned, other.AdminURL, s.AdminURL)
		}
		if err := other.Pause(ctx); err == nil {
			t.Error("Pause of a server we did not start succeeded")
		}
		if err := other.Stop(ctx); err != nil {
			t.Errorf("Stop of a server we did not start: %v", err)
		}
		if _, err := connect(ctx, s.AdminURL); err != nil {
			t.Errorf("Stop of a not-owned server stopped it: %v", err)
		}
	})

	t.Run("pause and resume keep data and URL", func(t *testing.T) {
		if err := s.Pause(ctx); err != nil {
			t.Fatalf("Pause: %v", err)
		}
		if c, err := connect(ctx, url); err == nil {
			c.Close(ctx)
			t.Fatal("connected to a paused server")
		}
		if err := s.Pause(ctx); err == nil {
			t.Error("pausing a paused server succeeded")
		}
		if err := s.Resume(ctx); err != nil {
			t.Fatalf("Resume: %v", err)
		}
		conn := mustConnect(t, ctx, url)
		var v string
		if err := conn.QueryRow(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != "kept" {
			t.Fatalf("after resume: v = %q, %v", v, err)
		}
	})

	t.Run("drop disconnects sessions", func(t *testing.T) {
		holder := mustConnect(t, ctx, url) // a leaked pool connection in a real test
		if err := s.DropDatabase(ctx, "rt_throwaway"); err != nil {
			t.Fatalf("DropDatabase: %v", err)
		}
		if err := holder.Ping(ctx); err == nil {
			t.Error("session on the dropped database survived")
		}
		_, err := connect(ctx, url)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "3D000" {
			t.Errorf("connect to dropped database: %v, want invalid_catalog_name", err)
		}
		if err := s.DropDatabase(ctx, "rt_throwaway"); err != nil {
			t.Errorf("dropping a missing database: %v", err)
		}
		if err := s.DropDatabase(ctx, "postgres"); err == nil {
			t.Error("DropDatabase accepted the admin database")
		}
	})

	if err := s.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("temp dir %s survived Stop (stat: %v)", dir, err)
	}
	if c, err := connect(ctx, s.AdminURL); err == nil {
		c.Close(ctx)
		t.Error("server still answers after Stop")
	}
	if err := s.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := s.Resume(ctx); err == nil {
		t.Error("Resume after Stop succeeded")
	}
}

// TestDiscover uses whatever this machine offers (DATABASE_URL, :5432 or a
// throwaway cluster) the way pgtest does.
func TestDiscover(t *testing.T) {
	testtier.Slow(t, "PostgreSQL")
	ctx := testContext(t)
	s, err := pgserver.Discover(ctx, testLogger(t))
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	t.Logf("discovered %s (owned: %v)", s.AdminURL, s.Owned)
	name := fmt.Sprintf("rt_discover_%d", os.Getpid())
	url, err := s.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatalf("CreateDatabase: %v", err)
	}
	t.Cleanup(func() { _ = s.DropDatabase(context.Background(), name) })
	conn := mustConnect(t, ctx, url)
	if err := conn.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if err := s.DropDatabase(ctx, name); err != nil {
		t.Fatalf("DropDatabase: %v", err)
	}
}

// TestDiscoverBadDatabaseURL: an explicit DATABASE_URL that does not work is an
// error naming it (without its password), not a reason to use some other server.
func TestDiscoverBadDatabaseURL(t *testing.T) {
	ctx := testContext(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close() // nothing listens there now
	t.Setenv(pgserver.EnvThrowaway, "")
	t.Setenv("DATABASE_URL", fmt.Sprintf("postgres://admin:hunter2@127.0.0.1:%d/postgres", port))
	s, err := pgserver.Discover(ctx, nil)
	if err == nil {
		_ = s.Stop(ctx)
		t.Fatalf("Discover succeeded with %s", s.AdminURL)
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error leaks the password: %v", err)
	}
	if !strings.Contains(err.Error(), fmt.Sprint(port)) {
		t.Errorf("error does not name the URL: %v", err)
	}
}

// TestThrowawayDiesWithOwner: a process killed without calling Stop (a test binary
// hitting -timeout) must not leave its server running, and its directory is reaped
// by the next throwaway start.
func TestThrowawayDiesWithOwner(t *testing.T) {
	testtier.Slow(t, "PostgreSQL")
	ctx := testContext(t)
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), "PGSERVER_HELPER=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var adminURL, dir string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "THROWAWAY "); ok {
			adminURL, dir, _ = strings.Cut(rest, " ")
			break
		}
	}
	if adminURL == "" {
		t.Fatalf("helper did not report a cluster (scan err %v)", sc.Err())
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	c := mustConnect(t, ctx, adminURL)
	c.Close(ctx)

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waitFor(t, "orphaned server to stop", 30*time.Second, func() error {
		c, err := connect(ctx, adminURL)
		if err == nil {
			c.Close(ctx)
			return errors.New("still answering")
		}
		b, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
		if err == nil {
			var pid int
			if _, err := fmt.Sscan(string(b), &pid); err == nil && syscall.Kill(pid, 0) == nil {
				return fmt.Errorf("postmaster %d still alive", pid)
			}
		}
		return nil
	})

	// The next throwaway start reaps the directory.
	s, err := pgserver.StartThrowaway(ctx, testLogger(t))
	if err != nil {
		t.Fatalf("StartThrowaway: %v", err)
	}
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("stale dir %s not reaped (stat: %v)", dir, err)
	}
}

func TestMain(m *testing.M) {
	if os.Getenv("PGSERVER_HELPER") == "1" {
		helperThrowawayOwner()
		return
	}
	os.Exit(m.Run())
}

// helperThrowawayOwner is the process TestThrowawayDiesWithOwner kills: it starts a
// cluster, reports it, and waits to be killed (or gives up after a while, should
// its parent have died first).
func helperThrowawayOwner() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s, err := pgserver.StartThrowaway(ctx, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	fmt.Printf("THROWAWAY %s %s\n", s.AdminURL, s.DataDir())
	<-ctx.Done()
	_ = s.Stop(context.Background())
}
