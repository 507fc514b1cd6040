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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"

	"github.com/refresher/refresher/limit"
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

	limits map[string]limit.Limits
	lim    limiter
	// calls holds a token per message past its permit: REFRESHER_CONCURRENCY.
	calls chan struct{}
	ran   atomic.Bool

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
		calls:     make(chan struct{}, cfg.Concurrency),
	}
	for _, o := range opts {
		o(c)
	}
	c.live = &liveness{c: c, ttl: cfg.OwnerTTL}
	c.sql = newSettingsSQL(cfg)
	for name, l := range c.limits {
		if _, ok := providers[name]; !ok {
			return nil, fmt.Errorf("limits for %q, which is not a configured service", name)
		}
		if err := l.Validate("REFRESHER_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))); err != nil {
			return nil, err
		}
	}
	c.newLimiter()
	return c, nil
}

// Ready is closed once the consumer is bound to the durable and fetching.
func (c *Consumer) Ready() <-chan struct{} { return c.ready }

// ServiceDurable is the durable consumer of one service's requests
// (refresh.<service>.>), shared by every consume process that serves the service. Each
// service has its own, with its own budget of unacknowledged messages, so a paused or
// failing provider leaves its requests in the stream without holding up the others.
func ServiceDurable(service string) string { return Durable + "-" + service }

// Bind creates the streams when missing and creates or updates the durable consumers:
// one per service of this process, and Durable, which every process shares for
// requests no service's durable takes (unknown services, malformed subjects). It
// returns the service durables by service.
func (c *Consumer) Bind(ctx context.Context) (map[string]jetstream.Consumer, error) {
	if err := stream.EnsureStreams(ctx, c.js, c.streams); err != nil {
		return nil, err
	}
	// A new service durable starts where the shared one stands: a fleet upgraded from
	// one durable for all services neither loses nor replays its history.
	var floor uint64
	if shared, err := c.js.Consumer(ctx, stream.Stream, Durable); err == nil {
		floor = shared.CachedInfo().AckFloor.Stream
	} else if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("look up consumer %s on %s: %w", Durable, stream.Stream, err)
	}
	out := make(map[string]jetstream.Consumer, len(c.providers))
	for name := range c.providers {
		cons, err := c.bindService(ctx, name, floor)
		if err != nil {
			return nil, err
		}
		out[name] = cons
	}
	if _, err := c.js.CreateOrUpdateConsumer(ctx, stream.Stream, c.durableConfig(Durable, stream.StreamSubjects,
		"refresher fleet: requests that no service's durable takes (unknown services, malformed subjects)")); err != nil {
		return nil, fmt.Errorf("create or update consumer %s on %s: %w", Durable, stream.Stream, err)
	}
	return out, nil
}

// bindService creates or updates one service's durable; a new one starts after floor.
func (c *Consumer) bindService(ctx context.Context, service string, floor uint64) (jetstream.Consumer, error) {
	name := ServiceDurable(service)
	cfg := c.durableConfig(name, stream.ServiceRequests(service), "refresher fleet: refresh requests of "+service)
	for attempt := 0; ; attempt++ {
		existing, err := c.js.Consumer(ctx, stream.Stream, name)
		switch {
		case err == nil:
			// Where a durable started is fixed once it exists.
			info := existing.CachedInfo().Config
			cfg.DeliverPolicy, cfg.OptStartSeq = info.DeliverPolicy, info.OptStartSeq
		case errors.Is(err, jetstream.ErrConsumerNotFound) && floor > 0:
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, floor+1
		case !errors.Is(err, jetstream.ErrConsumerNotFound):
			return nil, fmt.Errorf("look up consumer %s on %s: %w", name, stream.Stream, err)
		}
		cons, err := c.js.CreateOrUpdateConsumer(ctx, stream.Stream, cfg)
		if err == nil {
			return cons, nil
		}
		if attempt == 0 {
			continue // another process created it meanwhile: take its start
		}
		return nil, fmt.Errorf("create or update consumer %s on %s: %w", name, stream.Stream, err)
	}
}

// durableConfig is the configuration every durable of the fleet shares.
func (c *Consumer) durableConfig(name, filter, description string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       name,
		Description:   description,
		FilterSubject: filter,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		// Redelivery spacing comes from NakWithDelay (see Config.backoff), not from
		// ConsumerConfig.BackOff: the server applies BackOff[0] as the ack wait of the
		// first delivery, which would redeliver messages still in flight.
		AckWait:       c.cfg.AckWait,
		MaxDeliver:    c.cfg.MaxDeliver,
		MaxAckPending: c.cfg.MaxAckPending,
	}
}

