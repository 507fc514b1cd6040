package console

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/refresher/refresher/internal/status"
	"github.com/refresher/refresher/internal/tracing"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

// DeadLetterFilter selects dead letters. Empty fields match everything.
type DeadLetterFilter struct {
	// Service is the original subject's service.
	Service string
	// Reason is a reason group (status.ReasonGroup) matched exactly.
	Reason string
	// Contains is text the reason contains (any case).
	Contains string
	// Credential is the original subject's credential id.
	Credential int64
}

func filterFrom(form url.Values) DeadLetterFilter {
	f := DeadLetterFilter{
		Service:  strings.TrimSpace(form.Get("service")),
		Reason:   form.Get("reason"),
		Contains: strings.TrimSpace(form.Get("contains")),
	}
	f.Credential, _ = strconv.ParseInt(strings.TrimSpace(form.Get("credential")), 10, 64)
	return f
}

// Query is the filter as URL parameters.
func (f DeadLetterFilter) Query() string {
	v := url.Values{}
	for k, s := range map[string]string{"service": f.Service, "reason": f.Reason, "contains": f.Contains} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if f.Credential > 0 {
		v.Set("credential", strconv.FormatInt(f.Credential, 10))
	}
	return v.Encode()
}

// Empty reports whether the filter matches every dead letter.
func (f DeadLetterFilter) Empty() bool { return f == DeadLetterFilter{} }

func (f DeadLetterFilter) match(dl stream.DeadLetter) bool {
	k, kerr := model.ParseSubject(dl.OriginalSubject)
	switch {
	case f.Service != "" && (kerr != nil || k.Service != f.Service):
		return false
	case f.Credential > 0 && (kerr != nil || k.ID != f.Credential):
		return false
	case f.Reason != "" && status.ReasonGroup(dl.Reason) != f.Reason:
		return false
	case f.Contains != "" && !strings.Contains(strings.ToLower(dl.Reason), strings.ToLower(f.Contains)):
		return false
	}
	return true
}

// DeadLetterList is the dead-letter page's data.
type DeadLetterList struct {
	Filter DeadLetterFilter
	// Total is REFRESH_DLQ's message count; Scanned of them (the newest) were read.
	Total   uint64
	Scanned int
	Limit   int
	// Matching counts the scanned dead letters the filter selects; Shown are the
	// newest of them, newest first.
	Matching int
	Shown    []DeadLetterRow
	Services []string
	Reasons  []status.ReasonCount
}

// DeadLetterRow is one listed dead letter.
type DeadLetterRow struct {
	stream.DeadLetter
	Group      string
	Credential int64 // 0 when the subject does not name one
	Service    string
}

const maxShown = 500

// matching reads the newest Options.DLQScan dead letters and returns the sequences
// the filter selects, oldest first, and the listing.
func (c *Console) matching(ctx context.Context, f DeadLetterFilter) (DeadLetterList, []uint64, error) {
	l := DeadLetterList{Filter: f, Limit: c.opts.DLQScan}
	s, err := c.js.Stream(ctx, stream.DLQStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return l, nil, nil
	}
	if err != nil {
		return l, nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return l, nil, err
	}
	l.Total = info.State.Msgs
	services, reasons := map[string]bool{}, map[string]*status.ReasonCount{}
	var seqs []uint64
	err = stream.ListDeadLettersIn(ctx, c.js, info.State, c.opts.DLQScan, func(dl stream.DeadLetter) error {
		l.Scanned++
		row := DeadLetterRow{DeadLetter: dl, Group: status.ReasonGroup(dl.Reason)}
		if k, err := model.ParseSubject(dl.OriginalSubject); err == nil {
			row.Service, row.Credential = k.Service, k.ID
			services[k.Service] = true
		}
		g := reasons[row.Group]
		if g == nil {
			g = &status.ReasonCount{Reason: row.Group}
			reasons[row.Group] = g
		}
		g.Count++
		g.Example = dl.Reason
		if !f.match(dl) {
			return nil
		}
		l.Matching++
		seqs = append(seqs, dl.Sequence)
		l.Shown = append(l.Shown, row)
		if len(l.Shown) > maxShown {
			l.Shown = l.Shown[1:]
		}
		return nil
	})
	slices.Reverse(l.Shown)
	for s := range services {
		l.Services = append(l.Services, s)
	}
	slices.Sort(l.Services)
	for _, g := range reasons {
		l.Reasons = append(l.Reasons, *g)
	}
	slices.SortFunc(l.Reasons, func(a, b status.ReasonCount) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Reason, b.Reason))
	})
	return l, seqs, err
}

func (c *Console) deadLettersPage(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := c.ctx(r)
	defer cancel()
	l, _, err := c.matching(ctx, filterFrom(r.URL.Query()))
	p := page{Title: "Dead letters", Nav: "deadletters", Data: l}
	if err != nil {
		p.Error = "Reading REFRESH_DLQ: " + err.Error()
	}
	c.render(w, r, "deadletters.html", p)
}

// confirmView is the confirmation page of a bulk action.
type confirmView struct {
	Op     string
	Scope  string
	Filter DeadLetterFilter
	Seqs   []uint64
	Count  int
	// Changed says the count differs from the one confirmed before (dead letters
	// arrived or left meanwhile).
	Changed bool
}

