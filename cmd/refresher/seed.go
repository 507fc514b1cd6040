package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/refresher/refresher/internal/progress"
	"github.com/refresher/refresher/internal/seed"
	"github.com/refresher/refresher/model"
)

func seedCmd(e *env) *cobra.Command {
	var (
		service   string
		count     int
		expiresIn time.Duration
	)
	cmd := &cobra.Command{
		Use:   "seed --service S --count N",
		Short: "Insert N demo credentials for a service, with tokens the fake provider accepts",
		Example: `  refresher seed --service github --count 1000
  refresher seed --service google --count 50 --expires-in 1m   # expiring soon: picked by publish --expiring-within`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := model.ValidateService(service); err != nil {
				return usageError{fmt.Errorf("--service: %w", err)}
			}
			if count < 1 {
				return usageError{fmt.Errorf("--count %d: must be at least 1", count)}
			}
			db, keyring, err := openSealedDB(cmd.Context(), 2)
			if err != nil {
				return err
			}
			defer db.Close()
			line := progress.New(e.stderr)
			n, err := seed.InsertWithProgress(cmd.Context(), db, keyring, service, count, expiresIn, func(n int) {
				line.Printf("%s: inserted %d of %d", service, n, count)
			})
			line.Clear()
			fmt.Fprintf(e.stdout, "inserted %d %s credentials\n", n, service)
			return err
		},
	}
	cmd.Flags().StringVar(&service, "service", "", "service name (required)")
	cmd.Flags().IntVar(&count, "count", 0, "number of credentials to insert (required)")
	cmd.Flags().DurationVar(&expiresIn, "expires-in", 10*time.Minute, "access tokens expire this long from now")
	_ = cmd.MarkFlagRequired("service")
	_ = cmd.MarkFlagRequired("count")
	return cmd
}
