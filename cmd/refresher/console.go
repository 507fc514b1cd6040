package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/internal/console"
	"github.com/refresher/refresher/internal/natsconn"
	"github.com/refresher/refresher/internal/status"
)

func consoleCmd(e *env) *cobra.Command {
	var (
		listen   string
		readOnly bool
		window   time.Duration
		dlqScan  int
	)
	cmd := &cobra.Command{
		Use:   "console [--listen 127.0.0.1:8080] [--read-only]",
		Short: "Serve the operator console: overview, dead letters (replay, purge), credentials (refresh now)",
		Example: `  refresher console                                   # http://127.0.0.1:8080, this machine only
  REFRESHER_CONSOLE_TOKEN=s3cret refresher console --listen 0.0.0.0:8080
  refresher console --listen 0.0.0.0:8080 --read-only  # no token: looks, never acts
  curl -H "Authorization: Bearer $REFRESHER_CONSOLE_TOKEN" http://host:8080/api/overview`,
		Long: `Serve a web page for the person on call, working from NATS and PostgreSQL like
"refresher status" (no other store):

  Overview      per service: backlog and the age of the oldest unacknowledged request,
                refreshed / failed / dead-lettered per minute over the last hour (a
                chart), calls in flight (live claims), dead letters, credentials
                reauth_required, expired and expiring soon; the fleet's consumer
                processes with their calls in flight, and database connections.
                It updates itself every few seconds. /api/overview is the same as JSON.
  Dead letters  filter by service, reason and credential id; replay or purge one, a
                selection, or every one matching the filter, after a confirmation
                that says how many.
  Credentials   search by credential or account id; a credential's page shows its
                status, version, refreshed_at, expires_at, failures, last_error and
                the requests for it still in the stream (never a token), and a
                "Refresh now" button that publishes a request.

Safety: the default --listen is loopback. Any other address needs
REFRESHER_CONSOLE_TOKEN (then every request must carry it, as "Authorization: Bearer"
or through the sign-in form) or --read-only. Actions are POSTs with a CSRF token;
each is logged with who did what. Assets are embedded; nothing is loaded from
another site.

Needs DATABASE_URL and NATS_URL; reads the credentials table (SELECT) and publishes
to REFRESH.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := config.ValidateHTTPAddr(listen); err != nil || listen == "" {
				if err == nil {
					err = errors.New("must not be empty")
				}
				return usageError{fmt.Errorf("--listen %q: %w", listen, err)}
			}
			if window <= 0 {
				return usageError{fmt.Errorf("--expiring-within %s: must be positive", window)}
			}
			if dlqScan <= 0 {
				return usageError{fmt.Errorf("--dlq-scan %d: must be positive", dlqScan)}
			}
			var cc config.Console
			if err := config.Load(&cc); err != nil {
				return err
			}
			if !console.IsLoopback(listen) && cc.Token == "" && !readOnly {
				return &config.Error{Err: fmt.Errorf("--listen %s is not a loopback address: set REFRESHER_CONSOLE_TOKEN, or pass --read-only", listen)}
			}
			var sc config.Services
			if err := config.Load(&sc); err != nil {
				return err
			}
			natsURL, err := config.NATSURL()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			db, err := openDB(ctx, 4)
			if err != nil {
				return err
			}
			defer db.Close()
			nc, err := natsconn.Connect(natsURL, "refresher-console", e.log)
			if err != nil {
				return err
			}
			defer nc.Close()
			c, err := console.New(db, nc, console.Options{
				Token: cc.Token, ReadOnly: readOnly, Services: sc.Names,
				DLQScan: dlqScan, ExpiringWithin: window, Log: e.log,
			})
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", listen, err)
			}
			srv := &http.Server{Handler: c, ReadHeaderTimeout: 10 * time.Second}
			auth := "none (loopback)"
			switch {
			case cc.Token != "":
				auth = "REFRESHER_CONSOLE_TOKEN"
			case readOnly:
				auth = "none (read-only)"
			}
			e.log.Info("console listening", "url", "http://"+ln.Addr().String()+"/", "auth", auth, "read_only", readOnly)
			errc := make(chan error, 1)
			go func() { errc <- srv.Serve(ln) }()
			select {
			case err := <-errc:
				return err
			case <-ctx.Done():
			}
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
			e.log.Info("console stopped")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", config.DefaultConsoleAddr, "host:port to serve on; a non-loopback address needs REFRESHER_CONSOLE_TOKEN or --read-only")
	f.BoolVar(&readOnly, "read-only", false, "show everything, refuse every action (replay, purge, refresh now)")
	f.DurationVar(&window, "expiring-within", status.DefaultWindow, "the overview's \"expiring soon\" horizon")
	f.IntVar(&dlqScan, "dlq-scan", 10000, "read at most this many of the newest dead letters on the dead-letter page")
	return cmd
}
