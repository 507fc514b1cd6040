// Package metrics exposes what a consume process does in the Prometheus text format,
// and its liveness and readiness, over HTTP.
//
// Metrics, all on a registry of their own (never the global one, so tests and
// embedded consumers cannot collide):
//
//	refresher_messages_total{service,outcome}                   counter
//	    messages handled, by consumer.Outcome: refreshed, skipped_fresh,
//	    skipped_reauth, reauth_required, not_found, retried, dead_lettered,
//	    malformed, interrupted. service is "unknown" when the subject did not
//	    name a configured service.
//	refresher_provider_request_duration_seconds{service,result} histogram
//	    token requests; result is ok, invalid_grant, transient or error.
//	refresher_lock_wait_seconds                                 histogram
//	    time to take a credential's row lock, whether or not it was taken.
//	refresher_transaction_duration_seconds                      histogram
//	    one refresh transaction, provider call and commit included.
//	refresher_messages_in_flight                                gauge
//	    messages being handled now.
//	refresher_nats_reconnects_total                             counter
//	    reconnections of the watched NATS connections.
//	refresher_answers_discarded_total{service,reason}            counter
//	    provider answers not written: grant_replaced (the application stored a
//	    new grant during the call), claim_lost (the claim expired and another
//	    attempt took it), deleted (the credential was deleted during the call).
//	refresher_claims_taken_over_total{service,reason}            counter
//	    claims of other attempts taken over: expired, or dead_owner (the
//	    process holding it stopped renewing its liveness key).
//	refresher_takeover_token_age_seconds{service}                histogram
//	    at a takeover, how long ago the dead attempt presented the refresh token
//	    presented again now: compare with the provider's reuse interval.
//	go_sql_*{db_name="refresher"}                                gauges, counters
//	    the database pool (WatchDB): open, in use, idle, max, waits.
//
// plus the standard go_* and process_* collectors (NewSchedule has a publish
// scheduler's, refresher_publish_periods_total). No label ever holds a token, an id
// or anything else taken from a message beyond a configured service name.
package metrics

import (
	"database/sql"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/provider"
)

// UnknownService is the service label of messages whose subject named no configured
// service (malformed ones): a label value taken from a bad subject would let any
// publisher create series at will.
const UnknownService = "unknown"

// Provider call results, the values of the result label.
const (
	ResultOK           = "ok"
	ResultInvalidGrant = "invalid_grant"
	ResultTransient    = "transient"
	ResultError        = "error"
)

// Outcomes lists every consumer.Outcome, in the order Stats has them.
var Outcomes = consumer.Outcomes()

// Metrics is a consumer.Observer that records into its own Prometheus registry.
// It is safe for concurrent use.
type Metrics struct {
	reg        *prometheus.Registry
	messages   *prometheus.CounterVec
	provider   *prometheus.HistogramVec
	lockWait   prometheus.Histogram
	tx         prometheus.Histogram
	inFlight   prometheus.Gauge
	discarded  *prometheus.CounterVec
	takenOver  *prometheus.CounterVec
	tokenAge   *prometheus.HistogramVec
	services   map[string]bool
	mu         sync.Mutex
	natsConns  []*nats.Conn
	reconnects prometheus.CounterFunc
	periods    *prometheus.CounterVec // NewSchedule's
	limits     *limitMetrics
}

var _ consumer.Observer = (*Metrics)(nil)

