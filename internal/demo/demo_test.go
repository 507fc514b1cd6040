package demo_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/refresher/refresher/internal/demo"
	"github.com/refresher/refresher/internal/testtier"
)

// TestDemo runs the demo end to end on a small data set: it must report its
// verification and succeed.
func TestDemo(t *testing.T) {
	testtier.Slow(t, "PostgreSQL and a nats-server")
	var out, logs bytes.Buffer
	o := demo.DefaultOptions()
	o.Count = 200
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := demo.Run(context.Background(), o, &out, log); err != nil {
		t.Fatalf("demo: %v\n%s\n%s", err, out.String(), logs.String())
	}
	for _, want := range []string{"seeded 200 credentials", "published: scheduled=200 deduplicated=200", "dead_lettered=6", "lost=0", "OK: every credential"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestDemoRejectsBadOptions(t *testing.T) {
	o := demo.DefaultOptions()
	o.Consumers = 0
	if err := demo.Run(context.Background(), o, &bytes.Buffer{}, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("demo accepted zero consumers")
	}
}
