package consumer

import (
	"fmt"
	"time"
)

// Durable is the name of the one durable pull consumer the whole fleet shares: every
// consume process binds to it, and JetStream hands each message to one of them.
const Durable = "refresher"

// Config tunes one consume process. Env names are REFRESHER_<tag>.
type Config struct {
	Concurrency     int             `envconfig:"REFRESHER_CONCURRENCY" default:"256" desc:"provider calls in flight in one process (no database connection is held during a call)"`
	AckWait         time.Duration   `envconfig:"REFRESHER_ACK_WAIT" default:"10s" desc:"redelivery timeout of an unacknowledged message; heartbeats every third of it keep a message in progress, so it bounds how soon a dead process's messages are redelivered"`
	OwnerTTL        time.Duration   `envconfig:"REFRESHER_OWNER_TTL" default:"10s" desc:"a consume process whose liveness key (JetStream bucket refresher_owners) is this old is dead, and its claims are taken over at once; 0 disables: claims are then taken over only when they expire"`
	MaxDeliver      int             `envconfig:"REFRESHER_MAX_DELIVER" default:"8" desc:"deliveries before a failing request is dead-lettered"`
	Backoff         []time.Duration `envconfig:"REFRESHER_BACKOFF" default:"1s,5s,15s,30s,1m,2m,5m" desc:"NakWithDelay delay by delivery count (the last repeats)"`
	MaxAckPending   int             `envconfig:"REFRESHER_MAX_ACK_PENDING" default:"1024" desc:"unacknowledged messages across the fleet; above concurrency x processes"`
	LockTimeout     time.Duration   `envconfig:"REFRESHER_LOCK_TIMEOUT" default:"5s" desc:"wait for a row lock held by another writer before backing off"`
	ProviderTimeout time.Duration   `envconfig:"REFRESHER_PROVIDER_TIMEOUT" default:"15s" desc:"bound on one token request; below ACK_WAIT and DRAIN_TIMEOUT"`
	DrainTimeout    time.Duration   `envconfig:"REFRESHER_DRAIN_TIMEOUT" default:"30s" desc:"on SIGTERM, time for in-flight messages to finish"`
	DefaultTokenTTL time.Duration   `envconfig:"REFRESHER_DEFAULT_TOKEN_TTL" default:"1h" desc:"expires_at for a token whose provider gave no expires_in"`
	BatchSize       int             `envconfig:"REFRESHER_BATCH_SIZE" default:"1" desc:"requests claimed and committed together; above 1, one claim and one commit transaction serve the whole batch"`
	LimitLease      time.Duration   `envconfig:"REFRESHER_LIMIT_LEASE" default:"5s" desc:"how long a process's share of a service's REFRESHER_<SERVICE>_MAX_IN_FLIGHT counts without renewal: how soon the slots of a process that died come back"`
}

// DefaultConfig is what the env defaults amount to, for code that configures itself
// without envconfig (tests, the demo, application code).
func DefaultConfig() Config {
	return Config{
		Concurrency:     256,
		AckWait:         10 * time.Second,
		OwnerTTL:        10 * time.Second,
		MaxDeliver:      8,
		Backoff:         []time.Duration{time.Second, 5 * time.Second, 15 * time.Second, 30 * time.Second, time.Minute, 2 * time.Minute, 5 * time.Minute},
		MaxAckPending:   1024,
		LockTimeout:     5 * time.Second,
		ProviderTimeout: 15 * time.Second,
		DrainTimeout:    30 * time.Second,
		DefaultTokenTTL: time.Hour,
		BatchSize:       1,
		LimitLease:      5 * time.Second,
	}
}

