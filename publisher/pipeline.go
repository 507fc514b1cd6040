package publisher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/refresher/refresher/model"
)

// HeaderPublishRun names the publish run that sent a request (a random id per run).
// When the stream answers "duplicate", the publisher reads the stored message to tell
// its own earlier attempt (a publish stored while its ack was lost: counted as
// published) from a twin publisher's copy (a duplicate) and from a foreign message
// that took the dedupe id (republished under an id of its own). Consumers ignore it.
const HeaderPublishRun = "Refresh-Publish-Run"

// Backoff between resend rounds while the server is connected but does not answer
// (no stream responder, acks timing out). While disconnected the NATS client's own
// reconnect backoff applies, and a round is re-sent as soon as it is connected again.
const (
	minResendDelay = 250 * time.Millisecond
	maxResendDelay = 5 * time.Second
	// disconnectedPoll is how often a run waiting for the connection looks at it.
	disconnectedPoll = 50 * time.Millisecond
	// verifiers is how many duplicate acks are checked against the stored message at
	// once: enough that a twin publisher's thousand duplicates cost milliseconds.
	verifiers = 8
	// maxCollisions bounds how often one request is republished under a fresh id
	// because its id was taken: a fresh id collides only if someone guesses it.
	maxCollisions = 3
	// maxUnchecked bounds how often a duplicate is re-sent because the stored message
	// could not be read (an outage, or a NATS user not allowed to read the stream);
	// after that the duplicate is taken at its word.
	maxUnchecked = 3
)

// errServerGone is the cause recorded for messages not confirmed because the server
// stayed unreachable for longer than the run could wait.
var errServerGone = errors.New("NATS server unreachable")

// pending is one message between its first publish and its outcome.
type pending struct {
	msg *nats.Msg
	fut jetstream.PubAckFuture
	// ambiguous: an attempt ended without saying whether it was stored (the
	// connection dropped, the ack timed out): it may be.
	ambiguous bool
	// refused counts answers from a server that refused it (not outages).
	refused int
	// collided counts republishes under a fresh id after a foreign message took its id.
	collided int
	// unchecked counts duplicate acks whose stored message could not be read.
	unchecked int
	// lastErr is why it is waiting to be re-sent.
	lastErr error
}

// verdict is what the stored message behind a duplicate ack turned out to be.
type verdict int

const (
	verdictOwn       verdict = iota // stored by an earlier attempt of this run
	verdictTwin                     // the same request, from another publisher
	verdictForeign                  // something else holds the dedupe id
	verdictUnchecked                // the server did not answer the check
)

type checked struct {
	e   *pending
	v   verdict
	err error
}

// pubRun is one call of publishMsgs: a bounded window of async publishes, the
// unconfirmed ones re-sent as a batch once the server answers again.
type pubRun struct {
	p   *Publisher
	id  string // HeaderPublishRun
	log *slog.Logger

	res      Result
	inflight []*pending // awaiting their ack, in publish order
	redo     []*pending // not confirmed: re-sent as a batch once the server answers
	checking int        // duplicate acks being checked against the stored message

	checks   chan *checkJob
	checked  chan checked
	checkers bool // started
	wg       sync.WaitGroup
	vctx     context.Context // the checkers' context, cancelled when the run is over
	vcancel  context.CancelFunc

	streamsMu sync.Mutex
	streams   map[string]jetstream.Stream

	// unreachableSince is when the server stopped answering (zero while it answers).
	unreachableSince time.Time
	resendAt         time.Time // a resend round waits until then
	delay            time.Duration
	warned           bool // one "publish failed" warning per run, not one per message
	uncheckedWarned  bool
	outageLogged     bool // the current outage was logged
}

type checkJob struct {
	e   *pending
	ack *jetstream.PubAck
}

