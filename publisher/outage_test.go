package publisher_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/internal/natsconn"
	"github.com/refresher/refresher/internal/testtier"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

// outage is how long the outage tests keep the server down: longer than the ack
// timeout (5s), which is what turned the old one-by-one retries into minutes.
const outage = 10 * time.Second

// recovered is how soon after the restart a run must be done.
const recovered = 5 * time.Second

// stopFor stops env's server, keeps it down for d and restarts it; it returns when
// the server is back.
func stopFor(t *testing.T, env *fleettest.Env, d time.Duration) time.Time {
	t.Helper()
	env.NATS.Stop()
	<-time.After(d) // the outage itself, not a wait for a condition
	if err := env.NATS.Restart(); err != nil {
		t.Fatalf("restart nats-server: %v", err)
	}
	return time.Now()
}

// TestForeignMessageTakesDedupeID is issue 9's "request nobody can cancel": a message
// that is not the request, published first with the request's Nats-Msg-Id, must not
// make the publisher take the request for a duplicate. It is published under an id of
// its own and counted as a collision; a real twin is still a duplicate.
func TestForeignMessageTakesDedupeID(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	ctx := context.Background()
	now := time.Date(2026, 11, 26, 10, 7, 0, 0, time.UTC)
	clock := publisher.WithClock(func() time.Time { return now })
	p := env.Publisher(clock)
	window := p.WindowStart(now)
	js := env.JS()
	// Another subject, and the right subject with a body no consumer would take.
	for _, f := range []struct {
		subject, body string
		id            int64
	}{{"refresh.bogus", "x", 3}, {"refresh.github.4", "garbage", 4}} {
		m := nats.NewMsg(f.subject)
		m.Data = []byte(f.body)
		m.Header.Set(jetstream.MsgIDHeader, publisher.MsgID(model.Key{Service: "github", ID: f.id}, window))
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	res, err := p.Publish(ctx, "github", 3, 4, 5)
	if err != nil {
		t.Fatal(err)
	}
	if want := (publisher.Result{Published: 3, Collided: 2}); res != want {
		t.Fatalf("result %+v, want %+v", res, want)
	}
	for _, id := range []int64{3, 4, 5} {
		if n := requestsFor(t, js, model.Key{Service: "github", ID: id}); n != 1 {
			t.Errorf("row %d: %d well-formed requests stored, want 1", id, n)
		}
	}
	if !strings.Contains(env.Logs(), "dedupe id taken") {
		t.Errorf("the collision was not logged:\n%s", env.Logs())
	}
	// A twin publisher of the same window: its copies are duplicates of real requests.
	twin, err := env.Publisher(clock).Publish(ctx, "github", 3, 4, 5)
	if err != nil || twin != (publisher.Result{Duplicate: 1, Published: 2, Collided: 2}) {
		// 3 and 4 were republished under random ids, which the twin cannot know: it
		// collides again (publishing them once more costs a row lock); 5 is a duplicate.
		t.Fatalf("twin: %+v, %v", twin, err)
	}
}

// requestsFor counts the stored messages on key's subject whose body parses.
func requestsFor(t *testing.T, js jetstream.JetStream, key model.Key) int {
	t.Helper()
	n := 0
	for _, m := range fleettest.StreamMessages(t, js, stream.Stream) {
		if _, berr := model.ParseBody(m.Data); m.Subject == key.Subject() && berr == nil {
			n++
		}
	}
	return n
}

// TestPublishOutageOneShot stops the server for 10s in the middle of a one-shot publish
// of 10,000 rows: the run waits, re-sends what was not confirmed as soon as the server
// is back, finishes within seconds, stores each row once, and counts exactly that.
func TestPublishOutageOneShot(t *testing.T) {
	// The outage is mostly waiting: the outage tests wait side by side.
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	const rows = 10_000
	env.Seed("github", rows)
	js := env.JS()
	var (
		mu   sync.Mutex
		last publisher.Result
	)
	p := env.Publisher(publisher.WithProgress(func(r publisher.Result) {
		mu.Lock()
		last = r
		mu.Unlock()
	}))
	type outcome struct {
		res publisher.Result
		err error
		at  time.Time
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := p.PublishScan(context.Background(), env.DB, publisher.Scan{Service: "github"})
		done <- outcome{res, err, time.Now()}
	}()
	fleettest.Eventually(t, 30*time.Second, "the publish under way", func() bool {
		mu.Lock()
		defer mu.Unlock()
		// Half way, so that the work left after the restart stays small on a busy machine.
		return last.Total() >= rows/2
	})
	restarted := stopFor(t, env, outage)
	var o outcome
	select {
	case o = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("publish not done 30s after the server came back")
	}
	took := o.at.Sub(restarted)
	t.Logf("done %s after the restart: %+v", took.Round(time.Millisecond), o.res)
	if took > recovered {
		t.Errorf("publish done %s after the restart, want under %s", took, recovered)
	}
	if o.err != nil || o.res != (publisher.Result{Published: rows}) {
		t.Fatalf("result %+v, %v; want %d published", o.res, o.err, rows)
	}
	if n := streamMsgs(t, js); n != rows {
		t.Fatalf("stream holds %d messages, want %d", n, rows)
	}
	// The outage is logged when it starts and when it ends, not once per message.
	logs := env.Logs()
	if n := strings.Count(logs, "NATS server not answering"); n < 1 || n > 3 {
		t.Errorf("%d warnings of the outage, want 1 (or a few, if the reconnect flapped):\n%s", n, logs)
	}
	if !strings.Contains(logs, "NATS server answering again") {
		t.Errorf("the end of the outage is not logged:\n%s", logs)
	}
	if strings.Contains(logs, "publish failed") {
		t.Errorf("messages reported failed:\n%s", logs)
	}
}

// TestPublishInterrupted: at cancel (SIGTERM), publishes in flight are given time to
// be confirmed and count as published; none is called failed.
func TestPublishInterrupted(t *testing.T) {
	env := fleettest.New(t, fleettest.Options{})
	const rows = 3000
	env.Seed("github", rows)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := env.Publisher(publisher.WithWindow(0), publisher.WithProgress(func(r publisher.Result) {
		if r.Total() == 100 {
			cancel()
		}
	}))
	res, err := p.PublishScan(ctx, env.DB, publisher.Scan{Service: "github"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want an interruption", err)
	}
	if res.Failed != 0 || res.Unknown != 0 || res.Published <= 100 {
		t.Fatalf("result %+v: want what was in flight at the cancel published, none failed or unknown", res)
	}
	if n := streamMsgs(t, env.JS()); n != uint64(res.Published) {
		t.Fatalf("stream holds %d messages, the result says %d", n, res.Published)
	}
}

// TestPublishInterruptedDuringOutage: cancelled while the server is down, the
// publishes it never confirmed are reported unknown (they may be stored), not failed,
// and the run returns within its drain time.
func TestPublishInterruptedDuringOutage(t *testing.T) {
	env := fleettest.New(t, fleettest.Options{})
	const rows = 3000
	env.Seed("github", rows)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopped := make(chan struct{})
	var once sync.Once
	p := env.Publisher(publisher.WithDrainTimeout(time.Second), publisher.WithProgress(func(r publisher.Result) {
		if r.Total() >= 200 {
			once.Do(func() {
				env.NATS.Stop()
				close(stopped)
			})
		}
	}))
	type outcome struct {
		res publisher.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := p.PublishScan(ctx, env.DB, publisher.Scan{Service: "github"})
		done <- outcome{res, err}
	}()
	<-stopped
	cancel()
	var o outcome
	select {
	case o = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("publish not done 10s after the cancel")
	}
	t.Logf("%+v", o.res)
	if !errors.Is(o.err, context.Canceled) {
		t.Fatalf("error %v, want an interruption", o.err)
	}
	if o.res.Failed != 0 || o.res.Published < 200 {
		t.Fatalf("result %+v: want none failed", o.res)
	}
	if err := env.NATS.Restart(); err != nil {
		t.Fatal(err)
	}
	stored := int(streamMsgs(t, env.JS()))
	if stored < o.res.Published || stored > o.res.Published+o.res.Unknown {
		t.Fatalf("stream holds %d, outside published %d .. published+unknown %d", stored, o.res.Published, o.res.Published+o.res.Unknown)
	}
}

// TestScheduleOutageTwoReplicas is the operator test: two replicas of a
// schedule, the server stopped for 10s. After the restart the run in progress is done
// within seconds; every period after the outage is published exactly once per row
// (one replica's copy a duplicate of the other's); a period with no run of its own is
// reported in the next run's Skipped; and every run's counts agree with the stream.
func TestScheduleOutageTwoReplicas(t *testing.T) {
	// The outage is mostly waiting: the outage tests wait side by side.
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	const (
		rows  = 300
		every = 2 * time.Second
	)
	env.Seed("github", rows)
	var mu sync.Mutex
	runs := [2][]publisher.Run{}
	ended := [2][]time.Time{} // when each run was reported, by the real clock
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make([]chan error, 2)
	for i := range done {
		p := env.Publisher()
		done[i] = make(chan error, 1)
		go func() {
			done[i] <- p.Schedule(ctx, env.DB, publisher.Scan{Service: "github"}, every, func(r publisher.Run) {
				mu.Lock()
				defer mu.Unlock()
				runs[i] = append(runs[i], r)
				ended[i] = append(ended[i], time.Now())
			})
		}()
	}
	fleettest.Eventually(t, 20*time.Second, "a run by each replica", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(runs[0]) > 0 && len(runs[1]) > 0
	})
	restarted := stopFor(t, env, outage)
	// Two whole periods after the restart, run by both replicas.
	after := restarted.Truncate(every).Add(every)
	fleettest.Eventually(t, 30*time.Second, "two periods after the outage run by both replicas", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, rs := range runs {
			if len(rs) == 0 || rs[len(rs)-1].Window.Before(after.Add(every)) {
				return false
			}
		}
		return true
	})
	cancel()
	for i, d := range done {
		select {
		case err := <-d:
			if err != nil {
				t.Fatalf("replica %d: %v", i, err)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("replica %d did not stop", i)
		}
	}

	mu.Lock()
	defer mu.Unlock()
	byWindow := map[time.Time][]publisher.Run{}
	for i, rs := range runs {
		for j, r := range rs {
			byWindow[r.Window] = append(byWindow[r.Window], r)
			// Every run that ended after the restart ended within seconds of it, or of
			// its own start.
			if end := ended[i][j]; end.After(restarted) {
				from := restarted
				if r.Started.After(from) {
					from = r.Started
				}
				if took := end.Sub(from); took > recovered {
					t.Errorf("replica %d: run for %s ended %s after the restart or its start", i, r.Window.Format(time.TimeOnly), took)
				} else if r.Started.Before(restarted) {
					t.Logf("replica %d: the run in progress during the outage ended %s after the restart: %+v", i, took.Round(time.Millisecond), r.Result)
				}
			}
			// No period is skipped without being reported.
			if j > 0 {
				gap := int(r.Window.Sub(rs[j-1].Window)/every) - 1
				if gap != r.Skipped {
					t.Errorf("replica %d: run for %s follows %s, %d periods missing, but reports %d skipped",
						i, r.Window.Format(time.TimeOnly), rs[j-1].Window.Format(time.TimeOnly), gap, r.Skipped)
				}
			}
		}
	}
	stored := map[time.Time]int{}
	for id, n := range storedIDs(t, env.JS()) {
		if n != 1 {
			t.Errorf("%s stored %d times", id, n)
		}
		at, err := time.Parse(time.RFC3339, id[strings.LastIndex(id, "@")+1:])
		if err != nil {
			t.Fatalf("dedupe id %q: %v", id, err)
		}
		stored[at]++
	}
	for w, n := range stored {
		if len(byWindow[w]) == 0 {
			t.Errorf("%d messages stored for %s, which no run reported", n, w.Format(time.TimeOnly))
		}
	}
	for w, rs := range byWindow {
		var sum publisher.Result
		for _, r := range rs {
			sum.Published += r.Result.Published
			sum.Duplicate += r.Result.Duplicate
			sum.Failed += r.Result.Failed
			sum.Unknown += r.Result.Unknown
		}
		// The counts agree with the stream: what was confirmed is there, and only
		// what is unknown may be there besides.
		t.Logf("window %s: %d runs, %+v, stored %d", w.Format(time.TimeOnly), len(rs), sum, stored[w])
		if stored[w] < sum.Published || stored[w] > sum.Published+sum.Unknown {
			t.Errorf("window %s: stream holds %d, runs report %+v", w.Format(time.TimeOnly), stored[w], sum)
		}
		if w.Before(after) || len(rs) < 2 {
			continue
		}
		if sum != (publisher.Result{Published: rows, Duplicate: rows}) {
			t.Errorf("window %s after the outage: %+v, want %d published and %d duplicates", w.Format(time.TimeOnly), sum, rows, rows)
		}
	}
}

// TestReplayOutage stops the server for 10s while a replay republishes: the replay
// resumes as soon as the server is back, republishes each credential once, and says
// so.
func TestReplayOutage(t *testing.T) {
	// The outage is mostly waiting: the outage tests wait side by side.
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	const n = 3000
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = int64(i + 1)
	}
	from := time.Now().Add(-time.Second)
	if _, err := env.Publisher(publisher.WithWindow(0)).Publish(context.Background(), "github", ids...); err != nil {
		t.Fatal(err)
	}
	js := env.JS()
	before := streamState(t, js, stream.Stream).LastSeq
	half := make(chan struct{})
	var once sync.Once
	p := env.Publisher()
	type outcome struct {
		res publisher.ReplayResult
		err error
		at  time.Time
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := p.Replay(context.Background(), publisher.ReplayOptions{From: from, Progress: func(pr publisher.ReplayProgress) {
			if pr.Phase == publisher.PhaseRepublish && pr.Done >= n/4 {
				once.Do(func() { close(half) })
			}
		}})
		done <- outcome{res, err, time.Now()}
	}()
	<-half
	restarted := stopFor(t, env, outage)
	var o outcome
	select {
	case o = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("replay not done 30s after the server came back")
	}
	took := o.at.Sub(restarted)
	t.Logf("replay done %s after the restart: %+v", took.Round(time.Millisecond), o.res)
	if took > recovered {
		t.Errorf("replay done %s after the restart, want under %s", took, recovered)
	}
	want := publisher.ReplayResult{Stream: stream.Stream, Read: n, Distinct: n, Republished: n}
	if o.err != nil || o.res != want {
		t.Fatalf("replay %+v, %v; want %+v", o.res, o.err, want)
	}
	seen := map[string]int{}
	for _, m := range msgsAfter(t, js, stream.Stream, before) {
		seen[m.Subject]++
	}
	if len(seen) != n {
		t.Errorf("%d subjects republished, want %d", len(seen), n)
	}
	for s, c := range seen {
		if c != 1 {
			t.Errorf("%s republished %d times", s, c)
		}
	}
}

