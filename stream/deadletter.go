package stream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Headers of every dead letter in REFRESH_DLQ: the consumer writes them
// (DeadLetterMsg), replay, the dlq commands, status and the console read them back
// (ReadDeadLetter, OriginalSubject).
const (
	// HeaderOriginalSubject is the subject the request was published to.
	HeaderOriginalSubject = "Refresh-Original-Subject"
	// HeaderReason says why the request could not be satisfied.
	HeaderReason = "Refresh-Reason"
	// HeaderDeliveries is how many times the request was delivered before it died.
	HeaderDeliveries = "Refresh-Deliveries"
	// HeaderStreamSeq is the request's sequence in REFRESH.
	HeaderStreamSeq = "Refresh-Stream-Sequence"
	// HeaderDeadAt is when the request was dead-lettered (RFC 3339).
	HeaderDeadAt = "Refresh-Dead-Lettered-At"
	// HeaderBodyTruncated is set when the dead letter keeps only the first
	// DeadLetterBodyBytes of the request's body: the body's size in bytes.
	HeaderBodyTruncated = "Refresh-Body-Truncated"
)

// DeadLetterBodyBytes is how much of a request's body a dead letter keeps: enough to
// see what was sent, not a copy of a payload that should never have been a request.
const DeadLetterBodyBytes = 1024

// DeadLetter is one message of REFRESH_DLQ, as operators list it. It carries no
// body: requests hold ids, and a garbage body is nothing to print.
type DeadLetter struct {
	// Sequence is the dead letter's position in REFRESH_DLQ.
	Sequence uint64 `json:"sequence"`
	// Time is when REFRESH_DLQ stored it.
	Time time.Time `json:"time"`
	// OriginalSubject is the request's subject (the dead letter's, less "dlq.", when
	// the header is missing).
	OriginalSubject string `json:"original_subject"`
	// Reason says why the request died.
	Reason string `json:"reason"`
	// Deliveries is how often it was delivered; 0 when not recorded.
	Deliveries uint64 `json:"deliveries"`
	// OriginalSequence is its sequence in REFRESH; 0 when not recorded.
	OriginalSequence uint64 `json:"original_sequence,omitempty"`
}

// DeadLetterID is the dedupe id of the dead-letter copy of the message at stream
// sequence seq: whoever copies it (a handler, a retry, the max-deliveries advisory
// listener), REFRESH_DLQ keeps one.
func DeadLetterID(seq uint64) string { return "dlq-" + strconv.FormatUint(seq, 10) }

// DeadLetterMsg builds the REFRESH_DLQ copy of a request: same headers, the subject
// prefixed with DLQPrefix, why it died, and the body, cut to DeadLetterBodyBytes
// (with its size in HeaderBodyTruncated) when longer. The reason is kept to one
// printable line of bounded length, as a header must be.
func DeadLetterMsg(subject string, data []byte, hdr nats.Header, reason string, deliveries, seq uint64) *nats.Msg {
	dl := nats.NewMsg(DeadLetterSubject(subject))
	for k, vs := range hdr {
		if k == jetstream.MsgIDHeader || strings.HasPrefix(k, "Nats-") {
			continue
		}
		for _, v := range vs {
			dl.Header.Add(k, v)
		}
	}
	dl.Header.Set(jetstream.MsgIDHeader, DeadLetterID(seq))
	dl.Header.Set(HeaderOriginalSubject, subject)
	dl.Header.Set(HeaderReason, headerSafe(reason))
	dl.Header.Set(HeaderDeliveries, strconv.FormatUint(deliveries, 10))
	dl.Header.Set(HeaderStreamSeq, strconv.FormatUint(seq, 10))
	dl.Header.Set(HeaderDeadAt, time.Now().UTC().Format(time.RFC3339Nano))
	if len(data) > DeadLetterBodyBytes {
		dl.Header.Set(HeaderBodyTruncated, strconv.Itoa(len(data)))
		data = data[:DeadLetterBodyBytes]
	}
	dl.Data = data
	return dl
}

