package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/internal/natsconn"
	"github.com/refresher/refresher/internal/progress"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

func replayCmd(e *env) *cobra.Command {
	var (
		f   replayFlags
		dlq bool
	)
	cmd := &cobra.Command{
		Use:   "replay --since 2h | --from RFC3339 [--until RFC3339] [--service S] [--dlq] [--dry-run]",
		Short: "Re-request the refreshes asked for in a window of the stream, once per credential",
		Long: `Read the refresh requests stored in REFRESH (with --dlq, the dead letters in
REFRESH_DLQ) from --since ago or --from a time, up to --until or the last message
stored when the replay starts, and republish one request per credential to
refresh.<service>.<id>, with Refresh-Requested-At set to the latest time it was asked
for and a Nats-Msg-Id unique to this run.

Consumers apply the skip rule to each: credentials refreshed since they were asked for
cost a row lock and no provider call; only the others are refreshed. So replaying a
window after an outage re-does exactly what the outage left undone.

Messages that are not requests (a subject, body or header that does not parse) are
counted as skipped. Once old requests have expired from REFRESH
(REFRESHER_STREAM_MAX_AGE), a window starting before the oldest one left is an error
that names that message's time: replay from there (--from oldest), knowing what is
older is gone. A --service that is not in REFRESHER_SERVICES (or, when that is unset,
that no message of the stream names) is refused as a likely typo.

Prints read, distinct, skipped, republished and failed counts. Exit status is 0 when
every request was republished, 1 otherwise, 2 for bad flags.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts, err := f.options(cmd.Flags(), time.Now())
			if err != nil {
				return err
			}
			opts.DLQ = dlq
			if f.includeUnconfigured && !dlq {
				return usageError{errors.New("--include-unconfigured applies to dead letters: give --dlq too")}
			}
			return runReplay(cmd, e, opts, f.includeUnconfigured)
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().BoolVar(&dlq, "dlq", false, "replay dead letters from REFRESH_DLQ instead of requests from REFRESH")
	return cmd
}

// replayFlags are the window flags of `replay` and `dlq replay`.
type replayFlags struct {
	since       time.Duration
	from, until string
	service     string
	dryRun      bool
	// includeUnconfigured replays dead letters of services not in REFRESHER_SERVICES,
	// which the consumers would dead-letter again.
	includeUnconfigured bool
}

func (f *replayFlags) register(fs *pflag.FlagSet) {
	fs.DurationVar(&f.since, "since", 0, "start the window this long ago, like 2h (or give --from)")
	fs.StringVar(&f.from, "from", "", `start the window at this time, RFC 3339 like 2026-11-26T10:00:00Z, or "oldest" for the oldest message held (or give --since)`)
	fs.StringVar(&f.until, "until", "", "end the window at this time, RFC 3339 (default: the last message stored when the replay starts)")
	fs.StringVar(&f.service, "service", "", "replay only this service's requests")
	fs.BoolVar(&f.dryRun, "dry-run", false, "read and count, publish nothing")
	fs.BoolVar(&f.includeUnconfigured, "include-unconfigured", false,
		"with dead letters: also replay those of services not in REFRESHER_SERVICES (skipped by default: they would die again)")
}

// options turns the flags into ReplayOptions, with a usage error naming the flag
// for anything that does not describe a window ending after it starts.
func (f *replayFlags) options(fs *pflag.FlagSet, now time.Time) (publisher.ReplayOptions, error) {
	var o publisher.ReplayOptions
	sinceSet, fromSet := fs.Changed("since"), fs.Changed("from")
	switch {
	case sinceSet && fromSet:
		return o, usageError{errors.New("--since and --from both start the window: give one")}
	case !sinceSet && !fromSet:
		return o, usageError{errors.New("give the start of the window: --since 2h or --from 2026-11-26T10:00:00Z")}
	case sinceSet:
		if f.since <= 0 {
			return o, usageError{fmt.Errorf("--since %s: must be positive", f.since)}
		}
		o.From = now.Add(-f.since)
	case f.from == "oldest":
		o.FromOldest = true
	default:
		t, err := parseFlagTime("--from", f.from)
		if err != nil {
			return o, err
		}
		if t.After(now) {
			return o, usageError{fmt.Errorf("--from %s is in the future", f.from)}
		}
		o.From = t
	}
	if fs.Changed("until") {
		t, err := parseFlagTime("--until", f.until)
		if err != nil {
			return o, err
		}
		if !o.FromOldest && t.Before(o.From) {
			return o, usageError{fmt.Errorf("--until %s is before the start of the window (%s)",
				f.until, o.From.UTC().Format(time.RFC3339))}
		}
		o.Until = t
	}
	if fs.Changed("service") {
		if err := model.ValidateService(f.service); err != nil {
			return o, usageError{fmt.Errorf("--service: %w", err)}
		}
		o.Service = f.service
	}
	o.DryRun = f.dryRun
	return o, nil
}

func parseFlagTime(flag, v string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, usageError{fmt.Errorf("%s %q: want an RFC 3339 time, like 2026-11-26T10:00:00Z", flag, v)}
	}
	return t, nil
}

// runReplay connects, replays and prints the counts. Dead letters are replayed only
// for the services in REFRESHER_SERVICES (when it is set) unless includeUnconfigured:
// a request for a service no consumer is configured for would be dead-lettered again.
// Those skipped are counted by service.
func runReplay(cmd *cobra.Command, e *env, opts publisher.ReplayOptions, includeUnconfigured bool) error {
	var pc config.Publish
	if err := config.Load(&pc); err != nil {
		return err
	}
	var svc config.Services
	if err := config.Load(&svc); err != nil {
		return err
	}
	configured := map[string]bool{}
	var services []string
	for _, n := range svc.Names {
		if n = strings.TrimSpace(n); n != "" && !configured[n] {
			configured[n] = true
			services = append(services, n)
		}
	}
	// A --service that is not configured (or, with none configured, that the stream
	// has never seen) is a mistyped flag, not an empty window: the library checks.
	if !includeUnconfigured {
		opts.Services = services
	}
	// Replays to run: one per configured service, or the one asked for.
	filterServices := opts.DLQ && !includeUnconfigured && len(services) > 0
	runs := []string{opts.Service}
	if filterServices {
		if opts.Service != "" && !configured[opts.Service] {
			return usageError{fmt.Errorf("--service %s is not in REFRESHER_SERVICES (%s): its requests would be dead-lettered again; add --include-unconfigured to replay them anyway",
				opts.Service, strings.Join(services, ","))}
		}
		if opts.Service == "" {
			runs = services
		}
	}
	natsURL, err := config.NATSURL()
	if err != nil {
		return err
	}
	nc, err := natsconn.Connect(natsURL, "refresher-replay", e.log)
	if err != nil {
		return err
	}
	defer nc.Close()
	p, err := publisher.New(nc, publisher.WithMaxInFlight(pc.MaxInFlight), publisher.WithLogger(e.log))
	if err != nil {
		return &config.Error{Err: fmt.Errorf("REFRESHER_PUBLISH_MAX_IN_FLIGHT: %w", err)}
	}
	line := progress.New(e.stderr)
	opts.Progress = func(pr publisher.ReplayProgress) {
		line.Printf("%s: %d of %d", pr.Phase, pr.Done, pr.Total)
	}
	start := time.Now()
	var res publisher.ReplayResult
	var runErr error
	for _, service := range runs {
		o := opts
		o.Service = service
		r, err := p.Replay(cmd.Context(), o)
		res.Stream = r.Stream
		res.Read += r.Read
		res.Distinct += r.Distinct
		res.Skipped += r.Skipped
		res.Republished += r.Republished
		res.Failed += r.Failed
		res.Unknown += r.Unknown
		if res.From.IsZero() || (!r.From.IsZero() && r.From.Before(res.From)) {
			res.From = r.From
		}
		if err != nil {
			runErr = err
			if !errors.Is(err, publisher.ErrNotPublished) {
				break
			}
		}
	}
	line.Clear()
	switch {
	case opts.DLQ && errors.Is(runErr, jetstream.ErrStreamNotFound):
		// No process has created the streams yet, so nothing has died: as dlq list.
		fmt.Fprintln(e.stdout, "no dead letters")
		return nil
	case errors.Is(runErr, publisher.ErrUnknownService):
		return usageError{fmt.Errorf("--service: %w", runErr)}
	case runErr != nil && res.Read == 0 && !errors.Is(runErr, publisher.ErrNotPublished):
		return runErr
	}
	unconfigured := ""
	if filterServices && opts.Service == "" && runErr == nil {
		counts, n, err := unconfiguredDeadLetters(cmd, p, opts, configured)
		if err != nil {
			return err
		}
		unconfigured = fmt.Sprintf(" unconfigured=%d", n)
		if n > 0 {
			defer fmt.Fprintf(e.stdout, "skipped %d dead letter(s) of services not in REFRESHER_SERVICES (%s): they would be dead-lettered again; --include-unconfigured replays them\n", n, counts)
		}
	}
	if opts.FromOldest {
		opts.From = res.From
	}
	until := "last"
	if !opts.Until.IsZero() {
		until = opts.Until.UTC().Format(time.RFC3339)
	}
	dry := ""
	if opts.DryRun {
		dry = " (dry run: nothing published)"
	}
	if res.Stream == "" {
		res.Stream = stream.Stream
		if opts.DLQ {
			res.Stream = stream.DLQStream
		}
	}
	fmt.Fprintf(e.stdout, "stream=%s from=%s until=%s read=%d distinct=%d skipped=%d republished=%d failed=%d unknown=%d%s elapsed=%s%s\n",
		res.Stream, opts.From.UTC().Format(time.RFC3339), until, res.Read, res.Distinct, res.Skipped,
		res.Republished, res.Failed, res.Unknown, unconfigured, time.Since(start).Round(time.Millisecond), dry)
	return runErr
}

// unconfiguredDeadLetters counts the dead letters in opts' window whose service is not
// configured, and describes them by service ("bogus: 3, old-idp: 1").
func unconfiguredDeadLetters(cmd *cobra.Command, p *publisher.Publisher, opts publisher.ReplayOptions, configured map[string]bool) (string, int, error) {
	bySvc := map[string]int{}
	total := 0
	err := stream.ListDeadLetters(cmd.Context(), p.JetStream(), 0, func(dl stream.DeadLetter) error {
		if dl.Time.Before(opts.From) || (!opts.Until.IsZero() && dl.Time.After(opts.Until)) {
			return nil
		}
		service := ""
		if k, err := model.ParseSubject(dl.OriginalSubject); err == nil {
			service = k.Service
		} else if parts := strings.Split(dl.OriginalSubject, "."); len(parts) > 1 && parts[0] == stream.SubjectPrefix {
			service = parts[1]
		}
		if service == "" || configured[service] {
			return nil // read (and skipped, if garbage) by a configured service's replay, or not a request at all
		}
		bySvc[printable(service)]++
		total++
		return nil
	})
	if err = missingDLQ(err); err != nil {
		return "", 0, err
	}
	names := make([]string, 0, len(bySvc))
	for n := range bySvc {
		names = append(names, n)
	}
	slices.Sort(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s: %d", n, bySvc[n])
	}
	return strings.Join(parts, ", "), total, nil
}
