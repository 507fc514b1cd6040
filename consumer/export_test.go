package consumer

// WithoutLock selects the naive read-call-write path, for the control half of the
// lost-update test.
func WithoutLock() Option { return func(c *Consumer) { c.naive = true } }
