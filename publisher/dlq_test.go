package publisher_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/publisher"
)

// listDeadLetters returns every dead letter ListDeadLetters yields for limit.
func listDeadLetters(t *testing.T, env *fleettest.Env, limit int) []publisher.DeadLetter {
	t.Helper()
	var out []publisher.DeadLetter
	err := publisher.ListDeadLetters(context.Background(), env.JS(), limit, func(dl publisher.DeadLetter) error {
		out = append(out, dl)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDeadLetterLifecycle: garbage and a provider outage produce dead letters; they
// are listed with what died, when, why and after how many deliveries; replaying them
// once the provider is back completes the requests (and skips the garbage); purging
// by age and then entirely removes exactly what it says.
func TestDeadLetterLifecycle(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	ctx := context.Background()
	ids := env.Seed("github", 4)
	cfg := env.Config()
	cfg.MaxDeliver = 2
	env.StartConsumer(cfg)
	p := env.Publisher(publisher.WithWindow(0))
	js := env.JS()

	publishRaw(t, js, raw{subject: "refresh.github.x"}, raw{subject: "refresh.github.9", body: "garbage"})
	fleettest.Eventually(t, 30*time.Second, "2 dead letters", func() bool { return len(env.DeadLetters()) == 2 })
	cutoff := time.Now()

	env.Fake.SetOutage(true)
	if _, err := p.Publish(ctx, "github", ids...); err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 30*time.Second, "6 dead letters", func() bool { return len(env.DeadLetters()) == 6 })
	env.WaitIdle(30 * time.Second)

	all := listDeadLetters(t, env, 0)
	if len(all) != 6 {
		t.Fatalf("listed %d dead letters, want 6: %+v", len(all), all)
	}
	for i, dl := range all {
		if i > 0 && (dl.Sequence <= all[i-1].Sequence || dl.Time.Before(all[i-1].Time)) {
			t.Errorf("dead letter %d (%+v) listed after %+v", i, dl, all[i-1])
		}
		if dl.Time.IsZero() || dl.OriginalSequence == 0 {
			t.Errorf("dead letter %d lacks its time or original sequence: %+v", i, dl)
		}
		wantReason, wantDeliveries := "retried:", uint64(2)
		if i < 2 {
			wantReason, wantDeliveries = "malformed:", 1
		}
		if !strings.HasPrefix(dl.Reason, wantReason) || dl.Deliveries != wantDeliveries {
			t.Errorf("dead letter %d: reason %q after %d deliveries, want %s... after %d", i, dl.Reason, dl.Deliveries, wantReason, wantDeliveries)
		}
	}
	// The fleet handles messages concurrently: each batch dies in any order.
	garbage := []string{all[0].OriginalSubject, all[1].OriginalSubject}
	slices.Sort(garbage)
	if !slices.Equal(garbage, []string{"refresh.github.9", "refresh.github.x"}) {
		t.Errorf("garbage dead letters for %q, want refresh.github.9 and refresh.github.x", garbage)
	}
	var outage []string
	for _, dl := range all[2:] {
		outage = append(outage, dl.OriginalSubject)
	}
	slices.Sort(outage)
	var requested []string
	for _, id := range ids {
		requested = append(requested, fmt.Sprintf("refresh.github.%d", id))
	}
	slices.Sort(requested)
	if !slices.Equal(outage, requested) {
		t.Errorf("outage dead letters for %q, want %q", outage, requested)
	}
	// A limit lists the newest, still oldest first.
	if got := listDeadLetters(t, env, 2); len(got) != 2 || got[0] != all[4] || got[1] != all[5] {
		t.Fatalf("limit 2 listed %+v, want the last two of %+v", got, all)
	}
	if got := listDeadLetters(t, env, 10); len(got) != 6 {
		t.Fatalf("limit 10 listed %d, want all 6", len(got))
	}

	// The provider is back: replaying the dead letters completes the requests.
	env.Fake.SetOutage(false)
	before := versions(t, env, ids)
	calls := env.Fake.Stats().Calls
	res, err := p.Replay(ctx, publisher.ReplayOptions{From: time.Now().Add(-time.Hour), DLQ: true})
	if err != nil {
		t.Fatal(err)
	}
	want := publisher.ReplayResult{Stream: publisher.DLQStream, Read: 6, Distinct: 4, Skipped: 2, Republished: 4}
	if res != want {
		t.Fatalf("DLQ replay = %+v, want %+v", res, want)
	}
	env.WaitIdle(30 * time.Second)
	if got := env.Fake.Stats().Calls - calls; got != 4 {
		t.Fatalf("DLQ replay made %d provider calls, want 4", got)
	}
	after := versions(t, env, ids)
	for _, id := range ids {
		if after[id] != before[id]+1 {
			t.Errorf("id %d: version %d -> %d, want one refresh", id, before[id], after[id])
		}
	}
	env.Verify()
	if n := len(env.DeadLetters()); n != 6 {
		t.Fatalf("%d dead letters after the replay, want the same 6", n)
	}

	// Purge by age: the two garbage letters are older than the cutoff.
	n, err := publisher.PurgeDeadLetters(ctx, js, cutoff)
	if err != nil || n != 2 {
		t.Fatalf("purge before cutoff removed %d (%v), want 2", n, err)
	}
	if got := listDeadLetters(t, env, 0); len(got) != 4 || got[0] != all[2] {
		t.Fatalf("after purging by age: %+v, want the last 4 of %+v", got, all)
	}
	if n, err := publisher.PurgeDeadLetters(ctx, js, cutoff); err != nil || n != 0 {
		t.Fatalf("second purge before cutoff removed %d (%v), want 0", n, err)
	}
	// Dead letters leave on purpose: replaying from before the oldest one left is fine.
	if res, err := p.Replay(ctx, publisher.ReplayOptions{From: time.Now().Add(-time.Hour), DLQ: true, DryRun: true}); err != nil || res.Read != 4 {
		t.Fatalf("DLQ replay after a purge = %+v, %v; want 4 read", res, err)
	}
	// Purge all.
	if n, err := publisher.PurgeDeadLetters(ctx, js, time.Time{}); err != nil || n != 4 {
		t.Fatalf("purge all removed %d (%v), want 4", n, err)
	}
	if got := listDeadLetters(t, env, 0); len(got) != 0 {
		t.Fatalf("after purging all: %+v", got)
	}
	if n, err := publisher.PurgeDeadLetters(ctx, js, time.Time{}); err != nil || n != 0 {
		t.Fatalf("purging an empty DLQ removed %d (%v)", n, err)
	}
}

// TestListDeadLettersLimit: a limit lists the newest dead letters, oldest first, even
// when some in between were deleted by hand; a dead letter without the original-subject
// header is listed by its own subject less "dlq.".
func TestListDeadLettersLimit(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	env.Publisher()
	ctx := context.Background()
	js := env.JS()
	for i := 1; i <= 6; i++ {
		m := nats.NewMsg(fmt.Sprintf("dlq.refresh.github.%d", i))
		if i != 6 {
			m.Header.Set(publisher.HeaderOriginalSubject, fmt.Sprintf("refresh.github.%d", i))
			m.Header.Set(publisher.HeaderDeliveries, "3")
		}
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	s, err := js.Stream(ctx, publisher.DLQStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMsg(ctx, 2); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		limit int
		want  []uint64
	}{
		{0, []uint64{1, 3, 4, 5, 6}},
		{2, []uint64{5, 6}},
		{3, []uint64{4, 5, 6}},
		{5, []uint64{1, 3, 4, 5, 6}},
		{10, []uint64{1, 3, 4, 5, 6}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.limit), func(t *testing.T) {
			got := listDeadLetters(t, env, tt.limit)
			var seqs []uint64
			for _, dl := range got {
				seqs = append(seqs, dl.Sequence)
				if want := fmt.Sprintf("refresh.github.%d", dl.Sequence); dl.OriginalSubject != want {
					t.Errorf("dead letter %d: original subject %q, want %q", dl.Sequence, dl.OriginalSubject, want)
				}
			}
			if !slices.Equal(seqs, tt.want) {
				t.Fatalf("limit %d listed %v, want %v", tt.limit, seqs, tt.want)
			}
			if last := got[len(got)-1]; last.Deliveries != 0 {
				t.Errorf("unrecorded deliveries listed as %d", last.Deliveries)
			}
		})
	}
}

// TestListDeadLettersBadLimit: a negative limit is refused.
func TestListDeadLettersBadLimit(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	env.Publisher()
	err := publisher.ListDeadLetters(context.Background(), env.JS(), -1, func(publisher.DeadLetter) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "limit -1") {
		t.Fatalf("ListDeadLetters(-1) = %v, want an error naming the limit", err)
	}
}
