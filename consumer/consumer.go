// Package consumer is the fleet worker: it takes refresh requests from the shared
// durable consumer, and for each one locks the credential row, applies the skip rule,
// calls the provider with the row's current refresh token, writes only the token
// columns, commits, and only then acknowledges. It does not decide scheduling.
package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"

	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider"
	"github.com/refresher/refresher/stream"
)

// Consumer is one consume process's worker pool.
type Consumer struct {
	cfg       Config
	streams   stream.StreamConfig
	db        *bun.DB
	js        jetstream.JetStream
	providers map[string]provider.Refresher
	log       *slog.Logger
	now       func() time.Time
	stats     counters
	observer  Observer
	keyring   *model.Keyring // nil: tokens stored in plaintext
	naive     bool           // test-only: the unlocked read-call-write path the lock exists to prevent
	owner     string         // written into claims, to tell operators whose they are
	// local holds a channel per claim this process holds, closed when the claim
	// settles: a duplicate waiting for it needs no database look.
	local sync.Map // claim id (int64) -> chan struct{}
	live  *liveness
	sql   settingsSQL
	skips skipCounts
	// asyncClaims (test-only) commits claims without waiting for the WAL flush: the
	// control that shows a database crash then loses credentials.
	asyncClaims bool

	stopOnce sync.Once
	stopping chan struct{} // closed when shutdown begins: no new provider calls
	ready    chan struct{} // closed once bound to the durable consumer
}

// Option configures a Consumer.
type Option func(*Consumer)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(c *Consumer) { c.log = l } }

// WithKeyring encrypts the token columns at rest with k (see model.Keyring).
func WithKeyring(k *model.Keyring) Option { return func(c *Consumer) { c.keyring = k } }

// WithStreamConfig sets how the streams are created (default DefaultStreamConfig).
func WithStreamConfig(sc stream.StreamConfig) Option {
	return func(c *Consumer) { c.streams = sc }
}

