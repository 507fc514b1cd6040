package main

import (
	"github.com/spf13/cobra"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/internal/natsconn"
)

func consumeCmd(e *env) *cobra.Command {
	var concurrency int
	cmd := &cobra.Command{
		Use:   "consume",
		Short: "Run one consumer of the fleet until SIGTERM, then drain and exit 0",
		Long: `Run one consumer of the fleet. Every consume process binds to the same durable
consumer "refresher" on stream REFRESH, so JetStream spreads messages across the fleet.
Each message is one PostgreSQL transaction: lock the row, skip if already refreshed
after the request, call the provider with the current refresh token, write the token
columns, commit, then acknowledge.

On SIGTERM or SIGINT it stops fetching, finishes what is in flight (a provider call is
never abandoned), returns unstarted messages to the stream, and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Consumer()
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("concurrency") {
				cfg.Concurrency = concurrency
				if err := cfg.Validate(); err != nil {
					return usageError{err}
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
			pool := svc.DBMaxConns
			if pool == 0 {
				pool = cfg.Concurrency + 4
			}
			natsURL, err := config.NATSURL()
			if err != nil {
				return err
			}
			db, err := openDB(cmd.Context(), pool)
			if err != nil {
				return err
			}
			defer db.Close()
			nc, err := natsconn.Connect(natsURL, "refresher-consume", e.log)
			if err != nil {
				return err
			}
			defer nc.Close()
			c, err := consumer.New(db, nc, providers, cfg,
				consumer.WithLogger(e.log), consumer.WithStreamConfig(streams))
			if err != nil {
				return &config.Error{Err: err}
			}
			return c.Run(cmd.Context())
		},
	}
	cmd.Flags().IntVar(&concurrency, "concurrency", 32, "messages in flight in this process (env REFRESHER_CONCURRENCY)")
	return cmd
}
