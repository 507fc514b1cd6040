package main

import (
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// runCLI runs one command line in-process and returns its exit code and output.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	// SyncBuffers: while run lasts, slog's default logger writes to stderr, and other
	// goroutines of the test (a fleettest consumer) may log through it.
	var stdout, stderr fleettest.SyncBuffer
	code := run(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestEveryCommandHasHelp(t *testing.T) {
	for _, cmd := range []string{"", "migrate", "seed", "publish", "consume", "config", "fake-provider", "demo", "verify",
		"replay", "dlq", "dlq list", "dlq replay", "dlq purge", "status", "console", "bench", "rekey", "streams", "streams diff", "streams apply"} {
		t.Run(cmd, func(t *testing.T) {
			args := append(strings.Fields(cmd), "--help")
			code, out, _ := runCLI(t, args...)
			if code != 0 || !strings.Contains(out, "Usage:") {
				t.Fatalf("%s --help: exit %d, output %q", cmd, code, out)
			}
		})
	}
}

// TestBadConfiguration: a missing or invalid variable stops the command with exit 2
// and a message that names the variable, without echoing secrets.
func TestBadConfiguration(t *testing.T) {
	base := map[string]string{
		"DATABASE_URL":                    "postgres://u@127.0.0.1:1/x?sslmode=disable",
		"NATS_URL":                        "nats://127.0.0.1:1",
		"REFRESHER_SERVICES":              "github",
		"REFRESHER_GITHUB_TOKEN_URL":      "http://127.0.0.1:1/token",
		"REFRESHER_GITHUB_CLIENT_ID":      "id",
		"REFRESHER_GITHUB_CLIENT_SECRET":  "s3cr3t-value",
		"REFRESHER_LOG_LEVEL":             "info",
		"REFRESHER_GITHUB_AUTH_STYLE":     "header",
		"REFRESHER_CONCURRENCY":           "8",
		"REFRESHER_PROVIDER_TIMEOUT":      "5s",
		"REFRESHER_STREAM_REPLICAS":       "1",
		"REFRESHER_PUBLISH_MAX_IN_FLIGHT": "10",
	}
	tests := []struct {
		name  string
		args  []string
		set   map[string]string
		unset []string
		want  string
	}{
		{"concurrency not a number", []string{"consume"}, map[string]string{"REFRESHER_CONCURRENCY": "lots"}, nil, `REFRESHER_CONCURRENCY="lots": not a valid whole number`},
		{"concurrency zero", []string{"consume"}, map[string]string{"REFRESHER_CONCURRENCY": "0"}, nil, "REFRESHER_CONCURRENCY=0"},
		{"ack wait too short", []string{"consume"}, map[string]string{"REFRESHER_ACK_WAIT": "500ms"}, nil, "REFRESHER_ACK_WAIT=500ms: want at least 1s"},
		{"owner ttl too short", []string{"consume"}, map[string]string{"REFRESHER_OWNER_TTL": "10ms"}, nil, "REFRESHER_OWNER_TTL=10ms: want at least 1s, or 0 to disable"},
		{"owner ttl negative", []string{"consume"}, map[string]string{"REFRESHER_OWNER_TTL": "-1s"}, nil, "REFRESHER_OWNER_TTL=-1s"},
		{"reuse interval not a duration", []string{"consume"}, map[string]string{"REFRESHER_GITHUB_REUSE_INTERVAL": "30"}, nil, "REFRESHER_GITHUB_REUSE_INTERVAL"},
		{"backoff not durations", []string{"consume"}, map[string]string{"REFRESHER_BACKOFF": "1s,soon"}, nil, "REFRESHER_BACKOFF"},
		{"no services", []string{"consume"}, nil, []string{"REFRESHER_SERVICES"}, "REFRESHER_SERVICES is not set"},
		{"bad service name", []string{"consume"}, map[string]string{"REFRESHER_SERVICES": "GitHub"}, nil, "REFRESHER_SERVICES: bad service name"},
		{"missing token url", []string{"consume"}, nil, []string{"REFRESHER_GITHUB_TOKEN_URL"}, "REFRESHER_GITHUB_TOKEN_URL is required"},
		{"bad token url", []string{"consume"}, map[string]string{"REFRESHER_GITHUB_TOKEN_URL": "token-endpoint"}, nil, `REFRESHER_GITHUB_*: token URL token-endpoint`},
		{"bad auth style", []string{"consume"}, map[string]string{"REFRESHER_GITHUB_AUTH_STYLE": "auto"}, nil, `REFRESHER_GITHUB_AUTH_STYLE="auto"`},
		{"dashed service", []string{"consume"}, map[string]string{"REFRESHER_SERVICES": "my-svc"}, nil, "REFRESHER_MY_SVC_TOKEN_URL is required"},
		{"no database url", []string{"migrate"}, nil, []string{"DATABASE_URL"}, "DATABASE_URL is not set"},
		{"bad database url", []string{"migrate"}, map[string]string{"DATABASE_URL": "postgres://u:hunter2@host:notaport/db"}, nil, "DATABASE_URL"},
		{"bad log level", []string{"config"}, map[string]string{"REFRESHER_LOG_LEVEL": "loud"}, nil, `REFRESHER_LOG_LEVEL="loud"`},
		{"bad log format", []string{"config"}, map[string]string{"REFRESHER_LOG_FORMAT": "xml"}, nil, `REFRESHER_LOG_FORMAT="xml"`},
		{"bad replicas", []string{"publish", "--service", "github"}, map[string]string{"REFRESHER_STREAM_REPLICAS": "7"}, nil, "REFRESHER_STREAM_REPLICAS=7"},
		{"bad publish window", []string{"publish", "--service", "github"}, map[string]string{"REFRESHER_PUBLISH_WINDOW": "15"}, nil, "REFRESHER_PUBLISH_WINDOW"},
		{"window above dedupe window", []string{"publish", "--service", "github", "--window", "1h"}, nil, nil, "publish window 1h0m0s exceeds REFRESHER_STREAM_DUPLICATE_WINDOW"},
		{"bad service flag", []string{"publish", "--service", "Git Hub"}, nil, nil, "--service: bad service name"},
		{"bad ids flag", []string{"publish", "--service", "github", "--ids", "1,x"}, nil, nil, `--ids: id "x"`},
		{"missing service flag", []string{"publish"}, nil, nil, `required flag(s) "service"`},
		{"unknown flag", []string{"consume", "--fast"}, nil, nil, "unknown flag: --fast"},
		{"bad concurrency flag", []string{"consume", "--concurrency", "0"}, nil, nil, "--concurrency 0: want 1 to 4096"},
		{"concurrency flag above max ack pending", []string{"consume", "--concurrency", "64"}, map[string]string{"REFRESHER_MAX_ACK_PENDING": "32"}, nil, "want at least --concurrency (64)"},
		{"nats url port not a number", []string{"publish", "--service", "github"}, map[string]string{"NATS_URL": "nats://h:notaport"}, nil, `NATS_URL=nats://h:notaport: port "notaport"`},
		{"nats url no scheme", []string{"publish", "--service", "github"}, map[string]string{"NATS_URL": "://x"}, nil, "NATS_URL=://x: scheme"},
		{"nats url not a url", []string{"publish", "--service", "github"}, map[string]string{"NATS_URL": "garbage"}, nil, "NATS_URL=garbage: not a URL"},
		{"nats url blank", []string{"consume"}, map[string]string{"NATS_URL": " "}, nil, `NATS_URL=" ": empty`},
		{"nats url empty entries", []string{"consume"}, map[string]string{"NATS_URL": ","}, nil, "NATS_URL=,: an empty entry"},
		{"nats url empty entry after a good one", []string{"status"}, map[string]string{"NATS_URL": "nats://u:hunter2@127.0.0.1:1,"}, nil, "NATS_URL=nats://u:****@127.0.0.1:1,: an empty entry"},
		{"nats url comma in the password", []string{"consume"}, map[string]string{"NATS_URL": "nats://u:hunter2,x@127.0.0.1:4222"}, nil, "NATS_URL=nats://u:****@127.0.0.1:4222: a comma in the user info"},
		{"nats url comma in the password, second entry", []string{"consume"}, map[string]string{"NATS_URL": "nats://h1:4222,nats://u:hunter2,x@h2:4222"}, nil, "nats://u:****@h2:4222: a comma in the user info"},
		{"nats url bad second entry", []string{"dlq", "list"}, map[string]string{"NATS_URL": "nats://127.0.0.1:1,tls://u:hunter2@h:99999"}, nil, `tls://u:****@h:99999: port "99999"`},
		{"empty ids flag", []string{"publish", "--service", "github", "--ids", ""}, nil, nil, "--ids is empty"},
		{"blank ids flag", []string{"publish", "--service", "github", "--ids", " "}, nil, nil, "--ids is empty"},
		{"config with a value that does not parse", []string{"config"}, map[string]string{"REFRESHER_CONCURRENCY": "abc"}, nil, `REFRESHER_CONCURRENCY="abc": not a valid whole number`},
		{"config with a value out of range", []string{"config"}, map[string]string{"REFRESHER_CONCURRENCY": "0"}, nil, "REFRESHER_CONCURRENCY=0: want 1 to 4096"},
		{"config marks the variable in the table", []string{"config"}, map[string]string{"REFRESHER_CONCURRENCY": "0"}, nil, "0 (invalid, see below)"},
		{"config marks a value that does not parse", []string{"config"}, map[string]string{"REFRESHER_CONCURRENCY": "abc"}, nil, "abc (invalid: not a valid whole number)"},
		{"config with a bad nats url", []string{"config"}, map[string]string{"NATS_URL": "garbage"}, nil, "NATS_URL=garbage"},
		{"config with a bad database url", []string{"config"}, map[string]string{"DATABASE_URL": "postgres://u:hunter2@h:notaport/db"}, nil, "DATABASE_URL postgres://u:****@h:notaport/db"},
		{"bad encryption keys", []string{"seed", "--service", "github", "--count", "1"}, map[string]string{"REFRESHER_ENCRYPTION_KEYS": "k1:short"}, nil, `bad REFRESHER_ENCRYPTION_KEYS: key "k1"`},
		{"rekey without keys", []string{"rekey"}, nil, []string{"REFRESHER_ENCRYPTION_KEYS"}, "REFRESHER_ENCRYPTION_KEYS is not set"},
		{"pool empty", []string{"consume"}, map[string]string{"REFRESHER_DB_MAX_CONNS": "0"}, nil, "REFRESHER_DB_MAX_CONNS=0: want 1 to 1000"},
		{"seed bad count", []string{"seed", "--service", "github", "--count", "0"}, nil, nil, "--count 0"},
		{"unknown command", []string{"refresh-all"}, nil, nil, "unknown command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range base {
				t.Setenv(k, v)
			}
			for k, v := range tt.set {
				t.Setenv(k, v)
			}
			for _, k := range tt.unset {
				t.Setenv(k, "")
			}
			code, stdout, stderr := runCLI(t, tt.args...)
			if tt.args[0] == "config" {
				// config writes its table, and the problems under it, to stdout.
				stderr += stdout
			}
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr %q", code, stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Fatalf("stderr %q does not contain %q", stderr, tt.want)
			}
			for _, secret := range []string{"s3cr3t-value", "hunter2"} {
				if strings.Contains(stderr, secret) {
					t.Fatalf("stderr shows a secret: %q", stderr)
				}
			}
		})
	}
}

