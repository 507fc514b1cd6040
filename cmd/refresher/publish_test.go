package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
)

// TestPublishForeignDedupeID is issue 9's repro: a garbage message published first
// with row 3's Nats-Msg-Id for this window must not make `publish --ids 3` report a
// duplicate and leave the row unrequested.
func TestPublishForeignDedupeID(t *testing.T) {
	fx := fleettest.New(t, fleettest.Options{})
	ids := fx.Seed("github", 1)
	statusEnv(t, fx)
	js := fx.Publisher().JetStream()
	key := model.Key{Service: "github", ID: ids[0]}
	// This window's id and the next one's, should the command start after a boundary.
	window := time.Now().UTC().Truncate(15 * time.Minute)
	for _, w := range []time.Time{window, window.Add(15 * time.Minute)} {
		m := nats.NewMsg("refresh.bogus")
		m.Data = []byte("x")
		m.Header.Set(jetstream.MsgIDHeader, publisher.MsgID(key, w))
		if _, err := js.PublishMsg(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	code, stdout, stderr := runCLI(t, "publish", "--service", "github", "--ids", fmt.Sprint(ids[0]))
	if code != 0 || !strings.Contains(stdout, "published=1 duplicate=0 failed=0 unknown=0 collided=1 ") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want the row published under an id of its own, and the collision counted", code, stdout, stderr)
	}
	if !strings.Contains(stderr, "dedupe id taken") {
		t.Errorf("the collision is not logged: %q", stderr)
	}
}