// ErrRunning means Run was called on a Consumer that is running or has run.
var ErrRunning = errors.New("consumer: Run may be called once")

// Run handles messages until ctx is cancelled, then drains: it stops fetching, lets
// in-flight messages finish (a provider call under way is never abandoned), naks the
// ones not started, and returns nil if all of that fit in the drain timeout. Every
// goroutine it started has ended when it returns.
func (c *Consumer) Run(ctx context.Context) error {
	if !c.ran.CompareAndSwap(false, true) {
		return ErrRunning
	}
	// A cluster being elected (or restarted) is waited for: not ready yet is not a
	// reason to exit, and /readyz says 503 meanwhile.
	var (
		services map[string]jetstream.Consumer
		strays   jetstream.MessagesContext
	)
	err := stream.SetupRetry(ctx, c.log, "bind to the durables", func(ctx context.Context) error {
		var err error
		if services, err = c.Bind(ctx); err != nil {
			return err
		}
		shared, err := c.js.Consumer(ctx, stream.Stream, Durable)
		if err != nil {
			return fmt.Errorf("consumer %s: %w", Durable, err)
		}
		if strays, err = shared.Messages(jetstream.PullMaxMessages(strayBatch)); err != nil {
			return fmt.Errorf("consume %s: %w", Durable, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Work started here outlives ctx: a message under way finishes through the drain.
	base := context.WithoutCancel(ctx)
	var background sync.WaitGroup // goroutines that outlive the drain
	defer background.Wait()
	watchCtx, stopWatch := context.WithCancel(base)
	defer stopWatch()
	background.Add(1)
	go func() {
		defer background.Done()
		if err := c.WatchMaxDeliveries(watchCtx, c.js.Conn()); err != nil {
			c.log.Error("max-deliveries watch", "error", err)
		}
	}()
	background.Add(1)
	go func() { defer background.Done(); c.watchBacklog(watchCtx) }()
	c.live.acquire(ctx)
	defer c.live.release() // after the drain: claims in flight need the key until then
	stopSkips, skipsDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(skipsDone); c.writeSkips(base, stopSkips, skipsInterval) }()
	defer func() { close(stopSkips); <-skipsDone }() // the drain's skips are written too
	c.limitFleet(base)
	defer c.stopLimits() // after the drain: calls in flight give their slots back
	close(c.ready)
	names := make([]string, 0, len(services))
	for name := range services {
		names = append(names, ServiceDurable(name))
	}
	slices.Sort(names)
	c.log.Info("consuming", "stream", stream.Stream, "durables", strings.Join(names, ","), "shared_durable", Durable, "owner", c.owner,
		"concurrency", c.cfg.Concurrency, "batch_size", c.cfg.BatchSize,
		"db_max_conns", c.db.DB.Stats().MaxOpenConnections, "claim_ttl", c.cfg.claimTTL(), "owner_ttl", c.cfg.OwnerTTL, "recovery_time", c.cfg.RecoveryTime())

	var (
		handlers sync.WaitGroup // one per message or batch being handled
		loops    sync.WaitGroup // the fetch loops
		lost     = make(chan error, len(services)+1)
	)
	for name, cons := range services {
		loops.Add(1)
		go func() { defer loops.Done(); c.serveService(base, name, cons, &handlers, lost) }()
	}
	loops.Add(1)
	go func() { defer loops.Done(); c.serveStrays(base, strays, &handlers, lost) }()

	// Closed without being asked to stop: the NATS connection is gone for good (for
	// instance the server refused our credentials on reconnect). Exit with an error
	// so the process is restarted rather than idling with no messages.
	var lostErr error
	select {
	case <-ctx.Done():
	case err := <-lost:
		lostErr = fmt.Errorf("consume: message stream closed: %w", err)
	}
	c.stop()
	// Drain, not Stop: messages already buffered come out of Next and are nak'ed at
	// once, instead of waiting out AckWait on a dead client.
	strays.Drain()
	loops.Wait()

	done := make(chan struct{})
	go func() { handlers.Wait(); close(done) }()
	select {
	case <-done:
		c.log.Info("drained")
		return lostErr
	case <-time.After(c.cfg.DrainTimeout):
		// The handlers still running end on their own; the process is about to exit.
		return errors.Join(lostErr, fmt.Errorf("drain: in-flight messages still running after %s", c.cfg.DrainTimeout))
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
