package publisher_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

// streamState reads the state of stream name.
func streamState(t *testing.T, js jetstream.JetStream, name string) jetstream.StreamState {
	t.Helper()
	s, err := js.Stream(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State
}

// msgsAfter returns the messages stream name stored after sequence seq.
func msgsAfter(t *testing.T, js jetstream.JetStream, name string, seq uint64) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for n := seq + 1; n <= streamState(t, js, name).LastSeq; n++ {
		m, err := s.GetMsg(ctx, n)
		if err != nil {
			t.Fatalf("read %s message %d: %v", name, n, err)
		}
		out = append(out, m)
	}
	return out
}

// raw is one message as any client could publish it.
type raw struct {
	subject string
	header  string // Refresh-Requested-At, when set
	body    string
}

// publishRaw stores msgs in REFRESH, waiting for each ack.
func publishRaw(t *testing.T, js jetstream.JetStream, msgs ...raw) {
	t.Helper()
	for _, r := range msgs {
		m := nats.NewMsg(r.subject)
		if r.header != "" {
			m.Header.Set(model.HeaderRequestedAt, r.header)
		}
		m.Data = []byte(r.body)
		if _, err := js.PublishMsg(context.Background(), m); err != nil {
			t.Fatalf("publish %s: %v", r.subject, err)
		}
	}
}

// versions reads the version of each row.
func versions(t *testing.T, env *fleettest.Env, ids []int64) map[int64]int64 {
	t.Helper()
	out := map[int64]int64{}
	for _, id := range ids {
		out[id] = env.Credential(id).Version
	}
	return out
}

