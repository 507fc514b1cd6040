package publisher

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/refresher/refresher/internal/tracing"
	"github.com/refresher/refresher/model"
)

// ErrBeforeStream is returned when a replay window starts before the oldest message
// REFRESH still holds and older ones have expired (or were purged): requests in the
// window are gone, so the replay could not be complete. The error names the oldest
// message's time, the earliest start that can be replayed in full.
var ErrBeforeStream = errors.New("replay window starts before the stream's oldest message")

// ErrBadReplay is returned for ReplayOptions that do not describe a window.
var ErrBadReplay = errors.New("bad replay options")

// ErrUnknownService is returned (wrapped in ErrBadReplay) for a replay of a service
// that is neither configured (ReplayOptions.Services) nor named by any message of
// the stream: most likely a typo, which would otherwise replay nothing and succeed.
var ErrUnknownService = errors.New("unknown service")

// ReplayOptions select the window a Replay reads.
type ReplayOptions struct {
	// From is the start of the window (required unless FromOldest): messages stored
	// at or after it.
	From time.Time
	// FromOldest starts the window at the oldest message the stream holds.
	FromOldest bool
	// Until, when set, ends the window: messages stored after it are not read.
	// Either way the replay stops at the stream's last message as of its start, so it
	// never reads what it republishes itself, nor what arrives meanwhile.
	Until time.Time
	// Service, when set, replays only that service's requests. It must be one of
	// Services when those are given, else named by some message of the stream.
	Service string
	// Services are the configured services (REFRESHER_SERVICES), when known.
	Services []string
	// DLQ reads REFRESH_DLQ instead of REFRESH: dead-lettered requests, by the subject
	// in their Refresh-Original-Subject header. Dead letters leave REFRESH_DLQ on
	// purpose (purge, REFRESHER_DLQ_MAX_AGE), so a window starting before the oldest
	// one left is not an error there.
	DLQ bool
	// DryRun reads and counts, and publishes nothing.
	DryRun bool
	// Progress, when set, is called as the replay reads and republishes (from the
	// calling goroutine, at most once per message).
	Progress func(ReplayProgress)
}

// ReplayProgress is a running count of one phase of a replay.
type ReplayProgress struct {
	// Phase is "read" (reading the window) or "republish".
	Phase string
	// Done of Total so far. While reading, Total is the number of messages the stream
	// held from From on when the replay began, an upper bound of the window.
	Done, Total int
}

// Replay phases, as reported in ReplayProgress.Phase.
const (
	PhaseRead      = "read"
	PhaseRepublish = "republish"
)

// ReplayResult counts what a replay did.
type ReplayResult struct {
	// Stream is the stream read: REFRESH or REFRESH_DLQ.
	Stream string
	// From is the oldest message's time, for FromOldest (zero otherwise: the
	// window started at ReplayOptions.From).
	From time.Time
	// Read is the number of messages in the window.
	Read int
	// Distinct is the number of credentials they asked for: what is (or, in a dry run,
	// would be) republished.
	Distinct int
	// Skipped were not requests: a subject, body or request-time header that does not
	// parse. They are not republished (the consumer dead-letters such messages).
	Skipped int
	// Republished were stored in REFRESH.
	Republished int
	// Failed are certainly not stored: refused by the server after retries, or never
	// sent because it stayed unreachable.
	Failed int
	// Unknown were sent but not confirmed when the replay ended (interrupted, or the
	// server stopped answering): they may be stored.
	Unknown int
}

// Validate names the first option that does not describe a window.
func (o ReplayOptions) Validate() error {
	switch {
	case o.From.IsZero() && !o.FromOldest:
		return fmt.Errorf("%w: the window needs a start", ErrBadReplay)
	case !o.From.IsZero() && o.FromOldest:
		return fmt.Errorf("%w: a start time and the oldest message both start the window", ErrBadReplay)
	case !o.Until.IsZero() && o.Until.Before(o.From):
		return fmt.Errorf("%w: end %s is before start %s", ErrBadReplay,
			o.Until.UTC().Format(time.RFC3339Nano), o.From.UTC().Format(time.RFC3339Nano))
	}
	if o.Service != "" {
		if err := model.ValidateService(o.Service); err != nil {
			return fmt.Errorf("%w: %w", ErrBadReplay, err)
		}
		if len(o.Services) > 0 && !slices.Contains(o.Services, o.Service) {
			return fmt.Errorf("%w: %w %q: not in REFRESHER_SERVICES (%s)", ErrBadReplay, ErrUnknownService, o.Service, strings.Join(o.Services, ","))
		}
	}
	return nil
}

// streamAndFilter is the stream a replay reads and its subject filter.
func (o ReplayOptions) streamAndFilter() (stream, filter string) {
	stream, filter = Stream, StreamSubjects
	if o.Service != "" {
		filter = model.SubjectPrefix + "." + o.Service + ".*"
	}
	if o.DLQ {
		stream, filter = DLQStream, DLQPrefix+filter
	}
	return stream, filter
}

