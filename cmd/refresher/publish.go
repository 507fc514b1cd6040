package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/internal/natsconn"
	"github.com/refresher/refresher/internal/progress"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
)

func publishCmd(e *env) *cobra.Command {
	var (
		service        string
		expiringWithin time.Duration
		ids            string
		reason         string
		window         time.Duration
		every          time.Duration
	)
	cmd := &cobra.Command{
		Use:   "publish --service S [--expiring-within 30m] [--ids 1,2,3] [--reason text] [--every 15m]",
		Short: "Publish one refresh request per matching active credential, then print the counts",
		Long: `Publish one refresh request (refresh.<service>.<id>) per active credential of a
service, scanning ids by keyset pages, with a bounded window of asynchronous publishes.
Every message carries Nats-Msg-Id refresh.<service>.<id>@<window start>, so publishers
that run the same schedule in the same window publish each row once.

Exit status is 0 when every message was stored (published or duplicate), 1 otherwise.

With --every D it runs as a long-lived scheduler instead: it publishes once at start for
the period in progress, then at every boundary aligned to the clock (UTC; with 15m at
:00, :15, :30, :45), with the period as the dedupe window (--every implies --window=D),
so any number of replicas publish each row once per period. Each run's counts are
logged; a failed run is logged and retried at the next boundary. It exits 0 on SIGTERM
or SIGINT, and 2 on bad configuration. D is at least 1s and at most
REFRESHER_STREAM_DUPLICATE_WINDOW.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := model.ValidateService(service); err != nil {
				return usageError{fmt.Errorf("--service: %w", err)}
			}
			if cmd.Flags().Changed("ids") && strings.TrimSpace(ids) == "" {
				// An empty shell variable must not widen the run to every credential.
				return usageError{errors.New("--ids is empty: give ids like --ids 1,2,3, or leave --ids out to publish every active credential")}
			}
			idList, err := parseIDs(ids)
			if err != nil {
				return usageError{fmt.Errorf("--ids: %w", err)}
			}
			if expiringWithin < 0 {
				return usageError{fmt.Errorf("--expiring-within %s: must not be negative", expiringWithin)}
			}
			var pc config.Publish
			if err := config.Load(&pc); err != nil {
				return err
			}
			if cmd.Flags().Changed("window") {
				pc.Window = window
			}
			if pc.Window < 0 {
				return usageError{fmt.Errorf("--window %s: must not be negative", pc.Window)}
			}
			if cmd.Flags().Changed("every") {
				if every < publisher.MinEvery {
					return usageError{fmt.Errorf("--every %s: must be at least %s", every, publisher.MinEvery)}
				}
				if cmd.Flags().Changed("window") && window != every {
					return usageError{fmt.Errorf("--window %s and --every %s: --every sets the dedupe window; give one", window, every)}
				}
				pc.Window = every
			}
			streams, err := config.Streams()
			if err != nil {
				return err
			}
			if pc.Window > streams.DuplicateWindow {
				// Beyond the dedupe window, a twin publisher later in the same period would
				// no longer be recognised as a duplicate.
				return &config.Error{Err: fmt.Errorf("publish window %s exceeds REFRESHER_STREAM_DUPLICATE_WINDOW (%s)", pc.Window, streams.DuplicateWindow)}
			}
			natsURL, err := config.NATSURL()
			if err != nil {
				return err
			}
			db, err := openDB(cmd.Context(), 2)
			if err != nil {
				return err
			}
			defer db.Close()
			nc, err := natsconn.Connect(natsURL, "refresher-publish", e.log)
			if err != nil {
				return fmt.Errorf("%w; nothing was published", err)
			}
			defer nc.Close()
			line := progress.New(e.stderr)
			defer line.Clear()
			p, err := publisher.New(nc,
				publisher.WithWindow(pc.Window), publisher.WithMaxInFlight(pc.MaxInFlight),
				publisher.WithReason(reason), publisher.WithLogger(e.log),
				publisher.WithProgress(func(r publisher.Result) {
					line.Printf("%s: published %d, duplicate %d, failed %d", service, r.Published, r.Duplicate, r.Failed)
				}))
			if err != nil {
				return usageError{err}
			}
			if err := publisher.EnsureStreams(cmd.Context(), p.JetStream(), streams); err != nil {
				return err
			}
			if cmd.Flags().Changed("every") {
				err := p.Schedule(cmd.Context(), db, publisher.Scan{
					Service: service, ExpiringWithin: expiringWithin, IDs: idList,
				}, every, nil)
				if errors.Is(err, publisher.ErrBadSchedule) {
					return usageError{err}
				}
				return err
			}
			start := time.Now()
			res, err := p.PublishScan(cmd.Context(), db, publisher.Scan{
				Service: service, ExpiringWithin: expiringWithin, IDs: idList,
			})
			line.Clear()
			fmt.Fprintf(e.stdout, "service=%s published=%d duplicate=%d failed=%d elapsed=%s\n",
				service, res.Published, res.Duplicate, res.Failed, time.Since(start).Round(time.Millisecond))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&service, "service", "", "service whose credentials to refresh (required)")
	f.DurationVar(&expiringWithin, "expiring-within", 0, "only credentials whose access token expires within this duration (0: all active)")
	f.StringVar(&ids, "ids", "", "only these credential ids, comma-separated")
	f.StringVar(&reason, "reason", "", "reason recorded in each message body")
	f.DurationVar(&window, "window", 15*time.Minute, "schedule period the dedupe id is built from (env REFRESHER_PUBLISH_WINDOW; 0: no dedupe)")
	f.DurationVar(&every, "every", 0, "run as a scheduler: publish at start and at every boundary of this period (at least 1s; sets --window)")
	_ = cmd.MarkFlagRequired("service")
	return cmd
}

// parseIDs parses a comma-separated list of positive ids; empty means none.
func parseIDs(s string) ([]int64, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []int64
	for _, part := range strings.Split(s, ",") {
		id, err := model.ParseID(strings.TrimSpace(part))
		if err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, nil
}