// TestConfigPrintsEveryVariable: `refresher config` lists each variable with its
// default and current value, secrets masked.
func TestConfigPrintsEveryVariable(t *testing.T) {
	t.Setenv("REFRESHER_SERVICES", "github,my-svc")
	t.Setenv("REFRESHER_GITHUB_CLIENT_SECRET", "s3cr3t-value")
	t.Setenv("DATABASE_URL", "postgres://app:hunter2@db:5432/app")
	t.Setenv("REFRESHER_CONCURRENCY", "12")
	for _, svc := range []string{"GITHUB", "MY_SVC"} {
		t.Setenv("REFRESHER_"+svc+"_TOKEN_URL", "https://idp.example/token")
		t.Setenv("REFRESHER_"+svc+"_CLIENT_ID", "id")
	}
	t.Setenv("REFRESHER_MY_SVC_CLIENT_SECRET", "s3cr3t-value")
	t.Setenv("REFRESHER_GITHUB_REUSE_INTERVAL", "30s")
	code, out, stderr := runCLI(t, "config")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{
		"DATABASE_URL", "NATS_URL", "nats://127.0.0.1:4222", "REFRESHER_CONCURRENCY", "12",
		"REFRESHER_ACK_WAIT", "REFRESHER_MAX_DELIVER", "REFRESHER_BACKOFF", "REFRESHER_LOCK_TIMEOUT",
		"REFRESHER_STREAM_REPLICAS", "REFRESHER_STREAM_MAX_AGE", "72h", "REFRESHER_STREAM_DUPLICATE_WINDOW",
		"REFRESHER_GITHUB_TOKEN_URL", "REFRESHER_GITHUB_CLIENT_SECRET", "REFRESHER_MY_SVC_AUTH_STYLE",
		"REFRESHER_LOG_FORMAT", "REFRESHER_PUBLISH_WINDOW", "****", "postgres://app:****@db:5432/app",
		"REFRESHER_OWNER_TTL", "REFRESHER_GITHUB_REUSE_INTERVAL",
		// The recovery time of the default timing, and whether each service's declared
		// reuse interval covers it.
		"calls retried within 10.25s",
		"github: REFRESHER_GITHUB_REUSE_INTERVAL=30s, covered",
		"my-svc: REFRESHER_MY_SVC_REUSE_INTERVAL=0s, NOT covered",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("config output lacks %q", want)
		}
	}
	if strings.Contains(out, "s3cr3t-value") || strings.Contains(out, "hunter2") {
		t.Fatalf("config output shows a secret:\n%s", out)
	}
}

