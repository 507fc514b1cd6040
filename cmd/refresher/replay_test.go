package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

func TestReplayAndDLQHelp(t *testing.T) {
	for _, args := range [][]string{
		{"replay", "--help"}, {"dlq", "--help"}, {"dlq"},
		{"dlq", "list", "--help"}, {"dlq", "replay", "--help"}, {"dlq", "purge", "--help"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, out, _ := runCLI(t, args...)
			if code != 0 || !strings.Contains(out, "Usage:") {
				t.Fatalf("exit %d, output %q", code, out)
			}
		})
	}
}

// TestReplayFlags: every bad flag stops the command with exit 2 and a message naming
// it, before anything connects (NATS_URL points nowhere: a connection would exit 1).
func TestReplayFlags(t *testing.T) {
	t.Setenv("NATS_URL", "nats://127.0.0.1:1")
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no start", []string{"replay"}, "give the start of the window: --since 2h or --from"},
		{"since and from", []string{"replay", "--since", "1h", "--from", "2026-11-26T10:00:00Z"}, "--since and --from both start the window"},
		{"negative since", []string{"replay", "--since", "-2h"}, "--since -2h0m0s: must be positive"},
		{"zero since", []string{"replay", "--since", "0s"}, "--since 0s: must be positive"},
		{"since not a duration", []string{"replay", "--since", "2 hours"}, `invalid argument "2 hours" for "--since"`},
		{"bad from", []string{"replay", "--from", "yesterday"}, `--from "yesterday": want an RFC 3339 time`},
		{"from without zone", []string{"replay", "--from", "2026-11-26T10:00:00"}, `--from "2026-11-26T10:00:00": want an RFC 3339 time`},
		{"future from", []string{"replay", "--from", future}, "--from " + future + " is in the future"},
		{"bad until", []string{"replay", "--since", "1h", "--until", "now"}, `--until "now": want an RFC 3339 time`},
		{"until before from", []string{"replay", "--from", "2026-11-26T10:00:00Z", "--until", "2026-11-26T09:00:00Z"}, "--until 2026-11-26T09:00:00Z is before the start of the window (2026-11-26T10:00:00Z)"},
		{"until before since", []string{"replay", "--since", "1h", "--until", "2020-01-01T00:00:00Z"}, "--until 2020-01-01T00:00:00Z is before the start of the window"},
		{"bad service", []string{"replay", "--since", "1h", "--service", "Git Hub"}, `--service: bad service name "Git Hub"`},
		{"empty service", []string{"replay", "--since", "1h", "--service", ""}, `--service: bad service name ""`},
		{"arguments", []string{"replay", "--since", "1h", "github"}, `unknown command "github"`},
		{"dlq replay no start", []string{"dlq", "replay"}, "give the start of the window"},
		{"dlq replay bad service", []string{"dlq", "replay", "--since", "1h", "--service", "a.b"}, `--service: bad service name "a.b"`},
		{"dlq replay negative since", []string{"dlq", "replay", "--since", "-1m"}, "--since -1m0s: must be positive"},
		{"dlq replay has no --dlq", []string{"dlq", "replay", "--since", "1h", "--dlq"}, "unknown flag: --dlq"},
		{"dlq list negative limit", []string{"dlq", "list", "--limit", "-1"}, "--limit -1: must not be negative"},
		{"dlq list limit not a number", []string{"dlq", "list", "--limit", "ten"}, `invalid argument "ten" for "--limit"`},
		{"dlq purge negative", []string{"dlq", "purge", "--older-than", "-24h"}, "--older-than -24h0m0s: must be positive"},
		{"dlq purge zero", []string{"dlq", "purge", "--older-than", "0s"}, "--older-than 0s: must be positive"},
		{"dlq purge not a duration", []string{"dlq", "purge", "--older-than", "7d"}, `invalid argument "7d" for "--older-than"`},
		{"dlq unknown subcommand", []string{"dlq", "show"}, `unknown command "show"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, tt.args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr %q", code, stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Fatalf("stderr %q does not contain %q", stderr, tt.want)
			}
		})
	}
}

// TestReplayAndDLQCommands runs replay and the dlq commands against real NATS and a
// consumer fleet: list the dead letters of garbage and of a provider outage, count a
// dry run, complete the dead-lettered requests with `dlq replay` once the provider is
// back, purge, and refuse a window reaching past expired requests.
func TestReplayAndDLQCommands(t *testing.T) {
	env := fleettest.New(t, fleettest.Options{})
	t.Setenv("NATS_URL", env.NATS.URL())
	ctx := context.Background()
	ids := env.Seed("github", 3)
	cfg := env.Config()
	cfg.MaxDeliver = 2
	env.StartConsumer(cfg, env.NoCircuit())
	p := env.Publisher(publisher.WithWindow(0))
	js := env.JS()

	if _, err := js.Publish(ctx, "refresh.github.x", nil); err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 30*time.Second, "the garbage dead-lettered", func() bool { return len(env.DeadLetters()) == 1 })
	env.Fake.SetOutage(true)
	if _, err := p.Publish(ctx, "github", ids...); err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 30*time.Second, "4 dead letters", func() bool { return len(env.DeadLetters()) == 4 })
	env.WaitIdle(30 * time.Second)

	run := func(want int, args ...string) (string, string) {
		t.Helper()
		code, out, stderr := runCLI(t, args...)
		if code != want {
			t.Fatalf("%s: exit %d, want %d; stdout %q, stderr %q", strings.Join(args, " "), code, want, out, stderr)
		}
		if strings.Contains(stderr, "\r") {
			t.Fatalf("%s: progress drawn off a terminal: %q", strings.Join(args, " "), stderr)
		}
		return out, stderr
	}
	mustContain := func(out string, wants ...string) {
		t.Helper()
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("output %q lacks %q", out, w)
			}
		}
	}

	out, _ := run(0, "dlq", "list")
	mustContain(out, "SEQ", "TIME", "ORIGINAL SUBJECT", "DELIVERIES", "REASON",
		"refresh.github.x", "malformed: bad subject", "retried:", "refresh.github.1")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 5 {
		t.Errorf("dlq list printed %d lines, want a header and 4 rows:\n%s", len(lines), out)
	}

	out, _ = run(0, "dlq", "list", "--json", "--limit", "2")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("dlq list --json --limit 2 printed %d lines:\n%s", len(lines), out)
	}
	for _, l := range lines {
		var dl stream.DeadLetter
		if err := json.Unmarshal([]byte(l), &dl); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		if !strings.HasPrefix(dl.OriginalSubject, "refresh.github.") || dl.Deliveries != 2 || dl.Time.IsZero() || !strings.HasPrefix(dl.Reason, "retried:") {
			t.Errorf("dead letter %+v: want a retried github request after 2 deliveries", dl)
		}
	}

	before := streamLastSeq(t, js, stream.Stream)
	out, _ = run(0, "replay", "--since", "1h", "--dry-run")
	mustContain(out, "stream=REFRESH", "read=4 distinct=3 skipped=1 republished=0 failed=0", "dry run")
	if got := streamLastSeq(t, js, stream.Stream); got != before {
		t.Fatalf("dry run published: last sequence %d -> %d", before, got)
	}
	// A service no message names, with none configured: a typo, not an empty window.
	_, stderr := run(2, "replay", "--since", "1h", "--service", "bogus")
	mustContain(stderr, `unknown service "bogus": REFRESH holds no message for it`)
	t.Setenv("REFRESHER_SERVICES", "github,google")
	out, _ = run(0, "replay", "--since", "1h", "--service", "google")
	mustContain(out, "read=0 distinct=0 skipped=0 republished=0")
	_, stderr = run(2, "replay", "--since", "1h", "--service", "gitlab")
	mustContain(stderr, `unknown service "gitlab": not in REFRESHER_SERVICES (github,google)`)

	env.Fake.SetOutage(false)
	calls := env.Fake.Stats().Calls
	out, _ = run(0, "dlq", "replay", "--since", "1h", "--service", "github")
	mustContain(out, "stream=REFRESH_DLQ", "read=4 distinct=3 skipped=1 republished=3 failed=0")
	env.WaitIdle(30 * time.Second)
	if got := env.Fake.Stats().Calls - calls; got != 3 {
		t.Fatalf("dlq replay made %d provider calls, want 3", got)
	}
	env.Verify()

	out, _ = run(0, "dlq", "purge", "--older-than", "1h")
	mustContain(out, "removed 0 dead letters stored before")
	out, _ = run(0, "dlq", "purge")
	mustContain(out, "removed 4 dead letters")
	out, _ = run(0, "dlq", "list")
	mustContain(out, "no dead letters")

	// Old requests expire: a window reaching past them is refused, naming the oldest left.
	s, err := js.Stream(ctx, stream.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(ctx, jetstream.WithPurgeSequence(3)); err != nil {
		t.Fatal(err)
	}
	oldest, err := s.GetMsg(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	// Printed as status prints it, to the second; that time, and "oldest", work.
	printed := oldest.Time.UTC().Format(time.RFC3339)
	_, stderr = run(1, "replay", "--since", "1h")
	mustContain(stderr, "reaches back to "+printed+" (", "--from oldest")
	out, _ = run(0, "replay", "--from", printed, "--dry-run")
	mustContain(out, "read=")
	out, _ = run(0, "replay", "--from", "oldest", "--dry-run")
	mustContain(out, "from="+printed, "read=")
}

// TestDLQReplayWithoutStream: before any process has created REFRESH_DLQ, nothing has
// died: dlq replay says so and exits 0, as dlq list does.
func TestDLQReplayWithoutStream(t *testing.T) {
	env := fleettest.New(t, fleettest.Options{})
	t.Setenv("NATS_URL", env.NATS.URL())
	for _, args := range [][]string{{"dlq", "replay", "--since", "1h"}, {"replay", "--dlq", "--since", "1h"}, {"dlq", "list"}} {
		code, out, stderr := runCLI(t, args...)
		if code != 0 || strings.TrimSpace(out) != "no dead letters" {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want 0 and \"no dead letters\"", strings.Join(args, " "), code, out, stderr)
		}
	}
}

func streamLastSeq(t *testing.T, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// TestDLQReplaySkipsUnconfiguredServices: dead letters of a service not in
// REFRESHER_SERVICES would only die again: dlq replay skips them, saying how many and
// of which service, unless --include-unconfigured; --service naming one is refused.
func TestDLQReplaySkipsUnconfiguredServices(t *testing.T) {
	env := fleettest.New(t, fleettest.Options{})
	consumeEnv(t, env)
	ctx := context.Background()
	ids := env.Seed("github", 2)
	cfg := env.Config()
	cfg.MaxDeliver = 2
	env.StartConsumer(cfg, env.NoCircuit())
	env.Fake.SetOutage(true) // dead-letters the github requests too
	js := env.JS()
	for _, subj := range []string{"refresh.bogus.5", "refresh.bogus.6", fmt.Sprintf("refresh.github.%d", ids[0]), fmt.Sprintf("refresh.github.%d", ids[1])} {
		if _, err := js.Publish(ctx, subj, nil); err != nil {
			t.Fatal(err)
		}
	}
	fleettest.Eventually(t, 30*time.Second, "4 dead letters", func() bool { return len(env.DeadLetters()) == 4 })
	env.WaitIdle(30 * time.Second)

	for _, tc := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"dlq", "replay", "--since", "1h", "--dry-run"}, 0, []string{
			"read=2 distinct=2 skipped=0 republished=0 failed=0 unknown=0 unconfigured=2",
			"skipped 2 dead letter(s) of services not in REFRESHER_SERVICES (bogus: 2)", "--include-unconfigured"}},
		{[]string{"replay", "--dlq", "--since", "1h", "--dry-run"}, 0, []string{"distinct=2", "unconfigured=2"}},
		{[]string{"dlq", "replay", "--since", "1h", "--dry-run", "--include-unconfigured"}, 0, []string{"read=4 distinct=4 skipped=0"}},
		{[]string{"dlq", "replay", "--since", "1h", "--service", "bogus"}, 2, []string{"--service bogus is not in REFRESHER_SERVICES (github)"}},
		{[]string{"dlq", "replay", "--since", "1h", "--service", "bogus", "--include-unconfigured", "--dry-run"}, 0, []string{"read=2 distinct=2"}},
		{[]string{"replay", "--since", "1h", "--include-unconfigured"}, 2, []string{"give --dlq too"}},
	} {
		code, stdout, stderr := runCLI(t, tc.args...)
		if code != tc.code {
			t.Errorf("%v: exit %d, want %d; stdout %q stderr %q", tc.args, code, tc.code, stdout, stderr)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(stdout+stderr, w) {
				t.Errorf("%v: output lacks %q: %s%s", tc.args, w, stdout, stderr)
			}
		}
	}
}
