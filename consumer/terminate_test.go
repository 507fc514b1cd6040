package consumer_test

import (
	"context"
	"os"
	execpkg "os/exec"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
)

// systemNATSServer is the nats-server executable to test against besides the one
// linked in: REFRESHER_TEST_NATS_SERVER, else the one on PATH (Debian's package is
// 2.9), else none.
func systemNATSServer(t *testing.T) string {
	if p := os.Getenv("REFRESHER_TEST_NATS_SERVER"); p != "" {
		return p
	}
	if p, err := execpkg.LookPath("nats-server"); err == nil {
		return p
	}
	t.Skip("*** no nats-server executable (PATH or REFRESHER_TEST_NATS_SERVER): the test against another server version is SKIPPED ***")
	return ""
}

// TestTerminatedOnSystemNATSServer: on the machine's own nats-server (Debian's 2.9,
// which does not take a reason with +TERM), a malformed request and a refused grant
// are terminated once: the dead letter is written once, nothing stays pending, the
// request is not delivered again after AckWait.
func TestTerminatedOnSystemNATSServer(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{NATSBinary: systemNATSServer(t)})
	t.Logf("nats-server %s", env.BinaryVersion)
	ids := env.Seed("github", 2)
	ctx := context.Background()
	if _, err := env.DB.NewUpdate().Model((*model.Credential)(nil)).
		Set("refresh_token = ?", "revoked-by-the-user").Where("id = ?", ids[0]).Exec(ctx); err != nil {
		t.Fatal(err)
	}
	cfg := env.Config()
	cfg.AckWait = time.Second // a message left unterminated comes back within a second
	r := env.StartConsumer(cfg)
	p := env.Publisher(publisher.WithWindow(0))
	if _, err := p.Publish(ctx, "github", ids...); err != nil {
		t.Fatal(err)
	}
	if err := p.JetStream().Conn().Publish("refresh.github.not-a-number", nil); err != nil {
		t.Fatal(err)
	}
	env.WaitIdle(20 * time.Second)
	st := r.Stats()
	if st.ReauthRequired != 1 || st.Malformed != 1 {
		t.Fatalf("stats %+v: want one reauth_required and one malformed", st)
	}
	if dl := env.DeadLetters(); len(dl) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dl))
	}
	<-time.After(2500 * time.Millisecond) // two AckWaits: an unterminated request would be back
	env.WaitIdle(20 * time.Second)
	if again := r.Stats(); again.ReauthRequired != 1 || again.Malformed != 1 || again.SkippedReauth != 0 {
		t.Fatalf("after two ack waits: stats %+v: a terminated request was delivered again", again)
	}
}
