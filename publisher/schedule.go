package publisher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/uptrace/bun"

	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/stream"
)

// MinEvery is the shortest schedule period. Dedupe ids carry the window start with
// second resolution (MsgID), so two windows less than a second apart could share ids
// and the second would be dropped as a duplicate of the first.
const MinEvery = time.Second

// ErrBadSchedule is returned by Schedule for arguments no run could succeed with; the
// caller should treat it as a configuration error, not retry.
var ErrBadSchedule = errors.New("bad schedule")

// Run is what one scheduled publish run did.
type Run struct {
	// Window is the start of the schedule period the run published for: every message
	// carries it in its dedupe id.
	Window time.Time
	// Started is when the run began (by the publisher's clock).
	Started time.Time
	// Elapsed is how long the run took.
	Elapsed time.Duration
	Result  Result
	// Err is the run's error; the schedule goes on after it.
	Err error
	// Skipped is how many whole periods passed, since the previous run, without a run
	// of their own (the previous run outlasted them, or the clock jumped ahead): this
	// run requests the same rows for the period in progress instead.
	Skipped int
	// Overran says the run ended after its period did.
	Overran bool
}

// ScheduleOption tunes Schedule. Its options are test hooks (export_test.go).
type ScheduleOption func(*schedule)

type schedule struct {
	after func(time.Duration) <-chan time.Time
}

// Schedule publishes scan once per period of length every, until ctx is done, and then
// returns nil. Periods are aligned to the wall clock (every 15m runs at :00, :15, :30,
// :45 UTC), and every message of a run carries the period's start in its dedupe id, so
// any number of replicas of the same schedule publish each row once per period: the
// period replaces the publisher's WithWindow.
//
// The first run happens at once, for the period in progress: a replica that starts
// (or restarts) mid-period publishes ids another replica may already have published
// at that period's boundary, and the stream acknowledges them as duplicates. The
// stream's duplicate window must therefore be at least every.
//
// A failed run is logged, passed to report (which may be nil) and retried at the next
// boundary; only arguments no run could accept (wrapping ErrBadSchedule) end the
// schedule with an error. While NATS is unreachable a run waits for it until the end
// of its period (its unconfirmed publishes are re-sent as a batch as soon as it
// answers), so the next period starts on time. A run that outlasts its period is
// reported and followed at once by a run for the period then in progress; periods
// that passed entirely during a run are not caught up on, since a later run requests
// the same rows, but they are logged once with their count and reported in
// Run.Skipped.
func (p *Publisher) Schedule(ctx context.Context, db bun.IDB, scan Scan, every time.Duration, report func(Run), opts ...ScheduleOption) error {
	if err := validateSchedule(scan, every); err != nil {
		return err
	}
	s := schedule{after: time.After}
	for _, o := range opts {
		o(&s)
	}
	// The period is the dedupe window of the ids: it must fit in the stream's
	// duplicate window, or twin schedulers would request every row twice. Checked
	// against the stream as it is (when it can be read; EnsureStreams creates it).
	if info, err := p.js.Stream(ctx, stream.Stream); err == nil {
		if err := CheckWindow(every, stream.StreamConfig{DuplicateWindow: info.CachedInfo().Config.Duplicates}); err != nil {
			return err
		}
	}
	log := p.log.With("service", scan.Service, "every", every)
	log.Info("schedule started", "expiring_within", scan.ExpiringWithin)
	var last time.Time // start of the last period run; zero before the first run
	for ctx.Err() == nil {
		now := p.now()
		window := now.UTC().Truncate(every)
		if window.After(last) {
			skipped := 0
			if !last.IsZero() {
				skipped = int(window.Sub(last)/every) - 1
			}
			if skipped > 0 {
				log.Warn("schedule skipped periods that passed during the previous run; this run requests the same rows",
					"skipped", skipped, "first", last.Add(every).Format(time.RFC3339), "last", window.Add(-every).Format(time.RFC3339))
			}
			run := p.runOnce(ctx, db, scan, every, now, window)
			run.Skipped = skipped
			last = window
			logRun(ctx, log, run)
			if report != nil {
				report(run)
			}
			if nc := p.js.Conn(); nc.IsClosed() {
				// Closed for good (credentials refused on reconnect): every later run
				// would fail too; exit so the process is restarted.
				cause := nc.LastError()
				if cause == nil {
					cause = nats.ErrConnectionClosed
				}
				return fmt.Errorf("schedule %s: NATS connection closed: %w", scan.Service, cause)
			}
			continue
		}
		// Woken early, or the clock went back: wait for the next boundary, but never
		// longer than one period, so a clock that jumped back is re-read in time.
		wait := min(last.Add(every).Sub(now), every)
		select {
		case <-ctx.Done():
		case <-s.after(wait):
		}
	}
	log.Info("schedule stopped")
	return nil
}

