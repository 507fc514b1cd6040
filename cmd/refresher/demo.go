package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/internal/logging"
	"github.com/refresher/refresher/internal/progress"

	"github.com/refresher/refresher/internal/demo"
)

func demoCmd(e *env) *cobra.Command {
	opts := demo.DefaultOptions()
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole system on embedded parts and verify that nothing was lost",
		Long: `Run the whole system on embedded parts: NATS in-process, PostgreSQL from DATABASE_URL,
the server on 127.0.0.1:5432, or a throwaway cluster; a fake provider that rotates
refresh tokens; a fleet of consumers; both services' publishers started at the same
moment plus duplicate requests and garbage. Then print what happened and check every
credential against the fake provider. Exit 0 only if nothing was lost.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := e.log
			if _, set := os.LookupEnv("REFRESHER_LOG_LEVEL"); !set {
				// A fleet logs a line per message; the demo's story is its report.
				var lc config.Logging
				_ = config.Load(&lc)
				log, _ = logging.New(e.stderr, lc.Format, "warn")
			}
			opts.Progress = progress.New(e.stderr)
			return demo.Run(cmd.Context(), opts, e.stdout, log)
		},
	}
	f := cmd.Flags()
	f.IntVar(&opts.Count, "count", opts.Count, "credentials to seed, split over two services")
	f.IntVar(&opts.Consumers, "consumers", opts.Consumers, "consumer processes in the fleet")
	f.IntVar(&opts.Concurrency, "concurrency", opts.Concurrency, "messages in flight per consumer")
	f.DurationVar(&opts.Latency, "provider-latency", opts.Latency, "latency of the fake provider")
	f.IntVar(&opts.Duplicates, "duplicates", opts.Duplicates, "extra requests per credential on top of the scheduled ones")
	f.BoolVar(&opts.Keep, "keep", false, "keep the demo database instead of dropping it")
	return cmd
}
