package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/refresher/refresher/limit"
)

// limitMetrics are the provider limits' series (package limit), per service.
type limitMetrics struct {
	wait       *prometheus.HistogramVec
	paused     *prometheus.GaugeVec
	circuit    *prometheus.GaugeVec
	failures   *prometheus.GaugeVec
	inFlight   *prometheus.GaugeVec
	fallback   *prometheus.GaugeVec
	changes    *prometheus.CounterVec
	backlogAge *prometheus.GaugeVec
	maxAge     prometheus.Gauge
}

// circuitValue is refresher_circuit_state's value for a position.
var circuitValue = map[limit.Circuit]float64{limit.Closed: 0, limit.HalfOpen: 1, limit.Open: 2}

func newLimitMetrics(reg *prometheus.Registry, services []string) *limitMetrics {
	l := &limitMetrics{
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "refresher_limit_wait_seconds",
			Help:    "Time a request waited for its permit to call the provider (rate, calls in flight, pause, open circuit), by service.",
			Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 900, 3600},
		}, []string{"service"}),
		paused: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "refresher_limit_paused",
			Help: "1 while the provider's Retry-After pauses the service fleet-wide.",
		}, []string{"service"}),
		circuit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "refresher_circuit_state",
			Help: "The service's circuit breaker, fleet-wide: 0 closed, 1 half-open (probing), 2 open (requests wait in the stream).",
		}, []string{"service"}),
		failures: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "refresher_circuit_failures",
			Help: "Transient provider failures in a row, fleet-wide (the circuit opens at REFRESHER_<SERVICE>_CIRCUIT_THRESHOLD).",
		}, []string{"service"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "refresher_limit_calls_in_flight",
			Help: "Provider calls in flight across the fleet, as counted for REFRESHER_<SERVICE>_MAX_IN_FLIGHT (0 when no cap is set).",
		}, []string{"service"}),
		fallback: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "refresher_limit_fallback",
			Help: "1 while this process cannot reach the shared limits and keeps to its share of them.",
		}, []string{"service"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refresher_limit_changes_total",
			Help: "Changes of a service's limits state made by this process: paused, resumed, circuit_opened, circuit_half_open, circuit_closed, circuit_reopened, fallback, shared.",
		}, []string{"service", "change"}),
		backlogAge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "refresher_oldest_request_age_seconds",
			Help: "Age of the oldest request of the service not yet acknowledged; the stream drops requests older than refresher_stream_max_age_seconds.",
		}, []string{"service"}),
		maxAge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "refresher_stream_max_age_seconds",
			Help: "How long the REFRESH stream keeps a request (REFRESHER_STREAM_MAX_AGE as the stream has it).",
		}),
	}
	reg.MustRegister(l.wait, l.paused, l.circuit, l.failures, l.inFlight, l.fallback, l.changes, l.backlogAge, l.maxAge)
	for _, s := range services {
		l.paused.WithLabelValues(s)
		l.circuit.WithLabelValues(s)
		l.failures.WithLabelValues(s)
		l.fallback.WithLabelValues(s)
		for _, c := range []string{limit.ChangePaused, limit.ChangeOpened, limit.ChangeClosed} {
			l.changes.WithLabelValues(s, c)
		}
	}
	return l
}

// LimitWaited implements limit.Observer.
func (m *Metrics) LimitWaited(service string, d time.Duration) {
	m.limits.wait.WithLabelValues(m.service(service)).Observe(d.Seconds())
}

// LimitState implements limit.Observer.
func (m *Metrics) LimitState(service string, st limit.State, fallback bool) {
	s, now := m.service(service), time.Now()
	m.limits.paused.WithLabelValues(s).Set(b2f(st.Paused(now)))
	m.limits.circuit.WithLabelValues(s).Set(circuitValue[st.Circuit])
	m.limits.failures.WithLabelValues(s).Set(float64(st.Failures))
	m.limits.inFlight.WithLabelValues(s).Set(float64(st.InFlight(now)))
	m.limits.fallback.WithLabelValues(s).Set(b2f(fallback))
}

// LimitChanged implements limit.Observer.
func (m *Metrics) LimitChanged(service, change string) {
	m.limits.changes.WithLabelValues(m.service(service), change).Inc()
}

// BacklogAge records the age of a service's oldest unacknowledged request and the
// stream's retention.
func (m *Metrics) BacklogAge(service string, age, maxAge time.Duration) {
	m.limits.backlogAge.WithLabelValues(m.service(service)).Set(age.Seconds())
	m.limits.maxAge.Set(maxAge.Seconds())
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

var _ limit.Observer = (*Metrics)(nil)
