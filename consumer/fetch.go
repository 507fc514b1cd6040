package consumer

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/stream"
)

// fetchWait is how long one pull waits for requests on a quiet stream.
const fetchWait = time.Second

// fetchMax bounds one pull.
const fetchMax = 256

// strayBatch is how many messages the shared durable's pull keeps buffered.
const strayBatch = 64

// batchLinger is how long a batch waits for more messages once it has one: enough
// to take what the pull has brought, short enough not to delay a quiet stream.
const batchLinger = 2 * time.Millisecond

// serveService pulls one service's requests and hands them to handlers until
// shutdown. It pulls only as many as it can hold (REFRESHER_CONCURRENCY of this
// service in this process), and none while the service is paused or its circuit is
// open: those requests stay in the stream, where waiting costs no delivery, and a
// paused service's share of the budget cannot hold up the others.
func (c *Consumer) serveService(ctx context.Context, service string, cons jetstream.Consumer, handlers *sync.WaitGroup, lost chan<- error) {
	held := make(chan struct{}, c.cfg.Concurrency)
	release := func(n int) {
		for range n {
			<-held
		}
	}
	failing := 0
	for !c.isStopping() {
		if c.waitUnblocked(ctx, service) {
			continue
		}
		select {
		case held <- struct{}{}:
		case <-c.stopping:
			return
		}
		n := 1
		if !c.limitFleet(ctx).Probing(service) { // an open circuit is probed with one request
			for n < min(c.cfg.Concurrency, fetchMax) {
				select {
				case held <- struct{}{}:
					n++
					continue
				default:
				}
				break
			}
		}
		batch, err := cons.Fetch(n, jetstream.FetchMaxWait(fetchWait))
		if err != nil {
			release(n)
			if c.js.Conn().IsClosed() {
				lost <- connErr(c.js.Conn())
				return
			}
			failing++
			if failing == 1 || failing%20 == 0 {
				c.log.Warn("fetch", "service", service, "durable", ServiceDurable(service), "attempt", failing, "error", err)
			}
			c.pause(min(time.Duration(failing)*100*time.Millisecond, 2*time.Second))
			continue
		}
		failing = 0
		got := c.dispatch(ctx, batch.Messages(), handlers, func(k int) { release(k) })
		release(n - got)
	}
}

// dispatch starts handlers for the messages of one pull, alone or in batches of
// BatchSize, and returns how many there were. done(k) frees the places of k handled
// messages.
func (c *Consumer) dispatch(ctx context.Context, msgs <-chan jetstream.Msg, handlers *sync.WaitGroup, done func(int)) int {
	got := 0
	for {
		batch := gather(msgs, c.cfg.BatchSize)
		if len(batch) == 0 {
			return got
		}
		got += len(batch)
		if c.isStopping() {
			for _, m := range batch {
				_ = m.Nak()
			}
			done(len(batch))
			continue
		}
		handlers.Add(1)
		go func() {
			defer handlers.Done()
			defer done(len(batch))
			if c.cfg.BatchSize > 1 {
				c.handleBatch(ctx, batch)
			} else {
				c.handle(ctx, batch[0])
			}
		}()
	}
}

// gather takes the next message and, up to size, those that follow within
// batchLinger. It returns nothing once msgs is closed.
func gather(msgs <-chan jetstream.Msg, size int) []jetstream.Msg {
	m, ok := <-msgs
	if !ok {
		return nil
	}
	out := []jetstream.Msg{m}
	if size <= 1 {
		return out
	}
	t := time.NewTimer(batchLinger)
	defer t.Stop()
	for len(out) < size {
		select {
		case m, ok := <-msgs:
			if !ok {
				return out
			}
			out = append(out, m)
		case <-t.C:
			return out
		}
	}
	return out
}

// pause waits d or until shutdown.
func (c *Consumer) pause(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.stopping:
	}
}

// serveStrays reads the shared durable, which sees every request: one that a
// service's durable takes is acknowledged here at once; any other (a service no
// process serves, a subject that is not refresh.<service>.<id>) is dead-lettered.
func (c *Consumer) serveStrays(ctx context.Context, iter jetstream.MessagesContext, handlers *sync.WaitGroup, lost chan<- error) {
	known := &durables{c: c, seen: map[string]durableAnswer{}}
	for {
		msg, err := iter.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				if !c.isStopping() {
					lost <- connErr(c.js.Conn())
				}
				return
			}
			c.log.Warn("fetch", "durable", Durable, "error", err)
			continue
		}
		if service, ok := servedSubject(msg.Subject()); ok && known.exists(ctx, service) {
			_ = msg.Ack()
			continue
		}
		if c.isStopping() {
			_ = msg.Nak()
			continue
		}
		handlers.Add(1)
		go func() {
			defer handlers.Done()
			c.handle(ctx, msg)
		}()
	}
}

// servedSubject returns the service of a subject a service durable would take:
// refresh.<service>.<anything>.
func servedSubject(subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, stream.SubjectPrefix+".")
	if !ok {
		return "", false
	}
	service, tail, ok := strings.Cut(rest, ".")
	return service, ok && tail != "" && model.ValidateService(service) == nil
}

// durables remembers which service durables exist.
type durables struct {
	c    *Consumer
	mu   sync.Mutex
	seen map[string]durableAnswer
}

type durableAnswer struct {
	exists bool
	at     time.Time
}

// durableRecheck is how long an answer about a service durable is trusted.
const durableRecheck = 10 * time.Second

// exists reports whether service has a durable. A lookup that fails counts as yes:
// the request is then left to that durable rather than dead-lettered on a guess.
func (d *durables) exists(ctx context.Context, service string) bool {
	if _, ok := d.c.providers[service]; ok {
		return true
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if a, ok := d.seen[service]; ok && time.Since(a.at) < durableRecheck {
		return a.exists
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := d.c.js.Consumer(ctx, stream.Stream, ServiceDurable(service))
	exists := !errors.Is(err, jetstream.ErrConsumerNotFound)
	d.seen[service] = durableAnswer{exists: exists, at: time.Now()}
	return exists
}
