package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/internal/metrics"
	"github.com/refresher/refresher/internal/natsconn"
	"github.com/refresher/refresher/provider"
	"github.com/refresher/refresher/stream"
)

// httpShutdownTimeout bounds how long a scrape in progress may delay the exit once the
// consumer has drained.
const httpShutdownTimeout = 5 * time.Second

func consumeCmd(e *env) *cobra.Command {
	var (
		concurrency int
		httpAddr    string
	)
	cmd := &cobra.Command{
		Use:   "consume",
		Short: "Run one consumer of the fleet until SIGTERM, then drain and exit 0",
		Long: `Run one consumer of the fleet. Every consume process binds to the same durable
consumers on stream REFRESH, one per service ("refresher-<service>", plus "refresher"
for requests no service takes), so JetStream spreads messages across the fleet. Each
service's provider limits (REFRESHER_<SERVICE>_RATE, _MAX_IN_FLIGHT, the circuit
breaker, Retry-After pauses) hold across the fleet (JetStream bucket refresher_limits);
a request waits for its permit holding nothing. Each message is claim, call, commit: a short transaction locks the row, skips it if
it was refreshed after the request, and commits a claim; the provider is called with
no connection or lock held; a second short transaction checks the claim and the token
presented, writes the token columns and commits; then the message is acknowledged.
Database connections (REFRESHER_DB_MAX_CONNS, default 4) do not grow with provider
calls in flight (REFRESHER_CONCURRENCY, default 256).

On SIGTERM or SIGINT it stops fetching, finishes what is in flight (a provider call is
never abandoned), returns unstarted messages to the stream, and exits 0.

Unless --http is empty it serves, on that address:
  /metrics  Prometheus metrics (refresher_messages_total{service,outcome}, ...)
  /healthz  200 while the process runs
  /readyz   200 when NATS is connected, the database answers and the consumer is
            bound; 503 and the reason otherwise (and from SIGTERM on).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Consumer()
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("concurrency") {
				cfg.Concurrency = concurrency
				if err := cfg.Validate(); err != nil {
					// Validate names the variable; the user typed the flag.
					msg := strings.ReplaceAll(err.Error(), fmt.Sprintf("REFRESHER_CONCURRENCY=%d", concurrency), fmt.Sprintf("--concurrency %d", concurrency))
					msg = strings.ReplaceAll(msg, "REFRESHER_CONCURRENCY", "--concurrency")
					return usageError{errors.New(msg)}
				}
			}
			streams, err := config.Streams()
			if err != nil {
				return err
			}
			providers, err := config.LoadServices(cfg.ProviderTimeout)
			if err != nil {
				return err
			}
			var svc config.Services
			if err := config.Load(&svc); err != nil {
				return err
			}
			if err := warnRecovery(e, cfg, providers); err != nil {
				return err
			}
			pool := svc.DBMaxConns
			if pool < 1 || pool > 1000 {
				return config.Errorf("REFRESHER_DB_MAX_CONNS=%d: want 1 to 1000 (provider calls hold no connection: a handful is enough)", pool)
			}
			natsURL, err := config.NATSURL()
			if err != nil {
				return err
			}
			httpCfg, httpSource := config.HTTP{Addr: httpAddr}, "--http"
			if !cmd.Flags().Changed("http") {
				if httpCfg, err = config.LoadHTTP(); err != nil {
					return err
				}
				httpSource = "REFRESHER_HTTP_ADDR"
			} else if err := config.ValidateHTTPAddr(httpAddr); err != nil {
				return usageError{fmt.Errorf("--http %q: %w", httpAddr, err)}
			}
			// Bound before connecting anywhere: a busy or foreign address is a
			// configuration mistake, reported at once rather than after the dial.
			var ln net.Listener
			if httpCfg.Addr != "" {
				if ln, err = metrics.Listen(httpCfg.Addr); err != nil {
					return config.Errorf("%s: %w; give each consume process on a host its own address, or set it empty to disable", httpSource, err)
				}
				defer func() {
					if ln != nil {
						_ = ln.Close()
					}
				}()
			}
			db, err := openDB(cmd.Context(), pool)
			if err != nil {
				return err
			}
			defer db.Close()
			nc, err := connectWaiting(cmd.Context(), e, natsURL)
			if err != nil {
				return err
			}
			defer nc.Close()
			keyring, err := config.Keyring()
			if err != nil {
				return err
			}
			names := make([]string, 0, len(providers))
			for name := range providers {
				names = append(names, name)
			}
			limits, err := config.LoadLimits(names)
			if err != nil {
				return err
			}
			m := metrics.New(names...)
			m.WatchNATS(nc)
			m.WatchDB(db.DB)
			c, err := consumer.New(db, nc, providers, cfg,
				consumer.WithLogger(e.log), consumer.WithStreamConfig(streams), consumer.WithObserver(m),
				consumer.WithKeyring(keyring), consumer.WithLimits(limits))
			if err != nil {
				return &config.Error{Err: err}
			}
			if ln == nil {
				return c.Run(cmd.Context())
			}
			srv := metrics.Serve(ln, metrics.Handler(m,
				metrics.ConsumerChecks(cmd.Context().Done(), nc, db, c.Ready())...), e.log)
			ln = nil // srv owns it now
			runErr := c.Run(cmd.Context())
			// Only after the drain: the last scrape should see every message counted.
			ctx, cancel := context.WithTimeout(context.Background(), httpShutdownTimeout)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				e.log.Warn("metrics server shutdown", "error", err)
			}
			return runErr
		},
	}
	cmd.Flags().IntVar(&concurrency, "concurrency", consumer.DefaultConfig().Concurrency, "provider calls in flight in this process (env REFRESHER_CONCURRENCY)")
	cmd.Flags().StringVar(&httpAddr, "http", config.DefaultHTTPAddr,
		`host:port for /metrics, /healthz and /readyz; "" disables (env REFRESHER_HTTP_ADDR)`)
	return cmd
}

// warnRecovery says, for each service whose declared reuse interval is shorter than
// the consumer's crash recovery time, that a process killed between the provider's
// answer and its commit would cost that credential, and which variables change it.
func warnRecovery(e *env, cfg consumer.Config, providers map[string]provider.Refresher) error {
	recovery := cfg.RecoveryTime()
	for name := range providers {
		svc, err := config.LoadService(name)
		if err != nil {
			return err
		}
		if svc.ReuseInterval >= recovery {
			continue
		}
		e.log.Warn("a consumer killed between a provider's answer and its commit loses that credential: recovery is slower than the provider's reuse interval",
			"service", name, "recovery_time", recovery, "reuse_interval", svc.ReuseInterval,
			"declare", config.ServicePrefix(name)+"_REUSE_INTERVAL",
			"shorten", "REFRESHER_ACK_WAIT, REFRESHER_OWNER_TTL")
	}
	return nil
}

// connectWaiting connects to NATS, waiting with backoff while no server answers: a
// consumer started with (or before) its NATS servers waits for them, as it waits for
// a cluster's elections. A refused credential or TLS problem is not waited out.
func connectWaiting(ctx context.Context, e *env, natsURL string) (*nats.Conn, error) {
	var nc *nats.Conn
	err := stream.Retry(ctx, e.log, "connect to NATS", "NATS not reachable yet; retrying",
		func(err error) bool { return errors.Is(err, nats.ErrNoServers) },
		func(context.Context) error {
			var err error
			nc, err = natsconn.Connect(natsURL, "refresher-consume", e.log)
			return err
		})
	return nc, err
}
