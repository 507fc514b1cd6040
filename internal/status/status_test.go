package status_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/internal/pgtest"
	"github.com/refresher/refresher/internal/status"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestGatherEmptySystem: before anything was published or consumed, and before the
// table exists, Gather says so instead of failing.
func TestGatherEmptySystem(t *testing.T) {
	env := fleettest.New(t, fleettest.Options{})
	ctx := context.Background()
	rep, err := status.Gather(ctx, env.DB, env.JS(), status.Options{})
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	if rep.Stream.Exists || rep.Stream.Name != stream.Stream || rep.Consumer.Exists || rep.DeadLetters.Exists {
		t.Fatalf("nothing exists yet, but the report says %+v", rep)
	}
	if !rep.Credentials.TableExists || len(rep.Credentials.Services) != 0 || rep.Credentials.Total.Total != 0 {
		t.Fatalf("credentials of an empty table: %+v", rep.Credentials)
	}
	if len(rep.Errors) != 0 || !rep.DeadLetters.Complete {
		t.Fatalf("errors %v, complete %v", rep.Errors, rep.DeadLetters.Complete)
	}

	// The streams exist but hold nothing; the consumer still does not exist.
	env.Publisher()
	if rep, err = status.Gather(ctx, env.DB, env.JS(), status.Options{}); err != nil {
		t.Fatal(err)
	}
	if !rep.Stream.Exists || rep.Stream.Messages != 0 || rep.Stream.FirstTime != nil || rep.Consumer.Exists ||
		!rep.DeadLetters.Exists || rep.DeadLetters.Messages != 0 || len(rep.DeadLetters.TopReasons) != 0 {
		t.Fatalf("empty streams: %+v", rep)
	}

	// Not migrated.
	if _, err := env.DB.ExecContext(ctx, "ALTER TABLE credentials RENAME TO credentials_away"); err != nil {
		t.Fatal(err)
	}
	if rep, err = status.Gather(ctx, env.DB, env.JS(), status.Options{}); err != nil {
		t.Fatalf("Gather without the table: %v", err)
	}
	if rep.Credentials.TableExists {
		t.Fatal("the table was renamed away, but the report says it exists")
	}
}

