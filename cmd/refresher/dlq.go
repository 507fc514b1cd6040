package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/internal/natsconn"
	"github.com/refresher/refresher/stream"
)

func dlqCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "List, replay and purge the dead letters in REFRESH_DLQ",
		Long: `Requests that could not be satisfied (a malformed message, an unknown service, a
provider failing until the last delivery) end in the stream REFRESH_DLQ as
dlq.<original subject>, with headers saying why: Refresh-Original-Subject,
Refresh-Reason, Refresh-Deliveries.

  refresher dlq list                     what died, when and why
  refresher dlq replay --since 24h       re-request them once the cause is fixed
  refresher dlq purge --older-than 168h  remove old ones`,
		// Runnable, so that cobra checks the arguments: a mistyped subcommand is an
		// error (exit 2), not a help page and exit 0.
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(dlqListCmd(e), dlqReplayCmd(e), dlqPurgeCmd(e))
	return cmd
}

func dlqListCmd(e *env) *cobra.Command {
	var (
		limit  int
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "list [--limit N] [--json]",
		Short: "List the newest dead letters, oldest first: time, original subject, reason, deliveries",
		Long: `List the newest --limit dead letters in REFRESH_DLQ, oldest first, as a table, or
with --json as one JSON object per line (sequence, time, original_subject, reason,
deliveries, original_sequence).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return usageError{fmt.Errorf("--limit %d: must not be negative (0 lists every dead letter)", limit)}
			}
			js, closeConn, err := dlqJetStream(e, "refresher-dlq-list")
			if err != nil {
				return err
			}
			defer closeConn()
			if asJSON {
				enc := json.NewEncoder(e.stdout)
				return missingDLQ(stream.ListDeadLetters(cmd.Context(), js, limit, func(dl stream.DeadLetter) error {
					return enc.Encode(dl)
				}))
			}
			tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tTIME\tORIGINAL SUBJECT\tDELIVERIES\tREASON")
			n := 0
			err = stream.ListDeadLetters(cmd.Context(), js, limit, func(dl stream.DeadLetter) error {
				n++
				deliveries := "-"
				if dl.Deliveries > 0 {
					deliveries = strconv.FormatUint(dl.Deliveries, 10)
				}
				_, err := fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", dl.Sequence, dl.Time.UTC().Format(time.RFC3339),
					printable(dl.OriginalSubject), deliveries, dl.Reason)
				return err
			})
			if err = missingDLQ(err); err != nil {
				return err
			}
			if n == 0 {
				fmt.Fprintln(e.stdout, "no dead letters")
				return nil
			}
			return tw.Flush()
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 100, "list at most this many, the newest (0: all)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON object per line instead of a table")
	return cmd
}

func dlqReplayCmd(e *env) *cobra.Command {
	var f replayFlags
	cmd := &cobra.Command{
		Use:   "replay --since 24h | --from RFC3339 [--until RFC3339] [--service S] [--dry-run]",
		Short: "Re-request dead-lettered refreshes once the cause is fixed (replay --dlq)",
		Long: `Republish the requests dead-lettered in a window of REFRESH_DLQ, once per credential,
to refresh.<service>.<id> with their latest request time; the same as
"refresher replay --dlq". Dead letters that are not requests (garbage subjects or
bodies) are counted as skipped. With REFRESHER_SERVICES set, dead letters of services
not listed in it are not replayed (the consumers would dead-letter them again) but
counted as unconfigured, by service; --include-unconfigured replays them too. Replayed dead letters stay in REFRESH_DLQ until
purged; replaying them again costs a row lock each, not a provider call.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts, err := f.options(cmd.Flags(), time.Now())
			if err != nil {
				return err
			}
			opts.DLQ = true
			return runReplay(cmd, e, opts, f.includeUnconfigured)
		},
	}
	f.register(cmd.Flags())
	return cmd
}

func dlqPurgeCmd(e *env) *cobra.Command {
	var olderThan time.Duration
	cmd := &cobra.Command{
		Use:   "purge [--older-than D]",
		Short: "Remove dead letters older than D (all of them without --older-than)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var before time.Time
			if cmd.Flags().Changed("older-than") {
				if olderThan <= 0 {
					return usageError{fmt.Errorf("--older-than %s: must be positive (leave it out to remove every dead letter)", olderThan)}
				}
				before = time.Now().Add(-olderThan)
			}
			js, closeConn, err := dlqJetStream(e, "refresher-dlq-purge")
			if err != nil {
				return err
			}
			defer closeConn()
			n, err := stream.PurgeDeadLetters(cmd.Context(), js, before)
			if err = missingDLQ(err); err != nil {
				return err
			}
			if before.IsZero() {
				fmt.Fprintf(e.stdout, "removed %d dead letters\n", n)
			} else {
				fmt.Fprintf(e.stdout, "removed %d dead letters stored before %s\n", n, before.UTC().Format(time.RFC3339))
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&olderThan, "older-than", 0, "remove only dead letters stored longer ago than this, like 168h")
	return cmd
}

// dlqJetStream connects to NATS_URL.
func dlqJetStream(e *env, name string) (jetstream.JetStream, func(), error) {
	natsURL, err := config.NATSURL()
	if err != nil {
		return nil, nil, err
	}
	nc, err := natsconn.Connect(natsURL, name, e.log)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return js, nc.Close, nil
}

// missingDLQ treats an absent REFRESH_DLQ as an empty one: no process has created
// the streams yet, so nothing has died.
func missingDLQ(err error) error {
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	return err
}

// printable keeps a garbage subject short and on one line of the table.
func printable(s string) string {
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