// TestPublishWithNATSUnreachable: publish exits 1 (not 2: the configuration may be
// right and the server down) and says NATS was unreachable and nothing was published.
func TestPublishWithNATSUnreachable(t *testing.T) {
	_, url := pgtest.NewDB(t)
	t.Setenv("DATABASE_URL", url)
	t.Setenv("NATS_URL", "nats://127.0.0.1:1")
	code, _, stderr := runCLI(t, "publish", "--service", "github")
	if code != 1 || !strings.Contains(stderr, "nothing was published") || !strings.Contains(stderr, "unreachable: no server answered at NATS_URL") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

// TestDatabaseUnreachable: a DATABASE_URL nobody answers at is exit 1 with an error
// that names the variable and says "unreachable", unlike a configuration error (exit
// 2) or a server that answers and refuses.
func TestDatabaseUnreachable(t *testing.T) {
	for _, tc := range []struct{ name, url, want string }{
		{"url", "postgres://u:hunter2@127.0.0.1:1/x?sslmode=disable", "DATABASE_URL: PostgreSQL at postgres://u:****@127.0.0.1:1/x?sslmode=disable is unreachable"},
		{"keyword form", "host=127.0.0.1 port=1 user=u password=hunter2 dbname=x", "DATABASE_URL: PostgreSQL at host=127.0.0.1 port=1 user=u password=**** dbname=x is unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("DATABASE_URL", tc.url)
			for _, args := range [][]string{{"migrate"}, {"seed", "--service", "github", "--count", "1"}, {"status"}} {
				code, _, stderr := runCLI(t, args...)
				if code != 1 || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "hunter2") {
					t.Errorf("%v: exit %d, stderr %q; want exit 1 and %q", args, code, stderr, tc.want)
				}
			}
		})
	}
	t.Run("refused", func(t *testing.T) {
		_, url := pgtest.NewDB(t)
		t.Setenv("DATABASE_URL", "postgres://no_such_role_x:hunter2@"+url[strings.Index(url, "@")+1:])
		code, _, stderr := runCLI(t, "migrate")
		if code != 1 || strings.Contains(stderr, "unreachable") || !strings.Contains(stderr, "DATABASE_URL: connect to PostgreSQL") {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
	})
}

