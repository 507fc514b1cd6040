package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/refresher/refresher/provider/fake"
)

func fakeProviderCmd(e *env) *cobra.Command {
	var (
		listen       string
		latency      time.Duration
		grace        time.Duration
		clientID     string
		clientSecret string
		failRate     float64
	)
	cmd := &cobra.Command{
		Use:   "fake-provider --listen 127.0.0.1:PORT",
		Short: "Serve a fake OAuth2 token endpoint that rotates refresh tokens and rejects reuse",
		Long: `Serve a fake OAuth2 token endpoint (refresh_token grant, RFC 6749 section 6) for
local trials and for checking that nothing was lost. It rotates the refresh token on
every refresh and answers invalid_grant to a replaced one.

  POST /token (or /<anything>/token)   the token endpoint
  GET  /latest?lineage=<service>-<account_id>   the latest refresh token it issued
  GET  /stats                          calls, rotations, reuses of replaced tokens

Runs until SIGTERM or SIGINT.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if failRate < 0 || failRate > 1 {
				return usageError{fmt.Errorf("--fail-rate %v: want 0 to 1", failRate)}
			}
			p := fake.New(fake.Options{
				ClientID: clientID, ClientSecret: clientSecret,
				Latency: latency, GracePeriod: grace, Logger: e.log,
			})
			p.SetFailRate(failRate)
			url, stop, err := p.Start(listen)
			if err != nil {
				return usageError{fmt.Errorf("--listen %s: %w", listen, err)}
			}
			fmt.Fprintf(e.stdout, "fake provider listening on %s (token URL %s/token)\n", url, url)
			<-cmd.Context().Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return stop(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:8085", "address to listen on")
	f.DurationVar(&latency, "latency", 0, "delay added to every token request")
	f.DurationVar(&grace, "grace", 0, "accept the just-replaced refresh token for this long (a reuse interval)")
	f.StringVar(&clientID, "client-id", "", "require this client id (empty: accept any)")
	f.StringVar(&clientSecret, "client-secret", "", "require this client secret")
	f.Float64Var(&failRate, "fail-rate", 0, "fraction of token requests answered 503")
	return cmd
}
