package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// permanentSetupCodes are JetStream API errors that no election or restart will
// change: the request itself is wrong for this server or account.
var permanentSetupCodes = map[jetstream.ErrorCode]bool{
	10039: true, // JetStream not enabled for the account
	10052: true, // invalid stream configuration
	10058: true, // stream name in use with another configuration
	10065: true, // subjects overlap with another stream
	10074: true, // replicas > 1 not supported in non-clustered mode
	10076: true, // JetStream not enabled
	10136: true, // duplicate filter subjects
	10138: true, // overlapping filter subjects
	10139: true, // empty filter
}

// TransientSetupError reports whether a failed stream or consumer set-up may succeed
// when tried again: timeouts, no responders, a cluster electing its meta or stream
// leader, peers not known yet. A closed connection, a refused permission and a
// request the server rejects for what it is are not.
func TransientSetupError(err error) bool {
	var api *jetstream.APIError
	switch {
	case err == nil:
		return false
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrAuthorization),
		errors.Is(err, nats.ErrPermissionViolation):
		return false
	case errors.As(err, &api):
		return !permanentSetupCodes[api.ErrorCode]
	}
	return true
}

// SetupRetry runs setup (creating or binding streams and consumers) until it
// succeeds, fails for good (TransientSetupError), or ctx ends. Each try gets its own
// deadline; between tries it waits with backoff and logs the failure, so that a
// process started with (or during) a JetStream cluster election waits for the
// cluster instead of exiting.
func SetupRetry(ctx context.Context, log *slog.Logger, what string, setup func(ctx context.Context) error) error {
	return Retry(ctx, log, what, what+": failed, retrying (JetStream not ready: an election, a restart?)", TransientSetupError,
		func(ctx context.Context) error {
			tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			return setup(tctx)
		})
}

// Retry runs try (what it does: what) until it succeeds, fails with an error
// transient does not accept, or ctx ends, waiting 250 ms, doubling to 5 s, between
// tries and logging each failure as waiting, with the attempt.
func Retry(ctx context.Context, log *slog.Logger, what, waiting string, transient func(error) bool, try func(ctx context.Context) error) error {
	delay := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := try(ctx)
		if err == nil {
			if attempt > 1 {
				log.Info(what+": done", "attempts", attempt)
			}
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w (last error: %w)", what, ctx.Err(), err)
		}
		if !transient(err) {
			return err
		}
		log.Warn(waiting, "attempt", attempt, "retry_in", delay, "error", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w (last error: %w)", what, ctx.Err(), err)
		case <-t.C:
		}
		delay = min(2*delay, 5*time.Second)
	}
}
