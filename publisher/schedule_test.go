package publisher_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

// storedIDs reads every message of REFRESH and counts them by Nats-Msg-Id.
func storedIDs(t *testing.T, js jetstream.JetStream) map[string]int {
	t.Helper()
	ids := map[string]int{}
	for _, m := range fleettest.StreamMessages(t, js, stream.Stream) {
		ids[m.Header.Get(jetstream.MsgIDHeader)]++
	}
	return ids
}

// TestScheduleTwoReplicas runs two replicas of the same schedule against one NATS
// server with a one-second period (the shortest: dedupe ids have second resolution)
// over three periods on the real clock. Each row must be stored once per period, the
// other replica's copy acknowledged as a duplicate, and both must stop on cancel.
func TestScheduleTwoReplicas(t *testing.T) {
	env := fleettest.New(t, fleettest.Options{})
	const rows = 40
	ids := env.Seed("github", rows)
	env.Seed("google", 3) // another service's rows are not this schedule's

	var mu sync.Mutex
	runs := map[time.Time][]publisher.Run{} // by window, from both replicas
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make([]chan error, 2)
	for i := range done {
		p := env.Publisher(publisher.WithMaxInFlight(8))
		done[i] = make(chan error, 1)
		go func() {
			done[i] <- p.Schedule(ctx, env.DB, publisher.Scan{Service: "github", PageSize: 16}, time.Second, func(r publisher.Run) {
				mu.Lock()
				defer mu.Unlock()
				runs[r.Window] = append(runs[r.Window], r)
			})
		}()
	}
	// Three periods each run by both replicas: the one in progress at start, then two
	// boundaries.
	fleettest.Eventually(t, 10*time.Second, "three periods run by both replicas", func() bool {
		mu.Lock()
		defer mu.Unlock()
		both := 0
		for _, rs := range runs {
			if len(rs) == 2 {
				both++
			}
		}
		return both >= 3
	})
	cancel()
	for i, d := range done {
		select {
		case err := <-d:
			if err != nil {
				t.Fatalf("replica %d: Schedule returned %v on cancel, want nil", i, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("replica %d did not stop within 10s of cancel", i)
		}
	}

	mu.Lock()
	defer mu.Unlock()
	stored := storedIDs(t, env.JS())
	total := 0
	for window, rs := range runs {
		if !window.Equal(window.Truncate(time.Second)) {
			t.Errorf("window %s is not aligned to the period", window)
		}
		var sum publisher.Result
		for _, r := range rs {
			if r.Err != nil {
				if len(rs) == 2 || !errors.Is(r.Err, context.Canceled) {
					t.Errorf("run for %s: %v", window.Format(time.RFC3339), r.Err)
				}
			}
			sum.Published += r.Result.Published
			sum.Duplicate += r.Result.Duplicate
			sum.Failed += r.Result.Failed
		}
		if len(rs) < 2 {
			continue // a run the cancel cut short: its counts are partial
		}
		if sum.Published != rows || sum.Duplicate != rows || sum.Failed != 0 {
			t.Errorf("window %s: replicas published %+v in all, want %d published and %d duplicates",
				window.Format(time.RFC3339), sum, rows, rows)
		}
		for _, id := range ids {
			msgID := fmt.Sprintf("refresh.github.%d@%s", id, window.UTC().Format(time.RFC3339))
			if stored[msgID] != 1 {
				t.Errorf("%s stored %d times, want once", msgID, stored[msgID])
			}
		}
		total += sum.Published
	}
	for msgID, n := range stored {
		if n != 1 || !strings.HasPrefix(msgID, "refresh.github.") {
			t.Errorf("stream holds %d× %q", n, msgID)
		}
	}
	if got := len(stored); got < total {
		t.Fatalf("stream holds %d messages, fewer than the %d published", got, total)
	}
}

// virtualClock is a clock that moves only when Schedule waits on it, so a test can go
// through hours of periods at once and see exactly how long each wait was.
type virtualClock struct {
	mu    sync.Mutex
	now   time.Time
	waits []time.Duration
	// short shortens the next wait by this much, as a timer firing early would.
	short time.Duration
}

func (c *virtualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *virtualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (c *virtualClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waits = append(c.waits, d)
	c.now = c.now.Add(d - c.short)
	c.short = 0
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

func (c *virtualClock) Waits() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.waits...)
}

// TestScheduleBoundaries steps a 15-minute schedule through virtual time: the first
// run is at once, for the period in progress; later ones are at the wall-clock
// boundaries; a timer that fires early does not run a period twice; a run that
// outlasts its period is followed at once by one for the period then in progress; a
// failed run does not stop the schedule. Each run's messages carry its period.
func TestScheduleBoundaries(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	const rows = 5
	env.Seed("github", rows)
	clock := &virtualClock{now: time.Date(2026, 11, 26, 10, 7, 30, 0, time.UTC)}
	p := env.Publisher(publisher.WithClock(clock.Now))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var runs []publisher.Run
	report := func(r publisher.Run) {
		runs = append(runs, r)
		switch len(runs) {
		case 1:
			clock.short = time.Millisecond // the wait for 10:15 ends 1ms early
		case 2:
			clock.Advance(20 * time.Minute) // the 10:15 run "takes" until 10:35
		case 3:
			// The table disappears: the 10:45 run fails.
			if _, err := env.DB.ExecContext(ctx, "ALTER TABLE credentials RENAME TO credentials_away"); err != nil {
				t.Fatal(err)
			}
		case 4:
			if _, err := env.DB.ExecContext(ctx, "ALTER TABLE credentials_away RENAME TO credentials"); err != nil {
				t.Fatal(err)
			}
		case 5:
			cancel()
		}
	}
	if err := p.Schedule(ctx, env.DB, publisher.Scan{Service: "github"}, 15*time.Minute, report,
		publisher.ScheduleAfter(clock.After)); err != nil {
		t.Fatalf("Schedule: %v", err)
	}

	at := func(hm string) time.Time {
		tm, err := time.Parse("2006-01-02 15:04", "2026-11-26 "+hm)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	want := []struct {
		window    time.Time
		published int
		failed    bool
	}{
		{at("10:00"), rows, false}, // at once, mid-period
		{at("10:15"), rows, false}, // at the boundary, despite the early timer
		{at("10:30"), rows, false}, // at once after the long run, not at 10:45
		{at("10:45"), 0, true},     // the table is gone
		{at("11:00"), rows, false}, // and back: the schedule went on
	}
	if len(runs) != len(want) {
		t.Fatalf("%d runs, want %d: %+v", len(runs), len(want), runs)
	}
	for i, w := range want {
		r := runs[i]
		if !r.Window.Equal(w.window) || r.Result.Published != w.published || (r.Err != nil) != w.failed {
			t.Errorf("run %d: window %s published %d err %v; want window %s published %d failed %v",
				i, r.Window.Format("15:04"), r.Result.Published, r.Err, w.window.Format("15:04"), w.published, w.failed)
		}
	}
	if err := runs[3].Err; err == nil || !strings.Contains(err.Error(), "credentials") {
		t.Errorf("failed run's error %v does not say what failed", err)
	}
	// 10:07:30 → 10:15 is 7m30s; the early timer leaves 1ms; after the long run no
	// wait; then 15m to 11:00 around the failure.
	wantWaits := []time.Duration{7*time.Minute + 30*time.Second, time.Millisecond, 10 * time.Minute, 15 * time.Minute}
	if got := clock.Waits(); fmt.Sprint(got) != fmt.Sprint(wantWaits) {
		t.Errorf("waits %v, want %v", got, wantWaits)
	}
	stored := storedIDs(t, env.JS())
	for _, w := range []string{"10:00", "10:15", "10:30", "11:00"} {
		n := 0
		for id := range stored {
			if strings.HasSuffix(id, "@2026-11-26T"+w+":00Z") {
				n++
			}
		}
		if n != rows {
			t.Errorf("%d messages carry the %s period in their dedupe id, want %d", n, w, rows)
		}
	}
	if len(stored) != 4*rows {
		t.Errorf("stream holds %d messages, want %d", len(stored), 4*rows)
	}
	if logs := env.Logs(); !strings.Contains(logs, "scheduled publish failed") {
		t.Errorf("the failed run was not logged:\n%s", logs)
	}
}

// TestScheduleBadArguments: arguments no run could accept end the schedule at once
// with ErrBadSchedule, before anything is published.
func TestScheduleBadArguments(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	env.Seed("github", 2)
	p := env.Publisher()
	tests := []struct {
		name  string
		scan  publisher.Scan
		every time.Duration
		want  string
	}{
		{"zero period", publisher.Scan{Service: "github"}, 0, "every 0s: must be at least 1s"},
		{"negative period", publisher.Scan{Service: "github"}, -time.Minute, "every -1m0s"},
		{"sub-second period", publisher.Scan{Service: "github"}, 500 * time.Millisecond, "every 500ms"},
		{"bad service", publisher.Scan{Service: "Git Hub"}, time.Minute, "bad service name"},
		{"negative expiring-within", publisher.Scan{Service: "github", ExpiringWithin: -time.Second}, time.Minute, "expiring-within -1s"},
		{"bad id", publisher.Scan{Service: "github", IDs: []int64{1, 0}}, time.Minute, "id 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			called := false
			err := p.Schedule(context.Background(), env.DB, tt.scan, tt.every, func(publisher.Run) { called = true })
			if !errors.Is(err, publisher.ErrBadSchedule) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Schedule error %v, want ErrBadSchedule naming %q", err, tt.want)
			}
			if called {
				t.Fatal("a run happened despite the bad arguments")
			}
		})
	}
	if n := streamMsgs(t, env.JS()); n != 0 {
		t.Fatalf("stream holds %d messages after refused schedules", n)
	}
}

// TestScheduleEndsWhenConnectionCloses: a scheduler whose NATS connection is closed for
// good returns an error instead of failing every run forever.
func TestScheduleEndsWhenConnectionCloses(t *testing.T) {
	env := fleettest.New(t, fleettest.Options{})
	env.Seed("github", 3)
	nc := env.Conn()
	p, err := publisher.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	runs := make(chan publisher.Run, 10)
	go func() {
		done <- p.Schedule(context.Background(), env.DB, publisher.Scan{Service: "github"}, time.Second, func(r publisher.Run) { runs <- r })
	}()
	<-runs // the first run, at start
	nc.Close()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "NATS connection closed") {
			t.Fatalf("Schedule returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Schedule still running 10s after its connection closed")
	}
}

