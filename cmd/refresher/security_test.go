package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/uptrace/bun"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
)

// natsVars are every variable config.NATS reads; each test starts with none set.
var natsVars = []string{"NATS_CREDS", "NATS_NKEY_SEED_FILE", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY"}

// authEnv is consumeEnv pointed at natsURL with the NATS_* variables vars (the others
// unset) and no metrics address, which a parallel test might hold.
func authEnv(t *testing.T, env *fleettest.Env, natsURL string, vars map[string]string) {
	t.Helper()
	consumeEnv(t, env)
	t.Setenv("NATS_URL", natsURL)
	t.Setenv("REFRESHER_HTTP_ADDR", "")
	for _, k := range natsVars {
		t.Setenv(k, vars[k])
	}
}

// jsServerOptions describe a JetStream nats-server on a free loopback port storing
// in dir, shaped by configure.
func jsServerOptions(dir string, configure func(*server.Options)) *server.Options {
	o := &server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: dir,
		NoSigs: true, NoLog: true,
	}
	configure(o)
	return o
}

// startJSServer runs a nats-server with JetStream and the authentication configure
// sets up (natsserver.Start has none), until the test ends.
func startJSServer(t *testing.T, o *server.Options) (*server.Server, string) {
	t.Helper()
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	return s, "nats://" + s.Addr().(*net.TCPAddr).String()
}

func users(password string) func(*server.Options) {
	return func(o *server.Options) {
		o.Users = []*server.User{{Username: "refresher", Password: password}}
	}
}

// runCancellable runs a command line in-process until it returns or cancel is called.
type runCancellable struct {
	cancel context.CancelFunc
	done   chan struct{}
	code   int
	stdout bytes.Buffer
	stderr *fleettest.SyncBuffer
}

func startCLI(t *testing.T, args ...string) *runCancellable {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &runCancellable{cancel: cancel, done: make(chan struct{}), stderr: &fleettest.SyncBuffer{}}
	go func() {
		defer close(r.done)
		r.code = run(ctx, args, &r.stdout, r.stderr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(20 * time.Second):
			t.Errorf("%v did not exit within 20s of cancellation", args)
		}
	})
	return r
}

// stop cancels the command (as SIGTERM does) and returns its exit code.
func (r *runCancellable) stop(t *testing.T) int {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		return r.code
	case <-time.After(20 * time.Second):
		t.Fatal("command did not exit within 20s of cancellation")
		return -1
	}
}

