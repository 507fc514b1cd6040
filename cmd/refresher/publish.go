package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/internal/metrics"
	"github.com/refresher/refresher/internal/natsconn"
	"github.com/refresher/refresher/internal/progress"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

// oneShotSetupWait bounds how long a one-shot publish waits for JetStream to accept
// the stream set-up (an election, a restart) before giving up.
const oneShotSetupWait = 30 * time.Second

func publishCmd(e *env) *cobra.Command {
	var (
		service        string
		expiringWithin time.Duration
		ids            string
		reason         string
		window         time.Duration
		every          time.Duration
		httpAddr       string
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
REFRESHER_STREAM_DUPLICATE_WINDOW. With --http ADDR it serves /metrics
(refresher_publish_periods_total{service,result}: published, failed, skipped),
/healthz and /readyz there.

If NATS is unreachable, a run waits for it (at most 30s for a one-shot publish, until
the end of its period with --every) and re-sends what it did not get confirmed, as a
batch and with the same Nats-Msg-Id, as soon as the server answers. Counts are what
the server confirmed: a message sent but never confirmed (the server went away, or
SIGTERM came first; in-flight publishes get 5s to be confirmed) is "unknown", not
"failed": it may be stored. "collided" counts requests whose Nats-Msg-Id another
client had already used: they were published under an id of their own.`,
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
			if err := publisher.ValidateWindow(pc.Window); err != nil {
				return usageError{fmt.Errorf("--%w", err)}
			}
			if cmd.Flags().Changed("http") {
				if !cmd.Flags().Changed("every") {
					return usageError{errors.New("--http serves the scheduler's metrics: it needs --every")}
				}
				if err := config.ValidateHTTPAddr(httpAddr); err != nil {
					return usageError{fmt.Errorf("--http %q: %w", httpAddr, err)}
				}
			}
			if cmd.Flags().Changed("every") {
				if err := publisher.ValidateEvery(every); err != nil {
					return usageError{fmt.Errorf("--%w", err)}
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
			if err := publisher.CheckWindow(pc.Window, streams); err != nil {
				return &config.Error{Err: err}
			}
			natsURL, err := config.NATSURL()
			if err != nil {
				return err
			}
			// Bound before connecting anywhere, as consume does: a busy address is a
			// configuration mistake, reported at once.
			var ln net.Listener
			if httpAddr != "" {
				if ln, err = metrics.Listen(httpAddr); err != nil {
					return config.Errorf("--http: %w", err)
				}
				defer func() {
					if ln != nil {
						_ = ln.Close()
					}
				}()
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
					line.Printf("%s: published %d, duplicate %d, failed %d, unknown %d", service, r.Published, r.Duplicate, r.Failed, r.Unknown)
				}))
			if err != nil {
				return usageError{err}
			}
			// A JetStream cluster electing its leaders is waited for: for good with
			// --every (a scheduler outlives elections), for a while for one run.
			setupCtx, cancelSetup := cmd.Context(), context.CancelFunc(func() {})
			if !cmd.Flags().Changed("every") {
				setupCtx, cancelSetup = context.WithTimeout(cmd.Context(), oneShotSetupWait)
			}
			err = stream.SetupRetry(setupCtx, e.log, "create the streams", func(ctx context.Context) error {
				return stream.EnsureStreams(ctx, p.JetStream(), streams)
			})
			cancelSetup()
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("every") {
				var report func(publisher.Run)
				if ln != nil {
					m := metrics.NewSchedule(service)
					m.WatchNATS(nc)
					report = m.ScheduleRun(service)
					srv := metrics.Serve(ln, metrics.Handler(m, metrics.NATSCheck(nc)), e.log)
					ln = nil // srv owns it now
					defer func() {
						ctx, cancel := context.WithTimeout(context.Background(), httpShutdownTimeout)
						defer cancel()
						if err := srv.Shutdown(ctx); err != nil {
							e.log.Warn("metrics server shutdown", "error", err)
						}
					}()
				}
				err := p.Schedule(cmd.Context(), db, publisher.Scan{
					Service: service, ExpiringWithin: expiringWithin, IDs: idList,
				}, every, report)
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
			collided := ""
			if res.Collided > 0 {
				// Rare and worth a look: someone else published with our dedupe ids.
				collided = fmt.Sprintf(" collided=%d", res.Collided)
			}
			fmt.Fprintf(e.stdout, "service=%s published=%d duplicate=%d failed=%d unknown=%d%s elapsed=%s\n",
				service, res.Published, res.Duplicate, res.Failed, res.Unknown, collided, time.Since(start).Round(time.Millisecond))
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
	f.StringVar(&httpAddr, "http", "", "with --every: host:port for /metrics, /healthz and /readyz (default: not served)")
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
