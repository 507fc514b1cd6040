package fake

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"
)

// Start serves p on addr (use "127.0.0.1:0" for a free port) in the background,
// for demos and for tests that run the provider in another goroutine than
// httptest would. It returns the base URL, e.g. http://127.0.0.1:PORT; token
// endpoints are url+"/token" or url+"/<name>/token". stop shuts the server down
// gracefully, waiting for in-flight requests until ctx ends.
func (p *Provider) Start(addr string) (url string, stop func(context.Context) error, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{
		Handler:           p,
		ReadHeaderTimeout: 10 * time.Second,
	}
	done := make(chan error, 1)
	go func() {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()
	var once sync.Once
	var stopErr error
	// Once lets deferred and explicit stops coexist without blocking on a
	// serving goroutine that has already reported.
	stop = func(ctx context.Context) error {
		once.Do(func() {
			shutdownErr := srv.Shutdown(ctx)
			if shutdownErr != nil {
				// Shutdown gave up on in-flight requests; cut them off so
				// the serving goroutine ends.
				_ = srv.Close()
			}
			stopErr = errors.Join(shutdownErr, <-done)
		})
		return stopErr
	}
	return "http://" + ln.Addr().String(), stop, nil
}