// TestNATSCredentialsCLI: publish and consume authenticate with NATS_USER and
// NATS_PASSWORD to a server that requires them, and do their work.
func TestNATSCredentialsCLI(t *testing.T) {
	const password = "pw-cli-4e0b"
	env := fleettest.New(t, fleettest.Options{})
	_, natsURL := startJSServer(t, jsServerOptions(t.TempDir(), users(password)))
	authEnv(t, env, natsURL, map[string]string{"NATS_USER": "refresher", "NATS_PASSWORD": password})
	ids := env.Seed("github", 3)

	code, stdout, stderr := runCLI(t, "publish", "--service", "github")
	if code != 0 || !strings.Contains(stdout, "published=3") {
		t.Fatalf("publish: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	c := startCLI(t, "consume")
	fleettest.Eventually(t, 30*time.Second, "every row refreshed", func() bool {
		for _, id := range ids {
			if env.Credential(id).Version != 1 {
				return false
			}
		}
		return true
	})
	if code := c.stop(t); code != 0 {
		t.Fatalf("consume exit %d, want 0:\n%s", code, c.stderr.String())
	}
	if out := stderr + c.stderr.String(); strings.Contains(out, password) {
		t.Fatalf("the password is in the output:\n%s", out)
	}
}

// TestNATSRefusedCLI: with wrong or missing NATS credentials, publish and consume
// stop at once with exit 1 and the server's "Authorization Violation", not a retry
// loop, and never print the password or token.
func TestNATSRefusedCLI(t *testing.T) {
	const password, token = "pw-right-0c5d", "tok-right-93e1"
	env := fleettest.New(t, fleettest.Options{})
	_, userURL := startJSServer(t, jsServerOptions(t.TempDir(), users(password)))
	_, tokenURL := startJSServer(t, jsServerOptions(t.TempDir(), func(o *server.Options) { o.Authorization = token }))
	env.Seed("github", 1)
	tests := []struct {
		name    string
		url     string
		vars    map[string]string
		want    []string
		secrets []string
	}{
		{"wrong password", userURL, map[string]string{"NATS_USER": "refresher", "NATS_PASSWORD": "wrong-" + password},
			[]string{`as user "refresher" (NATS_USER, NATS_PASSWORD)`, "the server refused these credentials"}, []string{"wrong-" + password}},
		{"wrong token", tokenURL, map[string]string{"NATS_TOKEN": "wrong-" + token},
			[]string{"as a token (NATS_TOKEN)", "the server refused these credentials"}, []string{"wrong-" + token}},
		{"no credentials", userURL, nil, []string{"the server requires authentication"}, nil},
	}
	for _, cmd := range [][]string{{"publish", "--service", "github"}, {"consume"}} {
		for _, tt := range tests {
			t.Run(cmd[0]+"/"+tt.name, func(t *testing.T) {
				authEnv(t, env, tt.url, tt.vars)
				start := time.Now()
				code, stdout, stderr := runCLI(t, cmd...)
				elapsed := time.Since(start)
				if code != 1 {
					t.Fatalf("exit %d, want 1; stderr %q", code, stderr)
				}
				for _, w := range append([]string{"connect to NATS at " + tt.url, "Authorization Violation"}, tt.want...) {
					if !strings.Contains(stderr, w) {
						t.Errorf("stderr %q: want it to contain %q", stderr, w)
					}
				}
				if elapsed > 5*time.Second {
					t.Errorf("took %s: refused credentials must stop the command at once", elapsed)
				}
				for _, s := range append(tt.secrets, password, token) {
					if strings.Contains(stdout+stderr, s) {
						t.Fatalf("output shows the secret %q:\n%s%s", s, stdout, stderr)
					}
				}
			})
		}
	}
}

// TestNATSConfigErrorsCLI: a bad NATS_* setting stops the command with exit 2 and a
// message naming the variables and paths.
func TestNATSConfigErrorsCLI(t *testing.T) {
	const password = "pw-cfg-61aa"
	env := fleettest.New(t, fleettest.Options{})
	missing := t.TempDir() + "/nats.creds"
	tests := []struct {
		name string
		vars map[string]string
		want string
	}{
		{"two methods", map[string]string{"NATS_CREDS": missing, "NATS_USER": "refresher", "NATS_PASSWORD": password},
			"NATS_CREDS and NATS_USER are both set"},
		{"creds missing", map[string]string{"NATS_CREDS": missing}, "NATS_CREDS=" + missing + ": cannot read it: no such file or directory"},
		{"client certificate without key", map[string]string{"NATS_TLS_CERT": missing}, "NATS_TLS_CERT=" + missing + " is set without NATS_TLS_KEY"},
	}
	for _, cmd := range [][]string{{"publish", "--service", "github"}, {"consume"}} {
		for _, tt := range tests {
			t.Run(cmd[0]+"/"+tt.name, func(t *testing.T) {
				authEnv(t, env, env.NATS.URL(), tt.vars)
				code, stdout, stderr := runCLI(t, cmd...)
				if code != 2 || !strings.Contains(stderr, tt.want) {
					t.Fatalf("exit %d, stderr %q: want exit 2 and %q", code, stderr, tt.want)
				}
				if strings.Contains(stdout+stderr, password) {
					t.Fatalf("output shows the password: %s%s", stdout, stderr)
				}
			})
		}
	}
}

// TestConsumeCredentialsRefusedLater: when the server stops accepting a running
// consumer's credentials, consume logs each refusal at error level and the NATS
// connection is closed for good after the second, instead of reconnecting for ever;
// no password is printed.
//
// consume does not exit by itself then: consumer.Run returns only once its context
// is cancelled, even after its connection has closed (reported; see the README's
// Security section). The test stops it as SIGTERM would.
func TestConsumeCredentialsRefusedLater(t *testing.T) {
	const password, rotated = "pw-old-5b2c", "pw-new-d871"
	env := fleettest.New(t, fleettest.Options{})
	dir := t.TempDir()
	s, natsURL := startJSServer(t, jsServerOptions(dir, users(password)))
	authEnv(t, env, natsURL, map[string]string{"NATS_USER": "refresher", "NATS_PASSWORD": password})
	c := startCLI(t, "consume")
	fleettest.Eventually(t, 30*time.Second, "consume bound", func() bool {
		return strings.Contains(c.stderr.String(), `"msg":"consuming"`)
	})

	if err := s.ReloadOptions(jsServerOptions(dir, users(rotated))); err != nil {
		t.Fatalf("reload nats-server: %v", err)
	}
	fleettest.Eventually(t, 20*time.Second, "the connection closed for good", func() bool {
		return strings.Contains(c.stderr.String(), `"level":"ERROR","msg":"nats connection closed for good"`)
	})
	c.stop(t)
	out := c.stderr.String()
	if n := strings.Count(out, `"level":"ERROR","msg":"nats server refused the credentials`); n < 1 || n > 4 {
		t.Errorf("%d refusals logged at error level, want one or two before giving up:\n%s", n, out)
	}
	if strings.Contains(out, password) || strings.Contains(out, rotated) {
		t.Fatalf("output shows a password:\n%s", out)
	}
}

// dbRole is a PostgreSQL login role made for one test, with a password so that it
// can log in whatever the server's pg_hba method.
type dbRole struct {
	name, password, url string
}

// createRole makes a login role with a unique name (roles are cluster-wide), runs
// grants on the test database ({role} is the role, {db} the database), and drops the
// role when the test ends.
func createRole(t *testing.T, env *fleettest.Env, kind string, grants ...string) dbRole {
	t.Helper()
	ctx := context.Background()
	var canCreate bool
	if err := env.DB.QueryRowContext(ctx,
		"SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user").Scan(&canCreate); err != nil {
		t.Fatal(err)
	}
	if !canCreate {
		t.Skip("the test PostgreSQL role may not create roles (needs CREATEROLE)")
	}
	r := dbRole{name: "rt_" + kind + "_" + randomHex(t, 6), password: randomHex(t, 16)}
	if _, err := env.DB.ExecContext(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", r.name, r.password)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		// Privileges on the test database depend on the role; DROP OWNED removes them
		// (it runs in the database it is connected to, the test's).
		for _, q := range []string{"DROP OWNED BY " + r.name, "DROP ROLE " + r.name} {
			if _, err := env.DB.ExecContext(ctx, q); err != nil {
				t.Errorf("%s: %v", q, err)
			}
		}
	})
	var dbName string
	if err := env.DB.QueryRowContext(ctx, "SELECT current_database()").Scan(&dbName); err != nil {
		t.Fatal(err)
	}
	fill := strings.NewReplacer("{role}", r.name, "{db}", dbName)
	for _, g := range grants {
		if _, err := env.DB.ExecContext(ctx, fill.Replace(g)); err != nil {
			t.Fatalf("%s: %v", fill.Replace(g), err)
		}
	}
	r.url = urlAsRole(t, env.DBURL, r.name, r.password)
	return r
}

// urlAsRole points a PostgreSQL URL (or keyword/value string) at another role.
func urlAsRole(t *testing.T, dbURL, user, password string) string {
	t.Helper()
	if !strings.HasPrefix(dbURL, "postgres://") && !strings.HasPrefix(dbURL, "postgresql://") {
		return fmt.Sprintf("%s user=%s password=%s", dbURL, user, password)
	}
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(user, password)
	return u.String()
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// The grants the README gives. PUBLIC's default CONNECT and TEMP on the database,
// and CREATE on schema public (granted to PUBLIC before PostgreSQL 15), are revoked
// first so that what the roles can do is only what is granted here.
var (
	lockDown = []string{
		"REVOKE ALL ON DATABASE {db} FROM PUBLIC",
		"REVOKE CREATE ON SCHEMA public FROM PUBLIC",
	}
	consumerGrants = append(append([]string{}, lockDown...),
		"GRANT CONNECT ON DATABASE {db} TO {role}",
		"GRANT USAGE ON SCHEMA public TO {role}",
		"GRANT SELECT, UPDATE ON credentials TO {role}",
	)
	publisherGrants = append(append([]string{}, lockDown...),
		"GRANT CONNECT ON DATABASE {db} TO {role}",
		"GRANT USAGE ON SCHEMA public TO {role}",
		"GRANT SELECT ON credentials TO {role}",
	)
)

// TestConsumerLeastPrivilege runs a consumer whose database role holds only the
// README's grants through every kind of outcome that writes: a refresh, a skip, a
// missing row, an invalid_grant, a provider outage retried. Then it shows the role
// can do nothing more: no insert or delete of credentials, no DDL, no other table.
func TestConsumerLeastPrivilege(t *testing.T) {
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{BatchSize: batch, Services: []string{"github"}})
		ctx := context.Background()
		ids := env.Seed("github", 4)
		fresh, revoked, flaky := ids[1], ids[2], ids[3]
		if _, err := env.DB.ExecContext(ctx, "UPDATE credentials SET refreshed_at = now() WHERE id = ?", fresh); err != nil {
			t.Fatal(err)
		}
		if _, err := env.DB.ExecContext(ctx, "UPDATE credentials SET refresh_token = 'revoked-by-the-user' WHERE id = ?", revoked); err != nil {
			t.Fatal(err)
		}
		role := createRole(t, env, "consumer", consumerGrants...)
		cfg := env.Config()
		db, err := model.Open(ctx, role.url, cfg.Concurrency+4)
		if err != nil {
			t.Fatalf("open as %s: %v", role.name, err)
		}
		t.Cleanup(func() { db.Close() })
		c, err := consumer.New(db, env.Conn(), env.Providers(cfg.ProviderTimeout), cfg,
			consumer.WithLogger(env.Log), consumer.WithStreamConfig(env.Streams))
		if err != nil {
			t.Fatal(err)
		}
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- c.Run(runCtx) }()
		t.Cleanup(func() {
			stop()
			if err := <-done; err != nil {
				t.Errorf("consumer: %v", err)
			}
		})
		select {
		case <-c.Ready():
		case err := <-done:
			t.Fatalf("consumer exited before binding: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("consumer did not bind")
		}
		p := env.Publisher(publisher.WithWindow(0))

		// A provider outage first: the failure is recorded on the row (a write of its
		// own) and the request retried once the provider is back.
		env.Fake.SetOutage(true)
		if _, err := p.Publish(ctx, "github", flaky); err != nil {
			t.Fatal(err)
		}
		fleettest.Eventually(t, 30*time.Second, "a retry during the outage", func() bool { return c.Stats().Retried > 0 })
		env.Fake.SetOutage(false)

		if _, err := p.Publish(ctx, "github", ids[0], revoked, 999999); err != nil {
			t.Fatal(err)
		}
		// Requested an hour before the row was last refreshed: already satisfied.
		m := nats.NewMsg(model.Key{Service: "github", ID: fresh}.Subject())
		m.Header.Set(model.HeaderRequestedAt, model.FormatRequestedAt(time.Now().Add(-time.Hour)))
		if _, err := p.JetStream().PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
		env.WaitIdle(30 * time.Second)

		st := c.Stats()
		if st.Refreshed != 2 || st.SkippedFresh != 1 || st.NotFound != 1 || st.ReauthRequired != 1 || st.Retried < 1 ||
			st.DeadLettered != 0 || st.Malformed != 0 {
			t.Fatalf("stats %+v: want 2 refreshed, 1 skipped, 1 not found, 1 reauth_required, a retry, nothing dead", st)
		}
		for id, want := range map[int64]int64{ids[0]: 1, fresh: 0, revoked: 0, flaky: 1} {
			if got := env.Credential(id).Version; got != want {
				t.Errorf("credential %d at version %d, want %d", id, got, want)
			}
		}
		if c := env.Credential(revoked); c.Status != model.StatusReauthRequired {
			t.Errorf("revoked credential status %s, want %s", c.Status, model.StatusReauthRequired)
		}
		if c := env.Credential(flaky); c.Failures != 0 {
			t.Errorf("flaky credential still records %d failures after its refresh", c.Failures)
		}
		if st := env.Fake.Stats(); st.Reuses != 0 {
			t.Errorf("provider saw %d reused refresh tokens", st.Reuses)
		}
		var claims int
		if err := env.DB.QueryRowContext(ctx, "SELECT count(*) FROM credentials WHERE claim_id IS NOT NULL").Scan(&claims); err != nil || claims != 0 {
			t.Errorf("%d claims left (%v), want none", claims, err)
		}

		assertDenied(t, db, role.name,
			// With an explicit id, so that the sequence's own privilege is not what refuses it.
			"INSERT INTO credentials (id, account_id, service, access_token, refresh_token, expires_at) VALUES (999999999, 1, 'github', 'a', 'r', now())",
			"SELECT nextval('credentials_id_seq')",
			fmt.Sprintf("DELETE FROM credentials WHERE id = %d", ids[0]),
			"TRUNCATE credentials",
			"CREATE TABLE stolen (token text)",
			"SELECT count(*) FROM bun_migrations",
			"ALTER TABLE credentials ADD COLUMN x int",
			"CREATE TEMP TABLE scratch (x int)",
		)
	})
}

