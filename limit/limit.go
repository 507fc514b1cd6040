// Package limit keeps the fleet's calls to each provider within what the provider
// allows: a rate (calls per second, minute or hour, with a burst), a cap on calls in
// flight, a pause when the provider answers with Retry-After, and a circuit breaker
// that stops calling a provider that keeps failing and probes it with one call at
// growing intervals.
//
// Every consume process of the fleet shares one state per service, kept in the
// JetStream key-value bucket Bucket and changed only by compare-and-set, so the
// limits hold across processes and hosts, on a NATS cluster too, with nothing else to
// run. Calls in flight are leased per process: the slots of a process that dies come
// back when its lease runs out. When the bucket cannot be reached, each process falls
// back to its share of the limits (the limits divided by the number of live consume
// processes it last saw), never to no limit.
//
// In the message's path it sits before the claim: a message waits for its permit
// holding nothing in PostgreSQL, kept alive by heartbeats, so waiting spends no
// delivery; a permit not used for a call (the skip rule answered the request) is
// given back.
package limit

import (
	"fmt"
	"time"
)

// Bucket is the JetStream key-value bucket holding one State per service, under the
// service's name.
const Bucket = "refresher_limits"

// Limits are one service's limits. The zero value limits nothing and never opens a
// circuit.
type Limits struct {
	// Rate is the fleet's pace of calls; zero is no rate limit.
	Rate Rate
	// MaxInFlight caps the fleet's calls in flight; 0 is no cap.
	MaxInFlight int
	// CircuitThreshold is the run of transient failures (5xx, timeouts, connection
	// errors) after which the circuit opens; 0 never opens it.
	CircuitThreshold int
	// ProbeInterval is the wait before an open circuit's first probe; it doubles
	// with every failed probe up to ProbeMax.
	ProbeInterval time.Duration
	ProbeMax      time.Duration
}

// DefaultLimits are a service's limits when none are configured: no rate or
// concurrency limit, and a circuit that opens after 5 failures in a row and probes
// after 5 s, 10 s, 20 s ... up to every 2 minutes.
func DefaultLimits() Limits {
	return Limits{CircuitThreshold: 5, ProbeInterval: 5 * time.Second, ProbeMax: 2 * time.Minute}
}

// Validate names the first bad value; prefix is the service's variable prefix.
func (l Limits) Validate(prefix string) error {
	switch {
	case l.Rate.N < 0 || (!l.Rate.IsZero() && (l.Rate.Per <= 0 || l.Rate.Burst < 1)):
		return fmt.Errorf("%s_RATE=%s: want a positive rate and a burst of at least 1", prefix, l.Rate)
	case l.Rate.Burst > 100_000:
		return fmt.Errorf("%s_BURST=%d: want at most 100000", prefix, l.Rate.Burst)
	case l.MaxInFlight < 0 || l.MaxInFlight > 100_000:
		return fmt.Errorf("%s_MAX_IN_FLIGHT=%d: want 0 (no cap) to 100000", prefix, l.MaxInFlight)
	case l.CircuitThreshold < 0:
		return fmt.Errorf("%s_CIRCUIT_THRESHOLD=%d: want 0 (never open) or more", prefix, l.CircuitThreshold)
	case l.CircuitThreshold > 0 && l.ProbeInterval < 100*time.Millisecond:
		return fmt.Errorf("%s_PROBE_INTERVAL=%s: want at least 100ms", prefix, l.ProbeInterval)
	case l.CircuitThreshold > 0 && l.ProbeMax < l.ProbeInterval:
		return fmt.Errorf("%s_PROBE_MAX=%s: want at least %s_PROBE_INTERVAL (%s)", prefix, l.ProbeMax, prefix, l.ProbeInterval)
	}
	return nil
}

// probeDelay is the wait before the probe that follows failed probes.
func (l Limits) probeDelay(failed int) time.Duration {
	d := l.ProbeInterval
	for range failed {
		if d >= l.ProbeMax {
			break
		}
		d *= 2
	}
	return min(d, l.ProbeMax)
}

// limited reports whether calls need the shared state to start (the circuit and
// pauses are read from the local copy otherwise).
func (l Limits) limited() bool { return !l.Rate.IsZero() || l.MaxInFlight > 0 }