// Validate names the first bad value by its environment variable.
func (c Config) Validate() error {
	switch {
	case c.Concurrency < 1 || c.Concurrency > 4096:
		return fmt.Errorf("REFRESHER_CONCURRENCY=%d: want 1 to 4096", c.Concurrency)
	case c.MaxDeliver < 1:
		return fmt.Errorf("REFRESHER_MAX_DELIVER=%d: want at least 1", c.MaxDeliver)
	case c.MaxAckPending < c.Concurrency:
		// Calls in flight are messages awaiting their ack: a process asking for more
		// than the fleet's budget would never be handed them.
		return fmt.Errorf("REFRESHER_MAX_ACK_PENDING=%d: want at least REFRESHER_CONCURRENCY (%d)", c.MaxAckPending, c.Concurrency)
	case c.LockTimeout <= 0:
		return fmt.Errorf("REFRESHER_LOCK_TIMEOUT=%s: must be positive", c.LockTimeout)
	case c.ProviderTimeout <= 0:
		return fmt.Errorf("REFRESHER_PROVIDER_TIMEOUT=%s: must be positive", c.ProviderTimeout)
	case c.AckWait < time.Second:
		// Heartbeats go every third of it: shorter would spend the connection on them.
		return fmt.Errorf("REFRESHER_ACK_WAIT=%s: want at least 1s", c.AckWait)
	case c.OwnerTTL != 0 && c.OwnerTTL < time.Second:
		return fmt.Errorf("REFRESHER_OWNER_TTL=%s: want at least 1s, or 0 to disable", c.OwnerTTL)
	case c.OwnerTTL < 0:
		return fmt.Errorf("REFRESHER_OWNER_TTL=%s: must not be negative", c.OwnerTTL)
	case c.DrainTimeout <= c.ProviderTimeout:
		// A provider call cut short by shutdown may have rotated the token already; the
		// drain must be able to wait one out.
		return fmt.Errorf("REFRESHER_DRAIN_TIMEOUT=%s: must exceed REFRESHER_PROVIDER_TIMEOUT (%s)", c.DrainTimeout, c.ProviderTimeout)
	case c.BatchSize < 1 || c.BatchSize > 512:
		return fmt.Errorf("REFRESHER_BATCH_SIZE=%d: want 1 to 512", c.BatchSize)
	case c.BatchSize > c.Concurrency:
		return fmt.Errorf("REFRESHER_BATCH_SIZE=%d: must not exceed REFRESHER_CONCURRENCY (%d)", c.BatchSize, c.Concurrency)
	case c.LimitLease < time.Second:
		return fmt.Errorf("REFRESHER_LIMIT_LEASE=%s: want at least 1s", c.LimitLease)
	case c.DefaultTokenTTL <= 0:
		return fmt.Errorf("REFRESHER_DEFAULT_TOKEN_TTL=%s: must be positive", c.DefaultTokenTTL)
	}
	if len(c.Backoff) == 0 {
		return fmt.Errorf("REFRESHER_BACKOFF is empty: give at least one delay")
	}
	for _, d := range c.Backoff {
		if d <= 0 {
			return fmt.Errorf("REFRESHER_BACKOFF: delay %s must be positive", d)
		}
	}
	return nil
}

// claimTTL is how long a claim keeps other attempts off a credential: the provider
// call and room to commit its answer through a database restart. Once it has expired,
// another attempt may take over and present the token the claim's owner may already
// have rotated; only the provider's reuse interval then saves the credential.
func (c Config) claimTTL() time.Duration {
	return c.ProviderTimeout + 2*c.LockTimeout + claimMargin + 3*time.Second
}

// RecoveryTime is the longest a credential whose consumer died between the
// provider's answer and its commit waits before another process presents its token
// again: the message's redelivery (AckWait after the last heartbeat) and the owner's
// death becoming visible (OwnerTTL after its last heartbeat), or without liveness the
// claim's expiry, plus a look at the claim. Inside the provider's reuse interval that
// recovers the token; outside it the credential ends reauth_required.
func (c Config) RecoveryTime() time.Duration {
	if c.OwnerTTL > 0 {
		return max(c.AckWait, c.OwnerTTL) + 250*time.Millisecond
	}
	return max(c.AckWait, c.claimTTL()) + 250*time.Millisecond
}

// statementTimeout bounds one short transaction's statements, lock waits aside.
func (c Config) statementTimeout() time.Duration { return 10 * time.Second }

// backoff is the delay before delivery n+1 after delivery n failed.
func (c Config) backoff(delivered uint64, retryAfter time.Duration) time.Duration {
	i := int(delivered) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(c.Backoff) {
		i = len(c.Backoff) - 1
	}
	d := c.Backoff[i]
	// Honour the provider's Retry-After, within reason: a header of days must not park
	// a message past the stream's retention.
	if retryAfter > d {
		d = min(retryAfter, 15*time.Minute)
	}
	return d
}
