package publisher

import "time"

// Test hooks, visible to this package's tests only.

// WithClock replaces time.Now, for tests of window boundaries.
func WithClock(now func() time.Time) Option { return func(p *Publisher) { p.now = now } }

// ScheduleAfter replaces time.After as the way Schedule waits for the next boundary, so
// that tests can step through windows with a virtual clock (set with WithClock) instead
// of waiting them out.
func ScheduleAfter(after func(time.Duration) <-chan time.Time) ScheduleOption {
	return func(s *schedule) { s.after = after }
}
