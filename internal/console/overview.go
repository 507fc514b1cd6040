package console

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/status"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/stream"
)

// ChartMinutes is how far back the overview's chart goes, one bar per minute.
const ChartMinutes = 60

// overviewDLQScan caps the dead letters the overview reads (the dead-letter page
// reads up to Options.DLQScan): the overview refreshes itself every few seconds.
const overviewDLQScan = 2000

// Overview is the overview page's data; /api/overview serves it as JSON.
type Overview struct {
	GeneratedAt time.Time `json:"generated_at"`
	// Took is how long gathering it took.
	Took     time.Duration         `json:"took_ns"`
	Stream   status.StreamReport   `json:"stream"`
	Consumer status.ConsumerReport `json:"consumer"`
	// DeadLetters counts REFRESH_DLQ; the per-service counts and reasons come from
	// its newest DeadLettersScanned messages.
	DeadLetters        uint64                  `json:"dead_letters"`
	DeadLettersScanned int                     `json:"dead_letters_scanned"`
	TopReasons         []status.ReasonCount    `json:"top_reasons"`
	Services           []ServiceOverview       `json:"services"`
	Owners             []OwnerOverview         `json:"owners"`
	Connections        status.ConnectionReport `json:"connections"`
	ExpiringWithin     string                  `json:"expiring_within"`
	// ChartStart is the start of the chart's first minute.
	ChartStart time.Time `json:"chart_start"`
	Errors     []string  `json:"errors"`
	// Timings are how long each part took to gather, by name.
	Timings map[string]time.Duration `json:"timings_ns"`
}

// ServiceOverview is one service's row of the overview.
type ServiceOverview struct {
	Service string `json:"service"`
	// Backlog is the requests of this service stored and not yet delivered.
	Backlog uint64 `json:"backlog"`
	// OldestPending is when the oldest request not yet acknowledged was stored.
	OldestPending *time.Time `json:"oldest_pending"`
	// InFlight counts live claims: provider calls in progress.
	InFlight int64 `json:"in_flight"`
	// DeadLetters among the newest scanned.
	DeadLetters    int   `json:"dead_letters"`
	Credentials    int64 `json:"credentials"`
	ReauthRequired int64 `json:"reauth_required"`
	Expired        int64 `json:"expired"`
	ExpiringSoon   int64 `json:"expiring_soon"`
	// Refreshed, Failed and Dead count, per minute of the last hour (oldest first),
	// the credentials whose last refresh began in that minute, those whose last failed
	// call was recorded in it, and the dead letters stored in it. A credential refreshed
	// twice in the hour counts once, in its last minute: the database keeps only the
	// last refresh. Skipped counts the requests the skip rule answered, which write
	// nothing: the consumers keep them per minute in consumer.SkipsBucket.
	Refreshed [ChartMinutes]int `json:"refreshed_per_minute"`
	Skipped   [ChartMinutes]int `json:"skipped_per_minute"`
	Failed    [ChartMinutes]int `json:"failed_per_minute"`
	Dead      [ChartMinutes]int `json:"dead_per_minute"`
	// Hour sums of the four.
	RefreshedHour int `json:"refreshed_last_hour"`
	SkippedHour   int `json:"skipped_last_hour"`
	FailedHour    int `json:"failed_last_hour"`
	DeadHour      int `json:"dead_last_hour"`
	// Limits is the service's fleet-wide provider state (package limit): circuit,
	// failures in a row, a Retry-After pause, the next probe.
	Limits *status.ServiceReport `json:"limits,omitempty"`
}

// OwnerOverview is one consume process: its live claims and whether its liveness key
// is in the refresher_owners bucket.
type OwnerOverview struct {
	Owner    string `json:"owner"`
	InFlight int64  `json:"in_flight"`
	Alive    bool   `json:"alive"`
}

