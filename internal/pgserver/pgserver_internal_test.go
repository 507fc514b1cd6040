package pgserver

import (
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	for _, name := range []string{"a", "rt_0123abc", "x_", strings.Repeat("a", 63)} {
		if err := ValidateName(name); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", name, err)
		}
	}
	for _, name := range []string{"", "A", "rt-1", "a b", `a"; DROP DATABASE x; --`, strings.Repeat("a", 64),
		"postgres", "template0", "template1", "é"} {
		if err := ValidateName(name); err == nil {
			t.Errorf("ValidateName(%q) = nil, want an error", name)
		}
	}
}

func TestDatabaseURL(t *testing.T) {
	for _, tc := range []struct{ admin, want string }{
		{"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
			"postgres://postgres@127.0.0.1:5432/rt_1?sslmode=disable"},
		{"postgresql://u:p%40ss@db.example:6543/admin?sslmode=require&dbname=admin",
			"postgresql://u:p%40ss@db.example:6543/rt_1?sslmode=require"},
		{"postgres://u@h", "postgres://u@h/rt_1"},
		{"host=127.0.0.1 user=postgres dbname=postgres sslmode=disable",
			"host=127.0.0.1 user=postgres dbname=postgres sslmode=disable dbname=rt_1"},
	} {
		got, err := databaseURL(tc.admin, "rt_1")
		if err != nil || got != tc.want {
			t.Errorf("databaseURL(%q) = %q, %v; want %q", tc.admin, got, err, tc.want)
		}
	}
	if _, err := databaseURL("host='unterminated", "rt_1"); err == nil {
		t.Error("databaseURL accepted an invalid keyword/value string")
	}
}

func TestFindBinariesNoneSaysWhatToInstall(t *testing.T) {
	_, _, err := findBinaries(t.TempDir(), []string{filepath.Join(t.TempDir(), "nothing-*", "bin")})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	for _, want := range []string{"initdb", "apt-get install postgresql", "DATABASE_URL"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestFindBinariesOrder(t *testing.T) {
	root := t.TempDir()
	mk := func(dir string, names ...string) string {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	for _, v := range []string{"9.6", "15", "10"} {
		mk(filepath.Join(root, "lib", v, "bin"), "initdb", "postgres")
	}
	mk(filepath.Join(root, "lib", "16", "bin"), "initdb") // no postgres: unusable
	glob := []string{filepath.Join(root, "lib", "*", "bin")}

	initdb, postgres, err := findBinaries("", glob)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, "lib", "15", "bin"); filepath.Dir(initdb) != want || filepath.Dir(postgres) != want {
		t.Errorf("got %s, %s; want the newest complete dir %s", initdb, postgres, want)
	}

	// A symlinked initdb on PATH (Debian's /usr/local/bin) wins and resolves to the
	// directory holding the matching postgres.
	realDir := mk(filepath.Join(root, "real", "bin"), "initdb", "postgres")
	onPath := mk(filepath.Join(root, "path"))
	if err := os.Symlink(filepath.Join(realDir, "initdb"), filepath.Join(onPath, "initdb")); err != nil {
		t.Fatal(err)
	}
	initdb, postgres, err = findBinaries(onPath, glob)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(initdb) != realDir || filepath.Dir(postgres) != realDir {
		t.Errorf("got %s, %s; want both in %s", initdb, postgres, realDir)
	}
}

func TestReapStale(t *testing.T) {
	tmp := t.TempDir()
	// A pid that surely belongs to no process: one of a child we have waited for.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	deadPID := cmd.Process.Pid

	mk := func(name string, owner int) string {
		t.Helper()
		d := filepath.Join(tmp, name)
		if err := os.MkdirAll(filepath.Join(d, "data"), 0o700); err != nil {
			t.Fatal(err)
		}
		if owner != 0 {
			if err := os.WriteFile(filepath.Join(d, ownerFile), []byte(strconv.Itoa(owner)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	dead := mk(tempPrefix+"dead", deadPID)
	live := mk(tempPrefix+"live", os.Getpid())
	noOwner := mk(tempPrefix+"new", 0)
	running := mk(tempPrefix+"running", deadPID)
	// The "postmaster" of this one is still running (this process stands in for it).
	if err := os.WriteFile(filepath.Join(running, "data", "postmaster.pid"),
		[]byte(strconv.Itoa(os.Getpid())+"\n/data\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	other := mk("someone-else", deadPID)

	reapStale(tmp, slog.New(slog.DiscardHandler))

	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("dead owner's dir still there (stat err %v)", err)
	}
	for _, d := range []string{live, noOwner, running, other} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s was removed: %v", d, err)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	if compareVersions("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/9.6/bin") <= 0 {
		t.Error("15 should sort after 9.6")
	}
	if compareVersions("/usr/pgsql-10/bin", "/usr/pgsql-9/bin") <= 0 {
		t.Error("10 should sort after 9")
	}
}

// TestDiscoverNothingSaysWhatToInstall takes the last branch of Discover: no
// server to use and no binaries to start one.
func TestDiscoverNothingSaysWhatToInstall(t *testing.T) {
	t.Setenv(EnvThrowaway, "1") // skip the server this machine may have on :5432
	t.Setenv("PATH", t.TempDir())
	saved := binDirGlobs
	binDirGlobs = []string{filepath.Join(t.TempDir(), "postgresql", "*", "bin")}
	t.Cleanup(func() { binDirGlobs = saved })

	s, err := Discover(t.Context(), nil)
	if err == nil {
		_ = s.Stop(t.Context())
		t.Fatal("Discover succeeded without binaries")
	}
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("err = %v, want ErrNotFound", err)
	}
	t.Logf("error: %v", err)
	for _, want := range []string{"initdb", "apt-get install postgresql", "DATABASE_URL"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}
