package natstest_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/internal/natsserver"
	"github.com/refresher/refresher/internal/natstest"
	"github.com/refresher/refresher/internal/testtier"
)

func TestStart(t *testing.T) {
	testtier.Slow(t, "a nats-server")
	var s *natsserver.Server
	t.Run("server", func(t *testing.T) {
		s = natstest.Start(t)
		nc, err := nats.Connect(s.URL())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}}); err != nil {
			t.Fatalf("JetStream not usable: %v", err)
		}
	})
	if s.Running() {
		t.Error("server still running after its test ended")
	}
	if _, err := os.Stat(s.StoreDir()); !os.IsNotExist(err) {
		t.Errorf("store dir %s survived the test (stat: %v)", s.StoreDir(), err)
	}
}

func TestCluster(t *testing.T) {
	testtier.Slow(t, "a nats-server")
	var c *natsserver.Cluster
	t.Run("cluster", func(t *testing.T) {
		c = natstest.Cluster(t, 3)
		if n := len(c.Servers()); n != 3 {
			t.Fatalf("%d servers, want 3", n)
		}
		nc, err := nats.Connect(c.URLs())
		if err != nil {
			t.Fatal(err)
		}
		nc.Close()
	})
	for _, s := range c.Servers() {
		if s.Running() {
			t.Errorf("%s still running after its test ended", s.Name())
		}
	}
}
