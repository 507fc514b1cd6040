package stream_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/stream"
)

// TestListDeadLettersLimit: a limit lists the newest dead letters, oldest first, even
// when some in between were deleted by hand; a dead letter without the original-subject
// header is listed by its own subject less "dlq.".
func TestListDeadLettersLimit(t *testing.T) {
	_, js := newJetStream(t)
	ctx := context.Background()
	for i := 1; i <= 6; i++ {
		m := nats.NewMsg(fmt.Sprintf("dlq.refresh.github.%d", i))
		if i != 6 {
			m.Header.Set(stream.HeaderOriginalSubject, fmt.Sprintf("refresh.github.%d", i))
			m.Header.Set(stream.HeaderDeliveries, "3")
		}
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	s, err := js.Stream(ctx, stream.DLQStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMsg(ctx, 2); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		limit int
		want  []uint64
	}{
		{0, []uint64{1, 3, 4, 5, 6}},
		{2, []uint64{5, 6}},
		{3, []uint64{4, 5, 6}},
		{5, []uint64{1, 3, 4, 5, 6}},
		{10, []uint64{1, 3, 4, 5, 6}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.limit), func(t *testing.T) {
			got := fleettest.ListDeadLetters(t, js, tt.limit)
			var seqs []uint64
			for _, dl := range got {
				seqs = append(seqs, dl.Sequence)
				if want := fmt.Sprintf("refresh.github.%d", dl.Sequence); dl.OriginalSubject != want {
					t.Errorf("dead letter %d: original subject %q, want %q", dl.Sequence, dl.OriginalSubject, want)
				}
			}
			if !slices.Equal(seqs, tt.want) {
				t.Fatalf("limit %d listed %v, want %v", tt.limit, seqs, tt.want)
			}
			if last := got[len(got)-1]; last.Deliveries != 0 {
				t.Errorf("unrecorded deliveries listed as %d", last.Deliveries)
			}
		})
	}
}

// TestListDeadLettersBadLimit: a negative limit is refused.
func TestListDeadLettersBadLimit(t *testing.T) {
	_, js := newJetStream(t)
	err := stream.ListDeadLetters(context.Background(), js, -1, func(stream.DeadLetter) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "limit -1") {
		t.Fatalf("ListDeadLetters(-1) = %v, want an error naming the limit", err)
	}
}

// TestDeadLetterRoundTrip: what DeadLetterMsg writes, ReadDeadLetter reads back; the
// request's own headers are kept but for its NATS ones, the reason is cut to one
// header line and the body to DeadLetterBodyBytes. No server needed.
func TestDeadLetterRoundTrip(t *testing.T) {
	long := strings.Repeat("x", stream.DeadLetterBodyBytes+1)
	tests := []struct {
		name       string
		subject    string
		data       string
		hdr        nats.Header
		reason     string
		deliveries uint64
		seq        uint64
		wantReason string
		wantData   string
		truncated  string // HeaderBodyTruncated, "" when the body is whole
	}{
		{name: "plain", subject: "refresh.github.42", data: `{"reason":"cron"}`, reason: "retried: provider down",
			deliveries: 5, seq: 17, wantReason: "retried: provider down", wantData: `{"reason":"cron"}`},
		{name: "garbage subject, no headers", subject: "refresh.github.x", reason: "malformed: bad subject",
			deliveries: 1, seq: 1, wantReason: "malformed: bad subject"},
		{name: "request headers kept, NATS ones dropped", subject: "refresh.google.7",
			hdr:    nats.Header{"Refresh-Requested-At": {"2026-01-01T00:00:00Z"}, jetstream.MsgIDHeader: {"refresh.google.7@x"}, "Nats-Expected-Stream": {"REFRESH"}},
			reason: "max_deliveries", deliveries: 3, seq: 99, wantReason: "max_deliveries"},
		{name: "reason on one line", subject: "refresh.github.1", reason: "malformed:\nbad\tbody\x7f",
			deliveries: 1, seq: 2, wantReason: "malformed: bad body "},
		{name: "long reason cut", subject: "refresh.github.1", reason: strings.Repeat("r", 600),
			deliveries: 1, seq: 3, wantReason: strings.Repeat("r", 512)},
		{name: "long body cut", subject: "refresh.github.1", data: long, reason: "malformed: body too large",
			deliveries: 1, seq: 4, wantReason: "malformed: body too large", wantData: long[:stream.DeadLetterBodyBytes], truncated: fmt.Sprint(len(long))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := stream.DeadLetterMsg(tt.subject, []byte(tt.data), tt.hdr, tt.reason, tt.deliveries, tt.seq)
			if want := "dlq." + tt.subject; m.Subject != want {
				t.Errorf("subject %q, want %q", m.Subject, want)
			}
			got := stream.ReadDeadLetter(m.Subject, m.Header)
			want := stream.DeadLetter{OriginalSubject: tt.subject, Reason: tt.wantReason, Deliveries: tt.deliveries, OriginalSequence: tt.seq}
			if got != want {
				t.Errorf("read back %+v, want %+v", got, want)
			}
			if id := m.Header.Get(jetstream.MsgIDHeader); id != stream.DeadLetterID(tt.seq) {
				t.Errorf("Nats-Msg-Id %q, want %q", id, stream.DeadLetterID(tt.seq))
			}
			if m.Header.Get("Nats-Expected-Stream") != "" {
				t.Error("the request's Nats-Expected-Stream was copied")
			}
			for k, vs := range tt.hdr {
				if !strings.HasPrefix(k, "Nats-") && !slices.Equal(m.Header.Values(k), vs) {
					t.Errorf("header %s = %q, want the request's %q", k, m.Header.Values(k), vs)
				}
			}
			if string(m.Data) != tt.wantData || m.Header.Get(stream.HeaderBodyTruncated) != tt.truncated {
				t.Errorf("body of %d bytes (%s=%q), want %d (%q)", len(m.Data), stream.HeaderBodyTruncated,
					m.Header.Get(stream.HeaderBodyTruncated), len(tt.wantData), tt.truncated)
			}
			if _, err := time.Parse(time.RFC3339Nano, m.Header.Get(stream.HeaderDeadAt)); err != nil {
				t.Errorf("%s: %v", stream.HeaderDeadAt, err)
			}
		})
	}
}