// deadLettersAction replays or purges dead letters: those selected (seq fields) or
// every one the filter matches. Without a confirm field equal to the number it
// would act on, it shows a confirmation saying how many instead.
func (c *Console) deadLettersAction(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := c.ctx(r)
	defer cancel()
	op, scope := r.PostFormValue("op"), r.PostFormValue("scope")
	if do := r.PostFormValue("do"); do != "" {
		op, scope, _ = strings.Cut(do, " ")
	}
	if op != "replay" && op != "purge" {
		http.Error(w, fmt.Sprintf("op %q: want replay or purge", op), http.StatusBadRequest)
		return
	}
	f := filterFrom(r.PostForm)
	var seqs []uint64
	switch scope {
	case "selected":
		for _, v := range r.PostForm["seq"] {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil || n == 0 {
				http.Error(w, fmt.Sprintf("seq %q: want a stream sequence", v), http.StatusBadRequest)
				return
			}
			seqs = append(seqs, n)
		}
		slices.Sort(seqs)
		seqs = slices.Compact(seqs)
		if len(seqs) == 0 {
			http.Redirect(w, r, "/deadletters?"+withFlash(f.Query(), "Select at least one dead letter."), http.StatusSeeOther)
			return
		}
	case "matching":
		var err error
		if _, seqs, err = c.matching(ctx, f); err != nil {
			http.Error(w, "read REFRESH_DLQ: "+err.Error(), http.StatusBadGateway)
			return
		}
	default:
		http.Error(w, fmt.Sprintf("scope %q: want selected or matching", scope), http.StatusBadRequest)
		return
	}
	confirm, hasConfirm := r.PostForm["confirm"]
	if !hasConfirm || confirm[0] != strconv.Itoa(len(seqs)) {
		cv := confirmView{Op: op, Scope: scope, Filter: f, Seqs: seqs, Count: len(seqs), Changed: hasConfirm}
		c.render(w, r, "confirm.html", page{Title: "Confirm", Nav: "deadletters", Data: cv})
		return
	}
	var (
		msg string
		err error
	)
	what := []any{"scope", scope, "filter", f.Query(), "count", len(seqs)}
	if op == "replay" {
		var res ReplayResult
		res, err = c.ReplayDeadLetters(ctx, seqs)
		msg = fmt.Sprintf("Replayed %d dead letter(s): %d republished, %d not requests (skipped), %d gone.", len(seqs), res.Republished, res.Skipped, res.Gone)
		what = append(what, "republished", res.Republished, "skipped", res.Skipped, "gone", res.Gone, "credentials", res.Keys)
	} else {
		var n int
		n, err = c.PurgeDeadLetters(ctx, seqs)
		msg = fmt.Sprintf("Purged %d dead letter(s).", n)
		what = append(what, "purged", n)
	}
	if len(seqs) <= 20 {
		what = append(what, "sequences", seqs)
	}
	c.logAction(r, "dead letters "+op, err, what...)
	if err != nil {
		msg += " Error: " + err.Error()
	}
	http.Redirect(w, r, "/deadletters?"+withFlash(f.Query(), msg), http.StatusSeeOther)
}

func withFlash(q, flash string) string {
	v, _ := url.ParseQuery(q)
	v.Set("flash", flash)
	return v.Encode()
}

// ReplayResult counts a console replay.
type ReplayResult struct {
	Republished int
	// Skipped dead letters are not requests (bad subject, body or header).
	Skipped int
	// Gone were purged or expired since they were listed.
	Gone int
	// Keys are the credentials re-requested, as subjects.
	Keys []string
}

// ReplayDeadLetters republishes the requests of the dead letters seqs of
// REFRESH_DLQ, as `refresher dlq replay` does: the original subject, the original
// request time in Refresh-Requested-At, and a Nats-Msg-Id unique to this replay. The
// dead letters stay (purge them once the replays are seen through).
func (c *Console) ReplayDeadLetters(ctx context.Context, seqs []uint64) (ReplayResult, error) {
	var res ReplayResult
	s, err := c.js.Stream(ctx, stream.DLQStream)
	if err != nil {
		return res, err
	}
	run := nuid.Next()
	body, _ := json.Marshal(model.Body{Reason: "console replay"})
	for _, seq := range seqs {
		raw, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			res.Gone++
			continue
		}
		if err != nil {
			return res, fmt.Errorf("read dead letter %d: %w", seq, err)
		}
		key, at, err := requestOf(raw)
		if err != nil {
			res.Skipped++
			continue
		}
		m := nats.NewMsg(key.Subject())
		m.Header.Set(model.HeaderRequestedAt, model.FormatRequestedAt(at))
		m.Header.Set(jetstream.MsgIDHeader, publisher.ReplayMsgID(key, run))
		m.Data = body
		if tracing.Extract(raw.Header).IsValid() {
			tracing.Copy(m.Header, raw.Header) // the original request's trace
		} else {
			tracing.Inject(ctx, m.Header)
		}
		if _, err := c.js.PublishMsg(ctx, m); err != nil {
			return res, fmt.Errorf("republish %s: %w", key.Subject(), err)
		}
		res.Republished++
		res.Keys = append(res.Keys, key.Subject())
	}
	return res, nil
}

// requestOf reads a dead letter's credential and request time, as the consumer and
// `refresher dlq replay` would.
func requestOf(raw *jetstream.RawStreamMsg) (model.Key, time.Time, error) {
	key, err := model.ParseSubject(stream.OriginalSubject(raw.Subject, raw.Header))
	if err != nil {
		return key, time.Time{}, err
	}
	body, err := model.ParseBody(raw.Data)
	if err != nil {
		return key, time.Time{}, err
	}
	header, has, err := model.RequestedAtHeader(raw.Header.Values(model.HeaderRequestedAt))
	if err != nil {
		return key, time.Time{}, err
	}
	at, err := model.RequestTime(header, has, body, raw.Time)
	return key, at, err
}

// PurgeDeadLetters deletes the dead letters seqs from REFRESH_DLQ and returns how
// many it deleted (those already gone are not counted).
func (c *Console) PurgeDeadLetters(ctx context.Context, seqs []uint64) (int, error) {
	return stream.DeleteDeadLetters(ctx, c.js, seqs)
}
