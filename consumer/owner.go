package consumer

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// OwnersBucket is the JetStream key-value bucket in which every consume process keeps
// a key alive while it may hold claims. A claim whose owner's key has expired belongs
// to a dead process (SIGKILL, OOM, a lost node) and is taken over at once, instead of
// after the claim's own expiry: recovery within the providers' reuse intervals.
const OwnersBucket = "refresher_owners"

// liveness keeps this process's key in OwnersBucket and answers whether other owners
// are alive. It is held while Run runs or RefreshNow works (counted), so that no claim
// of this process exists without its key.
type liveness struct {
	c   *Consumer
	ttl time.Duration

	mu    sync.Mutex // holds, base, stop, done
	holds int
	// base is what the heartbeat's and release's requests run under: the first
	// acquire's ctx, never cancelled.
	base context.Context
	stop chan struct{}
	done chan struct{}

	kvMu sync.Mutex
	kv   jetstream.KeyValue // nil until the bucket could be reached

	answers sync.Map // owner -> ownerAnswer, briefly cached

	// size is the number of live owners last counted: the share of the provider
	// limits each process keeps when their shared state cannot be read.
	size atomic.Int64
}

// fleetSize is the number of live consume processes last counted (at least 1).
func (l *liveness) fleetSize() int { return max(1, int(l.size.Load())) }

// count counts the live owners' keys.
func (l *liveness) count(ctx context.Context) {
	kv, err := l.open(ctx, false)
	if err != nil {
		return
	}
	keys, err := kv.Keys(ctx)
	if err == nil {
		l.size.Store(int64(len(keys)))
	}
}

type ownerAnswer struct {
	dead bool
	at   time.Time
}

// OwnerKey is the key an owner (a claim_owner value) keeps alive in OwnersBucket: the
// name with every character a key may not hold ([-_=.a-zA-Z0-9] are kept) as '_'.
func OwnerKey(owner string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '=', r == '.':
			return r
		}
		return '_'
	}, owner)
}

// acquire makes sure this process's key is alive until the matching release. The
// first put happens before acquire returns, so no claim is written without it.
func (l *liveness) acquire(ctx context.Context) {
	if l.ttl <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.holds++
	if l.holds > 1 {
		return
	}
	if err := l.put(ctx); err != nil {
		// Others then see no key; they take over only claims older than the TTL, so a
		// call that lasts longer than that is at risk (logged, not fatal).
		l.c.log.Warn("could not register as a live owner; claims older than REFRESHER_OWNER_TTL may be taken over", "bucket", OwnersBucket, "error", err)
	} else {
		l.count(ctx)
	}
	// The heartbeat and the final delete serve the holds until the last release, past
	// any cancellation of the ctx that began them (Run's, at shutdown, before the drain).
	l.base = context.WithoutCancel(ctx)
	l.stop, l.done = make(chan struct{}), make(chan struct{})
	go l.beat(l.base, l.stop, l.done)
}

// release ends a hold; the last one stops the heartbeat and deletes the key, so that
// a clean exit leaves nothing for others to wait out.
func (l *liveness) release() {
	if l.ttl <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.holds--
	if l.holds > 0 {
		return
	}
	close(l.stop)
	<-l.done
	if kv, err := l.open(l.base, false); err == nil {
		ctx, cancel := context.WithTimeout(l.base, 2*time.Second)
		defer cancel()
		_ = kv.Delete(ctx, OwnerKey(l.c.owner))
	}
}

// beat renews the key until stop is closed.
func (l *liveness) beat(base context.Context, stop, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(l.ttl / 4)
	defer t.Stop()
	failing := false
	for beat := 0; ; beat++ {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(base, l.ttl/4)
		err := l.put(ctx)
		if err == nil && beat%4 == 0 {
			l.count(ctx)
		}
		cancel()
		switch {
		case err != nil && !failing:
			failing = true
			l.c.log.Warn("owner heartbeat failing; others may take over claims older than REFRESHER_OWNER_TTL", "error", err)
		case err == nil && failing:
			failing = false
			l.c.log.Info("owner heartbeat restored")
		}
	}
}

// put writes this process's key, opening (or creating) the bucket first if needed.
func (l *liveness) put(ctx context.Context) error {
	kv, err := l.open(ctx, true)
	if err != nil {
		return err
	}
	_, err = kv.Put(ctx, OwnerKey(l.c.owner), []byte(time.Now().UTC().Format(time.RFC3339Nano)))
	return err
}

// open returns the bucket, opening it (and with create, creating it) on first use.
func (l *liveness) open(ctx context.Context, create bool) (jetstream.KeyValue, error) {
	l.kvMu.Lock()
	defer l.kvMu.Unlock()
	if l.kv != nil {
		return l.kv, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var kv jetstream.KeyValue
	var err error
	if create {
		kv, err = l.bucket(ctx)
	} else {
		kv, err = l.c.js.KeyValue(ctx, OwnersBucket)
	}
	if err != nil {
		return nil, err
	}
	l.kv = kv
	return kv, nil
}

// bucket opens OwnersBucket, creating it when missing. An existing bucket keeps its
// TTL (the fleet's setting, not one process's); a different one is a warning.
func (l *liveness) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	kv, err := openOrCreateKV(ctx, l.c.js, jetstream.KeyValueConfig{
		Bucket:      OwnersBucket,
		Description: "refresher consume processes alive: a key per process, renewed every TTL/4",
		TTL:         l.ttl,
		History:     1,
		Replicas:    l.c.streams.Replicas,
	})
	if err != nil {
		return nil, err
	}
	if st, err := kv.Status(ctx); err == nil && st.TTL() != l.ttl {
		l.c.log.Warn("owners bucket TTL differs from REFRESHER_OWNER_TTL; the bucket's is used",
			"bucket", OwnersBucket, "bucket_ttl", st.TTL(), "REFRESHER_OWNER_TTL", l.ttl)
	}
	return kv, nil
}

// dead reports whether owner is known to be dead: its key is gone from the bucket.
// Anything uncertain (liveness off, the bucket unreachable) answers false: the claim
// is then waited out to its expiry, never taken from a process that may be alive.
func (l *liveness) dead(ctx context.Context, owner string) bool {
	if l.ttl <= 0 || owner == "" || owner == l.c.owner {
		return false
	}
	if a, ok := l.answers.Load(owner); ok && time.Since(a.(ownerAnswer).at) < l.ttl/8 {
		return a.(ownerAnswer).dead
	}
	kv, err := l.open(ctx, false)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = kv.Get(ctx, OwnerKey(owner))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		l.answers.Store(owner, ownerAnswer{dead: true, at: time.Now()})
		return true
	case err != nil:
		return false
	}
	l.answers.Store(owner, ownerAnswer{dead: false, at: time.Now()})
	return false
}
