package publisher_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

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
	env.StartConsumer(cfg, env.NoCircuit())
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

	all := fleettest.ListDeadLetters(t, js, 0)
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
	if got := fleettest.ListDeadLetters(t, js, 2); len(got) != 2 || got[0] != all[4] || got[1] != all[5] {
		t.Fatalf("limit 2 listed %+v, want the last two of %+v", got, all)
	}
	if got := fleettest.ListDeadLetters(t, js, 10); len(got) != 6 {
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
	want := publisher.ReplayResult{Stream: stream.DLQStream, Read: 6, Distinct: 4, Skipped: 2, Republished: 4}
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
	n, err := stream.PurgeDeadLetters(ctx, js, cutoff)
	if err != nil || n != 2 {
		t.Fatalf("purge before cutoff removed %d (%v), want 2", n, err)
	}
	if got := fleettest.ListDeadLetters(t, js, 0); len(got) != 4 || got[0] != all[2] {
		t.Fatalf("after purging by age: %+v, want the last 4 of %+v", got, all)
	}
	if n, err := stream.PurgeDeadLetters(ctx, js, cutoff); err != nil || n != 0 {
		t.Fatalf("second purge before cutoff removed %d (%v), want 0", n, err)
	}
	// Dead letters leave on purpose: replaying from before the oldest one left is fine.
	if res, err := p.Replay(ctx, publisher.ReplayOptions{From: time.Now().Add(-time.Hour), DLQ: true, DryRun: true}); err != nil || res.Read != 4 {
		t.Fatalf("DLQ replay after a purge = %+v, %v; want 4 read", res, err)
	}
	// Purge all.
	if n, err := stream.PurgeDeadLetters(ctx, js, time.Time{}); err != nil || n != 4 {
		t.Fatalf("purge all removed %d (%v), want 4", n, err)
	}
	if got := fleettest.ListDeadLetters(t, js, 0); len(got) != 0 {
		t.Fatalf("after purging all: %+v", got)
	}
	if n, err := stream.PurgeDeadLetters(ctx, js, time.Time{}); err != nil || n != 0 {
		t.Fatalf("purging an empty DLQ removed %d (%v)", n, err)
	}
}