// GatherOverview reads the overview from JetStream and PostgreSQL.
func (c *Console) GatherOverview(ctx context.Context) Overview {
	start := time.Now()
	now := c.opts.Now().UTC()
	ov := Overview{GeneratedAt: now, ExpiringWithin: c.opts.ExpiringWithin.String(), Errors: []string{},
		TopReasons: []status.ReasonCount{}, Services: []ServiceOverview{}, Owners: []OwnerOverview{}}
	ov.ChartStart = now.Truncate(time.Minute).Add(-(ChartMinutes - 1) * time.Minute)
	fail := func(part string, err error) { ov.Errors = append(ov.Errors, part+": "+err.Error()) }
	ov.Timings = map[string]time.Duration{}

	// The database's part (one pass over the table, then two small index reads) runs
	// beside the JetStream part; each fills its own per-service map, merged after.
	type pgResult struct {
		svc     map[string]*ServiceOverview
		owners  []OwnerOverview
		errs    []string
		timings map[string]time.Duration
	}
	pgDone := make(chan pgResult, 1)
	go func() {
		r := pgResult{svc: map[string]*ServiceOverview{}, timings: map[string]time.Duration{}}
		get := getter(r.svc)
		mark := time.Now()
		lap := func(name string) { r.timings[name] = time.Since(mark); mark = time.Now() }
		pgFail := func(part string, err error) { r.errs = append(r.errs, part+": "+err.Error()) }
		exists, err := c.tableExists(ctx)
		if err != nil {
			pgFail("credentials", err)
		}
		if exists {
			if err := c.credentials(ctx, now, ov.ChartStart, get); err != nil {
				pgFail("credentials", err)
			}
			lap("credentials")
			if err := c.failures(ctx, ov.ChartStart, get); err != nil {
				pgFail("failures", err)
			}
			lap("failures")
			if r.owners, err = c.claims(ctx, get); err != nil {
				pgFail("claims", err)
			}
			lap("claims")
		}
		pgDone <- r
	}()

	mark := time.Now()
	lap := func(name string) { ov.Timings[name] = time.Since(mark); mark = time.Now() }
	rep, err := status.Gather(ctx, c.db, c.js, status.Options{Window: c.opts.ExpiringWithin, DLQScan: -1, SkipCredentials: true,
		Now: func() time.Time { return now }})
	if err != nil {
		ov.Errors = append(ov.Errors, rep.Errors...)
	}
	ov.Stream, ov.Consumer, ov.Connections = rep.Stream, rep.Consumer, rep.Connections
	ov.DeadLetters = rep.DeadLetters.Messages
	lap("streams, services and connections")
	dlSvc := map[string]*ServiceOverview{}
	if rep.DeadLetters.Exists {
		if err := c.deadLetterSummary(ctx, &ov, getter(dlSvc)); err != nil {
			fail("dead letters", err)
		}
	}
	lap("dead letters")
	skips, err := consumer.SkipsPerMinute(ctx, c.js)
	if err != nil {
		fail("skips", err)
	}
	lap("skips")

	pg := <-pgDone
	ov.Errors = append(ov.Errors, pg.errs...)
	for k, d := range pg.timings {
		ov.Timings[k] = d
	}
	ov.Owners = pg.owners
	svc := map[string]*ServiceOverview{}
	get := getter(svc)
	for _, name := range c.opts.Services {
		get(name)
	}
	for name, p := range pg.svc {
		s := get(name)
		s.Credentials, s.ReauthRequired, s.Expired, s.ExpiringSoon = p.Credentials, p.ReauthRequired, p.Expired, p.ExpiringSoon
		s.Refreshed, s.RefreshedHour, s.Failed, s.FailedHour, s.InFlight = p.Refreshed, p.RefreshedHour, p.Failed, p.FailedHour, p.InFlight
	}
	// Each service durable's backlog, oldest waiting request and provider state, as
	// status read them above.
	for i := range rep.Services {
		r := &rep.Services[i]
		s := get(r.Service)
		s.Backlog, s.OldestPending, s.Limits = r.Durable.Pending, r.OldestWaiting, r
	}
	for name, d := range dlSvc {
		s := get(name)
		s.DeadLetters, s.Dead, s.DeadHour = d.DeadLetters, d.Dead, d.DeadHour
	}
	first := ov.ChartStart.Unix() / 60
	for name, byMinute := range skips {
		for minute, n := range byMinute {
			if i := minute - first; i >= 0 && i < ChartMinutes {
				s := get(name)
				s.Skipped[i] += int(n)
				s.SkippedHour += int(n)
			}
		}
	}
	if err := c.liveOwners(ctx, &ov); err != nil {
		fail("owners", err)
	}
	for _, s := range svc {
		ov.Services = append(ov.Services, *s)
	}
	slices.SortFunc(ov.Services, func(a, b ServiceOverview) int { return cmp.Compare(a.Service, b.Service) })
	ov.Took = time.Since(start)
	return ov
}

// getter returns the entry of m for a service, adding it when missing.
func getter(m map[string]*ServiceOverview) func(string) *ServiceOverview {
	return func(name string) *ServiceOverview {
		if s := m[name]; s != nil {
			return s
		}
		s := &ServiceOverview{Service: name}
		m[name] = s
		return s
	}
}

func (c *Console) tableExists(ctx context.Context) (bool, error) {
	var ok bool
	err := c.db.NewRaw("SELECT to_regclass('credentials') IS NOT NULL").Scan(ctx, &ok)
	return ok, err
}

