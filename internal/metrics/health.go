package metrics

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check is one readiness condition: nil when it holds, else an error whose text is
// the 503 body. It must return within ctx's deadline.
type Check func(ctx context.Context) error

// Pinger is what DatabaseCheck needs of a database handle (*bun.DB, *sql.DB).
type Pinger interface {
	PingContext(ctx context.Context) error
}

// NATSCheck holds while nc is connected; during a reconnect the process can neither
// fetch nor acknowledge, so it is not ready.
func NATSCheck(nc *nats.Conn) Check {
	return func(context.Context) error {
		if !nc.IsConnected() {
			return fmt.Errorf("nats not connected (%s)", nc.Status())
		}
		return nil
	}
}

// DatabaseCheck holds while db answers a ping within timeout. The timeout is short
// because a probe that hangs is as bad as a failed one.
func DatabaseCheck(db Pinger, timeout time.Duration) Check {
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if err := db.PingContext(ctx); err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("database did not answer a ping within %s", timeout)
			}
			return fmt.Errorf("database ping: %w", err)
		}
		return nil
	}
}

// ClosedCheck holds once ch is closed, like (*consumer.Consumer).Ready(); until then it
// fails with reason.
func ClosedCheck(ch <-chan struct{}, reason string) Check {
	return func(context.Context) error {
		select {
		case <-ch:
			return nil
		default:
			return errors.New(reason)
		}
	}
}

// OpenCheck holds until ch is closed, like a context's Done() when shutdown begins;
// from then on it fails with reason, so that no new work is routed to a draining
// process.
func OpenCheck(ch <-chan struct{}, reason string) Check {
	return func(context.Context) error {
		select {
		case <-ch:
			return errors.New(reason)
		default:
			return nil
		}
	}
}

// Handler serves:
//
//	GET /metrics  m's registry in the Prometheus text format
//	GET /healthz  200 "ok" while the process can answer at all
//	GET /readyz   200 "ok" when every check holds, else 503 and the first failure
func Handler(m *Metrics, ready ...Check) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		for _, check := range ready {
			if err := check(r.Context()); err != nil {
				writeText(w, http.StatusServiceUnavailable, err.Error())
				return
			}
		}
		writeText(w, http.StatusOK, "ok")
	})
	return mux
}

func writeText(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintln(w, body)
}

// PingTimeout bounds the database ping of one readiness probe, so that a hung
// database answers 503 instead of hanging the probe. Give the probe a timeout above it.
const PingTimeout = 2 * time.Second

// ConsumerChecks are the readiness conditions of a consume process, in the order they
// are reported: not shutting down (stopping still open; nil never closes), NATS
// connected, the database answering a ping within PingTimeout, and the consumer bound
// to the durable (bound closed, as by (*consumer.Consumer).Ready()).
func ConsumerChecks(stopping <-chan struct{}, nc *nats.Conn, db Pinger, bound <-chan struct{}) []Check {
	return []Check{
		OpenCheck(stopping, "shutting down"),
		NATSCheck(nc),
		DatabaseCheck(db, PingTimeout),
		ClosedCheck(bound, "consumer not bound to the durable yet"),
	}
}