// runOnce publishes scan for window, on a copy of p whose clock stands still at now:
// PublishScan then derives exactly window from it (not the next one, should the run
// start on a boundary), and the expiry cutoff from the moment the run began. An
// unreachable server is waited for until the period ends, not longer: the next
// period's run requests the same rows, and must start on time.
func (p *Publisher) runOnce(ctx context.Context, db bun.IDB, scan Scan, every time.Duration, now, window time.Time) Run {
	q := *p
	q.window = every
	q.now = func() time.Time { return now }
	began := time.Now()
	// The end of the period by the real clock, however the publisher's clock runs.
	q.giveUpAt = began.Add(window.Add(every).Sub(now))
	res, err := q.PublishScan(ctx, db, scan)
	elapsed := time.Since(began)
	return Run{Window: window, Started: now, Elapsed: elapsed, Result: res, Err: err,
		Overran: now.Add(elapsed).After(window.Add(every))}
}

func logRun(ctx context.Context, log *slog.Logger, run Run) {
	args := []any{
		"window", run.Window.Format(time.RFC3339),
		"published", run.Result.Published, "duplicate", run.Result.Duplicate, "failed", run.Result.Failed,
		"unknown", run.Result.Unknown, "elapsed", run.Elapsed.Round(time.Millisecond),
	}
	if run.Result.Collided > 0 {
		args = append(args, "collided", run.Result.Collided)
	}
	if run.Overran {
		args = append(args, "overran", true)
	}
	switch {
	case run.Err != nil && ctx.Err() != nil:
		log.Info("scheduled publish interrupted by shutdown", append(args, "error", run.Err)...)
		return
	case run.Err != nil:
		log.Error("scheduled publish failed; next attempt at the next boundary", append(args, "error", run.Err)...)
		return
	}
	if run.Overran {
		// Same message as an on-time run, so that one query finds every run.
		log.Warn("scheduled publish", append(args, "note", "the run outlasted its period; the period in progress is published next")...)
		return
	}
	log.Info("scheduled publish", args...)
}

// ValidateEvery checks a schedule period: at least MinEvery. The error names the
// value as "every <period>: …", for a caller to prefix ("--" for the flag).
func ValidateEvery(every time.Duration) error {
	if every < MinEvery {
		return fmt.Errorf("every %s: must be at least %s", every, MinEvery)
	}
	return nil
}

// validateSchedule refuses what PublishScan would refuse on every run, up front.
func validateSchedule(scan Scan, every time.Duration) error {
	if err := ValidateEvery(every); err != nil {
		return fmt.Errorf("%w: %w", ErrBadSchedule, err)
	}
	if err := model.ValidateService(scan.Service); err != nil {
		return fmt.Errorf("%w: %w", ErrBadSchedule, err)
	}
	if scan.ExpiringWithin < 0 {
		return fmt.Errorf("%w: expiring-within %s: must not be negative", ErrBadSchedule, scan.ExpiringWithin)
	}
	for _, id := range scan.IDs {
		if id <= 0 {
			return fmt.Errorf("%w: id %d: must be positive", ErrBadSchedule, id)
		}
	}
	return nil
}
