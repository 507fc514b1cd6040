// Package natstest starts in-process NATS servers for tests, on random ports (never
// a shared 4222) with JetStream stores in the test's temp dir.
package natstest

import (
	"bytes"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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

// Connect opens a connection to url, closed when the test ends, and its JetStream.
func Connect(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("natstest: connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	return nc, js
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

// Binary starts the nats-server executable at path (another version than the one
// linked in, such as the distribution's) with JetStream on a free loopback port and
// its store in the test's temp dir, and returns its URL and its version. It is killed
// when the test ends.
func Binary(t testing.TB, path string) (url, version string) {
	t.Helper()
	testtier.Slow(t, "a nats-server executable")
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		t.Fatalf("natstest: %s --version: %v", path, err)
	}
	version = strings.TrimPrefix(strings.TrimSpace(string(out)), "nats-server: v")
	ports, err := natsserver.FreePorts(1)
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	port := ports[0]
	cmd := exec.Command(path, "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-sd", t.TempDir())
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("natstest: start %s: %v", path, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	url = fmt.Sprintf("nats://127.0.0.1:%d", port)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		nc, err := nats.Connect(url)
		if err == nil {
			nc.Close()
			return url, version
		}
		if time.Now().After(deadline) {
			t.Fatalf("natstest: %s not answering on %s after 10 s: %v\n%s", path, url, err, logs.String())
		}
	}
}