// assertDenied runs each statement as the role and wants PostgreSQL's
// insufficient_privilege (42501) for every one.
func assertDenied(t *testing.T, db *bun.DB, role string, statements ...string) {
	t.Helper()
	for _, q := range statements {
		_, err := db.ExecContext(context.Background(), q)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Errorf("%s as %s: %v, want permission denied", q, role, err)
		}
	}
}

// TestLeastPrivilegeCLI: the README's roles are enough for the commands they are
// meant for, `publish` as the publisher role and `consume` as the consumer role.
func TestLeastPrivilegeCLI(t *testing.T) {
	env := fleettest.New(t, fleettest.Options{})
	consumeEnv(t, env)
	t.Setenv("REFRESHER_HTTP_ADDR", "")
	ids := env.Seed("github", 3)
	pub := createRole(t, env, "publisher", publisherGrants...)
	con := createRole(t, env, "consumer", consumerGrants...)

	t.Setenv("DATABASE_URL", pub.url)
	code, stdout, stderr := runCLI(t, "publish", "--service", "github")
	if code != 0 || !strings.Contains(stdout, "published=3") {
		t.Fatalf("publish as %s: exit %d, stdout %q, stderr %q", pub.name, code, stdout, stderr)
	}
	t.Setenv("DATABASE_URL", con.url)
	c := startCLI(t, "consume")
	fleettest.Eventually(t, 30*time.Second, "every row refreshed", func() bool {
		for _, id := range ids {
			if env.Credential(id).Version != 1 {
				return false
			}
		}
		return true
	})
	if code := c.stop(t); code != 0 {
		t.Fatalf("consume as %s: exit %d\n%s", con.name, code, c.stderr.String())
	}
	if out := stderr + c.stderr.String(); strings.Contains(out, pub.password) || strings.Contains(out, con.password) {
		t.Fatalf("output shows a database password:\n%s", out)
	}
}
