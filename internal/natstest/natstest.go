// Package natstest starts in-process NATS servers for tests, on random ports (never
// a shared 4222) with JetStream stores in the test's temp dir.
package natstest

import (
	"testing"

	"github.com/refresher/refresher/internal/natsserver"
	"github.com/refresher/refresher/internal/testtier"
)

// Start returns a single JetStream server that is shut down when the test ends.
func Start(t testing.TB) *natsserver.Server {
	t.Helper()
	testtier.Slow(t, "a nats-server")
	s, err := natsserver.Start(natsserver.Options{StoreDir: t.TempDir(), Name: "test"})
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	// Registered after t.TempDir's removal, so it runs first: the server closes its
	// files before the directory goes.
	t.Cleanup(s.Shutdown)
	return s
}

// Cluster returns an n-node JetStream cluster (n ≥ 2) that is shut down when the
// test ends.
func Cluster(t testing.TB, n int) *natsserver.Cluster {
	t.Helper()
	testtier.Slow(t, "a nats-server")
	c, err := natsserver.StartCluster(n, t.TempDir())
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	t.Cleanup(c.Shutdown)
	return c
}
