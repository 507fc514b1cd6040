package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/refresher/refresher/internal/verify"
)

func verifyCmd(e *env) *cobra.Command {
	var providerURL string
	cmd := &cobra.Command{
		Use:   "verify --provider http://127.0.0.1:PORT",
		Short: "Check every credential against a running fake provider: exit 0 only if nothing was lost",
		Example: `  refresher fake-provider --listen 127.0.0.1:8081 &
  refresher verify --provider http://127.0.0.1:8081`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if providerURL == "" {
				return usageError{errors.New("--provider is required")}
			}
			db, keyring, err := openSealedDB(cmd.Context(), 2)
			if err != nil {
				return err
			}
			defer db.Close()
			rep, err := verify.CheckSealed(cmd.Context(), db, keyring, verify.Remote{BaseURL: providerURL})
			if err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, rep)
			for _, ex := range rep.Examples {
				fmt.Fprintln(e.stdout, "  ", ex)
			}
			if !rep.OK() {
				return errors.New("verification failed")
			}
			fmt.Fprintln(e.stdout, "OK: every credential holds the refresh token its provider issued last")
			return nil
		},
	}
	cmd.Flags().StringVar(&providerURL, "provider", "", "base URL of the fake provider")
	return cmd
}