// credentials counts the table in one pass, grouped by service, status and the
// minute of the last hour in which the row's last refresh began: the totals, the
// rows needing reauth, the active rows expired and expiring soon, and the chart's
// refreshes.
func (c *Console) credentials(ctx context.Context, now, since time.Time, get func(string) *ServiceOverview) error {
	rows, err := c.db.QueryContext(ctx, `
		SELECT service, status,
		       CASE WHEN refreshed_at >= ?::timestamptz
		            THEN (floor(extract(epoch FROM refreshed_at))::bigint - ?::bigint) / 60 ELSE -1 END AS minute,
		       count(*),
		       count(*) FILTER (WHERE expires_at <= ?::timestamptz),
		       count(*) FILTER (WHERE expires_at > ?::timestamptz AND expires_at <= ?::timestamptz)
		FROM credentials
		GROUP BY 1, 2, 3`, since, since.Unix(), now, now, now.Add(c.opts.ExpiringWithin))
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			service, st              string
			minute                   int
			total, expired, expiring int64
		)
		if err := rows.Scan(&service, &st, &minute, &total, &expired, &expiring); err != nil {
			return err
		}
		s := get(service)
		s.Credentials += total
		if st == model.StatusReauthRequired {
			s.ReauthRequired += total
		} else {
			s.Expired += expired
			s.ExpiringSoon += expiring
		}
		if minute >= 0 && minute < ChartMinutes {
			s.Refreshed[minute] += int(total)
			s.RefreshedHour += int(total)
		}
	}
	return rows.Err()
}

// failures counts, per service and minute of the last hour, the credentials whose
// last failure was recorded in it, through credentials_failures_idx.
func (c *Console) failures(ctx context.Context, since time.Time, get func(string) *ServiceOverview) error {
	rows, err := c.db.QueryContext(ctx, `
		SELECT service, (floor(extract(epoch FROM updated_at))::bigint - ?::bigint) / 60, count(*)
		FROM credentials
		WHERE failures > 0 AND updated_at >= ?::timestamptz
		GROUP BY 1, 2`, since.Unix(), since)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			service   string
			minute, n int
		)
		if err := rows.Scan(&service, &minute, &n); err != nil {
			return err
		}
		if minute >= 0 && minute < ChartMinutes {
			s := get(service)
			s.Failed[minute] += n
			s.FailedHour += n
		}
	}
	return rows.Err()
}

// claims counts the live claims (provider calls in flight) per service and owner,
// through credentials_claims_idx.
func (c *Console) claims(ctx context.Context, get func(string) *ServiceOverview) ([]OwnerOverview, error) {
	rows, err := c.db.QueryContext(ctx, `
		SELECT service, coalesce(claim_owner, ''), count(*)
		FROM credentials
		WHERE claim_id IS NOT NULL AND claim_expires_at > now()
		GROUP BY 1, 2`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	byOwner := map[string]int64{}
	for rows.Next() {
		var (
			service, owner string
			n              int64
		)
		if err := rows.Scan(&service, &owner, &n); err != nil {
			return nil, err
		}
		get(service).InFlight += n
		byOwner[owner] += n
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var out []OwnerOverview
	for o, n := range byOwner {
		out = append(out, OwnerOverview{Owner: o, InFlight: n})
	}
	return out, nil
}

// liveOwners marks the owners whose liveness key is in the owners bucket, and adds
// the live ones holding no claim.
func (c *Console) liveOwners(ctx context.Context, ov *Overview) error {
	kv, err := c.js.KeyValue(ctx, consumer.OwnersBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return err
	}
	live := map[string]bool{}
	for k := range lister.Keys() {
		live[k] = true
	}
	_ = lister.Stop() // the listing is complete once Keys is closed
	for i := range ov.Owners {
		k := consumer.OwnerKey(ov.Owners[i].Owner)
		if live[k] {
			ov.Owners[i].Alive = true
			delete(live, k)
		}
	}
	for k := range live {
		ov.Owners = append(ov.Owners, OwnerOverview{Owner: k, Alive: true})
	}
	slices.SortFunc(ov.Owners, func(a, b OwnerOverview) int { return cmp.Compare(a.Owner, b.Owner) })
	return nil
}

// deadLetterSummary reads the newest dead letters: per service, per minute of the
// chart, and the commonest reasons.
func (c *Console) deadLetterSummary(ctx context.Context, ov *Overview, get func(string) *ServiceOverview) error {
	groups := map[string]*status.ReasonCount{}
	err := stream.ListDeadLetters(ctx, c.js, overviewDLQScan, func(dl stream.DeadLetter) error {
		ov.DeadLettersScanned++
		if k, err := model.ParseSubject(dl.OriginalSubject); err == nil {
			s := get(k.Service)
			s.DeadLetters++
			if m := int(dl.Time.Sub(ov.ChartStart) / time.Minute); dl.Time.After(ov.ChartStart) && m < ChartMinutes {
				s.Dead[m]++
				s.DeadHour++
			}
		}
		key := status.ReasonGroup(dl.Reason)
		g := groups[key]
		if g == nil {
			g = &status.ReasonCount{Reason: key}
			groups[key] = g
		}
		g.Count++
		g.Example = dl.Reason
		return nil
	})
	for _, g := range groups {
		ov.TopReasons = append(ov.TopReasons, *g)
	}
	slices.SortFunc(ov.TopReasons, func(a, b status.ReasonCount) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Reason, b.Reason))
	})
	if len(ov.TopReasons) > 5 {
		ov.TopReasons = ov.TopReasons[:5]
	}
	return err
}

