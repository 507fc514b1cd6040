package main

import (
	"context"
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/internal/status"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
)

// statusEnv points the status command at fx.
func statusEnv(t *testing.T, fx *fleettest.Env) {
	t.Setenv("DATABASE_URL", fx.DBURL)
	t.Setenv("NATS_URL", fx.NATS.URL())
}

// keysOf returns the sorted keys of a JSON object.
func keysOf(t *testing.T, v any) []string {
	t.Helper()
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%v is not a JSON object", v)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// TestStatusJSONFieldNames pins the JSON field names: scripts read them.
func TestStatusJSONFieldNames(t *testing.T) {
	fx := fleettest.New(t, fleettest.Options{})
	fx.Seed("github", 1)
	statusEnv(t, fx)
	code, out, stderr := runCLI(t, "status", "--json")
	if code != 0 {
		t.Fatalf("status --json: exit %d\n%s", code, stderr)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("status --json is not one JSON object: %v\n%s", err, out)
	}
	stream := []string{"bytes", "exists", "first_time", "last_time", "messages", "name"}
	for path, want := range map[string][]string{
		"":             {"connections", "consumer", "credentials", "dead_letters", "errors", "generated_at", "services", "stream"},
		"connections":  {"by_application", "max_connections", "refresher", "server", "visible"},
		"stream":       stream,
		"consumer":     {"ack_pending", "exists", "last_acked", "last_acked_unknown", "last_delivered", "last_delivered_unknown", "name", "pending", "redelivered", "stream", "waiting_pulls"},
		"dead_letters": append(slices.Clone(stream), "complete", "reason_groups", "scan_limit", "scanned", "top_reasons"),
		"credentials":  {"services", "table_exists", "total", "window"},
	} {
		v := any(doc)
		if path != "" {
			v = doc[path]
		}
		slices.Sort(want)
		if got := keysOf(t, v); !slices.Equal(got, want) {
			t.Errorf("%q keys %v, want %v", path, got, want)
		}
	}
	svc := doc["credentials"].(map[string]any)["services"].([]any)[0]
	want := []string{"by_status", "expired", "expiring_within_window", "never_refreshed", "oldest_refreshed_at", "service", "total"}
	if got := keysOf(t, svc); !slices.Equal(got, want) {
		t.Errorf("service keys %v, want %v", got, want)
	}
}

// TestStatusEmptySystem: nothing published, nothing consumed, nothing seeded: the
// command says what does not exist yet and exits 0, in both formats.
func TestStatusEmptySystem(t *testing.T) {
	fx := fleettest.New(t, fleettest.Options{})
	statusEnv(t, fx)
	code, out, stderr := runCLI(t, "status")
	if code != 0 {
		t.Fatalf("status: exit %d\n%s", code, stderr)
	}
	for _, want := range []string{
		"REFRESH      does not exist yet",
		"REFRESH_DLQ  does not exist yet",
		"refresher            does not exist yet",
		"DEAD LETTERS  none",
		"CREDENTIALS  TOTAL  ACTIVE  REAUTH_REQUIRED  EXPIRED  EXPIRING <30m  NEVER REFRESHED  OLDEST REFRESHED",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}

	code, out, stderr = runCLI(t, "status", "--json")
	if code != 0 {
		t.Fatalf("status --json: exit %d\n%s", code, stderr)
	}
	var rep status.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if rep.Stream.Exists || rep.Consumer.Exists || rep.DeadLetters.Exists || !rep.Credentials.TableExists ||
		len(rep.Credentials.Services) != 0 || len(rep.Errors) != 0 {
		t.Fatalf("empty system: %+v", rep)
	}
}

// TestStatusAfterRun: after the fleet refreshed a service, garbage went to the
// dead-letter stream and a row needs reauth, the table and the JSON both show it.
func TestStatusAfterRun(t *testing.T) {
	fx := fleettest.New(t, fleettest.Options{})
	ctx := context.Background()
	ids := fx.Seed("github", 8)
	fx.Seed("google", 3)
	fx.StartConsumer(fx.Config())
	if _, err := fx.Publisher().PublishScan(ctx, fx.DB, publisher.Scan{Service: "github"}); err != nil {
		t.Fatal(err)
	}
	nc := fx.Conn()
	for _, subject := range []string{"refresh.bogus", "refresh.github", "refresh.nosuch.1"} {
		if err := nc.Publish(subject, nil); err != nil {
			t.Fatal(err)
		}
	}
	fleettest.Eventually(t, 20*time.Second, "three dead letters", func() bool { return len(fx.DeadLetters()) == 3 })
	fx.WaitIdle(30 * time.Second)
	if _, err := fx.DB.NewUpdate().Model((*model.Credential)(nil)).Set("status = ?", model.StatusReauthRequired).
		Where("id = ?", ids[0]).Exec(ctx); err != nil {
		t.Fatal(err)
	}
	statusEnv(t, fx)

	code, out, stderr := runCLI(t, "status", "--expiring-within", "2h")
	if code != 0 {
		t.Fatalf("status: exit %d\n%s", code, stderr)
	}
	lines := strings.Split(out, "\n")
	line := func(prefix string) string {
		t.Helper()
		for _, l := range lines {
			if strings.HasPrefix(l, prefix) {
				return l
			}
		}
		t.Fatalf("no line starts with %q:\n%s", prefix, out)
		return ""
	}
	fields := func(l string) []string { return regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(l), -1) }

	// The request stream: 8 requests and 3 garbage messages.
	if f := fields(line("REFRESH ")); f[1] != "11" || !strings.HasSuffix(f[2], "B") || !strings.Contains(f[4], "ago)") {
		t.Errorf("stream row %q", f)
	}
	if f := fields(line("REFRESH_DLQ ")); f[1] != "3" {
		t.Errorf("dead-letter stream row %q", f)
	}
	header, row := line("CONSUMER"), line("refresher  ") // the shared durable; the title has one space
	assertAligned(t, header, row)
	if f := fields(row); f[1] != "0" || f[2] != "0" || f[3] != "0" || !strings.HasSuffix(f[5], " ago") {
		t.Errorf("consumer row %q: want nothing pending, and ages", f)
	}
	for _, l := range []string{header, row} {
		if n := utf8.RuneCountInString(l); n > 100 {
			t.Errorf("consumer table line is %d columns, want at most 100:\n%s", n, l)
		}
	}
	if !strings.Contains(out, "DEAD LETTERS  3; top reasons among all 3, 2 reason groups") ||
		!regexp.MustCompile(`(?m)^2\s+malformed: bad subject "…": want refresh.<service>.<id>$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^1\s+malformed: unknown service "…"$`).MatchString(out) {
		t.Errorf("dead-letter reasons missing:\n%s", out)
	}
	header = line("CREDENTIALS")
	if !strings.Contains(header, "EXPIRING <2h") {
		t.Errorf("credentials header %q does not show the window", header)
	}
	for _, svc := range []struct {
		name string
		want []string // total, active, reauth, expired, expiring, never
	}{
		{"github ", []string{"8", "7", "1", "0", "7", "0"}},
		{"google ", []string{"3", "3", "0", "0", "3", "3"}},
		{"(all) ", []string{"11", "10", "1", "0", "10", "3"}},
	} {
		row := line(svc.name)
		assertAligned(t, header, row)
		if f := fields(row); !slices.Equal(f[1:7], svc.want) {
			t.Errorf("%s row %q, want %v", svc.name, f, svc.want)
		}
	}
	if f := fields(line("google ")); f[7] != "-" {
		t.Errorf("google was never refreshed, but its oldest refresh is %q", f[7])
	}

	code, out, stderr = runCLI(t, "status", "--json", "--expiring-within", "2h", "--dlq-scan", "1")
	if code != 0 {
		t.Fatalf("status --json: exit %d\n%s", code, stderr)
	}
	var rep status.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if rep.Stream.Messages != 11 || !rep.Consumer.Exists || rep.Consumer.Pending != 0 ||
		rep.DeadLetters.Messages != 3 || rep.DeadLetters.Scanned != 1 || rep.DeadLetters.Complete || rep.DeadLetters.ScanLimit != 1 {
		t.Errorf("JSON report: %+v", rep)
	}
	gh := rep.Credentials.Services[0]
	if gh.Service != "github" || gh.ByStatus[model.StatusReauthRequired] != 1 || gh.ExpiringWithinWindow != 7 || gh.OldestRefreshedAt == nil ||
		rep.Credentials.Window != "2h0m0s" || rep.Credentials.Total.NeverRefreshed != 3 {
		t.Errorf("JSON credentials: %+v", rep.Credentials)
	}
}

