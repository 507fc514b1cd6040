package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/stream"
)

func streamsCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "streams",
		Short: "Show or apply the settings of the REFRESH and REFRESH_DLQ streams",
		Long: `The streams' settings (REFRESHER_STREAM_*, REFRESHER_DLQ_MAX_AGE) belong to the
fleet, not to one process: publish and consume create the streams when they are
missing but never change existing ones; a setting that differs from theirs is logged
as a warning with both values. "streams diff" shows the differences, "streams apply"
makes the streams match this process's configuration and prints what it changed.`,
		Args: cobra.NoArgs,
	}
	diff := &cobra.Command{
		Use:   "diff",
		Short: "Print how the streams differ from the configured settings; exit 0 either way",
		Example: `  refresher streams diff
  REFRESHER_STREAM_MAX_AGE=168h refresher streams diff`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runStreams(cmd, e, false)
		},
	}
	var dryRun bool
	apply := &cobra.Command{
		Use:   "apply [--dry-run]",
		Short: "Create the streams or change them to the configured settings, printing each change",
		Example: `  REFRESHER_STREAM_REPLICAS=3 refresher streams apply --dry-run
  REFRESHER_STREAM_REPLICAS=3 refresher streams apply`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runStreams(cmd, e, !dryRun)
		},
	}
	apply.Flags().BoolVar(&dryRun, "dry-run", false, "print what would change, change nothing")
	cmd.AddCommand(diff, apply)
	return cmd
}

func runStreams(cmd *cobra.Command, e *env, apply bool) error {
	cfg, err := config.Streams()
	if err != nil {
		return err
	}
	js, closeNC, err := dlqJetStream(e, "refresher-streams")
	if err != nil {
		return err
	}
	defer closeNC()
	var diffs []stream.StreamDiff
	if apply {
		diffs, err = stream.ApplyStreams(cmd.Context(), js, cfg)
	} else {
		diffs, err = stream.StreamDiffs(cmd.Context(), js, cfg)
	}
	if err != nil {
		return err
	}
	if len(diffs) == 0 {
		fmt.Fprintf(e.stdout, "%s and %s match the configuration\n", stream.Stream, stream.DLQStream)
		return nil
	}
	for _, d := range diffs {
		fmt.Fprintln(e.stdout, d)
	}
	switch {
	case apply:
		fmt.Fprintf(e.stdout, "applied %d change(s)\n", len(diffs))
	case cmd.Name() == "apply":
		fmt.Fprintf(e.stdout, "%d change(s) to apply (dry run: nothing changed)\n", len(diffs))
	default:
		fmt.Fprintf(e.stdout, "%d difference(s); refresher streams apply changes them\n", len(diffs))
	}
	return nil
}
