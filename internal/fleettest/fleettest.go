// Package fleettest assembles the real parts a consumer fleet runs on, for tests: a
// fresh PostgreSQL database, an in-process nats-server, the fake provider as oracle,
// consumers started and stopped with the test.
package fleettest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/natsconn"
	"github.com/refresher/refresher/internal/natsserver"
	"github.com/refresher/refresher/internal/natstest"
	"github.com/refresher/refresher/internal/pgserver"
	"github.com/refresher/refresher/internal/pgtest"
	"github.com/refresher/refresher/internal/seed"
	"github.com/refresher/refresher/internal/testtier"
	"github.com/refresher/refresher/internal/verify"
	"github.com/refresher/refresher/limit"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider"
	"github.com/refresher/refresher/provider/fake"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

// Options shape an Env.
type Options struct {
	Services []string      // default github, google
	Latency  time.Duration // fake provider latency, before it decides
	// ResponseLatency is the fake provider's latency after it decides (rotates).
	ResponseLatency time.Duration
	Grace           time.Duration // fake provider reuse grace
	PoolSize        int           // database pool (default 32)
	// ClusterSize, when above 1, runs a JetStream cluster of that many in-process
	// servers instead of one server, with the streams replicated on all of them.
	ClusterSize int
	// BatchSize is the consumer batch size Config returns (default 1: per row).
	BatchSize int
	// Keyring, when set, encrypts the token columns (seeding, consumers, Verify).
	Keyring *model.Keyring
	// OwnPostgres starts a throwaway PostgreSQL cluster for this test alone (Env.PG),
	// so the test may stop and start it.
	OwnPostgres bool
	// PGSettings are extra postgresql.conf lines for the OwnPostgres cluster.
	PGSettings []string
	// NATSBinary, when set, runs that nats-server executable (another version than the
	// one linked in) instead of an in-process server; Env.NATS is then nil.
	NATSBinary string
}

// BatchSizes are the consumer modes every invariant is tested in: one row per
// transaction, and batched commits.
var BatchSizes = []int{1, 4}

// BothModes runs fn as a subtest for each of BatchSizes.
func BothModes(t *testing.T, fn func(t *testing.T, batch int)) {
	for _, b := range BatchSizes {
		t.Run(fmt.Sprintf("batch=%d", b), func(t *testing.T) { fn(t, b) })
	}
}

// Env is one test's world.
type Env struct {
	t       testing.TB
	DB      *bun.DB
	DBURL   string
	PG      *pgserver.Server    // set when Options.OwnPostgres
	NATS    *natsserver.Server  // nil when Cluster or NATSBinary is set
	Cluster *natsserver.Cluster // nil unless Options.ClusterSize > 1
	// BinaryURL and BinaryVersion are the Options.NATSBinary server's.
	BinaryURL, BinaryVersion string
	Streams                  stream.StreamConfig
	batch                    int
	Keyring                  *model.Keyring
	Fake                     *fake.Provider
	FakeURL                  string
	Services                 []string
	logs                     *SyncBuffer
	Log                      *slog.Logger
}

// New starts everything an Env holds; t.Cleanup stops it.
func New(t testing.TB, o Options) *Env {
	t.Helper()
	// Before anything starts: a fleet is PostgreSQL, a nats-server and a provider.
	testtier.Slow(t, "PostgreSQL and a nats-server")
	if len(o.Services) == 0 {
		o.Services = []string{"github", "google"}
	}
	if o.PoolSize == 0 {
		o.PoolSize = 32
	}
	var pg *pgserver.Server
	var url string
	if o.OwnPostgres {
		pg, url = ownPostgres(t, o.PGSettings...)
	} else {
		_, url = pgtest.NewDB(t)
	}
	db, err := model.Open(context.Background(), url, o.PoolSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	logs := &SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	fp := fake.New(fake.Options{ClientID: "test-client", ClientSecret: "test-secret", Latency: o.Latency, ResponseLatency: o.ResponseLatency, GracePeriod: o.Grace, Logger: log})
	fpURL, stop, err := fp.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop(context.Background()) })
	env := &Env{
		t: t, DB: db, DBURL: url, PG: pg, Fake: fp, FakeURL: fpURL,
		Services: o.Services, logs: logs, Log: log, Streams: stream.DefaultStreamConfig(),
		batch: max(o.BatchSize, 1), Keyring: o.Keyring,
	}
	switch {
	case o.NATSBinary != "":
		env.BinaryURL, env.BinaryVersion = natstest.Binary(t, o.NATSBinary)
	case o.ClusterSize > 1:
		env.Cluster = natstest.Cluster(t, o.ClusterSize)
		env.Streams.Replicas = o.ClusterSize
	default:
		env.NATS = natstest.Start(t)
	}
	return env
}