// New validates its inputs and returns a Consumer; Run starts it. providers maps each
// configured service name to its token endpoint; a request for any other service is
// dead-lettered.
func New(db *bun.DB, nc *nats.Conn, providers map[string]provider.Refresher, cfg Config, opts ...Option) (*Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(providers) == 0 {
		return nil, errors.New("no services configured: set REFRESHER_SERVICES")
	}
	for name := range providers {
		if err := model.ValidateService(name); err != nil {
			return nil, fmt.Errorf("REFRESHER_SERVICES: %w", err)
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	c := &Consumer{
		cfg:       cfg,
		streams:   stream.DefaultStreamConfig(),
		db:        db,
		js:        js,
		providers: providers,
		log:       slog.Default(),
		observer:  nopObserver{},
		now:       time.Now,
		stopping:  make(chan struct{}),
		ready:     make(chan struct{}),
		owner:     ownerName(),
	}
	for _, o := range opts {
		o(c)
	}
	c.live = &liveness{c: c, ttl: cfg.OwnerTTL}
	c.sql = newSettingsSQL(cfg)
	return c, nil
}

// Ready is closed once the consumer is bound to the durable and fetching.
func (c *Consumer) Ready() <-chan struct{} { return c.ready }

// Bind creates or updates the streams and the shared durable consumer. Every process
// binds with the same settings, so whichever starts first creates them.
func (c *Consumer) Bind(ctx context.Context) (jetstream.Consumer, error) {
	if err := stream.EnsureStreams(ctx, c.js, c.streams); err != nil {
		return nil, err
	}
	cons, err := c.js.CreateOrUpdateConsumer(ctx, stream.Stream, jetstream.ConsumerConfig{
		Durable:       Durable,
		Description:   "refresher fleet: one message per credential refresh",
		FilterSubject: stream.StreamSubjects,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		// Redelivery spacing comes from NakWithDelay (see Config.backoff), not from
		// ConsumerConfig.BackOff: the server applies BackOff[0] as the ack wait of the
		// first delivery, which would redeliver messages still in flight.
		AckWait:       c.cfg.AckWait,
		MaxDeliver:    c.cfg.MaxDeliver,
		MaxAckPending: c.cfg.MaxAckPending,
	})
	if err != nil {
		return nil, fmt.Errorf("create or update consumer %s on %s: %w", Durable, stream.Stream, err)
	}
	return cons, nil
}

// Run handles messages until ctx is cancelled, then drains: it stops fetching, lets
// in-flight messages finish (a provider call under way is never abandoned), naks the
// ones not started, and returns nil if all of that fit in the drain timeout.
func (c *Consumer) Run(ctx context.Context) error {
	// A cluster being elected (or restarted) is waited for: not ready yet is not a
	// reason to exit, and /readyz says 503 meanwhile.
	var iter jetstream.MessagesContext
	err := stream.SetupRetry(ctx, c.log, "bind to the durable "+Durable, func(ctx context.Context) error {
		cons, err := c.Bind(ctx)
		if err != nil {
			return err
		}
		if iter, err = cons.Messages(jetstream.PullMaxMessages(c.cfg.Concurrency)); err != nil {
			return fmt.Errorf("consume %s: %w", Durable, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	go func() {
		if err := c.WatchMaxDeliveries(watchCtx, c.js.Conn()); err != nil {
			c.log.Error("max-deliveries watch", "error", err)
		}
	}()
	c.live.acquire(ctx)
	defer c.live.release() // after the drain: claims in flight need the key until then
	stopSkips, skipsDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(skipsDone); c.writeSkips(stopSkips, skipsInterval) }()
	defer func() { close(stopSkips); <-skipsDone }() // the drain's skips are written too
	close(c.ready)
	c.log.Info("consuming", "stream", stream.Stream, "durable", Durable, "owner", c.owner,
		"concurrency", c.cfg.Concurrency, "batch_size", c.cfg.BatchSize,
		"db_max_conns", c.db.DB.Stats().MaxOpenConnections, "claim_ttl", c.cfg.claimTTL(), "owner_ttl", c.cfg.OwnerTTL, "recovery_time", c.cfg.RecoveryTime())

	var wg sync.WaitGroup
	loopDone := make(chan struct{})
	drained := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-loopDone: // the iterator closed on its own: the connection is gone
		}
		c.stop()
		// Drain, not Stop: messages already buffered come out of Next and are nak'ed
		// below at once, instead of waiting out AckWait on a dead client.
		iter.Drain()
		close(drained)
	}()

	// A slot is one message in flight (one provider call at most): batches take a slot
	// per message, so REFRESHER_CONCURRENCY means calls in flight in both modes.
	slots := make(chan struct{}, c.cfg.Concurrency)
	release := func(n int) {
		for range n {
			<-slots
		}
	}
	for {
		slots <- struct{}{}
		msgs, closed := c.collect(ctx, iter, slots)
		switch {
		case len(msgs) == 0:
			release(1)
		case c.isStopping():
			release(len(msgs))
			for _, m := range msgs {
				_ = m.Nak()
			}
		default:
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer release(len(msgs))
				if c.cfg.BatchSize > 1 {
					c.handleBatch(msgs)
				} else {
					c.handle(msgs[0])
				}
			}()
		}
		if closed {
			break
		}
	}
	close(loopDone)
	<-drained
	// Closed without being asked to stop: the NATS connection is gone for good (for
	// instance the server refused our credentials on reconnect). Exit with an error
	// so the process is restarted rather than idling with no messages.
	var lost error
	if ctx.Err() == nil {
		lost = fmt.Errorf("consume %s: message stream closed: %w", Durable, connErr(c.js.Conn()))
	}

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		c.log.Info("drained")
		return lost
	case <-time.After(c.cfg.DrainTimeout):
		return errors.Join(lost, fmt.Errorf("drain: in-flight messages still running after %s", c.cfg.DrainTimeout))
	}
}

// connErr says why a connection is unusable.
func connErr(nc *nats.Conn) error {
	if err := nc.LastError(); err != nil {
		return err
	}
	if nc.IsClosed() {
		return nats.ErrConnectionClosed
	}
	return errors.New("message iterator closed")
}

// skipsInterval is how often skip counts go to SkipsBucket.
const skipsInterval = 10 * time.Second

// batchLinger is how long a batch waits for more messages once it has one: enough
// to take what the client has buffered, short enough not to delay a quiet stream.
const batchLinger = 2 * time.Millisecond

// collect takes the next message (its slot is taken already), and in batch mode up to
// BatchSize-1 more that are at hand and have a free slot. closed reports that the
// iterator is done.
func (c *Consumer) collect(ctx context.Context, iter jetstream.MessagesContext, slots chan struct{}) (msgs []jetstream.Msg, closed bool) {
	msg, err := iter.Next()
	if err != nil {
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
			return nil, true
		}
		c.log.Warn("fetch", "error", err)
		return nil, false
	}
	msgs = append(msgs, msg)
	for len(msgs) < c.cfg.BatchSize {
		select {
		case slots <- struct{}{}:
		default:
			return msgs, false // every slot is in use: go with what we have
		}
		msg, err := iter.Next(jetstream.NextMaxWait(batchLinger))
		if err != nil {
			<-slots
			return msgs, errors.Is(err, jetstream.ErrMsgIteratorClosed)
		}
		msgs = append(msgs, msg)
	}
	return msgs, false
}

func (c *Consumer) stop() { c.stopOnce.Do(func() { close(c.stopping) }) }

func (c *Consumer) isStopping() bool {
	select {
	case <-c.stopping:
		return true
	default:
		return false
	}
}

// ownerName names this process in the claims it writes: host, pid and a random
// suffix (two processes in two containers may share a pid).
func ownerName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown-host"
	}
	return fmt.Sprintf("%s/%d/%04x", host, os.Getpid(), rand.IntN(1<<16))
}
