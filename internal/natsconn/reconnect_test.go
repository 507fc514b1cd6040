package natsconn_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/internal/natsconn"
)

// TestCredentialsRefusedLater: a connection whose password the server stops
// accepting (rotated on the server, not in the client) does not reconnect in a loop
// for ever. Each refusal is logged at error level, and after the server has refused
// the same credentials twice the connection is closed for good, so the process can
// tell and exit. The password appears in no log line.
func TestCredentialsRefusedLater(t *testing.T) {
	const oldPassword, newPassword = "pw-before-3e1f", "pw-after-77c0"
	users := func(pw string) func(*server.Options) {
		return func(o *server.Options) { o.Users = []*server.User{{Username: "alice", Password: pw}} }
	}
	s := startServer(t, users(oldPassword))
	log, logs := newLog()
	closed := make(chan struct{})
	nc, err := natsconn.ConnectWith(clientURL(s), t.Name(), log, config.NATS{User: "alice", Password: oldPassword},
		// natsconn's own handler logs the close; this one only lets the test wait for it.
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	// The server's configuration is reloaded with the new password: it disconnects
	// clients whose credentials no longer pass and refuses them on reconnect.
	rotated := serverOptions(users(newPassword))
	start := time.Now()
	if err := s.ReloadOptions(rotated); err != nil {
		t.Fatalf("reload nats-server: %v", err)
	}
	select {
	case <-closed:
	case <-time.After(15 * time.Second):
		t.Fatalf("connection still %s 15s after its credentials were refused; logs:\n%s", nc.Status(), logs.String())
	}
	t.Logf("closed %s after the password changed", time.Since(start).Round(time.Millisecond))
	if !errors.Is(nc.LastError(), nats.ErrAuthorization) {
		t.Errorf("last error %v: want an authorization violation", nc.LastError())
	}
	// The close is logged from the client's callback goroutine, maybe after ours.
	fleettest.Eventually(t, 5*time.Second, "the close to be logged", func() bool {
		return strings.Contains(logs.String(), `level=ERROR msg="nats connection closed for good"`)
	})
	out := logs.String()
	for _, want := range []string{
		`level=ERROR msg="nats server refused the credentials; the connection is closed if it refuses them again"`,
		`error="nats: authorization violation"`,
		`auth="user \"alice\" (NATS_USER, NATS_PASSWORD)"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %s:\n%s", want, out)
		}
	}
	noSecrets(t, out, oldPassword, newPassword)
}

// TestReloadKeepsAcceptedCredentials is the control for the test above: a reload
// that still accepts the client's credentials leaves the connection up.
func TestReloadKeepsAcceptedCredentials(t *testing.T) {
	const password = "pw-kept-19d2"
	alice := &server.User{Username: "alice", Password: password}
	s := startServer(t, func(o *server.Options) { o.Users = []*server.User{alice} })
	log, logs := newLog()
	nc, err := natsconn.ConnectWith(clientURL(s), t.Name(), log, config.NATS{User: "alice", Password: password})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	more := serverOptions(func(o *server.Options) {
		o.Users = []*server.User{alice, {Username: "bob", Password: "other"}}
	})
	if err := s.ReloadOptions(more); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("flush after reload: %v", err)
	}
	if nc.IsClosed() || strings.Contains(logs.String(), "level=ERROR") {
		t.Fatalf("connection %s after a reload that keeps its user; logs:\n%s", nc.Status(), logs.String())
	}
}
