package natsserver

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clusterReadyTimeout bounds the wait for a meta leader and for every member to
// report in: elections take a few seconds, more under -race on a busy machine.
const clusterReadyTimeout = 60 * time.Second

// Cluster is an in-process JetStream cluster on loopback, for tests of R3 streams
// and of clients riding out the loss of a node.
type Cluster struct {
	servers  []*Server
	root     string
	ownsRoot bool
}

// StartCluster starts an n-node (n ≥ 2) JetStream cluster whose members store under
// root/<name> (a temp dir removed by Shutdown when root is empty) and waits until
// it has a meta leader that sees every member, so that an n-replica stream can be
// placed right away.
func StartCluster(n int, root string) (*Cluster, error) {
	if n < 2 {
		return nil, fmt.Errorf("nats cluster: need at least 2 nodes, got %d", n)
	}
	c := &Cluster{root: root}
	if root == "" {
		dir, err := os.MkdirTemp("", "refresher-nats-cluster-")
		if err != nil {
			return nil, fmt.Errorf("nats cluster: store dir: %w", err)
		}
		c.root, c.ownsRoot = dir, true
	}
	// Cluster ports are found by binding and releasing them (every member must know
	// every other's route before any starts), so another process may grab one in
	// between; such a start is retried on fresh ports.
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		if err = c.start(n); err == nil {
			break
		}
		c.stopAll()
		c.servers = nil
	}
	if err != nil {
		if c.ownsRoot {
			_ = os.RemoveAll(c.root)
		}
		return nil, err
	}
	if err := c.waitReady(clusterReadyTimeout); err != nil {
		c.Shutdown()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) start(n int) error {
	ports, err := FreePorts(n)
	if err != nil {
		return err
	}
	routes := make([]*url.URL, n)
	for i, p := range ports {
		routes[i] = &url.URL{Scheme: "nats-route", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(p))}
	}
	for i := range ports {
		name := fmt.Sprintf("refresher-n%d", i+1)
		dir := filepath.Join(c.root, name)
		// A failed earlier attempt may have left a half-made store behind.
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("nats cluster: clear %s: %w", dir, err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("nats cluster: %w", err)
		}
		s := &Server{
			name:     name,
			storeDir: dir,
			route: &routeConf{
				cluster: "refresher",
				port:    ports[i],
				// Every other member; a route to itself would only be dropped.
				routes: append(append([]*url.URL{}, routes[:i]...), routes[i+1:]...),
			},
		}
		c.servers = append(c.servers, s)
		s.mu.Lock()
		err := s.startLocked()
		s.mu.Unlock()
		if err != nil {
			return fmt.Errorf("nats cluster: %w", err)
		}
	}
	return nil
}

// FreePorts returns n distinct free loopback ports, holding each until all are
// picked so the kernel cannot hand out one twice.
func FreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free loopback port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Servers returns the members, in start order.
func (c *Cluster) Servers() []*Server { return append([]*Server(nil), c.servers...) }

// URLs is a comma-separated client URL list of all members, as NATS_URL takes it.
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.servers))
	for i, s := range c.servers {
		urls[i] = s.URL()
	}
	return strings.Join(urls, ",")
}

// MetaLeader returns the running member that leads the JetStream meta group, or nil
// during an election.
func (c *Cluster) MetaLeader() *Server {
	for _, s := range c.servers {
		if ns := s.Inner(); ns != nil && ns.JetStreamIsLeader() {
			return s
		}
	}
	return nil
}

// StreamLeader returns the running member that leads stream in account ("" for the
// default account), or nil if none does at the moment.
func (c *Cluster) StreamLeader(account, stream string) *Server {
	if account == "" {
		account = "$G"
	}
	for _, s := range c.servers {
		if ns := s.Inner(); ns != nil && ns.JetStreamIsStreamLeader(account, stream) {
			return s
		}
	}
	return nil
}

// waitReady waits for a meta leader that has heard from every running member; a
// leader alone is not enough, as placing an R3 stream needs all three known.
func (c *Cluster) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	want := 0
	for _, s := range c.servers {
		if s.Running() {
			want++
		}
	}
	for {
		if l := c.MetaLeader(); l != nil {
			if ns := l.Inner(); ns != nil && len(ns.JetStreamClusterPeers()) >= want {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nats cluster: no JetStream meta leader seeing all %d members after %s", want, timeout)
		}
		<-tick.C
	}
}

// WaitReady waits (up to timeout) until the cluster again has a meta leader that
// sees every running member, e.g. after Stop or Restart of a member.
func (c *Cluster) WaitReady(timeout time.Duration) error { return c.waitReady(timeout) }

func (c *Cluster) stopAll() {
	var wg sync.WaitGroup
	for _, s := range c.servers {
		wg.Add(1)
		go func() { defer wg.Done(); s.Shutdown() }()
	}
	wg.Wait()
}

// Shutdown stops every member (in parallel: one at a time, each would wait out
// elections among the rest) and removes root if StartCluster made it.
func (c *Cluster) Shutdown() {
	c.stopAll()
	if c.ownsRoot {
		_ = os.RemoveAll(c.root)
	}
}