// Replay re-requests the refreshes asked for in a window of REFRESH (or REFRESH_DLQ),
// after an outage or once the cause of dead letters is fixed.
//
// It reads the window with an ordered consumer, from opts.From to opts.Until or the
// stream's last message as of the start, and collapses it to one request per
// credential carrying the latest request time seen for it (model.RequestTime: the
// Refresh-Requested-At header, else the body's requested_at, else the time the stream
// stored the message). Each is republished once through the publisher's bounded async
// pipeline, with Refresh-Requested-At set to that time and a Nats-Msg-Id unique to this
// run, so the stream's dedupe never drops a replay. Consumers then apply the skip rule:
// rows refreshed since they were asked for cost a row lock, and only the rest are
// refreshed again.
//
// The distinct credentials of the window are held in memory (ids and a time each,
// never rows). An error wraps ErrBadReplay for bad options, ErrBeforeStream for a
// window REFRESH no longer covers, and ErrNotPublished when some republishes failed.
func (p *Publisher) Replay(ctx context.Context, opts ReplayOptions) (ReplayResult, error) {
	if err := opts.Validate(); err != nil {
		return ReplayResult{}, err
	}
	name, filter := opts.streamAndFilter()
	res := ReplayResult{Stream: name}
	s, err := p.js.Stream(ctx, name)
	if err != nil {
		return res, fmt.Errorf("replay: stream %s: %w", name, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return res, fmt.Errorf("replay: stream %s: %w", name, err)
	}
	st := info.State
	if opts.Service != "" && len(opts.Services) == 0 {
		if err := knownService(ctx, s, name, filter, opts.Service); err != nil {
			return res, err
		}
	}
	if opts.FromOldest {
		opts.From = st.FirstTime
		res.From = st.FirstTime
	} else if !opts.DLQ {
		if err := covers(name, st, opts.From); err != nil {
			return res, err
		}
	}
	if st.Msgs == 0 {
		return res, nil
	}

	latest := map[model.Key]time.Time{}
	// Tracing hook: the trace context of the message each latest time came from, so
	// that the republished request keeps the original trace link (held only for
	// messages that carry one).
	traces := map[model.Key]nats.Header{}
	progress := func(ReplayProgress) {}
	if opts.Progress != nil {
		progress = opts.Progress
	}
	from := opts.From
	err = readStream(ctx, s, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &from,
	}, st.LastSeq, func(msg jetstream.Msg, meta *jetstream.MsgMetadata, total int) bool {
		if !opts.Until.IsZero() && meta.Timestamp.After(opts.Until) {
			return false
		}
		res.Read++
		key, at, err := replayRequest(msg, meta.Timestamp, opts.DLQ)
		switch {
		case err != nil:
			res.Skipped++
			p.log.Debug("replay: not a request; skipped", "stream", name, "stream_seq", meta.Sequence.Stream, "error", err)
		case opts.Service != "" && key.Service != opts.Service:
			// Only possible in the DLQ, whose filter is on the dead letter's subject
			// while the request is read from its original-subject header.
			res.Skipped++
		default:
			if cur, seen := latest[key]; !seen || at.After(cur) {
				latest[key] = at
				if h := traceHeaders(msg.Headers()); h != nil {
					traces[key] = h
				} else {
					delete(traces, key)
				}
			}
		}
		progress(ReplayProgress{Phase: PhaseRead, Done: res.Read, Total: total})
		return true
	})
	res.Distinct = len(latest)
	if err != nil {
		return res, fmt.Errorf("replay: read %s: %w", name, err)
	}
	if opts.DryRun || len(latest) == 0 {
		return res, nil
	}

	// Oldest request first, as they were first asked for; the sort also makes a replay
	// of the same window publish in the same order every time.
	type request struct {
		key model.Key
		at  time.Time
	}
	reqs := make([]request, 0, len(latest))
	for k, at := range latest {
		reqs = append(reqs, request{k, at})
	}
	latest = nil // the sorted slice is all that is needed from here on
	slices.SortFunc(reqs, func(a, b request) int {
		return cmp.Or(a.at.Compare(b.at), strings.Compare(a.key.Service, b.key.Service), cmp.Compare(a.key.ID, b.key.ID))
	})
	run := nuid.Next()
	i := 0
	ctx, span := tracing.Tracer().Start(ctx, "replay", trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("refresher.stream", name)))
	pub, err := p.publishMsgs(ctx, func() (*nats.Msg, bool) {
		if i == len(reqs) {
			return nil, false
		}
		r := reqs[i]
		i++
		progress(ReplayProgress{Phase: PhaseRepublish, Done: i, Total: len(reqs)})
		msg := p.replayMsg(r.key, r.at, run)
		if h := traces[r.key]; h != nil {
			tracing.Copy(msg.Header, h) // the original request's trace
		} else {
			tracing.Inject(ctx, msg.Header)
		}
		return msg, true
	})
	tracing.EndPublish(span, pub.Published, pub.Duplicate, pub.Failed+pub.Unknown, err)
	// A duplicate here is the same request from another publisher, which cannot
	// happen with this run's ids unless someone copies them: stored either way.
	res.Republished = pub.Published + pub.Duplicate
	res.Failed = pub.Failed
	res.Unknown = pub.Unknown
	if err != nil {
		return res, fmt.Errorf("replay: %w", err)
	}
	return res, nil
}

