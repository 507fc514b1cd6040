package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/internal/natsconn"
	"github.com/refresher/refresher/internal/status"
	"github.com/refresher/refresher/model"
)

func statusCmd(e *env) *cobra.Command {
	var (
		asJSON  bool
		window  time.Duration
		dlqScan int
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "status [--json] [--expiring-within 30m]",
		Short: "Print one snapshot of the fleet: stream, consumer backlog, dead letters, credentials",
		Example: `  refresher status
  refresher status --expiring-within 2h --dlq-scan 5000
  refresher status --json | jq .consumer.pending`,
		Long: `Print one snapshot an operator reads to know whether the fleet keeps up:

  stream REFRESH      messages kept for replay, bytes, first and last message time
  consumer refresher  the backlog: pending, awaiting ack, redelivered, open pulls
  REFRESH_DLQ         dead letters and the commonest reasons (Refresh-Reason header,
                      grouped with quoted values and credential ids elided), read from
                      the most recent --dlq-scan messages
  credentials         by service and status; active rows expired or expiring within
                      --expiring-within; never refreshed; the oldest refreshed_at

A stream, the consumer or the table that does not exist yet is shown as such. With
--json the same snapshot is one JSON object with stable field names.

Needs DATABASE_URL and NATS_URL. Reading dead-letter reasons creates a short-lived
consumer on REFRESH_DLQ (headers only, deleted afterwards). Exit status is 0 when
every part was read, 1 when some part could not be (what was read is still shown).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case window <= 0:
				return usageError{fmt.Errorf("--expiring-within %s: must be positive", window)}
			case dlqScan < 0:
				return usageError{fmt.Errorf("--dlq-scan %d: must not be negative (0 reads no reasons)", dlqScan)}
			case timeout <= 0:
				return usageError{fmt.Errorf("--timeout %s: must be positive", timeout)}
			}
			natsURL, err := config.NATSURL()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			db, err := openDB(ctx, 2)
			if err != nil {
				return err
			}
			defer db.Close()
			nc, err := natsconn.Connect(natsURL, "refresher-status", e.log)
			if err != nil {
				return err
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				return fmt.Errorf("jetstream: %w", err)
			}
			scan := dlqScan
			if scan == 0 {
				scan = -1 // status.Options: 0 is the default, negative reads none
			}
			rep, gatherErr := status.Gather(ctx, db, js, status.Options{Window: window, DLQScan: scan})
			if asJSON {
				enc := json.NewEncoder(e.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return fmt.Errorf("write the report: %w", err)
				}
			} else if err := printStatus(e.stdout, rep, window); err != nil {
				return fmt.Errorf("write the report: %w", err)
			}
			if gatherErr != nil {
				return fmt.Errorf("status incomplete: %w", gatherErr)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print one JSON object instead of tables")
	f.DurationVar(&window, "expiring-within", status.DefaultWindow, `count active credentials whose access token expires within this (as publish --expiring-within selects them)`)
	// --window was this flag's old name; in publish it is the dedupe period. Kept for
	// scripts, hidden and deprecated.
	f.DurationVar(&window, "window", status.DefaultWindow, "")
	_ = f.MarkDeprecated("window", "use --expiring-within (--window is publish's dedupe period)")
	f.IntVar(&dlqScan, "dlq-scan", status.DefaultDLQScan, "read the reasons of at most this many of the most recent dead letters (0: none)")
	f.DurationVar(&timeout, "timeout", 30*time.Second, "give up gathering after this long")
	return cmd
}

// printStatus writes the report as aligned tables, one per part.
func printStatus(w io.Writer, rep status.Report, window time.Duration) error {
	now := rep.GeneratedAt
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }

	p("refresher status at %s\n\n", now.Format(time.RFC3339))

	p("STREAM\tMESSAGES\tBYTES\tFIRST MESSAGE\tLAST MESSAGE\n")
	for _, s := range []status.StreamReport{rep.Stream, rep.DeadLetters.StreamReport} {
		if !s.Exists {
			p("%s\tdoes not exist yet (created by the first publish or consume)\n", s.Name)
			continue
		}
		p("%s\t%d\t%s\t%s\t%s\n", s.Name, s.Messages, bytesOf(s.Bytes), when(s.FirstTime, now), when(s.LastTime, now))
	}
	p("\n")

	p("CONSUMER ON %s\tPENDING\tACK PENDING\tREDELIVERED\tWAITING PULLS\tLAST DELIVERED\tLAST ACKED\n", rep.Consumer.Stream)
	for _, c := range append(serviceDurables(rep.Services), rep.Consumer) {
		if c.Exists {
			// Ages only: the report's time is in its first line, and two full timestamps
			// would take the row past 100 columns.
			p("%s\t%d\t%d\t%d\t%d\t%s\t%s\n", c.Name, c.Pending, c.AckPending, c.Redelivered, c.WaitingPulls,
				agoKnown(c.LastDelivered, c.LastDeliveredUnknown, now), agoKnown(c.LastAcked, c.LastAckedUnknown, now))
		} else {
			p("%s\tdoes not exist yet (created by the first consume)\n", c.Name)
		}
	}
	p("\n")

	d := rep.DeadLetters
	switch {
	case !d.Exists || d.Messages == 0:
		p("DEAD LETTERS  none\n")
	case d.ScanLimit == 0:
		p("DEAD LETTERS  %d (reasons not read: --dlq-scan 0)\n", d.Messages)
	default:
		scope := fmt.Sprintf("all %d", d.Scanned)
		if !d.Complete {
			scope = fmt.Sprintf("the most recent %d of %d (scan limit %d)", d.Scanned, d.Messages, d.ScanLimit)
		}
		// No tab: the title must not widen the COUNT column below it.
		p("DEAD LETTERS  %d; top reasons among %s, %d reason groups\n", d.Messages, scope, d.ReasonGroups)
		p("COUNT\tREASON\n")
		for _, r := range d.TopReasons {
			p("%d\t%s\n", r.Count, clip(r.Reason, 120))
		}
	}
	p("\n")

	cr := rep.Credentials
	if !cr.TableExists {
		p("CREDENTIALS\ttable does not exist yet (run refresher migrate)\n")
		return errorsAndFlush(tw, rep)
	}
	statuses := []string{model.StatusActive, model.StatusReauthRequired}
	for s := range cr.Total.ByStatus {
		if !slices.Contains(statuses, s) {
			statuses = append(statuses, s)
		}
	}
	slices.Sort(statuses[2:])
	p("CREDENTIALS\tTOTAL")
	for _, s := range statuses {
		p("\t%s", strings.ToUpper(s))
	}
	p("\tEXPIRED\tEXPIRING <%s\tNEVER REFRESHED\tOLDEST REFRESHED\n", shortDuration(window))
	row := func(name string, s status.ServiceCredentials) {
		p("%s\t%d", name, s.Total)
		for _, st := range statuses {
			p("\t%d", s.ByStatus[st])
		}
		p("\t%d\t%d\t%d\t%s\n", s.Expired, s.ExpiringWithinWindow, s.NeverRefreshed, when(s.OldestRefreshedAt, now))
	}
	for _, s := range cr.Services {
		row(s.Service, s)
	}
	if len(cr.Services) != 1 {
		row("(all)", cr.Total)
	}
	p("(EXPIRED, EXPIRING, NEVER REFRESHED and OLDEST REFRESHED count active rows only)\n")
	p("\n")
	printLimits(p, rep.Services, now)
	printConnections(p, rep.Connections)
	return errorsAndFlush(tw, rep)
}

// serviceDurables are the services' durables, in the order of the report.
func serviceDurables(services []status.ServiceReport) []status.ConsumerReport {
	out := make([]status.ConsumerReport, 0, len(services))
	for _, s := range services {
		out = append(out, s.Durable)
	}
	return out
}

// printLimits shows each service's provider limits state and how long its oldest
// request has waited, with a warning as it nears the stream's retention.
func printLimits(p func(string, ...any), services []status.ServiceReport, now time.Time) {
	if len(services) == 0 {
		return
	}
	p("SERVICE\tCIRCUIT\tFAILURES\tPAUSED UNTIL\tCALLS IN FLIGHT\tOLDEST WAITING\n")
	var warnings []string
	for _, s := range services {
		circuit := s.Circuit
		if s.NextProbe != nil {
			circuit += " (probe " + shortDuration(s.NextProbe.Sub(now)) + ")"
		}
		paused := "-"
		if s.PausedUntil != nil {
			paused = "in " + shortDuration(s.PausedUntil.Sub(now)) + " (" + s.PauseReason + ")"
		}
		p("%s\t%s\t%d\t%s\t%d\t%s\n", s.Service, circuit, s.Failures, paused, s.CallsInFlight, when(s.OldestWaiting, now))
		if s.Warning != "" {
			warnings = append(warnings, "WARNING "+s.Service+": "+s.Warning)
		}
	}
	for _, w := range warnings {
		p("%s\n", w)
	}
	p("\n")
}

// printConnections shows the database connections the fleet holds, by command.
func printConnections(p func(string, ...any), c status.ConnectionReport) {
	if !c.Visible {
		return
	}
	p("\nCONNECTIONS  refresher holds %d on this database; the server has %d of max_connections %d\n", c.Refresher, c.Server, c.MaxConnections)
	if len(c.ByApplication) == 0 {
		return
	}
	p("APPLICATION\tSTATE\tCOUNT\n")
	for _, a := range c.ByApplication {
		state := a.State
		if state == "" {
			state = "(not visible to this role)"
		}
		p("%s\t%s\t%d\n", a.Application, state, a.Count)
	}
}

func errorsAndFlush(tw *tabwriter.Writer, rep status.Report) error {
	if len(rep.Errors) > 0 {
		fmt.Fprintln(tw)
		for _, e := range rep.Errors {
			fmt.Fprintf(tw, "NOT READ\t%s\n", e)
		}
	}
	return tw.Flush()
}

// when shows a time with its age, or "-".
func when(t *time.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	age := now.Sub(*t)
	if age < 0 {
		return t.Format(time.RFC3339) + " (in " + shortDuration(-age) + ")"
	}
	return t.Format(time.RFC3339) + " (" + shortDuration(age) + " ago)"
}

// agoKnown is ago, except for a time the server lost: "-" would say "never".
func agoKnown(t *time.Time, unknown bool, now time.Time) string {
	if t == nil && unknown {
		return "unknown (server restarted)"
	}
	return ago(t, now)
}

// ago is when without the timestamp: "12s ago", "-" for never.
func ago(t *time.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	if age := now.Sub(*t); age >= 0 {
		return shortDuration(age) + " ago"
	} else {
		return "in " + shortDuration(-age)
	}
}

// shortDuration rounds to what a reader needs: seconds under an hour, minutes above.
func shortDuration(d time.Duration) string {
	if d >= time.Hour {
		d = d.Round(time.Minute)
	} else {
		d = d.Round(time.Second)
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func bytesOf(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func clip(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
