package main

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/fleettest"
)

// TestConsoleListenSafety: a non-loopback address needs a token or --read-only.
func TestConsoleListenSafety(t *testing.T) {
	t.Setenv("REFRESHER_CONSOLE_TOKEN", "")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"console", "--listen", "0.0.0.0:0"}, "is not a loopback address: set REFRESHER_CONSOLE_TOKEN, or pass --read-only"},
		{[]string{"console", "--listen", ":8080"}, "is not a loopback address"},
		{[]string{"console", "--listen", "localhost"}, `--listen "localhost"`},
		{[]string{"console", "--dlq-scan", "0"}, "--dlq-scan 0: must be positive"},
	} {
		code, _, stderr := runCLI(t, tt.args...)
		if code != 2 || !strings.Contains(stderr, tt.want) {
			t.Errorf("%v: exit %d, stderr %q, want 2 and %q", tt.args, code, stderr, tt.want)
		}
	}
}

// TestConsoleServes: the command serves the console on the address it logs, with
// the token required, until its context ends.
func TestConsoleServes(t *testing.T) {
	fx := fleettest.New(t, fleettest.Options{})
	fx.Seed("github", 2)
	fx.Publisher() // the streams
	statusEnv(t, fx)
	t.Setenv("REFRESHER_CONSOLE_TOKEN", "tok-3x4mple")
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr fleettest.SyncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"console", "--listen", "127.0.0.1:0"}, &stdout, &stderr) }()
	urlRE := regexp.MustCompile(`url=(http://127\.0\.0\.1:\d+/)`)
	var base string
	fleettest.Eventually(t, 20*time.Second, "the console's address in its log", func() bool {
		if m := urlRE.FindStringSubmatch(stderr.String()); m != nil {
			base = m[1]
			return true
		}
		select {
		case code := <-done:
			t.Fatalf("console exited %d: %s", code, stderr.String())
		default:
		}
		return false
	})
	get := func(auth string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, base+"api/overview", nil)
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(""); code != http.StatusUnauthorized {
		t.Fatalf("without the token: %d", code)
	}
	if code, body := get("tok-3x4mple"); code != 200 || !strings.Contains(body, `"service":"github"`) {
		t.Fatalf("with the token: %d %s", code, body)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("console did not stop")
	}
	if strings.Contains(stderr.String()+stdout.String(), "tok-3x4mple") {
		t.Fatal("the token was printed")
	}
}
