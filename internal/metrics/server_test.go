package metrics_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/internal/metrics"
)

func TestListenErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Close() })
	tests := []struct {
		name, addr, want string
	}{
		{"port in use", busy.Addr().String(), "address already in use"},
		{"not an address", "not-an-addr", "missing port"},
		{"port out of range", "127.0.0.1:99999", "invalid port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := metrics.Listen(tt.addr)
			if err == nil {
				ln.Close()
				t.Fatalf("Listen(%q) succeeded", tt.addr)
			}
			if !errors.Is(err, metrics.ErrListen) || !strings.Contains(err.Error(), tt.addr) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Listen(%q) error = %v, want ErrListen naming the address and %q", tt.addr, err, tt.want)
			}
		})
	}
}

// TestServerShutdown: Shutdown lets a request in progress finish, then the address
// stops answering.
func TestServerShutdown(t *testing.T) {
	ln, err := metrics.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	mux := http.NewServeMux()
	mux.Handle("/", metrics.Handler(metrics.New()))
	mux.HandleFunc("/slow", func(w http.ResponseWriter, _ *http.Request) {
		close(entered)
		<-release
		w.WriteHeader(http.StatusOK)
	})
	srv := metrics.Serve(ln, mux, slog.New(slog.DiscardHandler))
	base := "http://" + srv.Addr().String()
	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d", code)
	}

	slow := make(chan int, 1)
	go func() {
		resp, err := http.Get(base + "/slow")
		if err != nil {
			slow <- -1
			return
		}
		resp.Body.Close()
		slow <- resp.StatusCode
	}()
	<-entered
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped <- srv.Shutdown(ctx)
	}()
	// Once the listener is closed Shutdown has begun; it must still be waiting for
	// the slow request.
	fleettest.Eventually(t, 10*time.Second, "the listener closed by Shutdown", func() bool {
		conn, err := net.DialTimeout("tcp", srv.Addr().String(), time.Second)
		if err != nil {
			return true
		}
		conn.Close()
		return false
	})
	select {
	case err := <-stopped:
		t.Fatalf("Shutdown returned (%v) with a request in progress", err)
	default:
	}
	close(release)
	if code := <-slow; code != http.StatusOK {
		t.Fatalf("request in progress during Shutdown got %d, want 200", code)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if resp, err := http.Get(base + "/healthz"); err == nil {
		resp.Body.Close()
		t.Fatal("the address still answers after Shutdown")
	}
}