func (c *Console) overviewJSON(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := c.ctx(r)
	defer cancel()
	ov := c.GatherOverview(ctx)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(ov)
}

func (c *Console) overviewPage(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := c.ctx(r)
	defer cancel()
	ov := c.GatherOverview(ctx)
	name := "overview.html"
	if r.URL.Query().Get("fragment") == "1" {
		name = "overview-live"
	}
	c.render(w, r, name, page{Title: "Overview", Nav: "overview", Data: overviewView{Overview: ov, RefreshMS: c.opts.Refresh.Milliseconds()}})
}

type overviewView struct {
	Overview
	RefreshMS int64
}

// Provider says how the fleet may call the service's provider at now: "closed", or
// why not and until when.
func (s ServiceOverview) Provider(now time.Time) string {
	l := s.Limits
	if l == nil {
		return "closed"
	}
	var parts []string
	if l.PausedUntil != nil && l.PausedUntil.After(now) {
		p := "paused " + l.PausedUntil.Sub(now).Round(time.Second).String() + " more"
		if l.PauseReason != "" {
			p += " (" + l.PauseReason + ")"
		}
		parts = append(parts, p)
	}
	c := strings.ReplaceAll(l.Circuit, "_", "-")
	switch {
	case l.Circuit != "closed" && l.NextProbe != nil && l.NextProbe.After(now):
		c += ", probe in " + l.NextProbe.Sub(now).Round(time.Second).String()
	case l.Circuit == "closed" && l.Failures > 0:
		c += fmt.Sprintf(", %d failures in a row", l.Failures)
	}
	parts = append(parts, c)
	if l.CallsInFlight > 0 {
		parts = append(parts, fmt.Sprintf("%d slots in use", l.CallsInFlight))
	}
	return strings.Join(parts, "; ")
}

// Chart draws a service's last hour as stacked bars (refreshed, skipped, failed, dead) in
// an inline SVG: numbers only, so nothing from the data reaches the markup as text
// but counts and times.
func (s ServiceOverview) Chart(start time.Time) template.HTML {
	const w, h, bw = 600, 80, 10
	peak := 1
	for i := range ChartMinutes {
		peak = max(peak, s.Refreshed[i]+s.Skipped[i]+s.Failed[i]+s.Dead[i])
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%s: refreshed, skipped, failed and dead-lettered per minute, last hour (peak %d)">`,
		w, h+12, w, h+12, template.HTMLEscapeString(s.Service), peak)
	for i := range ChartMinutes {
		x := i * bw
		y := h
		minute := start.Add(time.Duration(i) * time.Minute).Format("15:04")
		fmt.Fprintf(&b, `<g><title>%s UTC: %d refreshed, %d skipped, %d failed, %d dead-lettered</title>`, minute, s.Refreshed[i], s.Skipped[i], s.Failed[i], s.Dead[i])
		fmt.Fprintf(&b, `<rect class="bg" x="%d" y="0" width="%d" height="%d"/>`, x, bw-1, h)
		for _, part := range []struct {
			n     int
			class string
		}{{s.Refreshed[i], "ok"}, {s.Skipped[i], "skip"}, {s.Failed[i], "fail"}, {s.Dead[i], "dead"}} {
			if part.n == 0 {
				continue
			}
			ph := max(1, part.n*h/peak)
			y -= ph
			fmt.Fprintf(&b, `<rect class="%s" x="%d" y="%d" width="%d" height="%d"/>`, part.class, x, y, bw-1, ph)
		}
		b.WriteString(`</g>`)
	}
	fmt.Fprintf(&b, `<text x="0" y="%d">%s</text><text x="%d" y="%d" text-anchor="end">%s UTC</text></svg>`,
		h+11, start.Format("15:04"), w, h+11, start.Add((ChartMinutes-1)*time.Minute).Format("15:04"))
	return template.HTML(b.String())
}
