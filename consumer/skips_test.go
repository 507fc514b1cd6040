package consumer_test

import (
	"context"
	"testing"
	"time"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
)

// TestSkipsPerMinute: requests the skip rule answers write nothing to PostgreSQL, so
// the consumers count them per minute in consumer.SkipsBucket for the console; the
// count is written at the latest when the consumer stops, and summed per service.
func TestSkipsPerMinute(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	ids := env.Seed("github", 2)
	r := env.StartConsumer(env.Config())
	ctx := context.Background()
	js := env.JS()
	if got, err := consumer.SkipsPerMinute(ctx, js); err != nil || len(got) != 0 {
		t.Fatalf("before any skip: %v, %v", got, err)
	}
	if _, err := env.Publisher(publisher.WithWindow(0)).Publish(ctx, "github", ids...); err != nil {
		t.Fatal(err)
	}
	env.WaitIdle(30 * time.Second)
	old := time.Now().Add(-time.Hour)
	for _, id := range ids {
		for range 3 {
			publishRaw(t, env, subj(id), "", map[string]string{model.HeaderRequestedAt: model.FormatRequestedAt(old)})
		}
	}
	env.WaitIdle(30 * time.Second)
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if st := r.Stats(); st.SkippedFresh != 6 {
		t.Fatalf("stats %+v: want 6 skips", st)
	}
	got, err := consumer.SkipsPerMinute(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, c := range got["github"] {
		n += c
	}
	if n != 6 || len(got) != 1 {
		t.Fatalf("skips per minute %v: want 6 for github", got)
	}
}
