package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/refresher/refresher/model"
)

func migrateCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Create or update the credentials table (safe to run twice, or twice at once)",
		Example: `  DATABASE_URL=postgres://refresher@127.0.0.1:5432/refresher?sslmode=disable refresher migrate
  # in Kubernetes, as a Job or an init container before the fleet starts:
  refresher migrate && refresher streams apply`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			db, err := openDB(cmd.Context(), 2)
			if err != nil {
				return err
			}
			defer db.Close()
			applied, err := model.Migrate(cmd.Context(), db)
			if err != nil {
				return err
			}
			if len(applied) == 0 {
				fmt.Fprintln(e.stdout, "database is up to date")
				return nil
			}
			fmt.Fprintf(e.stdout, "applied %d migration(s): %s\n", len(applied), strings.Join(applied, ", "))
			return nil
		},
	}
}
