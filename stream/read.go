package stream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// idleCheck is how long ReadOrdered waits for a message before asking the server
// whether any are still to come (they may have expired while it read); after
// maxIdleChecks in a row it gives up rather than wait forever on a stalled read.
const (
	idleCheck     = 2 * time.Second
	maxIdleChecks = 15
)

// errStalled is returned by ReadOrdered when the server says messages are pending but
// none arrive.
var errStalled = errors.New("read stalled")

// ReadOrdered reads s with an ordered consumer configured by cfg, up to and including
// stream sequence last, and calls fn for each message with the number of messages the
// consumer had pending when it started. fn returns false to stop early. Replay and the
// dead-letter listing read this way: it gives up on a stalled read, and cannot run
// past the state the caller read first, however fast messages arrive.
func ReadOrdered(ctx context.Context, s jetstream.Stream, cfg jetstream.OrderedConsumerConfig, last uint64,
	fn func(msg jetstream.Msg, meta *jetstream.MsgMetadata, total int) bool) error {
	if cfg.MaxResetAttempts == 0 {
		// The library's default is to recreate the consumer forever, ignoring ctx: a
		// command against a server that went away would never return.
		cfg.MaxResetAttempts = 5
	}
	cons, err := s.OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("ordered consumer: %w", err)
	}
	iter, err := cons.Messages(jetstream.PullMaxMessages(512))
	if err != nil {
		return fmt.Errorf("ordered consumer: %w", err)
	}
	defer func() {
		iter.Stop()
		// The server would drop the ephemeral consumer once inactive; do it now.
		if ci := cons.CachedInfo(); ci != nil {
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = s.DeleteConsumer(dctx, ci.Name)
		}
	}()
	ci := cons.CachedInfo()
	if ci == nil || ci.NumPending == 0 {
		return nil
	}
	total := int(ci.NumPending)
	var (
		seen uint64 // last stream sequence handed to fn
		idle int    // idle checks in a row
	)
	for {
		nctx, cancel := context.WithTimeout(ctx, idleCheck)
		msg, err := iter.Next(jetstream.NextContext(nctx))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
				return err
			}
			// Messages counted as pending may have expired or been purged since. Done
			// when the server has nothing left for us and has delivered nothing we
			// have not handled (Next returning nothing means nothing is buffered).
			info, ierr := cons.Info(ctx)
			if ierr == nil && info.NumPending == 0 && (info.Delivered.Consumer == 0 || info.Delivered.Stream <= seen) {
				return nil
			}
			if idle++; idle >= maxIdleChecks {
				if ierr != nil {
					return fmt.Errorf("%w: nothing received for %s after stream sequence %d: %w", errStalled, time.Duration(idle)*idleCheck, seen, ierr)
				}
				return fmt.Errorf("%w: nothing received for %s after stream sequence %d, %d messages pending",
					errStalled, time.Duration(idle)*idleCheck, seen, info.NumPending)
			}
			continue
		}
		idle = 0
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("message without metadata: %w", err)
		}
		if meta.Sequence.Stream > last {
			return nil
		}
		seen = meta.Sequence.Stream
		if !fn(msg, meta, total) {
			return nil
		}
		if meta.Sequence.Stream == last || meta.NumPending == 0 {
			return nil
		}
	}
}
