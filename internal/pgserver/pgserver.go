// Package pgserver finds a PostgreSQL server that the demo command and the tests may
// create databases on: DATABASE_URL, else the server on 127.0.0.1:5432, else a
// throwaway cluster started from the local PostgreSQL binaries.
package pgserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/user"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/refresher/refresher/model"
)

// EnvThrowaway names the environment variable that, when true ("1", "true"), makes
// Discover skip DATABASE_URL and 127.0.0.1:5432, so the throwaway path can be
// exercised on a machine that has a server running.
const EnvThrowaway = "REFRESHER_PG_THROWAWAY"

// ErrNotFound is returned (wrapped) by Discover and StartThrowaway when there is no
// PostgreSQL to use and none can be started; its text says what to install.
var ErrNotFound = errors.New("install PostgreSQL server binaries " +
	"(Debian/Ubuntu: apt-get install postgresql; Fedora: dnf install postgresql-server; " +
	"macOS: brew install postgresql) or set DATABASE_URL")

// connectTimeout bounds each probe: a firewalled port must not stall discovery.
const connectTimeout = 3 * time.Second

// Server is a PostgreSQL server we may create and drop databases on.
type Server struct {
	// AdminURL connects as a role that may create databases (superuser on a
	// throwaway cluster). It may carry a password: log it with model.RedactURL.
	AdminURL string
	// Owned is true when this process started the server (a throwaway cluster):
	// Stop, Pause and Resume act only on owned servers.
	Owned bool

	c *cluster // nil unless Owned
}

// ForceThrowaway reports whether EnvThrowaway asks Discover to skip existing servers.
func ForceThrowaway() bool {
	b, _ := strconv.ParseBool(os.Getenv(EnvThrowaway))
	return b
}

// Discover returns the PostgreSQL server to use, in order: DATABASE_URL (an admin
// connection; if it is set but unusable that is an error, not a reason to quietly
// use another server), the server on 127.0.0.1:5432 as role postgres or as the
// current OS user, then a throwaway cluster started from local binaries. The error
// wraps ErrNotFound when none of these is possible. log may be nil.
func Discover(ctx context.Context, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var localErrs []string
	if ForceThrowaway() {
		log.Info("PostgreSQL: " + EnvThrowaway + " is set, starting a throwaway cluster")
	} else {
		if u := os.Getenv("DATABASE_URL"); u != "" {
			if err := checkAdmin(ctx, u); err != nil {
				return nil, fmt.Errorf("DATABASE_URL %s: %w", model.RedactURL(u), err)
			}
			log.Info("PostgreSQL: using DATABASE_URL", "url", model.RedactURL(u))
			return &Server{AdminURL: u}, nil
		}
		for _, u := range localCandidates() {
			err := checkAdmin(ctx, u)
			if err == nil {
				log.Info("PostgreSQL: using local server", "url", model.RedactURL(u))
				return &Server{AdminURL: u}, nil
			}
			log.Debug("PostgreSQL: local candidate unusable", "url", model.RedactURL(u), "err", err)
			localErrs = append(localErrs, fmt.Sprintf("as %s: %v", model.RedactURL(u), err))
		}
	}
	s, err := StartThrowaway(ctx, log)
	if err != nil {
		if len(localErrs) > 0 {
			return nil, fmt.Errorf("no PostgreSQL: nothing usable on 127.0.0.1:5432 (%s), and %w",
				strings.Join(localErrs, "; "), err)
		}
		return nil, fmt.Errorf("no PostgreSQL: %w", err)
	}
	return s, nil
}

// localCandidates lists the roles to try on 127.0.0.1:5432: postgres is the
// superuser of a packaged install; the OS user covers Homebrew-style installs.
func localCandidates() []string {
	urls := []string{"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"}
	if u, err := user.Current(); err == nil && u.Username != "" && u.Username != "postgres" {
		v := url.URL{
			Scheme:   "postgres",
			User:     url.User(u.Username),
			Host:     "127.0.0.1:5432",
			Path:     "/postgres",
			RawQuery: "sslmode=disable",
		}
		urls = append(urls, v.String())
	}
	return urls
}