// publishMsgs is the pipeline every publish path goes through. Up to maxInFlight
// messages await their acks (memory is that window, whatever the number of messages).
// A message whose publish was not confirmed (the connection dropped, the ack timed
// out) is kept and re-sent with the same Nats-Msg-Id, as a batch with the others,
// as soon as the server answers again; no new message is taken meanwhile, so the
// window stays bounded. While the server is unreachable the run waits (at most
// outageTimeout, or until giveUpAt for a scheduled run) instead of failing messages
// one by one; a duplicate ack is checked against the stored message, so a publish
// whose first ack was lost counts as published, a twin publisher's copy as a
// duplicate, and a foreign message holding the id does not swallow the request.
//
// When ctx ends, no new message is sent; those in flight get drainTimeout to be
// confirmed, and those still unconfirmed then are counted as Unknown.
func (p *Publisher) publishMsgs(ctx context.Context, next func() (*nats.Msg, bool)) (Result, error) {
	r := &pubRun{p: p, id: nuid.Next(), log: p.log, delay: minResendDelay, streams: map[string]jetstream.Stream{}}
	r.checks = make(chan *checkJob, p.maxInFlight)
	r.checked = make(chan checked, p.maxInFlight)
	r.vctx, r.vcancel = context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		close(r.checks)
		r.vcancel()
		r.wg.Wait()
	}()

	exhausted := false
	gaveUp := false
	for ctx.Err() == nil {
		if r.giveUp() {
			gaveUp = true
			break
		}
		r.noteOutage()
		r.fill(next, &exhausted)
		if len(r.inflight) == 0 && r.checking == 0 {
			if len(r.redo) == 0 && exhausted {
				break
			}
			r.pause(ctx)
			continue
		}
		r.step(ctx, false)
	}
	// Having given up on the server, nothing in flight will be confirmed: the next
	// period's run must not wait for it.
	drain := r.p.drainTimeout
	if gaveUp {
		drain = 0
	}
	r.drain(ctx, drain)
	if gaveUp && !exhausted {
		// Never sent, so certainly not stored: failed, each counted so the summary
		// says how much of the run is missing.
		for msg, ok := next(); ok; msg, ok = next() {
			_ = msg
			r.res.Failed++
		}
		r.progress()
	}
	res := r.res
	switch {
	case ctx.Err() != nil:
		return res, fmt.Errorf("publish interrupted after %d messages (%d unconfirmed, outcome unknown): %w", res.Total(), res.Unknown, ctx.Err())
	case res.Failed+res.Unknown > 0:
		err := fmt.Errorf("%w: %d of %d messages (%d failed, %d unknown)", ErrNotPublished, res.Failed+res.Unknown, res.Total(), res.Failed, res.Unknown)
		if gaveUp {
			err = fmt.Errorf("%w: %w", err, r.goneErr())
		}
		return res, err
	}
	return res, nil
}

// connected reports whether publishing now can reach the server.
func (r *pubRun) connected() bool { return r.p.js.Conn().Status() == nats.CONNECTED }

// fill sends messages while the window has room: unconfirmed ones first, as one
// batch, and new ones from next only once none are left to re-send.
func (r *pubRun) fill(next func() (*nats.Msg, bool), exhausted *bool) {
	for len(r.inflight)+r.checking < r.p.maxInFlight {
		if !r.connected() {
			r.unreachable()
			return
		}
		var e *pending
		switch {
		case len(r.redo) > 0:
			if time.Now().Before(r.resendAt) {
				return
			}
			e = r.redo[0]
			r.redo = r.redo[1:]
		case !*exhausted:
			msg, ok := next()
			if !ok {
				*exhausted = true
				return
			}
			if msg.Header == nil {
				msg.Header = nats.Header{}
			}
			msg.Header.Set(HeaderPublishRun, r.id)
			e = &pending{msg: msg}
		default:
			return
		}
		fut, err := r.p.js.PublishMsgAsync(e.msg)
		if err != nil {
			// Not handed to the connection (it is reconnecting, or the client's own
			// window is full): keep it first in line.
			e.lastErr = err
			r.redo = append([]*pending{e}, r.redo...)
			r.unreachable()
			r.backoff()
			return
		}
		e.fut = fut
		r.inflight = append(r.inflight, e)
	}
}