// TestGatherAfterRun: a fleet that refreshed two services, some garbage in the
// dead-letter stream, rows needing reauth, expired and expiring: every count is the
// one the test set up.
func TestGatherAfterRun(t *testing.T) {
	env := fleettest.New(t, fleettest.Options{})
	ctx := context.Background()
	gh := env.Seed("github", 12)
	gg := env.Seed("google", 5)
	env.StartConsumer(env.Config())
	p := env.Publisher()
	for _, s := range []string{"github", "google"} {
		if _, err := p.PublishScan(ctx, env.DB, publisher.Scan{Service: s}); err != nil {
			t.Fatal(err)
		}
	}
	env.WaitIdle(30 * time.Second)

	nc := env.Conn()
	for _, m := range []struct{ subject, data string }{
		{"refresh.bogus", "x"},      // malformed subject
		{"refresh.github", ""},      // malformed subject: same group, another value
		{"refresh.github.abc", ""},  // malformed id: a group of its own
		{"refresh.nosuch.1", ""},    // unknown service
		{"refresh.github.1", "{]"},  // bad body
		{"refresh.nosuch2.1", "{}"}, // unknown service again
	} {
		if err := nc.Publish(m.subject, []byte(m.data)); err != nil {
			t.Fatal(err)
		}
	}
	fleettest.Eventually(t, 20*time.Second, "six dead letters", func() bool { return len(env.DeadLetters()) == 6 })
	// And, last, one dead letter no consumer wrote: no reason header.
	if err := nc.PublishMsg(&nats.Msg{Subject: stream.DLQPrefix + "refresh.github.999", Header: nats.Header{"X": {"y"}}}); err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 20*time.Second, "seven dead letters", func() bool { return len(env.DeadLetters()) == 7 })
	env.WaitIdle(30 * time.Second)

	// The table, relative to a fixed now: github has 2 reauth rows, 3 expired and 4
	// expiring within 30m; google 1 never refreshed and 1 expired (of which reauth
	// rows, expired as they may be, are not counted).
	now := time.Now().UTC().Truncate(time.Second)
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := env.DB.ExecContext(ctx, q, args...); err != nil {
			t.Fatal(err)
		}
	}
	exec("UPDATE credentials SET expires_at = ?, refreshed_at = ?", now.Add(2*time.Hour), now.Add(-time.Hour))
	exec("UPDATE credentials SET status = ?, expires_at = ? WHERE id IN (?, ?)", model.StatusReauthRequired, now.Add(-time.Hour), gh[0], gh[1])
	exec("UPDATE credentials SET expires_at = ? WHERE id IN (?, ?, ?)", now.Add(-time.Minute), gh[2], gh[3], gh[4])
	exec("UPDATE credentials SET expires_at = ? WHERE id IN (?, ?, ?, ?)", now.Add(29*time.Minute), gh[5], gh[6], gh[7], gh[8])
	exec("UPDATE credentials SET expires_at = ? WHERE id = ?", now.Add(31*time.Minute), gh[9]) // outside the window
	exec("UPDATE credentials SET expires_at = ? WHERE id = ?", now, gg[0])                     // expires exactly now: expired
	exec("UPDATE credentials SET refreshed_at = NULL WHERE id = ?", gg[1])
	oldest := now.Add(-3 * time.Hour)
	exec("UPDATE credentials SET refreshed_at = ? WHERE id = ?", oldest, gh[10])
	exec("UPDATE credentials SET refreshed_at = ? WHERE id = ?", now.Add(-10*time.Hour), gh[0]) // reauth: ignored

	rep, err := status.Gather(ctx, env.DB, env.JS(), status.Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	if !rep.GeneratedAt.Equal(now) {
		t.Errorf("generated_at %s, want %s", rep.GeneratedAt, now)
	}
	// The test's own pool is a refresher connection ("refresher" by default), and the
	// one that asked is in use.
	if c := rep.Connections; !c.Visible || c.Refresher < 1 || c.Server < c.Refresher || c.MaxConnections < c.Server {
		t.Errorf("connections: %+v", c)
	}
	// 17 requests from the scans and 6 garbage messages.
	if s := rep.Stream; !s.Exists || s.Messages != 23 || s.Bytes == 0 || s.FirstTime == nil || s.LastTime == nil || s.LastTime.Before(*s.FirstTime) {
		t.Errorf("stream: %+v", s)
	}
	if c := rep.Consumer; !c.Exists || c.Pending != 0 || c.AckPending != 0 || c.Redelivered != 0 || c.LastDelivered == nil {
		t.Errorf("consumer: %+v", c)
	}
	fleettest.Eventually(t, 10*time.Second, "the running consumer's pull request", func() bool {
		r, err := status.Gather(ctx, env.DB, env.JS(), status.Options{})
		return err == nil && r.Consumer.WaitingPulls > 0
	})

	d := rep.DeadLetters
	if !d.Exists || d.Messages != 7 || d.Scanned != 7 || !d.Complete || d.ScanLimit != status.DefaultDLQScan || d.ReasonGroups != 5 {
		t.Errorf("dead letters: %+v", d)
	}
	wantTop := []struct {
		count  int
		prefix string
	}{
		{2, `malformed: bad subject "…": want refresh.<service>.<id>`},
		{2, `malformed: unknown service "…"`},
		{1, `(no Refresh-Reason header)`},
		{1, `malformed: bad body`},
		{1, `malformed: bad subject "…": id "…" is not a positive integer`},
	}
	if len(d.TopReasons) != len(wantTop) {
		t.Fatalf("top reasons %+v, want %d groups", d.TopReasons, len(wantTop))
	}
	for i, w := range wantTop {
		r := d.TopReasons[i]
		if r.Count != w.count || !strings.HasPrefix(r.Reason, w.prefix) {
			t.Errorf("top reason %d: %d× %q, want %d× %q…", i, r.Count, r.Reason, w.count, w.prefix)
		}
	}
	if ex := d.TopReasons[1].Example; !strings.Contains(ex, `"nosuch`) {
		t.Errorf("example %q is not one of its group's reasons as written", ex)
	}

	// The scan limit: only the most recent, and the report says it is partial.
	lim, err := status.Gather(ctx, env.DB, env.JS(), status.Options{DLQScan: 1})
	if err != nil {
		t.Fatal(err)
	}
	if d := lim.DeadLetters; d.Scanned != 1 || d.Complete || d.ScanLimit != 1 || d.ReasonGroups != 1 ||
		len(d.TopReasons) != 1 || d.TopReasons[0].Reason != status.NoReason {
		t.Errorf("limited scan: %+v", d)
	}
	top, err := status.Gather(ctx, env.DB, env.JS(), status.Options{TopReasons: 2})
	if err != nil {
		t.Fatal(err)
	}
	if d := top.DeadLetters; d.ReasonGroups != 5 || len(d.TopReasons) != 2 || d.TopReasons[0].Count != 2 || d.TopReasons[1].Count != 2 {
		t.Errorf("top 2: %+v", d)
	}
	none, err := status.Gather(ctx, env.DB, env.JS(), status.Options{DLQScan: -1})
	if err != nil {
		t.Fatal(err)
	}
	if d := none.DeadLetters; d.Scanned != 0 || d.Complete || d.Messages != 7 || len(d.TopReasons) != 0 {
		t.Errorf("no scan: %+v", d)
	}

	cr := rep.Credentials
	if !cr.TableExists || cr.Window != "30m0s" || len(cr.Services) != 2 {
		t.Fatalf("credentials: %+v", cr)
	}
	ghr, ggr := cr.Services[0], cr.Services[1]
	check := func(name string, got status.ServiceCredentials, total, active, reauth, expired, expiring, never int64, oldest *time.Time) {
		t.Helper()
		if got.Total != total || got.ByStatus[model.StatusActive] != active || got.ByStatus[model.StatusReauthRequired] != reauth ||
			got.Expired != expired || got.ExpiringWithinWindow != expiring || got.NeverRefreshed != never {
			t.Errorf("%s: %+v, want total %d active %d reauth %d expired %d expiring %d never %d",
				name, got, total, active, reauth, expired, expiring, never)
		}
		if (oldest == nil) != (got.OldestRefreshedAt == nil) || (oldest != nil && !oldest.Equal(*got.OldestRefreshedAt)) {
			t.Errorf("%s: oldest refreshed_at %v, want %v", name, got.OldestRefreshedAt, oldest)
		}
	}
	check("github", ghr, 12, 10, 2, 3, 4, 0, &oldest)
	hourAgo := now.Add(-time.Hour)
	check("google", ggr, 5, 5, 0, 1, 0, 1, &hourAgo)
	check("total", cr.Total, 17, 15, 2, 4, 4, 1, &oldest)
	if ghr.Service != "github" || ggr.Service != "google" || cr.Total.Service != "" {
		t.Errorf("services %q, %q, total %q", ghr.Service, ggr.Service, cr.Total.Service)
	}
}