// assertAligned checks that every column of header starts where a cell of row does.
func assertAligned(t *testing.T, header, row string) {
	t.Helper()
	for _, loc := range regexp.MustCompile(`\s{2,}`).FindAllStringIndex(header, -1) {
		col := loc[1]
		if col >= len(row) || row[col] == ' ' || row[col-1] != ' ' {
			t.Errorf("column at %d of\n%s\ndoes not line up with\n%s", col, header, row)
		}
	}
}

// TestStatusBadFlags: bad values stop the command with exit 2 before it connects.
func TestStatusBadFlags(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://u@127.0.0.1:1/x?sslmode=disable")
	t.Setenv("NATS_URL", "nats://127.0.0.1:1")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"zero horizon", []string{"--expiring-within", "0"}, "--expiring-within 0s: must be positive"},
		{"negative horizon", []string{"--expiring-within", "-5m"}, "--expiring-within -5m0s"},
		{"horizon without unit", []string{"--expiring-within", "30"}, `invalid argument "30" for "--expiring-within"`},
		{"negative scan", []string{"--dlq-scan", "-1"}, "--dlq-scan -1"},
		{"scan not a number", []string{"--dlq-scan", "many"}, `invalid argument "many"`},
		{"zero timeout", []string{"--timeout", "0s"}, "--timeout 0s"},
		{"argument", []string{"github"}, "unknown command"},
		{"unknown flag", []string{"--yaml"}, "unknown flag: --yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, append([]string{"status"}, tt.args...)...)
			if code != 2 || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", code, stderr, tt.want)
			}
		})
	}
	t.Run("no database url", func(t *testing.T) {
		t.Setenv("DATABASE_URL", "")
		code, _, stderr := runCLI(t, "status")
		if code != 2 || !strings.Contains(stderr, "DATABASE_URL is not set") {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("help", func(t *testing.T) {
		code, out, _ := runCLI(t, "status", "--help")
		if code != 0 || !strings.Contains(out, "Usage:") || !strings.Contains(out, "--json") {
			t.Fatalf("status --help: exit %d\n%s", code, out)
		}
	})
}

// TestStatusPrintsLostTimes: times the server lost in a restart are not shown as "-",
// which the README says means never.
func TestStatusPrintsLostTimes(t *testing.T) {
	var b strings.Builder
	rep := status.Report{GeneratedAt: time.Now(), Consumer: status.ConsumerReport{
		Stream: "REFRESH", Name: "refresher", Exists: true, LastDeliveredUnknown: true, LastAckedUnknown: true,
	}}
	if err := printStatus(&b, rep, time.Minute); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(b.String(), "unknown (server restarted)"); n != 2 {
		t.Fatalf("lost times printed %d times as unknown, want 2:\n%s", n, b.String())
	}
}