// ReplayMsgID is the dedupe id of key's request republished by the replay run run:
// unique per run, so the stream never takes a replay for a duplicate of the original
// or of an earlier replay, and stable within the run, so a retried publish is.
func ReplayMsgID(key model.Key, run string) string {
	return key.Subject() + "@replay-" + run
}

// replayMsg is the republished request for key, asked for at at.
func (p *Publisher) replayMsg(key model.Key, at time.Time, run string) *nats.Msg {
	msg := nats.NewMsg(key.Subject())
	msg.Header.Set(model.HeaderRequestedAt, model.FormatRequestedAt(at))
	msg.Header.Set(jetstream.MsgIDHeader, ReplayMsgID(key, run))
	if p.reason != "" {
		msg.Data, _ = json.Marshal(model.Body{Reason: p.reason})
	}
	return msg
}

// traceHeaders returns the W3C trace context headers of h, or nil when it has none.
func traceHeaders(h nats.Header) nats.Header {
	if !tracing.Extract(h).IsValid() {
		return nil
	}
	out := nats.Header{}
	tracing.Copy(out, h)
	return out
}

// replayRequest reads the credential and request time of a stored message, as the
// consumer would; a dead letter is read by its original subject.
func replayRequest(msg jetstream.Msg, stored time.Time, dlq bool) (model.Key, time.Time, error) {
	hdr := msg.Headers()
	subject := msg.Subject()
	if dlq {
		if orig := hdr.Get(HeaderOriginalSubject); orig != "" {
			subject = orig
		} else {
			subject = strings.TrimPrefix(subject, DLQPrefix)
		}
	}
	key, err := model.ParseSubject(subject)
	if err != nil {
		return model.Key{}, time.Time{}, err
	}
	body, err := model.ParseBody(msg.Data())
	if err != nil {
		return model.Key{}, time.Time{}, err
	}
	header, hasHeader := "", false
	if vals := hdr.Values(model.HeaderRequestedAt); len(vals) > 0 {
		header, hasHeader = vals[0], true
	}
	at, err := model.RequestTime(header, hasHeader, body, stored)
	if err != nil {
		return model.Key{}, time.Time{}, err
	}
	return key, at, nil
}

// knownService checks that some message of stream s (subject filter) names service:
// with no configured list to check against, a service the stream has never seen is
// most likely a typo.
func knownService(ctx context.Context, s jetstream.Stream, name, filter, service string) error {
	_, err := s.GetLastMsgForSubject(ctx, filter)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return fmt.Errorf("%w: %w %q: %s holds no message for it (set REFRESHER_SERVICES to replay a configured service with none)",
			ErrBadReplay, ErrUnknownService, service, name)
	case err != nil:
		return fmt.Errorf("replay: look for %s messages in %s: %w", service, name, err)
	}
	return nil
}

// covers checks that a stream whose state is st still holds every message stored
// from from on. A stream that never lost a message from its front (first sequence 1)
// holds everything it ever received, however far back from is: nothing before its
// first message was ever stored. Once messages have expired or been purged, the oldest
// one left is as far back as the stream reaches; a start in the same second as that
// message is taken as that message, since times are printed (as by status) and typed
// to the second.
func covers(name string, st jetstream.StreamState, from time.Time) error {
	if st.FirstSeq <= 1 {
		return nil
	}
	if st.Msgs > 0 && from.Before(st.FirstTime.Truncate(time.Second)) {
		return fmt.Errorf("%w: %s reaches back to %s (its oldest message; older ones have expired or been removed); the window starts at %s: start at --from oldest",
			ErrBeforeStream, name, printTime(st.FirstTime), printTime(from))
	}
	if st.Msgs == 0 && from.Before(st.LastTime.Truncate(time.Second)) {
		return fmt.Errorf("%w: %s holds no messages: all %d it received, the last stored at %s, have expired or been removed",
			ErrBeforeStream, name, st.LastSeq, printTime(st.LastTime))
	}
	return nil
}

// printTime prints t as status does: RFC 3339 in UTC, to the second.
func printTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// idleCheck is how long readStream waits for a message before asking the server
// whether any are still to come (they may have expired while it read); after
// maxIdleChecks in a row it gives up rather than wait forever on a stalled read.
const (
	idleCheck     = 2 * time.Second
	maxIdleChecks = 15
)

// errStalled is returned by readStream when the server says messages are pending but
// none arrive.
var errStalled = errors.New("read stalled")

// readStream reads s with an ordered consumer configured by cfg, up to and including
// stream sequence last, and calls fn for each message with the number of messages the
// consumer had pending when it started. fn returns false to stop early.
func readStream(ctx context.Context, s jetstream.Stream, cfg jetstream.OrderedConsumerConfig, last uint64,
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
		// The server would drop the ephemeral consumer once inactive; do it now, even
		// when ctx is why the read ended.
		if ci := cons.CachedInfo(); ci != nil {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
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