// TestVersion: --version prints the module version, the VCS revision (or says it is
// unknown) and the Go release, from the binary's build information.
func TestVersion(t *testing.T) {
	code, out, stderr := runCLI(t, "--version")
	if code != 0 || !strings.HasPrefix(out, "refresher ") || !strings.Contains(out, "revision ") || !strings.Contains(out, "go1.") {
		t.Fatalf("--version: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if strings.Count(out, "\n") != 1 {
		t.Fatalf("--version printed %q, want one line", out)
	}
}

// TestExamples: the commands an operator starts with show examples in their help.
func TestExamples(t *testing.T) {
	for _, cmd := range []string{"migrate", "seed", "status", "verify", "config", "streams apply", "streams diff"} {
		args := append(strings.Fields(cmd), "--help")
		code, out, _ := runCLI(t, args...)
		if code != 0 || !regexp.MustCompile(`Examples:\n(.*\n)*  (\S+=\S+ )*refresher `).MatchString(out) {
			t.Errorf("%s --help: exit %d, no examples:\n%s", cmd, code, out)
		}
	}
}

// TestHelpStatesDefaultsOnce: no flag's help line carries two defaults (bench's
// depend on --quick, so its usage states both and pflag must not add its own).
func TestHelpStatesDefaultsOnce(t *testing.T) {
	for _, cmd := range []string{"bench", "publish", "consume", "status", "replay", "dlq replay", "seed"} {
		code, out, _ := runCLI(t, append(strings.Fields(cmd), "--help")...)
		if code != 0 {
			t.Fatalf("%s --help: exit %d", cmd, code)
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.Count(l, "default") > 1 {
				t.Errorf("%s --help: %q states a default twice", cmd, strings.TrimSpace(l))
			}
		}
	}
}