// TestReplayRedoesOnlyUnsatisfied is the property replay exists for: after an outage,
// replaying the window re-does exactly the rows not refreshed since they were asked
// for, and costs no provider call for the rest.
func TestReplayRedoesOnlyUnsatisfied(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	ctx := context.Background()
	ids := env.Seed("github", 12)
	cfg := env.Config()
	cfg.MaxDeliver = 2
	env.StartConsumer(cfg, env.NoCircuit())
	p := env.Publisher(publisher.WithWindow(0))

	// Every row refreshed once.
	if _, err := p.Publish(ctx, "github", ids...); err != nil {
		t.Fatal(err)
	}
	env.WaitIdle(30 * time.Second)
	// Provider outage: the requests for rows 0-5 fail until they are dead-lettered.
	env.Fake.SetOutage(true)
	if _, err := p.Publish(ctx, "github", ids[:6]...); err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 30*time.Second, "6 dead letters", func() bool { return len(env.DeadLetters()) == 6 })
	env.WaitIdle(30 * time.Second)
	env.Fake.SetOutage(false)
	// Rows 3-5 are asked for again after the outage and refreshed: already satisfied.
	if _, err := p.Publish(ctx, "github", ids[3:6]...); err != nil {
		t.Fatal(err)
	}
	env.WaitIdle(30 * time.Second)

	before := versions(t, env, ids)
	calls := env.Fake.Stats().Calls
	res, err := p.Replay(ctx, publisher.ReplayOptions{From: time.Now().Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	want := publisher.ReplayResult{Stream: stream.Stream, Read: 12 + 6 + 3, Distinct: 12, Republished: 12}
	if res != want {
		t.Fatalf("Replay = %+v, want %+v", res, want)
	}
	env.WaitIdle(30 * time.Second)
	if got := env.Fake.Stats().Calls - calls; got != 3 {
		t.Fatalf("replay made %d provider calls, want 3 (rows 0-2 only)", got)
	}
	after := versions(t, env, ids)
	for i, id := range ids {
		wantV := before[id]
		if i < 3 {
			wantV++
		}
		if after[id] != wantV {
			t.Errorf("row %d (id %d): version %d -> %d, want %d", i, id, before[id], after[id], wantV)
		}
	}
	env.Verify()

	// Replaying again is not dropped as a duplicate, and now costs no provider call.
	calls = env.Fake.Stats().Calls
	res, err = p.Replay(ctx, publisher.ReplayOptions{From: time.Now().Add(-time.Hour)})
	if err != nil || res.Republished != 12 || res.Distinct != 12 {
		t.Fatalf("second Replay = %+v, %v; want 12 republished", res, err)
	}
	env.WaitIdle(30 * time.Second)
	if got := env.Fake.Stats().Calls - calls; got != 0 {
		t.Fatalf("second replay made %d provider calls, want 0", got)
	}
}

// TestReplayCollapsesToLatestRequestTime: each credential is republished once, with
// the latest of its request times, whichever way each was given, and with a dedupe id
// of its own run; messages that are not requests are skipped.
func TestReplayCollapsesToLatestRequestTime(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	ctx := context.Background()
	p := env.Publisher()
	js := env.JS()
	now := time.Now().UTC()
	at := func(ago time.Duration) string { return model.FormatRequestedAt(now.Add(-ago)) }
	body := func(ago time.Duration) string {
		return `{"requested_at":"` + at(ago) + `"}`
	}
	publishRaw(t, js,
		raw{subject: "refresh.github.1", header: at(30 * time.Minute)},
		raw{subject: "refresh.github.1", header: at(10 * time.Minute)}, // the latest
		raw{subject: "refresh.github.1", header: at(50 * time.Minute)}, // last, not latest
		raw{subject: "refresh.github.2", body: body(20 * time.Minute)},
		raw{subject: "refresh.github.2", body: body(40 * time.Minute), header: at(5 * time.Minute)}, // header wins
		raw{subject: "refresh.google.3", body: `{"reason":"user clicked"}`},                         // stored time
		// Not requests:
		raw{subject: "refresh.github.007"},
		raw{subject: "refresh.bogus"},
		raw{subject: "refresh.github.4", body: "not json"},
		raw{subject: "refresh.github.5", header: "yesterday"},
		raw{subject: "refresh.github.6", header: model.FormatRequestedAt(now.Add(time.Hour))},
	)
	stored := msgsAfter(t, js, stream.Stream, 5)[0].Time // refresh.google.3
	last := streamState(t, js, stream.Stream).LastSeq

	res, err := p.Replay(ctx, publisher.ReplayOptions{From: now.Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	want := publisher.ReplayResult{Stream: stream.Stream, Read: 11, Distinct: 3, Skipped: 5, Republished: 3}
	if res != want {
		t.Fatalf("Replay = %+v, want %+v", res, want)
	}
	wantAt := map[string]time.Time{
		"refresh.github.1": now.Add(-10 * time.Minute),
		"refresh.github.2": now.Add(-5 * time.Minute),
		"refresh.google.3": stored,
	}
	checkRepublished := func(msgs []*jetstream.RawStreamMsg, seenIDs map[string]bool) {
		t.Helper()
		if len(msgs) != len(wantAt) {
			t.Fatalf("%d messages republished, want %d", len(msgs), len(wantAt))
		}
		for _, m := range msgs {
			w, ok := wantAt[m.Subject]
			if !ok {
				t.Fatalf("republished %s", m.Subject)
			}
			got, err := model.ParseRequestedAt(m.Header.Get(model.HeaderRequestedAt))
			if err != nil || !got.Equal(w) {
				t.Errorf("%s: %s %v (%v), want %s", m.Subject, model.HeaderRequestedAt, got, err, w)
			}
			id := m.Header.Get(jetstream.MsgIDHeader)
			if id == "" || seenIDs[id] {
				t.Errorf("%s: Nats-Msg-Id %q empty or reused", m.Subject, id)
			}
			seenIDs[id] = true
			if len(m.Data) != 0 {
				t.Errorf("%s: body %q, want none", m.Subject, m.Data)
			}
		}
	}
	ids := map[string]bool{}
	checkRepublished(msgsAfter(t, js, stream.Stream, last), ids)

	// The same window again: the replayed copies carry the same times, so the result is
	// the same, and the stream stores it again instead of deduping it.
	last = streamState(t, js, stream.Stream).LastSeq
	res, err = p.Replay(ctx, publisher.ReplayOptions{From: now.Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if want.Read += 3; res != want {
		t.Fatalf("second Replay = %+v, want %+v", res, want)
	}
	checkRepublished(msgsAfter(t, js, stream.Stream, last), ids)
}

// TestReplayWindow: --service, --until and --dry-run select and count the same way,
// and a dry run publishes nothing.
func TestReplayWindow(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	ctx := context.Background()
	p := env.Publisher(publisher.WithWindow(0))
	js := env.JS()
	start := time.Now()
	publishRaw(t, js, raw{subject: "refresh.github.1"}, raw{subject: "refresh.github.2"},
		raw{subject: "refresh.google.1"}, raw{subject: "refresh.github.x"})
	mid := time.Now()
	publishRaw(t, js, raw{subject: "refresh.github.1"}, raw{subject: "refresh.github.3"}, raw{subject: "refresh.google.2"})
	// Every case ends the window here, so no case reads another's republished requests.
	end := time.Now()

	tests := []struct {
		name string
		opts publisher.ReplayOptions
		want publisher.ReplayResult
	}{
		{"all", publisher.ReplayOptions{From: start, Until: end},
			publisher.ReplayResult{Read: 7, Distinct: 5, Skipped: 1, Republished: 5}},
		{"service", publisher.ReplayOptions{From: start, Until: end, Service: "google"},
			publisher.ReplayResult{Read: 2, Distinct: 2, Republished: 2}},
		{"configured service without requests", publisher.ReplayOptions{From: start, Until: end, Service: "gitlab",
			Services: []string{"github", "gitlab", "google"}},
			publisher.ReplayResult{}},
		{"until", publisher.ReplayOptions{From: start, Until: mid},
			publisher.ReplayResult{Read: 4, Distinct: 3, Skipped: 1, Republished: 3}},
		{"from", publisher.ReplayOptions{From: mid, Until: end, Service: "github"},
			publisher.ReplayResult{Read: 2, Distinct: 2, Republished: 2}},
		{"dry run", publisher.ReplayOptions{From: start, Until: end, DryRun: true},
			publisher.ReplayResult{Read: 7, Distinct: 5, Skipped: 1}},
		{"dry run service", publisher.ReplayOptions{From: start, Until: end, Service: "github", DryRun: true},
			publisher.ReplayResult{Read: 5, Distinct: 3, Skipped: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			last := streamState(t, js, stream.Stream).LastSeq
			res, err := p.Replay(ctx, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			tt.want.Stream = stream.Stream
			if res != tt.want {
				t.Fatalf("Replay = %+v, want %+v", res, tt.want)
			}
			got := msgsAfter(t, js, stream.Stream, last)
			if len(got) != tt.want.Republished {
				t.Fatalf("stream grew by %d messages, want %d", len(got), tt.want.Republished)
			}
			for _, m := range got {
				if k, err := model.ParseSubject(m.Subject); err != nil || (tt.opts.Service != "" && k.Service != tt.opts.Service) {
					t.Errorf("republished %s (%v)", m.Subject, err)
				}
			}
		})
	}
}

// TestReplayStopsAtLastMessage: the window ends at the stream's last message as of the
// start of the replay; requests arriving while it reads are not part of it.
func TestReplayStopsAtLastMessage(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	p := env.Publisher()
	js := env.JS()
	publishRaw(t, js, raw{subject: "refresh.github.1"}, raw{subject: "refresh.github.2"}, raw{subject: "refresh.github.3"})
	arrived := false
	res, err := p.Replay(context.Background(), publisher.ReplayOptions{
		From:   time.Now().Add(-time.Hour),
		DryRun: true,
		Progress: func(publisher.ReplayProgress) {
			if !arrived {
				arrived = true
				publishRaw(t, js, raw{subject: "refresh.github.4"})
			}
		},
	})
	if err != nil || res.Read != 3 || res.Distinct != 3 {
		t.Fatalf("Replay = %+v, %v; want the 3 messages stored before it began", res, err)
	}
	if !arrived {
		t.Fatal("no progress reported")
	}
}

// TestReplayBeforeStream: once old requests have expired, a window reaching back past
// the oldest one left is refused with that message's time; a stream that never lost a
// message covers any window.
func TestReplayBeforeStream(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	ctx := context.Background()
	p := env.Publisher()
	js := env.JS()
	longAgo := time.Now().Add(-24 * time.Hour)
	publishRaw(t, js, raw{subject: "refresh.github.1"}, raw{subject: "refresh.github.2"},
		raw{subject: "refresh.github.3"}, raw{subject: "refresh.github.4"})
	if res, err := p.Replay(ctx, publisher.ReplayOptions{From: longAgo, DryRun: true}); err != nil || res.Read != 4 {
		t.Fatalf("nothing expired yet: Replay = %+v, %v; want 4 read", res, err)
	}

	s, err := js.Stream(ctx, stream.Stream)
	if err != nil {
		t.Fatal(err)
	}
	// Expire the first two, as REFRESHER_STREAM_MAX_AGE would.
	if err := s.Purge(ctx, jetstream.WithPurgeSequence(3)); err != nil {
		t.Fatal(err)
	}
	oldest, err := s.GetMsg(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Replay(ctx, publisher.ReplayOptions{From: longAgo})
	if !errors.Is(err, publisher.ErrBeforeStream) {
		t.Fatalf("Replay from before the oldest message: %v, want ErrBeforeStream", err)
	}
	// Named as status prints times: to the second, and the way out.
	printed := oldest.Time.UTC().Format(time.RFC3339)
	if !strings.Contains(err.Error(), printed+" (its oldest") || !strings.Contains(err.Error(), "--from oldest") {
		t.Fatalf("error %q does not name the oldest message's time %s and --from oldest", err, printed)
	}
	if got := streamState(t, js, stream.Stream).LastSeq; got != 4 {
		t.Fatalf("a refused replay published: last sequence %d", got)
	}
	// The time the error names, to the second as printed, is a start that works; so
	// is the oldest message itself.
	from, _ := time.Parse(time.RFC3339, printed)
	res, err := p.Replay(ctx, publisher.ReplayOptions{From: from, DryRun: true})
	if err != nil || res.Read != 2 {
		t.Fatalf("Replay from %s = %+v, %v; want 2 read", printed, res, err)
	}
	res, err = p.Replay(ctx, publisher.ReplayOptions{FromOldest: true, DryRun: true})
	if err != nil || res.Read != 2 || !res.From.Equal(oldest.Time) {
		t.Fatalf("Replay from the oldest message = %+v, %v; want 2 read from %s", res, err, oldest.Time)
	}

	// Everything expired: any window reaching back before the last message is refused.
	if err := s.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Replay(ctx, publisher.ReplayOptions{From: longAgo}); !errors.Is(err, publisher.ErrBeforeStream) || !strings.Contains(err.Error(), "holds no messages") {
		t.Fatalf("Replay of an expired stream: %v, want ErrBeforeStream saying it holds no messages", err)
	}
}

// TestReplayBadOptions: options that do not describe a window are refused before
// anything is read.
func TestReplayBadOptions(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	p := env.Publisher()
	now := time.Now()
	tests := []struct {
		name string
		opts publisher.ReplayOptions
		want string
	}{
		{"no start", publisher.ReplayOptions{}, "needs a start"},
		{"until before from", publisher.ReplayOptions{From: now, Until: now.Add(-time.Minute)}, "is before start"},
		{"bad service", publisher.ReplayOptions{From: now, Service: "Git Hub"}, `bad service name "Git Hub"`},
		{"bad service dlq", publisher.ReplayOptions{From: now, Service: "a.b", DLQ: true}, `bad service name "a.b"`},
		{"start twice", publisher.ReplayOptions{From: now, FromOldest: true}, "both start the window"},
		// A likely typo: replaying it would read nothing and succeed.
		{"service not configured", publisher.ReplayOptions{From: now, Service: "gitlab", Services: []string{"github"}},
			`unknown service "gitlab": not in REFRESHER_SERVICES (github)`},
		{"service never seen", publisher.ReplayOptions{From: now, Service: "gitlab"},
			`unknown service "gitlab": REFRESH holds no message for it`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := p.Replay(context.Background(), tt.opts)
			if !errors.Is(err, publisher.ErrBadReplay) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Replay(%+v) = %v, want ErrBadReplay with %q", tt.opts, err, tt.want)
			}
		})
	}
}
