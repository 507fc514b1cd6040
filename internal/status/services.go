package status

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/limit"
)

// ServiceReport is one service's queue and provider limits: its durable (the
// backlog), the oldest request it has not acknowledged, and the fleet-wide limits
// state (package limit).
type ServiceReport struct {
	Service string         `json:"service"`
	Durable ConsumerReport `json:"durable"`
	// OldestWaiting is when the oldest unacknowledged request was stored; the stream
	// drops requests at StreamMaxAgeSeconds, so Warning is set past half of it.
	OldestWaiting       *time.Time `json:"oldest_waiting"`
	StreamMaxAgeSeconds float64    `json:"stream_max_age_seconds"`
	Warning             string     `json:"warning,omitempty"`
	// Circuit is closed, open or half_open; PausedUntil is set while a Retry-After
	// holds the service.
	Circuit     string     `json:"circuit"`
	Failures    int        `json:"failures"`
	PausedUntil *time.Time `json:"paused_until"`
	PauseReason string     `json:"pause_reason,omitempty"`
	NextProbe   *time.Time `json:"next_probe"`
	// CallsInFlight counts the slots of REFRESHER_<SERVICE>_MAX_IN_FLIGHT in use.
	CallsInFlight int `json:"calls_in_flight"`
}

// serviceReports reads every service durable of the fleet and the limits bucket.
func serviceReports(ctx context.Context, js jetstream.JetStream, now time.Time) ([]ServiceReport, error) {
	out := []ServiceReport{}
	s, err := js.Stream(ctx, requestStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return out, nil
	}
	if err != nil {
		return out, fmt.Errorf("stream %s: %w", requestStream, err)
	}
	maxAge := s.CachedInfo().Config.MaxAge
	states, lerr := limit.ReadStates(ctx, js)
	names := s.ConsumerNames(ctx)
	var services []string
	for name := range names.Name() {
		if svc, ok := strings.CutPrefix(name, consumer.Durable+"-"); ok {
			services = append(services, svc)
		}
	}
	if err := names.Err(); err != nil {
		return out, fmt.Errorf("consumers of %s: %w", requestStream, err)
	}
	for svc := range states {
		if !slices.Contains(services, svc) {
			services = append(services, svc)
		}
	}
	slices.Sort(services)
	var errs []error
	for _, svc := range services {
		r := ServiceReport{Service: svc, StreamMaxAgeSeconds: maxAge.Seconds(), Circuit: limit.Closed.String()}
		if r.Durable, err = durableReport(ctx, js, consumer.ServiceDurable(svc)); err != nil {
			errs = append(errs, err)
		}
		at, ok, err := consumer.OldestRequest(ctx, js, svc)
		if err != nil {
			errs = append(errs, err)
		} else if ok {
			r.OldestWaiting = utc(at)
			if age := now.Sub(at); maxAge > 0 && age > maxAge/2 {
				r.Warning = fmt.Sprintf("oldest request waiting %s of the stream's %s retention: requests older than that are dropped", age.Round(time.Second), maxAge)
			}
		}
		if st, ok := states[svc]; ok {
			r.Circuit, r.Failures, r.CallsInFlight, r.PauseReason = st.Circuit.String(), st.Failures, st.InFlight(now), st.PauseReason
			if st.Paused(now) {
				r.PausedUntil = utc(time.Unix(0, st.PausedUntil))
			} else {
				r.PauseReason = ""
			}
			if st.Circuit != limit.Closed && st.NextProbe != 0 {
				r.NextProbe = utc(time.Unix(0, st.NextProbe))
			}
		}
		out = append(out, r)
	}
	if lerr != nil {
		errs = append(errs, lerr)
	}
	return out, errors.Join(errs...)
}
