package consumer

// WithoutLock selects the naive read-call-write path, for the control half of the
// lost-update test.
func WithoutLock() Option { return func(c *Consumer) { c.naive = true } }

// WithAsyncClaims commits claims without waiting for the WAL flush, for the control
// half of the database-crash test.
func WithAsyncClaims() Option { return func(c *Consumer) { c.asyncClaims = true } }