// ownPostgres starts a throwaway cluster with a migrated database.
func ownPostgres(t testing.TB, settings ...string) (*pgserver.Server, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := pgserver.StartThrowaway(ctx, nil, settings...)
	if err != nil {
		t.Fatalf("throwaway PostgreSQL: %v", err)
	}
	t.Cleanup(func() { _ = pg.Stop(context.Background()) })
	url, err := pg.CreateDatabase(ctx, "fleettest")
	if err != nil {
		t.Fatal(err)
	}
	db, err := model.Open(ctx, url, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := model.Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	return pg, url
}

// NATSURL is where clients connect: the server, or every server of the cluster.
func (e *Env) NATSURL() string {
	if e.BinaryURL != "" {
		return e.BinaryURL
	}
	if e.Cluster != nil {
		return e.Cluster.URLs()
	}
	return e.NATS.URL()
}

// Logs returns everything logged through Log so far.
func (e *Env) Logs() string { return e.logs.String() }

// Config is a consumer configuration with delays scaled down for tests.
func (e *Env) Config() consumer.Config {
	c := consumer.DefaultConfig()
	c.Concurrency = 8
	c.AckWait = 10 * time.Second
	c.ProviderTimeout = 5 * time.Second
	c.DrainTimeout = 8 * time.Second
	c.LockTimeout = 2 * time.Second
	c.Backoff = []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond}
	c.BatchSize = e.batch
	return c
}

// Providers returns real OAuth2 clients for each service, pointed at the fake.
func (e *Env) Providers(timeout time.Duration) map[string]provider.Refresher {
	out := map[string]provider.Refresher{}
	for _, s := range e.Services {
		r, err := provider.NewOAuth2(provider.Config{
			TokenURL: e.FakeURL + "/" + s + "/token", ClientID: "test-client", ClientSecret: "test-secret",
			AuthStyle: provider.AuthStyleHeader, Timeout: timeout,
		})
		if err != nil {
			e.t.Fatal(err)
		}
		out[s] = r
	}
	return out
}

// Conn opens a NATS connection closed with the test.
func (e *Env) Conn() *nats.Conn {
	e.t.Helper()
	nc, err := natsconn.Local(e.NATSURL(), e.t.Name(), e.Log)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	return nc
}

// JS returns a JetStream context on a new connection.
func (e *Env) JS() jetstream.JetStream {
	js, err := jetstream.New(e.Conn())
	if err != nil {
		e.t.Fatal(err)
	}
	return js
}

// Running is a consumer started by StartConsumer.
type Running struct {
	*consumer.Consumer
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// Stop cancels the consumer's context (as SIGTERM does) and returns Run's result.
func (r *Running) Stop() error {
	r.once.Do(func() {
		r.cancel()
		r.err = <-r.done
	})
	return r.err
}

// Done is closed-ish: it delivers Run's result if Run returns on its own.
func (r *Running) Done() <-chan error { return r.done }

// StartConsumer runs a consumer on its own NATS connection until the test ends (or
// Stop), and waits until it is bound to the durable.
func (e *Env) StartConsumer(cfg consumer.Config, opts ...consumer.Option) *Running {
	e.t.Helper()
	c, err := consumer.New(e.DB, e.Conn(), e.Providers(cfg.ProviderTimeout), cfg,
		append([]consumer.Option{consumer.WithLogger(e.Log), consumer.WithStreamConfig(e.Streams), consumer.WithKeyring(e.Keyring)}, opts...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Running{Consumer: c, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- c.Run(ctx) }()
	e.t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			e.t.Errorf("consumer stop: %v", err)
		}
	})
	select {
	case <-c.Ready():
	case err := <-r.done:
		e.t.Fatalf("consumer exited before binding: %v", err)
	case <-time.After(30 * time.Second):
		e.t.Fatal("consumer did not bind within 30s")
	}
	return r
}