// TestScheduleReportsSkippedPeriods: periods that pass entirely during a long run get
// no run of their own; the next run says how many, and the log says so once.
func TestScheduleReportsSkippedPeriods(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	env.Seed("github", 2)
	clock := &virtualClock{now: time.Date(2026, 11, 26, 10, 7, 30, 0, time.UTC)}
	p := env.Publisher(publisher.WithClock(clock.Now))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var runs []publisher.Run
	err := p.Schedule(ctx, env.DB, publisher.Scan{Service: "github"}, 15*time.Minute, func(r publisher.Run) {
		runs = append(runs, r)
		switch len(runs) {
		case 1:
			clock.Advance(50 * time.Minute) // the 10:00 run "takes" until 10:57:30
		case 3:
			cancel()
		}
	}, publisher.ScheduleAfter(clock.After))
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 3 {
		t.Fatalf("%d runs, want 3", len(runs))
	}
	got := []string{}
	for _, r := range runs {
		got = append(got, fmt.Sprintf("%s skipped=%d", r.Window.Format("15:04"), r.Skipped))
	}
	if want := "[10:00 skipped=0 10:45 skipped=2 11:00 skipped=0]"; fmt.Sprint(got) != want {
		t.Errorf("runs %v, want %s", got, want)
	}
	if n := strings.Count(env.Logs(), "schedule skipped periods"); n != 1 {
		t.Errorf("%d log lines about skipped periods, want 1:\n%s", n, env.Logs())
	}
	if !strings.Contains(env.Logs(), "skipped=2") {
		t.Errorf("the log does not say how many were skipped:\n%s", env.Logs())
	}
}
