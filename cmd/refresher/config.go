package main

import (
	"github.com/spf13/cobra"

	"github.com/refresher/refresher/internal/config"
)

func configCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "config",
		Short: "Print every environment variable refresher reads, its default and current value (secrets masked)",
		Example: `  refresher config
  REFRESHER_SERVICES=github,google refresher config     # with each service's variables
  refresher config | grep -v '(unset)'                    # only what is set`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return config.Print(e.stdout)
		},
	}
}