// NoCircuit is the consumer option for tests of the retry and dead-letter path: the
// Env's services without a circuit breaker, so a provider that keeps failing walks
// requests through MaxDeliver into REFRESH_DLQ instead of leaving them in the stream.
func (e *Env) NoCircuit() consumer.Option {
	l := map[string]limit.Limits{}
	for _, s := range e.Services {
		l[s] = limit.Limits{}
	}
	return consumer.WithLimits(l)
}

// Seed inserts n credentials for service and returns their ids in order.
func (e *Env) Seed(service string, n int) []int64 {
	e.t.Helper()
	ctx := context.Background()
	if _, err := seed.InsertSealed(ctx, e.DB, e.Keyring, service, n, 10*time.Minute); err != nil {
		e.t.Fatal(err)
	}
	var ids []int64
	if err := e.DB.NewSelect().Model((*model.Credential)(nil)).Column("id").
		Where("service = ?", service).OrderExpr("id").Scan(ctx, &ids); err != nil {
		e.t.Fatal(err)
	}
	return ids[len(ids)-n:]
}

// Publisher returns a publisher on a new connection, with the streams created.
func (e *Env) Publisher(opts ...publisher.Option) *publisher.Publisher {
	e.t.Helper()
	p, err := publisher.New(e.Conn(), append([]publisher.Option{publisher.WithLogger(e.Log)}, opts...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := stream.EnsureStreams(context.Background(), p.JetStream(), e.Streams); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// WaitIdle waits (at most timeout) until the fleet has finished every request.
func (e *Env) WaitIdle(timeout time.Duration) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := consumer.WaitIdle(ctx, e.JS(), 20*time.Millisecond); err != nil {
		e.t.Fatal(err)
	}
}

// Verify checks every row against the fake provider and fails the test on any loss,
// any reauth_required row, or any replaced token sent.
func (e *Env) Verify() verify.Report {
	e.t.Helper()
	rep, err := verify.CheckSealed(context.Background(), e.DB, e.Keyring, verify.Local{P: e.Fake})
	if err != nil {
		e.t.Fatal(err)
	}
	if !rep.OK() {
		e.t.Fatalf("verification failed: %s\n%v", rep, rep.Examples)
	}
	return rep
}

// Credential reads one row.
func (e *Env) Credential(id int64) *model.Credential {
	e.t.Helper()
	c := new(model.Credential)
	if err := e.DB.NewSelect().Model(c).Where("id = ?", id).Scan(context.Background()); err != nil {
		e.t.Fatalf("read credential %d: %v", id, err)
	}
	return c
}

// DeadLetter is one message of REFRESH_DLQ.
type DeadLetter struct {
	Subject    string
	Original   string
	Reason     string
	Deliveries string
	Data       []byte
}

// StreamMessages reads every message stored in stream, in order (messages deleted
// from its middle are passed over).
func StreamMessages(t testing.TB, js jetstream.JetStream, stream string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("read %s message %d: %v", stream, seq, err)
		}
		out = append(out, m)
	}
	return out
}

// ListDeadLetters returns every dead letter stream.ListDeadLetters yields for limit.
func ListDeadLetters(t testing.TB, js jetstream.JetStream, limit int) []stream.DeadLetter {
	t.Helper()
	var out []stream.DeadLetter
	err := stream.ListDeadLetters(context.Background(), js, limit, func(dl stream.DeadLetter) error {
		out = append(out, dl)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// DeadLetters reads every message in REFRESH_DLQ.
func (e *Env) DeadLetters() []DeadLetter {
	e.t.Helper()
	var out []DeadLetter
	for _, m := range StreamMessages(e.t, e.JS(), stream.DLQStream) {
		out = append(out, DeadLetter{
			Subject: m.Subject, Original: m.Header.Get(stream.HeaderOriginalSubject),
			Reason: m.Header.Get(stream.HeaderReason), Deliveries: m.Header.Get(stream.HeaderDeliveries), Data: m.Data,
		})
	}
	return out
}

// Eventually polls cond until it holds or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		case <-tick.C:
		}
	}
}

// SyncBuffer is a bytes.Buffer that one goroutine (a logger, a subprocess) may write
// while the test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