// TestDuplicateUncheckable: a NATS user not allowed to read the stream cannot check
// duplicates; after a few tries they are counted as duplicates, with one warning,
// instead of being re-sent until the run gives up.
func TestDuplicateUncheckable(t *testing.T) {
	testtier.Slow(t, "a nats-server")
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
		Users: []*server.User{{Username: "pub", Password: "pw", Permissions: &server.Permissions{
			Publish: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"$JS.API.STREAM.MSG.GET.>", "$JS.API.DIRECT.GET.>"}},
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	var logs fleettest.SyncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	now := time.Date(2026, 11, 26, 10, 7, 0, 0, time.UTC)
	newPublisher := func() *publisher.Publisher {
		nc, err := natsconn.Local(s.ClientURL(), t.Name(), log, nats.UserInfo("pub", "pw"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		p, err := publisher.New(nc, publisher.WithLogger(log), publisher.WithAckTimeout(500*time.Millisecond),
			publisher.WithClock(func() time.Time { return now }))
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.EnsureStreams(context.Background(), p.JetStream(), stream.DefaultStreamConfig()); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if res, err := newPublisher().Publish(context.Background(), "github", 1, 2, 3); err != nil || res.Published != 3 {
		t.Fatalf("first: %+v, %v", res, err)
	}
	start := time.Now()
	res, err := newPublisher().Publish(context.Background(), "github", 1, 2, 3)
	if err != nil || res != (publisher.Result{Duplicate: 3}) {
		t.Fatalf("twin: %+v, %v; want 3 duplicates", res, err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("twin took %s", d)
	}
	if n := strings.Count(logs.String(), "counting duplicates unchecked"); n != 1 {
		t.Errorf("%d warnings, want 1:\n%s", n, logs.String())
	}
}