// New returns Metrics with a fresh registry. services are the configured ones: their
// series are created at zero so that rate() and alerts see them before the first
// message, and any other service name is recorded as UnknownService.
func New(services ...string) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refresher_messages_total",
			Help: "Refresh messages handled, by service and outcome (refreshed, skipped_fresh, skipped_reauth, reauth_required, not_found, retried, dead_lettered, malformed, interrupted).",
		}, []string{"service", "outcome"}),
		provider: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "refresher_provider_request_duration_seconds",
			Help:    "Token requests to the OAuth2 provider, by service and result (ok, invalid_grant, transient, error).",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15, 30},
		}, []string{"service", "result"}),
		lockWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "refresher_lock_wait_seconds",
			Help:    "Time to take a credential's row lock (FOR UPDATE), whether or not it was taken.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		tx: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "refresher_transaction_duration_seconds",
			Help:    "One short transaction of a refresh (a claim or a commit), its commit included; no provider call happens inside one.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15, 30},
		}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "refresher_messages_in_flight",
			Help: "Messages being handled by this process now.",
		}),
		discarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refresher_answers_discarded_total",
			Help: "Provider answers not written, by service and reason (grant_replaced, claim_lost, deleted).",
		}, []string{"service", "reason"}),
		takenOver: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refresher_claims_taken_over_total",
			Help: "Claims of other attempts taken over, by service and reason (expired, dead_owner).",
		}, []string{"service", "reason"}),
		tokenAge: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "refresher_takeover_token_age_seconds",
			Help:    "At a takeover, how long ago the dead attempt presented the refresh token presented again now.",
			Buckets: []float64{1, 2.5, 5, 10, 15, 20, 30, 45, 60, 120, 300, 600},
		}, []string{"service"}),
		services: map[string]bool{},
	}
	m.reconnects = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "refresher_nats_reconnects_total",
		Help: "Reconnections of this process's NATS connections to a server.",
	}, m.natsReconnects)
	m.reg.MustRegister(m.messages, m.provider, m.lockWait, m.tx, m.inFlight, m.reconnects, m.discarded, m.takenOver, m.tokenAge,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, s := range services {
		m.services[s] = true
		for _, o := range Outcomes {
			m.messages.WithLabelValues(s, o.String())
		}
	}
	m.limits = newLimitMetrics(m.reg, services)
	m.messages.WithLabelValues(UnknownService, consumer.Malformed.String())
	for _, s := range services {
		for _, r := range []string{consumer.DiscardGrantReplaced, consumer.DiscardClaimLost, consumer.DiscardDeleted} {
			m.discarded.WithLabelValues(s, r)
		}
		for _, r := range []string{consumer.TakeoverExpired, consumer.TakeoverDeadOwner} {
			m.takenOver.WithLabelValues(s, r)
		}
	}
	return m
}

// WatchDB exposes db's connection pool as the standard go_sql_* metrics, labelled
// db_name="refresher": how many connections this process holds, and how often it
// waited for one.
func (m *Metrics) WatchDB(db *sql.DB) {
	m.reg.MustRegister(collectors.NewDBStatsCollector(db, "refresher"))
}

// Registry is where the metrics live, for serving or for gathering in tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// WatchNATS counts nc's reconnections in refresher_nats_reconnects_total. The count
// is read from the connection's own statistics at scrape time, so no callback has to
// be threaded through the dial and none can be missed.
func (m *Metrics) WatchNATS(nc *nats.Conn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.natsConns = append(m.natsConns, nc)
}

func (m *Metrics) natsReconnects() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n uint64
	for _, nc := range m.natsConns {
		n += nc.Stats().Reconnects
	}
	return float64(n)
}

func (m *Metrics) service(s string) string {
	if s == "" || (len(m.services) > 0 && !m.services[s]) {
		return UnknownService
	}
	return s
}

// MessageDone implements consumer.Observer.
func (m *Metrics) MessageDone(service string, outcome consumer.Outcome, _ time.Duration) {
	m.messages.WithLabelValues(m.service(service), outcome.String()).Inc()
}

// ProviderCall implements consumer.Observer.
func (m *Metrics) ProviderCall(service string, d time.Duration, err error) {
	m.provider.WithLabelValues(m.service(service), Result(err)).Observe(d.Seconds())
}

// LockWait implements consumer.Observer.
func (m *Metrics) LockWait(d time.Duration) { m.lockWait.Observe(d.Seconds()) }

// Transaction implements consumer.Observer.
func (m *Metrics) Transaction(d time.Duration) { m.tx.Observe(d.Seconds()) }

// Discarded implements consumer.Observer.
func (m *Metrics) Discarded(service, reason string) {
	m.discarded.WithLabelValues(m.service(service), reason).Inc()
}

// ClaimTakenOver implements consumer.Observer.
func (m *Metrics) ClaimTakenOver(service, reason string, age time.Duration) {
	m.takenOver.WithLabelValues(m.service(service), reason).Inc()
	m.tokenAge.WithLabelValues(m.service(service)).Observe(age.Seconds())
}

// InFlight implements consumer.Observer.
func (m *Metrics) InFlight(delta int) { m.inFlight.Add(float64(delta)) }

// BatchSplit implements consumer.Observer. Not a metric: the warning it comes with is
// what an operator acts on.
func (m *Metrics) BatchSplit(int) {}

// MaxDeliveriesCopied implements consumer.Observer. Not a metric: a copy that is no
// duplicate is counted as a dead_lettered message already.
func (m *Metrics) MaxDeliveriesCopied(uint64, bool) {}

// Result is the result label of a token request that returned err.
func Result(err error) string {
	var te *provider.TransientError
	switch {
	case err == nil:
		return ResultOK
	case errors.Is(err, provider.ErrInvalidGrant):
		return ResultInvalidGrant
	case errors.As(err, &te):
		return ResultTransient
	}
	return ResultError
}
