package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/refresher/refresher/publisher"
)

// Period results, the values of the result label of refresher_publish_periods_total.
const (
	// PeriodPublished: the period's run stored (or found stored) every request.
	PeriodPublished = "published"
	// PeriodFailed: the period's run ended with requests failed or unknown (NATS
	// unreachable until the period ended, a scan error, a shutdown).
	PeriodFailed = "failed"
	// PeriodSkipped: the period passed with no run of its own (the previous run
	// outlasted it).
	PeriodSkipped = "skipped"
)

// NewSchedule returns the metrics of a `publish --every` process for service, on a
// registry of their own:
//
//	refresher_publish_periods_total{service,result}  counter
//	    schedule periods by result: published, failed, skipped. An alert on
//	    rate(...{result!="published"}) catches a scheduler that is not publishing.
//	refresher_nats_reconnects_total                  counter
//
// plus the standard go_* and process_* collectors. Record runs with ScheduleRun.
func NewSchedule(service string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), services: map[string]bool{service: true}}
	m.periods = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "refresher_publish_periods_total",
		Help: "Schedule periods of publish --every, by service and result (published, failed, skipped).",
	}, []string{"service", "result"})
	m.reconnects = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "refresher_nats_reconnects_total",
		Help: "Reconnections of this process's NATS connections to a server.",
	}, m.natsReconnects)
	m.reg.MustRegister(m.periods, m.reconnects,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, r := range []string{PeriodPublished, PeriodFailed, PeriodSkipped} {
		m.periods.WithLabelValues(service, r)
	}
	return m
}

// ScheduleRun counts a scheduled run (a publisher.Schedule report function): its
// period's result, and the periods skipped before it.
func (m *Metrics) ScheduleRun(service string) func(publisher.Run) {
	return func(run publisher.Run) {
		if run.Skipped > 0 {
			m.periods.WithLabelValues(service, PeriodSkipped).Add(float64(run.Skipped))
		}
		result := PeriodPublished
		if run.Err != nil {
			result = PeriodFailed
		}
		m.periods.WithLabelValues(service, result).Inc()
	}
}