// step waits for one outcome: the oldest publish's ack or error, or a duplicate check;
// false when ctx ended first. When draining, nothing is queued to be re-sent.
func (r *pubRun) step(ctx context.Context, draining bool) bool {
	var (
		okCh  <-chan *jetstream.PubAck
		errCh <-chan error
	)
	if len(r.inflight) > 0 {
		okCh, errCh = r.inflight[0].fut.Ok(), r.inflight[0].fut.Err()
	}
	select {
	case ack := <-okCh:
		e := r.pop()
		r.answered()
		if ack.Duplicate {
			r.checking++
			r.startCheckers()
			r.checks <- &checkJob{e: e, ack: ack}
			return true
		}
		r.res.Published++
		r.progress()
	case err := <-errCh:
		r.failed(r.pop(), err, draining)
	case c := <-r.checked:
		r.checking--
		r.settleCheck(c, draining)
	case <-ctx.Done():
		return false
	}
	return true
}

func (r *pubRun) pop() *pending {
	e := r.inflight[0]
	r.inflight[0] = nil
	r.inflight = r.inflight[1:]
	return e
}

// failed handles a publish that returned err instead of an ack.
func (r *pubRun) failed(e *pending, err error, draining bool) {
	e.lastErr = err
	e.ambiguous = e.ambiguous || mayBeStored(err)
	if isOutage(err) {
		r.unreachable()
	} else {
		// The server answered, and refused: that is not an outage.
		r.answered()
		e.refused++
		if e.refused > r.p.retries {
			r.fail(e, err)
			return
		}
	}
	if draining {
		r.unresolved(e)
		return
	}
	r.redo = append(r.redo, e)
	r.backoff()
}

// settleCheck counts a duplicate ack once the stored message has been read.
func (r *pubRun) settleCheck(c checked, draining bool) {
	e := c.e
	switch c.v {
	case verdictOwn:
		r.res.Published++
	case verdictTwin:
		r.res.Duplicate++
	case verdictForeign:
		id := e.msg.Header.Get(jetstream.MsgIDHeader)
		if e.collided++; e.collided == 1 {
			r.res.Collided++
		}
		r.log.Warn("dedupe id taken by a message that is not this request; publishing it under an id of its own",
			"subject", e.msg.Subject, "msg_id", id, "error", c.err)
		if e.collided > maxCollisions || draining {
			r.fail(e, fmt.Errorf("dedupe id %s taken: %w", id, c.err))
			return
		}
		m := nats.NewMsg(e.msg.Subject)
		m.Data = e.msg.Data
		for k, v := range e.msg.Header {
			m.Header[k] = append([]string(nil), v...)
		}
		m.Header.Set(jetstream.MsgIDHeader, baseMsgID(id)+"#"+nuid.Next())
		// What was stored under the old id is not this request: nothing is ambiguous.
		e.msg, e.ambiguous = m, false
		r.redo = append([]*pending{e}, r.redo...)
		return
	case verdictUnchecked:
		if draining {
			r.unresolved(e)
			return
		}
		if e.unchecked++; e.unchecked >= maxUnchecked && r.connected() {
			// The server answers publishes but not this read: most likely the user
			// may not read the stream. Better a duplicate unchecked than none counted.
			if !r.uncheckedWarned {
				r.uncheckedWarned = true
				r.log.Warn("cannot read the stored message behind a duplicate; counting duplicates unchecked",
					"subject", e.msg.Subject, "error", c.err)
			}
			r.res.Duplicate++
			break
		}
		// The stream has a message under this id; whose is not known yet.
		e.lastErr, e.ambiguous = c.err, true
		r.unreachable()
		r.redo = append(r.redo, e)
		r.backoff()
		return
	}
	r.progress()
}

// baseMsgID strips the suffix an earlier collision added.
func baseMsgID(id string) string {
	for i := len(id) - 1; i >= 0; i-- {
		if id[i] == '#' {
			return id[:i]
		}
		if id[i] == '@' {
			break
		}
	}
	return id
}