// headerSafe keeps a reason on one printable line of bounded length.
func headerSafe(s string) string {
	if len(s) > 512 {
		s = s[:512]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// ReadDeadLetter reads back what DeadLetterMsg wrote in the subject and headers of a
// dead letter. Sequence and Time are REFRESH_DLQ's, not the message's, and are left
// zero; so are Deliveries and OriginalSequence when their headers are missing or
// unreadable (a dead letter published by hand).
func ReadDeadLetter(subject string, hdr nats.Header) DeadLetter {
	dl := DeadLetter{OriginalSubject: OriginalSubject(subject, hdr), Reason: hdr.Get(HeaderReason)}
	dl.Deliveries, _ = strconv.ParseUint(hdr.Get(HeaderDeliveries), 10, 64)
	dl.OriginalSequence, _ = strconv.ParseUint(hdr.Get(HeaderStreamSeq), 10, 64)
	return dl
}

// OriginalSubject is the subject the request of a dead letter was published to: its
// HeaderOriginalSubject, or, when a dead letter lacks it, its own subject less
// DLQPrefix.
func OriginalSubject(subject string, hdr nats.Header) string {
	if orig := hdr.Get(HeaderOriginalSubject); orig != "" {
		return orig
	}
	return strings.TrimPrefix(subject, DLQPrefix)
}

// ListDeadLetters calls fn, oldest first, for each of the last limit dead letters in
// REFRESH_DLQ (every one when limit is 0), as of the call. It holds at most limit
// dead letters in memory, none when limit is 0. An error from fn stops the listing
// and is returned.
func ListDeadLetters(ctx context.Context, js jetstream.JetStream, limit int, fn func(DeadLetter) error) error {
	if limit < 0 {
		return fmt.Errorf("limit %d: must not be negative", limit)
	}
	s, st, err := dlqState(ctx, js)
	if err != nil || st.Msgs == 0 {
		return err
	}
	return listDeadLetters(ctx, s, st, limit, fn)
}

// ListDeadLettersIn is ListDeadLetters as of state st of REFRESH_DLQ, read earlier by
// the caller: dead letters stored after it are not listed, so that what is listed
// agrees with the counts of st.
func ListDeadLettersIn(ctx context.Context, js jetstream.JetStream, st jetstream.StreamState, limit int, fn func(DeadLetter) error) error {
	if limit < 0 {
		return fmt.Errorf("limit %d: must not be negative", limit)
	}
	if st.Msgs == 0 {
		return nil
	}
	s, err := js.Stream(ctx, DLQStream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", DLQStream, err)
	}
	return listDeadLetters(ctx, s, st, limit, fn)
}

func listDeadLetters(ctx context.Context, s jetstream.Stream, st jetstream.StreamState, limit int, fn func(DeadLetter) error) error {
	start := st.FirstSeq
	// The last limit messages lie within the last limit+deleted sequences.
	if span := uint64(limit) + uint64(st.NumDeleted); limit > 0 && st.LastSeq-st.FirstSeq+1 > span {
		start = st.LastSeq - span + 1
	}
	var (
		ring []DeadLetter // the newest limit seen so far, when limiting
		next int
		ferr error
	)
	err := ReadOrdered(ctx, s, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   start,
	}, st.LastSeq, func(msg jetstream.Msg, meta *jetstream.MsgMetadata, _ int) bool {
		dl := deadLetter(msg, meta)
		if limit == 0 {
			ferr = fn(dl)
			return ferr == nil
		}
		if len(ring) < limit {
			ring = append(ring, dl)
		} else {
			ring[next] = dl
			next = (next + 1) % limit
		}
		return true
	})
	if ferr != nil {
		return ferr
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", DLQStream, err)
	}
	for i := range ring {
		if err := fn(ring[(next+i)%len(ring)]); err != nil {
			return err
		}
	}
	return nil
}

// deadLetter reads the listing of one REFRESH_DLQ message.
func deadLetter(msg jetstream.Msg, meta *jetstream.MsgMetadata) DeadLetter {
	dl := ReadDeadLetter(msg.Subject(), msg.Headers())
	dl.Sequence, dl.Time = meta.Sequence.Stream, meta.Timestamp
	return dl
}

// PurgeDeadLetters removes the dead letters REFRESH_DLQ stored before before (every
// one present at the call when before is zero) and returns how many it removed.
// Dead letters arriving during the purge are kept.
func PurgeDeadLetters(ctx context.Context, js jetstream.JetStream, before time.Time) (uint64, error) {
	s, st, err := dlqState(ctx, js)
	if err != nil || st.Msgs == 0 {
		return 0, err
	}
	// Purge by sequence, not by time: the stream is in time order, so "older than" is
	// every sequence below the first one stored at or after the cutoff.
	upTo := st.LastSeq + 1
	if !before.IsZero() {
		err := ReadOrdered(ctx, s, jetstream.OrderedConsumerConfig{
			DeliverPolicy: jetstream.DeliverByStartTimePolicy,
			OptStartTime:  &before,
		}, st.LastSeq, func(_ jetstream.Msg, meta *jetstream.MsgMetadata, _ int) bool {
			upTo = meta.Sequence.Stream
			return false
		})
		if err != nil {
			return 0, fmt.Errorf("find dead letters before %s: %w", before.UTC().Format(time.RFC3339), err)
		}
	}
	if upTo <= st.FirstSeq {
		return 0, nil
	}
	if err := s.Purge(ctx, jetstream.WithPurgeSequence(upTo)); err != nil {
		return 0, fmt.Errorf("purge %s below sequence %d: %w", DLQStream, upTo, err)
	}
	after, err := s.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("purged %s below sequence %d, but cannot count: %w", DLQStream, upTo, err)
	}
	// The server does not return the count through this API; what was there, plus
	// what arrived meanwhile, less what is left, is what went.
	arrived := after.State.LastSeq - st.LastSeq
	return st.Msgs + arrived - min(after.State.Msgs, st.Msgs+arrived), nil
}

// DeleteDeadLetters deletes the dead letters of REFRESH_DLQ at sequences seqs (the
// ones an operator picked from a listing) and returns how many it deleted: those
// already gone, purged or expired since they were listed, are not counted.
func DeleteDeadLetters(ctx context.Context, js jetstream.JetStream, seqs []uint64) (int, error) {
	s, err := js.Stream(ctx, DLQStream)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", DLQStream, err)
	}
	n := 0
	for _, seq := range seqs {
		err := s.DeleteMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) || errors.Is(err, jetstream.ErrMsgDeleteUnsuccessful) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("delete dead letter %d: %w", seq, err)
		}
		n++
	}
	return n, nil
}

// dlqState returns REFRESH_DLQ and its state.
func dlqState(ctx context.Context, js jetstream.JetStream) (jetstream.Stream, jetstream.StreamState, error) {
	s, err := js.Stream(ctx, DLQStream)
	if err != nil {
		return nil, jetstream.StreamState{}, fmt.Errorf("stream %s: %w", DLQStream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, jetstream.StreamState{}, fmt.Errorf("stream %s: %w", DLQStream, err)
	}
	return s, info.State, nil
}