// TestGatherBadOptions: a negative window is refused.
func TestGatherBadOptions(t *testing.T) {
	env := fleettest.New(t, fleettest.Options{})
	if _, err := status.Gather(context.Background(), env.DB, env.JS(), status.Options{Window: -time.Minute}); err == nil ||
		!strings.Contains(err.Error(), "window -1m0s") {
		t.Fatalf("Gather with a negative window: %v", err)
	}
}

func TestReasonGroup(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", status.NoReason},
		{`malformed: bad subject "refresh.bogus": want refresh.<service>.<id>`, `malformed: bad subject "…": want refresh.<service>.<id>`},
		{`malformed: unknown service "a\"b"`, `malformed: unknown service "…"`},
		{"retried: lock credential 42: row lock timeout", "retried: lock credential <id>: row lock timeout"},
		{"retried: provider answered 503: temporarily_unavailable", "retried: provider answered 503: temporarily_unavailable"},
		{`malformed: bad header Refresh-Requested-At "x": want RFC 3339`, `malformed: bad header Refresh-Requested-At "…": want RFC 3339`},
	}
	for _, tt := range tests {
		if got := status.ReasonGroup(tt.in); got != tt.want {
			t.Errorf("ReasonGroup(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestGatherConsumerTimesAfterRestart: the server keeps the consumer's last delivery
// and ack times in memory only; after it restarts they are unknown, which the report
// must not present as "never".
func TestGatherConsumerTimesAfterRestart(t *testing.T) {
	env := fleettest.New(t, fleettest.Options{})
	ctx := context.Background()
	env.Seed("github", 3)
	c := env.StartConsumer(env.Config())
	if _, err := env.Publisher().PublishScan(ctx, env.DB, publisher.Scan{Service: "github"}); err != nil {
		t.Fatal(err)
	}
	env.WaitIdle(30 * time.Second)
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	rep, err := status.Gather(ctx, env.DB, env.JS(), status.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if c := rep.Consumer; c.LastDelivered == nil || c.LastAcked == nil || c.LastDeliveredUnknown || c.LastAckedUnknown {
		t.Fatalf("before the restart: %+v", c)
	}
	if err := env.NATS.Restart(); err != nil {
		t.Fatal(err)
	}
	rep, err = status.Gather(ctx, env.DB, env.JS(), status.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c2 := rep.Consumer
	t.Logf("after the restart: %+v", c2)
	if c2.LastDelivered == nil && !c2.LastDeliveredUnknown || c2.LastAcked == nil && !c2.LastAckedUnknown {
		t.Fatalf("after the restart the times are reported as never: %+v", c2)
	}
}

// arrivingDLQ is a JetStream on which a dead letter arrives between the first and
// the second look-up of REFRESH_DLQ, as under load.
type arrivingDLQ struct {
	jetstream.JetStream
	lookups int
	arrive  func()
}

func (a *arrivingDLQ) Stream(ctx context.Context, name string) (jetstream.Stream, error) {
	if name == stream.DLQStream {
		if a.lookups++; a.lookups == 2 {
			a.arrive()
		}
	}
	return a.JetStream.Stream(ctx, name)
}

// TestGatherDeadLettersConsistent: the dead-letter counts come from one read, so a
// dead letter arriving while Gather runs cannot make the scan larger than the count.
func TestGatherDeadLettersConsistent(t *testing.T) {
	env := fleettest.New(t, fleettest.Options{})
	ctx := context.Background()
	env.Publisher()
	js := env.JS()
	dead := func() {
		if _, err := js.Publish(ctx, stream.DLQPrefix+"refresh.github.1", nil); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		dead()
	}
	rep, err := status.Gather(ctx, env.DB, &arrivingDLQ{JetStream: js, arrive: dead}, status.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d := rep.DeadLetters; d.Messages != 3 || d.Scanned != 3 || !d.Complete {
		t.Fatalf("dead letters %d, scanned %d, complete %v: want the 3 of one read", d.Messages, d.Scanned, d.Complete)
	}
}
