// Package natsserver runs nats-server with JetStream inside this process, for the
// demo command and for tests: one server, or a small cluster for failover tests.
package natsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// readyTimeout bounds how long a server may take to open its listeners. A port
// taken by another process is only reported when it expires, so it is not long.
const readyTimeout = 10 * time.Second

// Options configures Start.
type Options struct {
	// StoreDir holds JetStream's files. Empty: a new temp dir, removed by Shutdown.
	StoreDir string
	// Port is the client port on 127.0.0.1; 0 picks a free one. Restart keeps it.
	Port int
	// Name is the server name (JetStream needs stable, distinct names in a cluster).
	// Empty: "refresher-nats".
	Name string
	// Log receives the server's log lines; nil keeps the server silent, so tests and
	// the demo do not interleave its output with their own.
	Log *slog.Logger
	// Cluster, when set, makes the server a member of a JetStream cluster.
	Cluster *ClusterOptions
}

// ClusterOptions is one cluster member's place in its cluster.
type ClusterOptions struct {
	// Name is the cluster's name, the same on every member.
	Name string
	// Port is this member's cluster (route) port on 127.0.0.1.
	Port int
	// Routes are the other members' route URLs (nats-route://127.0.0.1:port).
	Routes []string
}

// Server is an in-process nats-server with JetStream. Its URL stays the same across
// Restart, so clients configured with it reconnect by themselves.
type Server struct {
	name      string
	storeDir  string
	ownsStore bool
	log       *slog.Logger
	route     *routeConf // nil unless part of a Cluster

	mu     sync.Mutex
	port   int // 0 until the first start has picked one
	inner  *server.Server
	closed bool
}

// routeConf is a cluster member's fixed cluster port and routes: fixed so that a
// restarted member comes back where its peers expect it.
type routeConf struct {
	cluster string
	port    int
	routes  []*url.URL
}

// Start starts a server and waits until it accepts connections with JetStream on.
func Start(opts Options) (*Server, error) {
	s := &Server{name: opts.Name, storeDir: opts.StoreDir, log: opts.Log, port: opts.Port}
	if c := opts.Cluster; c != nil {
		s.route = &routeConf{cluster: c.Name, port: c.Port}
		for _, r := range c.Routes {
			u, err := url.Parse(r)
			if err != nil || u.Host == "" {
				return nil, fmt.Errorf("nats-server: route %q: want nats-route://host:port", r)
			}
			s.route.routes = append(s.route.routes, u)
		}
	}
	if s.name == "" {
		s.name = "refresher-nats"
	}
	if s.storeDir == "" {
		dir, err := os.MkdirTemp("", "refresher-nats-")
		if err != nil {
			return nil, fmt.Errorf("nats-server: JetStream store dir: %w", err)
		}
		s.storeDir, s.ownsStore = dir, true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.startLocked(); err != nil {
		if s.ownsStore {
			_ = os.RemoveAll(s.storeDir)
		}
		return nil, err
	}
	return s, nil
}

func (s *Server) serverOptions() *server.Options {
	o := &server.Options{
		ServerName: s.name,
		Host:       "127.0.0.1",
		Port:       s.port,
		JetStream:  true,
		StoreDir:   s.storeDir,
		// Signal handlers belong to the program embedding us, not to the server.
		NoSigs: true,
		NoLog:  s.log == nil,
	}
	if o.Port == 0 {
		o.Port = server.RANDOM_PORT
	}
	if s.route != nil {
		o.Cluster = server.ClusterOpts{Name: s.route.cluster, Host: "127.0.0.1", Port: s.route.port}
		o.Routes = s.route.routes
	}
	return o
}

// startLocked starts a new inner server; s.mu must be held.
func (s *Server) startLocked() error {
	ns, err := server.NewServer(s.serverOptions())
	if err != nil {
		return fmt.Errorf("nats-server %s: %w", s.name, err)
	}
	if s.log != nil {
		ns.SetLoggerV2(slogAdapter{s.log.With("nats_server", s.name)}, s.log.Enabled(context.Background(), slog.LevelDebug), false, false)
	}
	ns.Start()
	if !ns.ReadyForConnections(readyTimeout) {
		ns.Shutdown()
		ns.WaitForShutdown()
		if s.port != 0 {
			return fmt.Errorf("nats-server %s: not ready for connections after %s (port %d in use?)", s.name, readyTimeout, s.port)
		}
		return fmt.Errorf("nats-server %s: not ready for connections after %s", s.name, readyTimeout)
	}
	// A JetStream start failure is only logged by the server; without this check
	// it would surface later as a confusing "JetStream not enabled" in a client.
	if !ns.JetStreamEnabled() {
		ns.Shutdown()
		ns.WaitForShutdown()
		return fmt.Errorf("nats-server %s: JetStream did not start (store dir %s)", s.name, s.storeDir)
	}
	if s.port == 0 {
		s.port = ns.Addr().(*net.TCPAddr).Port
	}
	s.inner = ns
	return nil
}

// URL is the client URL, e.g. nats://127.0.0.1:4222.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return "nats://127.0.0.1:" + strconv.Itoa(s.port)
}

// Name is the server name, as in JetStream cluster and stream info.
func (s *Server) Name() string { return s.name }

// StoreDir is the JetStream store directory.
func (s *Server) StoreDir() string { return s.storeDir }

// Inner returns the running nats-server (nil while stopped), for what this package
// does not wrap; it changes on every Restart.
func (s *Server) Inner() *server.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inner
}

// Running reports whether the server is up (not stopped or shut down).
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inner != nil
}

// Stop shuts the server down as a crash would look to clients, keeping its port
// and store so that Restart brings it back with its streams.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

func (s *Server) stopLocked() {
	if s.inner == nil {
		return
	}
	s.inner.Shutdown()
	s.inner.WaitForShutdown()
	s.inner = nil
}

// Restart stops the server if it is running and starts it again on the same port
// and store dir, to test clients that must reconnect and streams that must survive.
// The port is free again as soon as the server has stopped, but another process
// may take it meanwhile; that is retried for a few seconds.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("nats-server " + s.name + ": restart after Shutdown")
	}
	s.stopLocked()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := s.startLocked()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		if !portBusy(s.port) {
			return err
		}
		if s.log != nil {
			s.log.Warn("nats-server: port busy, retrying restart", "port", s.port, "err", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// portBusy reports whether something else listens on 127.0.0.1:port.
func portBusy(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return true
	}
	_ = l.Close()
	return false
}

// Shutdown stops the server for good and removes its store dir if Start made it.
// It is safe to call more than once.
func (s *Server) Shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
	if s.closed {
		return
	}
	s.closed = true
	if s.ownsStore {
		_ = os.RemoveAll(s.storeDir)
	}
}

// slogAdapter feeds nats-server's log calls into slog. Its Fatalf only logs:
// nats-server's own loggers exit the process on Fatalf, which in a test binary
// would hide the error behind a bare exit status.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Noticef(format string, v ...any) { a.l.Info(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Warnf(format string, v ...any)   { a.l.Warn(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Fatalf(format string, v ...any) {
	a.l.Error("fatal: " + fmt.Sprintf(format, v...))
}
func (a slogAdapter) Errorf(format string, v ...any) { a.l.Error(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Debugf(format string, v ...any) { a.l.Debug(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Tracef(format string, v ...any) { a.l.Debug(fmt.Sprintf(format, v...)) }
