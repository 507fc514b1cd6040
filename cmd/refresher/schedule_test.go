package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/internal/testtier"
)

// TestPublishEveryBadValues: a bad --every stops the command with exit 2 before it
// connects to anything.
func TestPublishEveryBadValues(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://u@127.0.0.1:1/x?sslmode=disable")
	t.Setenv("NATS_URL", "nats://127.0.0.1:1")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"zero", []string{"--every", "0"}, "--every 0s: must be at least 1s"},
		{"negative", []string{"--every", "-15m"}, "--every -15m0s: must be at least 1s"},
		{"below a second", []string{"--every", "500ms"}, "--every 500ms: must be at least 1s"},
		{"no unit", []string{"--every", "15"}, `invalid argument "15" for "--every"`},
		{"above the dedupe window", []string{"--every", "1h"}, "publish window 1h0m0s exceeds REFRESHER_STREAM_DUPLICATE_WINDOW"},
		{"window disagrees", []string{"--every", "15m", "--window", "5m"}, "--window 5m0s and --every 15m0s"},
		{"negative expiring-within", []string{"--every", "15m", "--expiring-within", "-1m"}, "--expiring-within -1m0s"},
		{"metrics without a schedule", []string{"--http", "127.0.0.1:0"}, "--http serves the scheduler's metrics: it needs --every"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, append([]string{"publish", "--service", "github"}, tt.args...)...)
			if code != 2 || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", code, stderr, tt.want)
			}
		})
	}
}

// TestPublishEveryProcesses runs two `publish --every 1s` processes of the same
// schedule: each period, the two together store each row once (the other copy is a
// duplicate), every run is logged with its counts, and SIGTERM and SIGINT each stop
// one with exit 0.
func TestPublishEveryProcesses(t *testing.T) {
	testtier.Slow(t, "a subprocess")
	if _, err := buildBinary(); err != nil {
		t.Fatal(err)
	}
	fx := fleettest.New(t, fleettest.Options{})
	const rows = 10
	fx.Seed("github", rows)
	env := append(os.Environ(),
		"DATABASE_URL="+fx.DBURL,
		"NATS_URL="+fx.NATS.URL(),
		"REFRESHER_LOG_FORMAT=json",
	)
	addr := freeAddr(t)
	procs := []*proc{
		start(t, env, "publish", "--service", "github", "--every", "1s", "--http", addr),
		start(t, env, "publish", "--service", "github", "--every", "1s"),
	}

	type run struct{ published, duplicate, failed int }
	runs := func() map[string][]run { // by window, from both processes' logs
		out := map[string][]run{}
		for _, p := range procs {
			sc := bufio.NewScanner(strings.NewReader(p.stderr.String()))
			for sc.Scan() {
				var line struct {
					Msg                          string
					Window                       string
					Published, Duplicate, Failed int
				}
				if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "scheduled publish" {
					out[line.Window] = append(out[line.Window], run{line.Published, line.Duplicate, line.Failed})
				}
			}
		}
		return out
	}
	fleettest.Eventually(t, 20*time.Second, "three periods logged by both processes", func() bool {
		both := 0
		for _, rs := range runs() {
			if len(rs) == 2 {
				both++
			}
		}
		return both >= 3
	})
	// The scheduler with --http counts its periods in /metrics.
	fleettest.Eventually(t, 10*time.Second, "published periods in /metrics", func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return regexp.MustCompile(`refresher_publish_periods_total\{result="published",service="github"\} [1-9]`).Match(body) &&
			strings.Contains(string(body), `refresher_publish_periods_total{result="skipped",service="github"} 0`)
	})
	for i, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		if err := procs[i].cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		if code := procs[i].wait(t, 20*time.Second); code != 0 {
			t.Fatalf("publish --every: exit %d on %s\n%s", code, sig, procs[i].stderr.String())
		}
	}
	for window, rs := range runs() {
		if len(rs) != 2 {
			continue
		}
		if got := rs[0].published + rs[1].published; got != rows || rs[0].duplicate+rs[1].duplicate != rows || rs[0].failed+rs[1].failed != 0 {
			t.Errorf("period %s: runs %+v, want %d rows stored once between them", window, rs, rows)
		}
	}
	for _, p := range procs {
		if !strings.Contains(p.stderr.String(), `"msg":"schedule stopped"`) {
			t.Errorf("no clean stop logged:\n%s", p.stderr.String())
		}
	}
}

// freeAddr is a loopback address nothing listens on (for a moment).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}
