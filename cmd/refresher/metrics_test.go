package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/internal/fleettest"
)

// consumeEnv sets the variables `refresher consume` needs, pointed at env when given
// and at closed ports otherwise (for tests that must stop before connecting).
func consumeEnv(t *testing.T, env *fleettest.Env) {
	dbURL, natsURL, tokenURL := "postgres://u@127.0.0.1:1/x?sslmode=disable", "nats://127.0.0.1:1", "http://127.0.0.1:1"
	if env != nil {
		dbURL, natsURL, tokenURL = env.DBURL, env.NATS.URL(), env.FakeURL
	}
	for k, v := range map[string]string{
		"DATABASE_URL":                   dbURL,
		"NATS_URL":                       natsURL,
		"REFRESHER_SERVICES":             "github",
		"REFRESHER_GITHUB_TOKEN_URL":     tokenURL + "/github/token",
		"REFRESHER_GITHUB_CLIENT_ID":     "test-client",
		"REFRESHER_GITHUB_CLIENT_SECRET": "test-secret",
		"REFRESHER_CONCURRENCY":          "4",
		"REFRESHER_ACK_WAIT":             "10s",
		"REFRESHER_PROVIDER_TIMEOUT":     "5s",
		"REFRESHER_DRAIN_TIMEOUT":        "8s",
		"REFRESHER_LOG_FORMAT":           "json",
	} {
		t.Setenv(k, v)
	}
}

// TestConsumeBadHTTPAddress: a bad metrics address, from the flag or the environment,
// stops consume with exit 2 and a message naming where it came from, before it
// connects anywhere.
func TestConsumeBadHTTPAddress(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Close() })
	tests := []struct {
		name string
		args []string
		env  string // REFRESHER_HTTP_ADDR, when set
		want []string
	}{
		{"flag not an address", []string{"--http", "not-an-addr"}, "", []string{`--http "not-an-addr"`, "want host:port"}},
		{"flag port out of range", []string{"--http", "127.0.0.1:99999"}, "", []string{`--http "127.0.0.1:99999"`, `port "99999"`}},
		{"flag port not a number", []string{"--http", "127.0.0.1:http"}, "", []string{`port "http"`}},
		{"flag negative port", []string{"--http=:-1"}, "", []string{`port "-1"`}},
		{"env not an address", nil, "localhost", []string{`REFRESHER_HTTP_ADDR="localhost"`, "want host:port"}},
		{"env port out of range", nil, "127.0.0.1:70000", []string{`REFRESHER_HTTP_ADDR="127.0.0.1:70000"`}},
		{"flag address in use", []string{"--http", busy.Addr().String()}, "", []string{"--http: listen on " + busy.Addr().String(), "address already in use"}},
		{"env address in use", nil, busy.Addr().String(), []string{"REFRESHER_HTTP_ADDR: listen on " + busy.Addr().String()}},
		{"flag overrides a bad env", []string{"--http", "not-an-addr"}, "also-bad", []string{`--http "not-an-addr"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			consumeEnv(t, nil)
			if tt.env != "" {
				t.Setenv("REFRESHER_HTTP_ADDR", tt.env)
			}
			start := time.Now()
			code, _, stderr := runCLI(t, append([]string{"consume"}, tt.args...)...)
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr %q", code, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q does not contain %q", stderr, w)
				}
			}
			if strings.Contains(stderr, "test-secret") {
				t.Fatalf("stderr shows a secret: %q", stderr)
			}
			// The database and NATS URLs point at closed ports: getting that far would
			// have taken a dial timeout and failed with exit 1.
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("took %s: the address should be checked before connecting", d)
			}
		})
	}
}

// TestConsumeServesMetricsAndHealth runs `refresher consume --http 127.0.0.1:0`
// in-process against real parts: /readyz turns 200 once bound, /metrics counts a
// refresh, and on shutdown the consumer drains, exits 0 and the address goes quiet.
func TestConsumeServesMetricsAndHealth(t *testing.T) {
	env := fleettest.New(t, fleettest.Options{})
	consumeEnv(t, env)
	ids := env.Seed("github", 2)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout bytes.Buffer
	stderr := &fleettest.SyncBuffer{}
	var exitCode int
	done := make(chan struct{})
	go func() {
		exitCode = run(ctx, []string{"consume", "--http", "127.0.0.1:0"}, &stdout, stderr)
		close(done)
	}()
	exited := func() bool {
		select {
		case <-done:
			return true
		case <-time.After(20 * time.Second):
			return false
		}
	}
	t.Cleanup(func() {
		cancel()
		if !exited() {
			t.Error("consume did not exit within 20s of cancellation")
		}
	})

	var base string
	fleettest.Eventually(t, 30*time.Second, "the metrics address in the log", func() bool {
		base = servedAddr(stderr.String())
		return base != ""
	})
	fleettest.Eventually(t, 30*time.Second, "/readyz 200", func() bool {
		code, _ := httpGet(t, base+"/readyz")
		return code == http.StatusOK
	})
	if code, body := httpGet(t, base+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d %q", code, body)
	}
	if _, err := env.Publisher().Publish(context.Background(), "github", ids...); err != nil {
		t.Fatal(err)
	}
	const want = `refresher_messages_total{outcome="refreshed",service="github"} 2`
	fleettest.Eventually(t, 30*time.Second, want, func() bool {
		_, body := httpGet(t, base+"/metrics")
		return strings.Contains(body, want)
	})

	cancel() // as SIGTERM does
	if !exited() {
		t.Fatal("consume did not exit within 20s of cancellation")
	}
	if exitCode != 0 {
		t.Fatalf("consume exit %d after cancellation, want 0\n%s", exitCode, stderr.String())
	}
	if !strings.Contains(stderr.String(), `"msg":"drained"`) {
		t.Errorf("no drain logged before exit:\n%s", stderr.String())
	}
	if resp, err := http.Get(base + "/healthz"); err == nil {
		resp.Body.Close()
		t.Fatal("the metrics address still answers after consume returned")
	}
	if tokenShaped.MatchString(stderr.String()) || strings.Contains(stderr.String(), "test-secret") {
		t.Fatalf("the log shows a token or secret:\n%s", stderr.String())
	}
}

// TestConfigListsHTTPAddr: `refresher config` documents REFRESHER_HTTP_ADDR with the
// default consume uses.
func TestConfigListsHTTPAddr(t *testing.T) {
	code, out, stderr := runCLI(t, "config")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "REFRESHER_HTTP_ADDR ") {
			if !strings.Contains(line, config.DefaultHTTPAddr) {
				t.Fatalf("REFRESHER_HTTP_ADDR line %q lacks the default %s", line, config.DefaultHTTPAddr)
			}
			return
		}
	}
	t.Fatalf("config output lacks REFRESHER_HTTP_ADDR:\n%s", out)
}

// tokenShaped matches the fake provider's tokens, rt.<lineage>.<gen>.<random> and at.….
var tokenShaped = regexp.MustCompile(`\b(rt|at)\.[a-z0-9_-]+\.[0-9]+\.[A-Za-z0-9_-]{16,}`)

// servedAddr finds the address of the "serving metrics and health" JSON log line.
func servedAddr(logs string) string {
	for _, line := range strings.Split(logs, "\n") {
		var rec struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "serving metrics and health" && rec.Addr != "" {
			return "http://" + rec.Addr
		}
	}
	return ""
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}
