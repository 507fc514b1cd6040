package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/model"
)

// TestRequestedAtHeaderRefused: a zero Refresh-Requested-At, or two of them, is
// dead-lettered with its reason instead of the first one silently winning.
func TestRequestedAtHeaderRefused(t *testing.T) {
	fx := fleettest.New(t, fleettest.Options{})
	fx.Publisher() // creates the streams
	ids := fx.Seed("github", 2)
	now := model.FormatRequestedAt(time.Now())
	for i, values := range [][]string{{"0001-01-01T00:00:00Z"}, {now, now}} {
		m := nats.NewMsg(model.Key{Service: "github", ID: ids[i]}.Subject())
		m.Header[model.HeaderRequestedAt] = values
		if _, err := fx.JS().PublishMsg(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	run := fx.StartConsumer(fx.Config())
	defer func() { _ = run.Stop() }() // the test's assertions are made; Stop is clean-up
	fleettest.Eventually(t, 30*time.Second, "2 dead letters", func() bool { return len(fx.DeadLetters()) == 2 })
	var reasons []string
	for _, dl := range fx.DeadLetters() {
		reasons = append(reasons, dl.Reason)
	}
	all := strings.Join(reasons, "\n")
	for _, want := range []string{`Refresh-Requested-At "0001-01-01T00:00:00Z": the zero time`, "2 Refresh-Requested-At headers, want at most one"} {
		if !strings.Contains(all, want) {
			t.Errorf("dead-letter reasons lack %q:\n%s", want, all)
		}
	}
	for _, id := range ids {
		if v := fx.Credential(id).Version; v != 0 {
			t.Errorf("row %d refreshed (version %d) by a refused request", id, v)
		}
	}
}