// checkAdmin connects to adminURL and checks that its role may create databases,
// since that is all the server is used for.
func checkAdmin(ctx context.Context, adminURL string) error {
	conn, err := connect(ctx, adminURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var ok bool
	err = conn.QueryRow(ctx,
		"SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user").Scan(&ok)
	if err != nil {
		return fmt.Errorf("check CREATEDB privilege: %w", err)
	}
	if !ok {
		return errors.New("role may not create databases (needs CREATEDB or superuser)")
	}
	return nil
}

// connect opens one admin connection with a bounded connect timeout.
func connect(ctx context.Context, rawURL string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(rawURL)
	if err != nil {
		// pgx echoes the input, password included.
		return nil, fmt.Errorf("%s is not a valid PostgreSQL URL", model.RedactURL(rawURL))
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > connectTimeout {
		cfg.ConnectTimeout = connectTimeout
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}

var validName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// reservedNames are databases the server needs; dropping one by a typo in a test
// would break every other test sharing the server.
var reservedNames = map[string]bool{"postgres": true, "template0": true, "template1": true}

// ValidateName checks a database name for CreateDatabase and DropDatabase: lower
// case letters, digits and underscores, at most 63 bytes (PostgreSQL truncates
// longer names silently), and not one of the server's own databases.
func ValidateName(name string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("invalid database name %q: want [a-z0-9_]{1,63}", name)
	}
	if reservedNames[name] {
		return fmt.Errorf("database name %q is reserved", name)
	}
	return nil
}

// CreateDatabase creates database name and returns a URL for it with the admin
// URL's host and credentials.
func (s *Server) CreateDatabase(ctx context.Context, name string) (string, error) {
	if err := ValidateName(name); err != nil {
		return "", err
	}
	dbURL, err := databaseURL(s.AdminURL, name)
	if err != nil {
		return "", err
	}
	stmt := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	if err := s.admin(ctx, stmt); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return dbURL, nil
}

// DropDatabase drops database name, disconnecting its sessions first (a test's pool
// may still hold connections), and succeeds if it does not exist.
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	stmt := "DROP DATABASE IF EXISTS " + pgx.Identifier{name}.Sanitize() + " WITH (FORCE)"
	if err := s.admin(ctx, stmt); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

// admin runs one statement on a fresh admin connection. CREATE/DROP DATABASE fail
// with object_in_use while another session briefly uses the template, which happens
// when many tests create databases at once, so that one error is retried.
func (s *Server) admin(ctx context.Context, stmt string) error {
	deadline := time.Now().Add(15 * time.Second)
	backoff := 20 * time.Millisecond
	for {
		err := s.exec(ctx, stmt)
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "55006" || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (after: %w)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

func (s *Server) exec(ctx context.Context, stmt string) error {
	conn, err := connect(ctx, s.AdminURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, stmt)
	return err
}

// databaseURL points adminURL at database name, for both URL and keyword/value forms.
func databaseURL(adminURL, name string) (string, error) {
	u, err := url.Parse(adminURL)
	if err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		u.Path, u.RawPath = "/"+name, ""
		q := u.Query()
		if q.Has("dbname") || q.Has("database") {
			// A dbname parameter would override the path.
			q.Del("dbname")
			q.Del("database")
			u.RawQuery = q.Encode()
		}
		return u.String(), nil
	}
	if _, err := pgconn.ParseConfig(adminURL); err != nil {
		return "", fmt.Errorf("admin URL %s is not a valid PostgreSQL URL", model.RedactURL(adminURL))
	}
	// Keyword/value form: a later keyword overrides an earlier one.
	return adminURL + " dbname=" + name, nil
}

// Stop stops and deletes an owned throwaway cluster; it does nothing for a server
// we did not start, and nothing on a second call.
func (s *Server) Stop(ctx context.Context) error {
	if !s.Owned || s.c == nil {
		return nil
	}
	return s.c.destroy(ctx)
}

// Pause stops an owned cluster's server (fast shutdown) but keeps its data, so fault
// tests can see what clients do while the database is down.
func (s *Server) Pause(ctx context.Context) error {
	if !s.Owned || s.c == nil {
		return errNotOwned
	}
	return s.c.pause(ctx)
}

// Crash stops an owned cluster's server the way `pg_ctl stop -m immediate` does:
// what a commit had not flushed to the WAL is gone. Resume starts it again, through
// crash recovery.
func (s *Server) Crash(ctx context.Context) error {
	if !s.Owned || s.c == nil {
		return errNotOwned
	}
	return s.c.crash(ctx)
}

// Resume starts a paused owned cluster again on the same data and port, so URLs
// handed out before Pause work again.
func (s *Server) Resume(ctx context.Context) error {
	if !s.Owned || s.c == nil {
		return errNotOwned
	}
	return s.c.resume(ctx)
}

// DataDir is the throwaway cluster's temp directory ("" when not owned); it holds
// postgres.log, useful when a test needs to explain a server failure.
func (s *Server) DataDir() string {
	if s.c == nil {
		return ""
	}
	return s.c.root
}

var errNotOwned = errors.New("pgserver: only a throwaway cluster started by this process can be paused or resumed")
