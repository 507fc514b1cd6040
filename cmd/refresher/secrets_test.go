package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/provider/fake"
)

// plantedCommands are every command that reads the environment, with arguments that
// take it past flag parsing to its configuration, connections and output. consume is
// run apart (it runs until stopped when everything works).
var plantedCommands = [][]string{
	{"config"},
	{"migrate"},
	{"seed", "--service", "github", "--count", "2"},
	{"publish", "--service", "github"},
	{"publish", "--service", "github", "--ids", "1,2"},
	{"status"},
	{"status", "--json"},
	{"replay", "--since", "1h", "--dry-run"},
	{"replay", "--since", "1h", "--dlq", "--dry-run"},
	{"dlq", "list"},
	{"dlq", "replay", "--since", "1h", "--dry-run"},
	{"dlq", "purge"},
	{"rekey"},
	{"streams", "diff"},
	{"streams", "apply", "--dry-run"},
}

// slowCommands start servers of their own when DATABASE_URL works; they are run only
// with one that fails at once.
var slowCommands = [][]string{{"demo"}, {"bench", "--quick"}}

// TestNoSecretInAnyOutput plants a distinct secret in every variable that can hold a
// credential, one variable (or one form of it) at a time, runs every command, on the
// error path and, with working values, on the success path, and fails if any secret
// appears in any output.
func TestNoSecretInAnyOutput(t *testing.T) {
	fx := fleettest.New(t, fleettest.Options{})
	pg, err := pgx.ParseConfig(fx.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	secret := func(what string) string { return "Pl4nted-" + what + "-" + randomHex(t, 4) }

	// A fake provider that knows a planted client secret, and NATS servers that take
	// a planted password and a planted token.
	clientSecret := secret("client-secret")
	fp := fake.New(fake.Options{ClientID: "test-client", ClientSecret: clientSecret})
	fpURL, stopFP, err := fp.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stopFP(context.Background()) })
	natsPW, natsToken := secret("nats-password"), secret("nats-token")
	_, userURL := startJSServer(t, jsServerOptions(t.TempDir(), users(natsPW)))
	_, tokenURL := startJSServer(t, jsServerOptions(t.TempDir(), func(o *server.Options) { o.Authorization = natsToken }))
	userHost := strings.TrimPrefix(userURL, "nats://")
	tokenHost := strings.TrimPrefix(tokenURL, "nats://")

	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	encKey := base64.StdEncoding.EncodeToString(key)

	// Files that hold secrets: an nkey seed the servers do not know, and a
	// credentials file that does not parse.
	dir := t.TempDir()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	seedFile := filepath.Join(dir, "user.nk")
	credsSecret := secret("creds")
	credsFile := filepath.Join(dir, "user.creds")
	for f, body := range map[string]string{
		seedFile:  string(seed),
		credsFile: "-----BEGIN NATS USER JWT-----\n" + credsSecret + "\n------END NATS USER JWT------\n",
	} {
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	dbKeyword := func(password string) string {
		return fmt.Sprintf("host=%s port=%d dbname=%s user=%s password=%s sslmode=disable", pg.Host, pg.Port, pg.Database, pg.User, password)
	}
	dbURL := func(userinfo, query string) string {
		return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable%s", userinfo, pg.Host, pg.Port, pg.Database, query)
	}
	working := func() map[string]string {
		return map[string]string{
			"DATABASE_URL":                   fx.DBURL,
			"NATS_URL":                       fx.NATS.URL(),
			"REFRESHER_SERVICES":             "github",
			"REFRESHER_GITHUB_TOKEN_URL":     fpURL + "/github/token",
			"REFRESHER_GITHUB_CLIENT_ID":     "test-client",
			"REFRESHER_GITHUB_CLIENT_SECRET": clientSecret,
			"REFRESHER_CONCURRENCY":          "4",
			"REFRESHER_ACK_WAIT":             "10s",
			"REFRESHER_PROVIDER_TIMEOUT":     "5s",
			"REFRESHER_DRAIN_TIMEOUT":        "8s",
			"REFRESHER_HTTP_ADDR":            "",
			"REFRESHER_ENCRYPTION_KEYS":      "k1:" + encKey,
			"NATS_CREDS":                     "", "NATS_NKEY_SEED_FILE": "", "NATS_USER": "", "NATS_PASSWORD": "",
			"NATS_TOKEN": "", "NATS_TLS_CA": "", "NATS_TLS_CERT": "", "NATS_TLS_KEY": "",
		}
	}
	always := []string{clientSecret, encKey, natsPW, natsToken}

	type scenario struct {
		name    string
		set     map[string]string
		secrets []string
		works   bool // every command should succeed: consume is run too
	}
	var scenarios []scenario
	add := func(name string, works bool, set map[string]string, secrets ...string) {
		scenarios = append(scenarios, scenario{name: name, set: set, secrets: secrets, works: works})
	}

	// Working values with secrets in them.
	dbPW := secret("db-password")
	add("db keyword form, nats user:pass in URL, token URL query secret", true, map[string]string{
		"DATABASE_URL":               dbKeyword(dbPW),
		"NATS_URL":                   "nats://refresher:" + natsPW + "@" + userHost,
		"REFRESHER_GITHUB_TOKEN_URL": fpURL + "/github/token?api_key=" + dbPW + "x",
	}, dbPW)
	add("db URL password, nats token in URL", true, map[string]string{
		"DATABASE_URL": dbURL(pg.User+":"+dbPW, ""),
		"NATS_URL":     "nats://" + natsToken + "@" + tokenHost,
	}, dbPW)
	add("db ?password=, NATS_USER/NATS_PASSWORD", true, map[string]string{
		"DATABASE_URL":  dbURL(pg.User, "&password="+dbPW),
		"NATS_URL":      userURL,
		"NATS_USER":     "refresher",
		"NATS_PASSWORD": natsPW,
	}, dbPW)
	add("NATS_TOKEN", true, map[string]string{"NATS_URL": tokenURL, "NATS_TOKEN": natsToken})

	// Failing values with secrets in them: each variable in each form.
	for _, v := range []struct{ name, value, secret string }{
		{"db URL password, closed port", "postgres://u:%s@127.0.0.1:1/x?sslmode=disable", secret("db-pw-closed")},
		{"db ?password=, closed port", "postgres://u@127.0.0.1:1/x?sslmode=disable&password=%s", secret("db-qpw-closed")},
		{"db keyword form, closed port", "host=127.0.0.1 port=1 dbname=x user=u password=%s sslmode=disable", secret("db-kw-closed")},
		{"db keyword form, quoted", "host=127.0.0.1 port=1 dbname=x user=u password='%s x' sslmode=disable", secret("db-kwq-closed")},
		{"db URL that does not parse", "postgres://u:%s@127.0.0.1:notaport/x", secret("db-pw-bad")},
		{"db keyword form that does not parse", "host=127.0.0.1 port=notaport password=%s", secret("db-kw-bad")},
		{"db password refused", "postgres://nosuchrole:%s@" + fmt.Sprintf("%s:%d/%s", pg.Host, pg.Port, pg.Database), secret("db-pw-role")},
	} {
		add(v.name, false, map[string]string{"DATABASE_URL": fmt.Sprintf(v.value, v.secret)}, v.secret)
	}
	for _, v := range []struct{ name, value, secret string }{
		{"nats URL user:pass, closed port", "nats://u:%s@127.0.0.1:1", secret("nats-pw-closed")},
		{"nats URL token, closed port", "nats://%s@127.0.0.1:1", secret("nats-tok-closed")},
		{"nats URL user:pass refused", "nats://refresher:%s@" + userHost, secret("nats-pw-wrong")},
		{"nats URL token refused", "nats://%s@" + tokenHost, secret("nats-tok-wrong")},
		{"nats URL that does not parse", "nats://u:%s@127.0.0.1:notaport", secret("nats-pw-bad")},
		{"nats URL list, second does not parse", "nats://127.0.0.1:1,nats://u:%s@h:notaport", secret("nats-list-bad")},
	} {
		add(v.name, false, map[string]string{"NATS_URL": fmt.Sprintf(v.value, v.secret)}, v.secret)
	}
	natsPWWrong, natsTokWrong := secret("nats-password-wrong"), secret("nats-token-wrong")
	add("NATS_PASSWORD refused", false, map[string]string{"NATS_URL": userURL, "NATS_USER": "refresher", "NATS_PASSWORD": natsPWWrong}, natsPWWrong)
	add("NATS_TOKEN refused", false, map[string]string{"NATS_URL": tokenURL, "NATS_TOKEN": natsTokWrong}, natsTokWrong)
	add("NATS_PASSWORD without NATS_USER", false, map[string]string{"NATS_PASSWORD": natsPWWrong}, natsPWWrong)
	add("NATS_TOKEN and a password in NATS_URL", false, map[string]string{"NATS_URL": "nats://u:" + natsPWWrong + "@" + userHost, "NATS_TOKEN": natsTokWrong}, natsPWWrong, natsTokWrong)
	add("NATS_NKEY_SEED_FILE refused", false, map[string]string{"NATS_URL": userURL, "NATS_NKEY_SEED_FILE": seedFile}, string(seed))
	add("NATS_CREDS that does not parse", false, map[string]string{"NATS_CREDS": credsFile}, credsSecret)
	tokPW, tokKey := secret("token-url-pw"), secret("token-url-key")
	add("token URL with userinfo and query secret, not http", false, map[string]string{
		"REFRESHER_GITHUB_TOKEN_URL": "ftp://u:" + tokPW + "@127.0.0.1:1/token?key=" + tokKey,
	}, tokPW, tokKey)
	add("token URL with userinfo and query secret, unreachable", false, map[string]string{
		"REFRESHER_GITHUB_TOKEN_URL":  "http://u:" + tokPW + "@127.0.0.1:1/token?client_secret=" + tokKey,
		"REFRESHER_GITHUB_AUTH_STYLE": "auto",
	}, tokPW, tokKey)
	badKey := secret("enc-key")
	add("REFRESHER_ENCRYPTION_KEYS that does not decode", false, map[string]string{"REFRESHER_ENCRYPTION_KEYS": "k1:" + badKey}, badKey)
	shortKey := base64.StdEncoding.EncodeToString([]byte(secret("short")))
	add("REFRESHER_ENCRYPTION_KEYS too short", false, map[string]string{"REFRESHER_ENCRYPTION_KEYS": "k1:" + shortKey + ",k1:" + encKey}, shortKey)
	add("client secret with a bad auth style", false, map[string]string{"REFRESHER_GITHUB_AUTH_STYLE": "auto"})

	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			for k, v := range working() {
				t.Setenv(k, v)
			}
			for k, v := range sc.set {
				t.Setenv(k, v)
			}
			secrets := append(append([]string{}, always...), sc.secrets...)
			check := func(args []string, out string) {
				t.Helper()
				for _, s := range secrets {
					if strings.Contains(out, s) {
						t.Errorf("%v shows the secret %q:\n%s", args, s, out)
					}
				}
			}
			cmds := append(append([][]string{}, plantedCommands...), []string{"verify", "--provider", fpURL})
			if sc.set["DATABASE_URL"] != "" && !sc.works {
				cmds = append(append([][]string{}, cmds...), slowCommands...)
			}
			for _, args := range cmds {
				code, stdout, stderr := runCLI(t, args...)
				check(args, stdout+stderr)
				if sc.works && code != 0 && args[0] != "rekey" && args[0] != "verify" {
					t.Errorf("%v: exit %d with working values:\n%s%s", args, code, stdout, stderr)
				}
				if !sc.works && code == 0 && args[0] != "config" && args[0] != "status" {
					// (config exits 0 on values it cannot check without connecting.)
					t.Logf("%v: exit 0 with %s", args, sc.name)
				}
			}
			c := startCLI(t, "consume")
			if sc.works {
				fleettest.Eventually(t, 30*time.Second, "consume bound", func() bool {
					return strings.Contains(c.stderr.String(), "consuming")
				})
			} else {
				// It stops, or, when no NATS server answers, waits for one (saying so).
				deadline := time.After(30 * time.Second)
				tick := time.NewTicker(20 * time.Millisecond)
			wait:
				for {
					select {
					case <-c.done:
						break wait
					case <-tick.C:
						if strings.Contains(c.stderr.String(), "NATS not reachable yet; retrying") {
							break wait
						}
					case <-deadline:
						t.Errorf("consume neither stopped nor said it waits for NATS on %s", sc.name)
						break wait
					}
				}
				tick.Stop()
			}
			c.stop(t)
			check([]string{"consume"}, c.stdout.String()+c.stderr.String())
		})
	}
}
