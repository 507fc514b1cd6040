package natsserver_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/internal/natsserver"
	"github.com/refresher/refresher/internal/testtier"
)

// waitFor polls cond until it returns nil or the timeout passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not done after %s: %v", what, timeout, err)
		}
		<-tick.C
	}
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// connect returns a client that keeps reconnecting, as the real services do.
func connect(t testing.TB, urls string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(urls,
		nats.MaxReconnects(-1),
		nats.ReconnectWait(25*time.Millisecond),
		nats.ReconnectJitter(0, 0),
		nats.Timeout(2*time.Second))
	if err != nil {
		t.Fatalf("connect %s: %v", urls, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// publish sends messages from..to-1, each retried until acknowledged: a request
// written to a connection the server has just closed is lost, not failed, so each
// attempt gets its own timeout, and a message id makes a retry of a message that
// did get stored a no-op.
func publish(t testing.TB, ctx context.Context, js jetstream.JetStream, subject string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		waitFor(t, fmt.Sprintf("publish %d", i), 30*time.Second, func() error {
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			_, err := js.Publish(ctx, subject, []byte(fmt.Sprint(i)), jetstream.WithMsgID(fmt.Sprint(i)))
			return err
		})
	}
}

func TestRestartKeepsStreamAndClientsReconnect(t *testing.T) {
	testtier.Slow(t, "a nats-server")
	ctx := testContext(t)
	store := t.TempDir()
	s, err := natsserver.Start(natsserver.Options{StoreDir: store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	url := s.URL()
	if strings.HasSuffix(url, ":4222") || !strings.HasPrefix(url, "nats://127.0.0.1:") {
		t.Fatalf("URL %s: want a random loopback port", url)
	}

	nc, js := connect(t, url)
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "REFRESH", Subjects: []string{"refresh.>"}, Storage: jetstream.FileStorage,
	})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	publish(t, ctx, js, "refresh.svc.1", 0, 10)

	before := s.Inner()
	if err := s.Restart(); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if s.URL() != url {
		t.Errorf("URL changed across restart: %s → %s", url, s.URL())
	}
	if s.Inner() == before || !s.Running() {
		t.Error("Inner() still returns the stopped server")
	}
	// IsConnected alone may still describe the old connection if the client has not
	// yet read its EOF; the reconnect count cannot.
	waitFor(t, "client reconnect", 10*time.Second, func() error {
		if nc.Stats().Reconnects == 0 || !nc.IsConnected() {
			return fmt.Errorf("status %s, %d reconnects", nc.Status(), nc.Stats().Reconnects)
		}
		return nil
	})
	infoCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := stream.Info(infoCtx)
	if err != nil {
		t.Fatalf("stream info after restart: %v", err)
	}
	if info.State.Msgs != 10 {
		t.Errorf("stream has %d messages after restart, want 10", info.State.Msgs)
	}
	publish(t, ctx, js, "refresh.svc.2", 10, 11)
	msg, err := stream.GetLastMsgForSubject(ctx, "refresh.svc.2")
	if err != nil || string(msg.Data) != "10" {
		t.Fatalf("last message = %v, %v", msg, err)
	}
}

func TestStopAndRestart(t *testing.T) {
	testtier.Slow(t, "a nats-server")
	s, err := natsserver.Start(natsserver.Options{StoreDir: t.TempDir(), Name: "stopper"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	s.Stop()
	if s.Running() || s.Inner() != nil {
		t.Error("still running after Stop")
	}
	if nc, err := nats.Connect(s.URL(), nats.Timeout(time.Second)); err == nil {
		nc.Close()
		t.Fatal("connected to a stopped server")
	}
	if err := s.Restart(); err != nil {
		t.Fatalf("Restart after Stop: %v", err)
	}
	nc, err := nats.Connect(s.URL())
	if err != nil {
		t.Fatalf("connect after restart: %v", err)
	}
	nc.Close()
	if got := s.Inner().Name(); got != "stopper" {
		t.Errorf("server name %q, want stopper", got)
	}
}

func TestTempStoreRemovedOnShutdown(t *testing.T) {
	testtier.Slow(t, "a nats-server")
	s, err := natsserver.Start(natsserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	dir := s.StoreDir()
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("store dir: %v", err)
	}
	s.Shutdown()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("store dir %s survived Shutdown (stat: %v)", dir, err)
	}
	s.Shutdown() // idempotent
	if err := s.Restart(); err == nil {
		t.Error("Restart after Shutdown succeeded")
	}
}

func TestFixedPortAndLogging(t *testing.T) {
	testtier.Slow(t, "a nats-server")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	s, err := natsserver.Start(natsserver.Options{StoreDir: t.TempDir(), Port: port, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	if want := fmt.Sprintf("nats://127.0.0.1:%d", port); s.URL() != want {
		t.Errorf("URL %s, want %s", s.URL(), want)
	}
	if !strings.Contains(buf.String(), "Starting JetStream") {
		t.Errorf("server log not routed to Options.Log; got:\n%s", buf.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestClusterTooSmall(t *testing.T) {
	if _, err := natsserver.StartCluster(1, t.TempDir()); err == nil {
		t.Fatal("StartCluster(1) succeeded")
	}
}

// replicaMsgs is how many messages member s holds for stream, read from the server
// itself rather than through the stream leader.
func replicaMsgs(s *natsserver.Server, stream string) (uint64, error) {
	ns := s.Inner()
	if ns == nil {
		return 0, errors.New(s.Name() + " is not running")
	}
	acc, err := ns.JszAccount(&server.JSzOptions{Account: "$G", Streams: true})
	if err != nil {
		return 0, err
	}
	for _, sd := range acc.Streams {
		if sd.Name == stream {
			return sd.State.Msgs, nil
		}
	}
	return 0, fmt.Errorf("%s has no replica of %s", s.Name(), stream)
}

func TestClusterR3StreamSurvivesLeaderLoss(t *testing.T) {
	testtier.Slow(t, "a nats-server")
	ctx := testContext(t)
	start := time.Now()
	c, err := natsserver.StartCluster(3, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Shutdown)
	t.Logf("3-node cluster ready in %s", time.Since(start).Round(time.Millisecond))

	servers := c.Servers()
	names := map[string]bool{}
	for _, s := range servers {
		names[s.Name()] = true
		if strings.HasSuffix(s.URL(), ":4222") {
			t.Errorf("member %s on the shared port 4222", s.Name())
		}
	}
	if len(servers) != 3 || len(names) != 3 {
		t.Fatalf("want 3 distinct members, got %v", names)
	}
	if got := strings.Count(c.URLs(), ",") + 1; got != 3 {
		t.Errorf("URLs() = %q, want 3 URLs", c.URLs())
	}
	if c.MetaLeader() == nil {
		t.Error("no meta leader after StartCluster")
	}

	_, js := connect(t, c.URLs())
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "REFRESH", Subjects: []string{"refresh.>"}, Storage: jetstream.FileStorage, Replicas: 3,
	})
	if err != nil {
		t.Fatalf("create R3 stream: %v", err)
	}
	publish(t, ctx, js, "refresh.svc.1", 0, 5)
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
		t.Fatalf("cluster info %+v: want a leader and 2 replicas", info.Cluster)
	}
	leader := c.StreamLeader("", "REFRESH")
	if leader == nil || leader.Name() != info.Cluster.Leader {
		t.Fatalf("StreamLeader = %v, stream info says %s", leader, info.Cluster.Leader)
	}

	// Lose the stream leader: another member takes over and clients keep publishing.
	leader.Stop()
	waitFor(t, "new stream leader", 30*time.Second, func() error {
		if l := c.StreamLeader("", "REFRESH"); l == nil || l == leader {
			return errors.New("no new leader yet")
		}
		return nil
	})
	publish(t, ctx, js, "refresh.svc.2", 5, 10)

	// Bring it back: it catches up from the others.
	if err := leader.Restart(); err != nil {
		t.Fatalf("restart %s: %v", leader.Name(), err)
	}
	if err := c.WaitReady(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every replica holds all 10 messages", 30*time.Second, func() error {
		for _, s := range servers {
			n, err := replicaMsgs(s, "REFRESH")
			if err != nil {
				return err
			}
			if n != 10 {
				return fmt.Errorf("%s holds %d messages", s.Name(), n)
			}
		}
		return nil
	})
}