// fail counts e as not stored.
func (r *pubRun) fail(e *pending, err error) {
	r.res.Failed++
	if !r.warned {
		r.warned = true
		r.log.Warn("publish failed", "subject", e.msg.Subject, "error", err)
	}
	r.progress()
}

// unresolved counts e at the end of a run: unknown if it may be stored, else failed.
func (r *pubRun) unresolved(e *pending) {
	if e.ambiguous {
		r.res.Unknown++
		r.progress()
		return
	}
	cause := e.lastErr
	if cause == nil {
		cause = errServerGone
	}
	r.fail(e, cause)
}

// unreachable records that the server did not answer.
func (r *pubRun) unreachable() {
	if r.unreachableSince.IsZero() {
		r.unreachableSince = time.Now()
	}
}

// outageNoticed is how long the server must have stayed silent before the run says
// so: as a server goes down, late acks and errors interleave for a moment.
const outageNoticed = time.Second

// noteOutage logs, once per outage, that the run is waiting for the server.
func (r *pubRun) noteOutage() {
	if r.outageLogged || r.unreachableSince.IsZero() || time.Since(r.unreachableSince) < outageNoticed {
		return
	}
	r.outageLogged = true
	wait := r.p.outageTimeout - time.Since(r.unreachableSince)
	if !r.p.giveUpAt.IsZero() {
		wait = min(wait, time.Until(r.p.giveUpAt))
	}
	r.log.Warn("NATS server not answering; unconfirmed publishes are re-sent as soon as it does",
		"status", r.p.js.Conn().Status().String(), "to_resend", len(r.redo)+len(r.inflight),
		"gives_up_in", max(wait, 0).Round(time.Millisecond))
}

// answered records that the server answered: the outage, if any, is over.
func (r *pubRun) answered() {
	if r.outageLogged {
		r.outageLogged = false
		r.log.Info("NATS server answering again; re-sending what it did not confirm",
			"after", time.Since(r.unreachableSince).Round(time.Millisecond), "to_resend", len(r.redo))
	}
	r.unreachableSince = time.Time{}
	r.delay = minResendDelay
}

// backoff schedules the next resend round, once per round (not per message).
func (r *pubRun) backoff() {
	now := time.Now()
	if r.resendAt.After(now) {
		return
	}
	r.resendAt = now.Add(r.delay)
	r.delay = min(2*r.delay, maxResendDelay)
}

// giveUp reports whether the server has been unreachable for longer than the run may wait.
func (r *pubRun) giveUp() bool {
	if r.p.js.Conn().IsClosed() {
		return true
	}
	if r.unreachableSince.IsZero() {
		return false
	}
	now := time.Now()
	if !r.p.giveUpAt.IsZero() && now.After(r.p.giveUpAt) {
		return true
	}
	return now.Sub(r.unreachableSince) > r.p.outageTimeout
}

func (r *pubRun) goneErr() error {
	if r.p.js.Conn().IsClosed() {
		return nats.ErrConnectionClosed
	}
	if !r.p.giveUpAt.IsZero() && time.Now().After(r.p.giveUpAt) {
		return fmt.Errorf("%w until the end of the period", errServerGone)
	}
	return fmt.Errorf("%w for %s", errServerGone, r.p.outageTimeout)
}

// pause waits, with nothing in flight, for the connection or the next resend round.
func (r *pubRun) pause(ctx context.Context) {
	wait := disconnectedPoll
	if r.connected() {
		wait = max(time.Until(r.resendAt), time.Millisecond)
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// drain gives what is in flight up to timeout to be confirmed, then counts the rest.
func (r *pubRun) drain(parent context.Context, timeout time.Duration) {
	if (len(r.inflight) > 0 || r.checking > 0) && timeout > 0 {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), timeout)
		for (len(r.inflight) > 0 || r.checking > 0) && r.step(ctx, true) {
		}
		cancel()
	}
	for _, e := range r.inflight {
		e.ambiguous = true // sent, and no answer yet
		r.unresolved(e)
	}
	r.inflight = nil
	// Checks still running: the stream holds a message under this id, whose it is
	// is unknown.
	r.vcancel()
	for ; r.checking > 0; r.checking-- {
		c := <-r.checked
		c.e.ambiguous = true
		r.unresolved(c.e)
	}
	for _, e := range r.redo {
		r.unresolved(e)
	}
	r.redo = nil
}

