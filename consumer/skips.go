package consumer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// SkipsBucket is the JetStream key-value bucket in which every consume process keeps,
// per minute and service, how many requests it answered with the skip rule. A skip
// writes nothing to PostgreSQL and leaves nothing in the stream once acknowledged, so
// this is the only fleet-wide trace of it (the console's chart reads it). Keys are
// "<unix minute>.<service>.<owner key>", values the count in decimal; they expire
// after SkipsTTL.
const SkipsBucket = "refresher_skips"

// SkipsTTL is how long a minute's count is kept: the console's hour and a margin.
const SkipsTTL = 70 * time.Minute

// skipKey is a minute's count of one service's skips by one process.
type skipKey struct {
	minute  int64
	service string
}

// skipCounts gathers skips in memory and writes the minutes that changed.
type skipCounts struct {
	mu      sync.Mutex
	counts  map[skipKey]int64
	changed map[skipKey]bool
}

func (s *skipCounts) add(service string, at time.Time) {
	k := skipKey{minute: at.Unix() / 60, service: service}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.counts == nil {
		s.counts, s.changed = map[skipKey]int64{}, map[skipKey]bool{}
	}
	s.counts[k]++
	s.changed[k] = true
}

// take returns the changed minutes with their counts, and forgets minutes older than
// the bucket keeps.
func (s *skipCounts) take(now time.Time) map[skipKey]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[skipKey]int64, len(s.changed))
	for k := range s.changed {
		out[k] = s.counts[k]
	}
	clear(s.changed)
	oldest := now.Add(-SkipsTTL).Unix() / 60
	for k := range s.counts {
		if k.minute < oldest {
			delete(s.counts, k)
		}
	}
	return out
}

// writeSkips puts the changed minutes into SkipsBucket every interval until stop is
// closed, then once more. A bucket that cannot be reached costs the chart its skips,
// nothing else: it is logged once.
func (c *Consumer) writeSkips(ctx context.Context, stop <-chan struct{}, interval time.Duration) {
	var kv jetstream.KeyValue
	warned := false
	flush := func() {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		counts := c.skips.take(time.Now())
		if len(counts) == 0 {
			return
		}
		var err error
		if kv == nil {
			kv, err = openOrCreateKV(ctx, c.js, jetstream.KeyValueConfig{
				Bucket: SkipsBucket, Description: "requests answered by the skip rule, per minute, service and process",
				TTL: SkipsTTL, History: 1, Replicas: c.streams.Replicas,
			})
		}
		for k, n := range counts {
			if err != nil {
				break
			}
			_, err = kv.Put(ctx, fmt.Sprintf("%d.%s.%s", k.minute, k.service, OwnerKey(c.owner)), []byte(strconv.FormatInt(n, 10)))
		}
		if err != nil {
			kv = nil
			if !warned {
				warned = true
				c.log.Warn("could not record skips for the console's chart", "bucket", SkipsBucket, "error", err)
			}
		}
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			flush()
			return
		case <-t.C:
			flush()
		}
	}
}

// openOrCreateKV opens a bucket, creating it when it is missing.
func openOrCreateKV(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, cfg)
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, cfg.Bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", cfg.Bucket, err)
	}
	return kv, nil
}

// SkipsPerMinute reads SkipsBucket: skips per service per unix minute, summed over
// the fleet's processes. A bucket that does not exist yet means no skips.
func SkipsPerMinute(ctx context.Context, js jetstream.JetStream) (map[string]map[int64]int64, error) {
	out := map[string]map[int64]int64{}
	kv, err := js.KeyValue(ctx, SkipsBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", SkipsBucket, err)
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", SkipsBucket, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e := <-w.Updates():
			if e == nil {
				return out, nil // every current value has been read
			}
			parts := strings.SplitN(e.Key(), ".", 3)
			if len(parts) != 3 {
				continue
			}
			minute, err1 := strconv.ParseInt(parts[0], 10, 64)
			n, err2 := strconv.ParseInt(string(e.Value()), 10, 64)
			if err1 != nil || err2 != nil {
				continue
			}
			if out[parts[1]] == nil {
				out[parts[1]] = map[int64]int64{}
			}
			out[parts[1]][minute] += n
		}
	}
}
