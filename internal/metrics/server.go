package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// ErrListen wraps a failure to listen on the metrics address: a port in use or an
// address not on this host, which only the operator can fix.
var ErrListen = errors.New("listen")

// Server serves a Handler on its own listener until Shutdown.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan error
	log  *slog.Logger
}

// Listen binds addr now, before the process connects anywhere, so that a bad or busy
// address fails at start; Serve then starts answering.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		// net.OpError repeats the operation and address this message already names.
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Err != nil {
			err = oe.Err
		}
		return nil, fmt.Errorf("%w on %s: %w", ErrListen, addr, err)
	}
	return ln, nil
}

// Serve answers h on ln in the background. It owns ln from now on.
func Serve(ln net.Listener, h http.Handler, log *slog.Logger) *Server {
	s := &Server{
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       time.Minute,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		ln:   ln,
		done: make(chan error, 1),
		log:  log,
	}
	go func() {
		err := s.srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		} else {
			log.Error("metrics server stopped", "addr", ln.Addr().String(), "error", err)
		}
		s.done <- err
	}()
	log.Info("serving metrics and health", "addr", ln.Addr().String(), "paths", "/metrics /healthz /readyz")
	return s
}

// Addr is the address being served (the real port when asked for port 0).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Shutdown stops accepting, lets requests in progress finish until ctx ends, and
// returns the first error of either.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		_ = s.srv.Close()
		err = fmt.Errorf("stop metrics server on %s: %w", s.ln.Addr(), err)
	}
	if serr := <-s.done; serr != nil && err == nil {
		err = fmt.Errorf("metrics server on %s: %w", s.ln.Addr(), serr)
	}
	return err
}