func (r *pubRun) progress() {
	if r.p.progress != nil {
		r.p.progress(r.res)
	}
}

// startCheckers starts the duplicate checkers on the first duplicate of the run.
func (r *pubRun) startCheckers() {
	if r.checkers {
		return
	}
	r.checkers = true
	for range verifiers {
		r.wg.Go(func() {
			for job := range r.checks {
				v, err := r.check(job)
				r.checked <- checked{e: job.e, v: v, err: err}
			}
		})
	}
}

// check reads the message the stream stored under a duplicate's id and says whose it is.
func (r *pubRun) check(job *checkJob) (verdict, error) {
	ctx, cancel := context.WithTimeout(r.vctx, r.p.ackTimeout)
	defer cancel()
	s, err := r.stream(ctx, job.ack.Stream)
	if err != nil {
		return verdictUnchecked, err
	}
	stored, err := s.GetMsg(ctx, job.ack.Sequence)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		// Expired or removed since: nothing proves it was this request.
		return verdictForeign, fmt.Errorf("the message stored under it (sequence %d) is gone", job.ack.Sequence)
	}
	if err != nil {
		return verdictUnchecked, fmt.Errorf("read stored message %d: %w", job.ack.Sequence, err)
	}
	if stored.Header.Get(HeaderPublishRun) == r.id {
		return verdictOwn, nil
	}
	if err := sameRequest(job.e.msg, stored); err != nil {
		return verdictForeign, fmt.Errorf("stored message %d: %w", job.ack.Sequence, err)
	}
	return verdictTwin, nil
}

// sameRequest checks that stored is a request for the same credential as msg, which a
// consumer would take as one: the same subject, a body and request time that parse.
func sameRequest(msg *nats.Msg, stored *jetstream.RawStreamMsg) error {
	if stored.Subject != msg.Subject {
		return fmt.Errorf("subject %.80q is not %s", stored.Subject, msg.Subject)
	}
	body, err := model.ParseBody(stored.Data)
	if err != nil {
		return err
	}
	vals := stored.Header.Values(model.HeaderRequestedAt)
	header := ""
	if len(vals) > 0 {
		header = vals[0]
	}
	if _, err := model.RequestTime(header, len(vals) > 0, body, stored.Time); err != nil {
		return err
	}
	return nil
}

func (r *pubRun) stream(ctx context.Context, name string) (jetstream.Stream, error) {
	r.streamsMu.Lock()
	defer r.streamsMu.Unlock()
	if s, ok := r.streams[name]; ok {
		return s, nil
	}
	s, err := r.p.js.Stream(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	r.streams[name] = s
	return s, nil
}

// mayBeStored tells an error after which the message may nevertheless be stored (the
// request or its ack was lost) from one that says it was not.
func mayBeStored(err error) bool {
	return errors.Is(err, jetstream.ErrAsyncPublishTimeout) ||
		errors.Is(err, nats.ErrDisconnected) ||
		errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, context.Canceled)
}

// isOutage tells an error that says nothing about the message (the server did not
// answer, or the connection dropped before it did) from a refusal by the server.
func isOutage(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 503: JetStream is not available yet (restarting, electing a leader).
		return apiErr.Code == 503
	}
	return errors.Is(err, jetstream.ErrAsyncPublishTimeout) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, jetstream.ErrTooManyStalledMsgs) ||
		errors.Is(err, nats.ErrDisconnected) ||
		errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, errServerGone)
}
