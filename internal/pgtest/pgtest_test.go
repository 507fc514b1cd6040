package pgtest_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/refresher/refresher/internal/pgserver"
	"github.com/refresher/refresher/internal/pgtest"
	"github.com/refresher/refresher/internal/testtier"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func dbName(t testing.TB, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(u.Path, "/")
}

func databaseExists(t testing.TB, name string) bool {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.Server(t).AdminURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n == 1
}

func TestNewDB(t *testing.T) {
	testtier.Slow(t, "PostgreSQL")
	var name string
	t.Run("db", func(t *testing.T) {
		db, u := pgtest.NewDB(t)
		name = dbName(t, u)
		if !regexp.MustCompile(`^rt_[0-9a-f]{16}$`).MatchString(name) {
			t.Errorf("database name %q, want rt_<random>", name)
		}
		ctx := context.Background()
		// Migrated: the credentials table is there and empty.
		var n int
		if err := db.NewSelect().Table("credentials").ColumnExpr("count(*)").Scan(ctx, &n); err != nil {
			t.Fatalf("credentials table: %v", err)
		}
		if n != 0 {
			t.Errorf("fresh database has %d credentials", n)
		}
		// The URL reaches the same database.
		conn, err := pgx.Connect(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		_, err = conn.Exec(ctx, `INSERT INTO credentials (account_id, service, access_token, refresh_token, expires_at)
			VALUES (1, 'svc', 'a', 'r', now())`)
		if err != nil {
			t.Fatal(err)
		}
		// Left open on purpose: cleanup must drop the database anyway.
		if err := db.NewSelect().Table("credentials").ColumnExpr("count(*)").Scan(ctx, &n); err != nil || n != 1 {
			t.Fatalf("count via handle = %d, %v; want 1", n, err)
		}
	})
	if databaseExists(t, name) {
		t.Errorf("database %s survived its test", name)
	}
}

func TestNewDBParallel(t *testing.T) {
	testtier.Slow(t, "PostgreSQL")
	var (
		mu    sync.Mutex
		names = map[string]bool{}
	)
	t.Run("group", func(t *testing.T) {
		for i := range 8 {
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				t.Parallel()
				db, u := pgtest.NewDB(t)
				if err := db.PingContext(context.Background()); err != nil {
					t.Fatal(err)
				}
				mu.Lock()
				names[dbName(t, u)] = true
				mu.Unlock()
			})
		}
	})
	if len(names) != 8 {
		t.Errorf("8 NewDB calls gave %d distinct databases", len(names))
	}
	for n := range names {
		if databaseExists(t, n) {
			t.Errorf("database %s survived its test", n)
		}
	}
}

// TestMainStopsThrowaway runs this test binary as a child that must use a throwaway
// cluster, and checks that Main removed the cluster and kept the exit code.
func TestMainStopsThrowaway(t *testing.T) {
	testtier.Slow(t, "a subprocess and a throwaway PostgreSQL")
	for _, tc := range []struct {
		name     string
		fail     bool
		wantCode int
	}{{"pass", false, 0}, {"fail", true, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperChild$", "-test.v")
			cmd.Env = append(os.Environ(), pgserver.EnvThrowaway+"=1", "PGTEST_HELPER=1")
			if tc.fail {
				cmd.Env = append(cmd.Env, "PGTEST_HELPER_FAIL=1")
			}
			out, err := cmd.CombinedOutput()
			code := 0
			var exitErr *exec.ExitError
			if errors.As(err, &exitErr) {
				code = exitErr.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d; output:\n%s", code, tc.wantCode, out)
			}
			var dir string
			sc := bufio.NewScanner(strings.NewReader(string(out)))
			re := regexp.MustCompile(`started throwaway cluster.*dir=(\S+)`)
			for sc.Scan() {
				if m := re.FindStringSubmatch(sc.Text()); m != nil {
					dir = m[1]
				}
			}
			if dir == "" {
				t.Fatalf("child did not start a throwaway cluster; output:\n%s", out)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				_ = os.RemoveAll(dir)
				t.Errorf("Main left %s behind (stat: %v)", dir, err)
			}
		})
	}
}

// TestHelperChild is the child of TestMainStopsThrowaway; in a normal run it does
// nothing.
func TestHelperChild(t *testing.T) {
	if os.Getenv("PGTEST_HELPER") != "1" {
		return
	}
	db, _ := pgtest.NewDB(t)
	if err := db.PingContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !pgtest.Server(t).Owned {
		t.Error("child did not use a throwaway cluster")
	}
	if os.Getenv("PGTEST_HELPER_FAIL") == "1" {
		t.Error("failing on purpose")
	}
}
