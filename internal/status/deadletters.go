package status

import (
	"cmp"
	"context"
	"fmt"
	"regexp"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/stream"
)

// DeadLetterReport is REFRESH_DLQ and why its messages died.
type DeadLetterReport struct {
	StreamReport
	// Scanned dead letters, the most recent ones, were read for their reason: at most
	// ScanLimit, so that a huge dead-letter stream costs a bounded read.
	Scanned   int `json:"scanned"`
	ScanLimit int `json:"scan_limit"`
	// Complete is true when every dead letter was scanned, so TopReasons covers all.
	Complete bool `json:"complete"`
	// ReasonGroups is how many distinct reason groups the scan found.
	ReasonGroups int `json:"reason_groups"`
	// TopReasons are the commonest groups among the scanned, most frequent first.
	TopReasons []ReasonCount `json:"top_reasons"`
}

// ReasonCount is one group of dead-letter reasons.
type ReasonCount struct {
	// Reason is the Refresh-Reason header with what names one message (quoted values,
	// credential ids) elided, so that every garbage subject does not make its own group.
	Reason string `json:"reason"`
	Count  int    `json:"count"`
	// Example is one reason of the group as it was written, from the most recent
	// dead letter in the group.
	Example string `json:"example"`
}

// NoReason stands for a dead letter without a Refresh-Reason header (one published to
// REFRESH_DLQ by something other than a consumer).
const NoReason = "(no Refresh-Reason header)"

var (
	quotedRE     = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	credentialRE = regexp.MustCompile(`\bcredential [0-9]+\b`)
)

// ReasonGroup is the group a dead-letter reason is counted in.
func ReasonGroup(reason string) string {
	if reason == "" {
		return NoReason
	}
	reason = quotedRE.ReplaceAllLiteralString(reason, `"…"`)
	return credentialRE.ReplaceAllLiteralString(reason, "credential <id>")
}

// deadLetterReport reads REFRESH_DLQ's state and the reasons of its last scan
// messages. The scan stops at the last message of that state, so that its counts
// agree with Messages even while dead letters arrive.
func deadLetterReport(ctx context.Context, js jetstream.JetStream, scan, top int) (DeadLetterReport, error) {
	s, st, err := streamState(ctx, js, stream.DLQStream)
	rep := DeadLetterReport{StreamReport: s, ScanLimit: scan, TopReasons: []ReasonCount{}}
	if err != nil || !s.Exists {
		rep.Complete = err == nil
		return rep, err
	}
	groups, scanned, err := scanReasons(ctx, js, st, scan)
	rep.Scanned = scanned
	rep.Complete = err == nil && uint64(scanned) >= s.Messages
	rep.ReasonGroups = len(groups)
	for _, g := range groups {
		rep.TopReasons = append(rep.TopReasons, *g)
	}
	slices.SortFunc(rep.TopReasons, func(a, b ReasonCount) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Reason, b.Reason))
	})
	if len(rep.TopReasons) > top {
		rep.TopReasons = rep.TopReasons[:top]
	}
	return rep, err
}

// scanReasons groups the reasons of the last limit dead letters of REFRESH_DLQ in
// state st.
func scanReasons(ctx context.Context, js jetstream.JetStream, st jetstream.StreamState, limit int) (map[string]*ReasonCount, int, error) {
	groups := map[string]*ReasonCount{}
	if limit <= 0 {
		return groups, 0, nil // ListDeadLetters reads everything on 0
	}
	scanned := 0
	err := stream.ListDeadLettersIn(ctx, js, st, limit, func(dl stream.DeadLetter) error {
		scanned++
		key := ReasonGroup(dl.Reason)
		g := groups[key]
		if g == nil {
			g = &ReasonCount{Reason: key}
			groups[key] = g
		}
		g.Count++
		g.Example = dl.Reason // oldest first: the last one kept is the most recent
		return nil
	})
	if err != nil {
		return groups, scanned, fmt.Errorf("read reasons: %w", err)
	}
	return groups, scanned, nil
}