// TestReadDeadLetterByHand: a dead letter published by hand, without some or all of
// the headers, is read by its own subject and zeros.
func TestReadDeadLetterByHand(t *testing.T) {
	tests := []struct {
		name    string
		subject string
		hdr     nats.Header
		want    stream.DeadLetter
	}{
		{"no headers", "dlq.refresh.github.9", nil, stream.DeadLetter{OriginalSubject: "refresh.github.9"}},
		{"original subject header wins", "dlq.refresh.github.9", nats.Header{stream.HeaderOriginalSubject: {"refresh.google.1"}},
			stream.DeadLetter{OriginalSubject: "refresh.google.1"}},
		{"unreadable counts", "dlq.refresh.github.9", nats.Header{stream.HeaderDeliveries: {"many"}, stream.HeaderStreamSeq: {"-1"}, stream.HeaderReason: {"why"}},
			stream.DeadLetter{OriginalSubject: "refresh.github.9", Reason: "why"}},
	}
	for _, tt := range tests {
		if got := stream.ReadDeadLetter(tt.subject, tt.hdr); got != tt.want {
			t.Errorf("%s: ReadDeadLetter = %+v, want %+v", tt.name, got, tt.want)
		}
		if got := stream.OriginalSubject(tt.subject, tt.hdr); got != tt.want.OriginalSubject {
			t.Errorf("%s: OriginalSubject = %q, want %q", tt.name, got, tt.want.OriginalSubject)
		}
	}
}

// TestDeleteDeadLetters: the picked dead letters go; those already gone, or never
// there, are not counted, and the others stay.
func TestDeleteDeadLetters(t *testing.T) {
	_, js := newJetStream(t)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if _, err := js.PublishMsg(ctx, stream.DeadLetterMsg(fmt.Sprintf("refresh.github.%d", i), nil, nil, "malformed: test", 1, uint64(i))); err != nil {
			t.Fatal(err)
		}
	}
	n, err := stream.DeleteDeadLetters(ctx, js, []uint64{1, 2, 99, 2})
	if err != nil || n != 2 {
		t.Fatalf("DeleteDeadLetters = %d, %v; want 2 deleted", n, err)
	}
	left := fleettest.ListDeadLetters(t, js, 0)
	if len(left) != 1 || left[0].Sequence != 3 || left[0].OriginalSubject != "refresh.github.3" {
		t.Fatalf("left %+v, want dead letter 3 only", left)
	}
}
