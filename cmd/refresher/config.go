package main

import (
	"github.com/spf13/cobra"

	"github.com/refresher/refresher/internal/config"
)

func configCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "config",
		Short: "Print every environment variable refresher reads, its default and current value (secrets masked)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return config.Print(e.stdout)
		},
	}
}
