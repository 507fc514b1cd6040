package bench

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/uptrace/bun"

	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/stream"
)

// LatencyFigure is figure 3: at a fixed moderate request rate, how long from
// publishing a request to its refresh being committed.
type LatencyFigure struct {
	Rate         int     `json:"rate"`
	AchievedRate float64 `json:"achieved_rate"`
	Requests     int     `json:"requests"`
	// Concurrency is the calls in flight, on a pool of Pool connections.
	Concurrency int `json:"concurrency"`
	Pool        int `json:"pool"`
	// AckP50Ms and AckP99Ms run from just before the publish to the consumer's
	// acknowledgement, which it sends only after the commit: an upper bound on
	// publish-to-commit, seen on the ack subject by a plain subscriber.
	AckP50Ms float64 `json:"ack_p50_ms"`
	AckP99Ms float64 `json:"ack_p99_ms"`
	// RefreshedP50Ms and RefreshedP99Ms run to refreshed_at, the moment the provider
	// call began (after the claim committed): a lower bound on publish-to-commit.
	RefreshedP50Ms float64 `json:"refreshed_p50_ms"`
	RefreshedP99Ms float64 `json:"refreshed_p99_ms"`
	// BaselineP50Ms and BaselineP99Ms are RefreshNow (the same claim, call and commit,
	// no NATS) at the same rate, calls in flight and pool size, from its scheduled
	// start to its commit.
	BaselineP50Ms float64 `json:"baseline_p50_ms"`
	BaselineP99Ms float64 `json:"baseline_p99_ms"`
	// Ratio is AckP50Ms / BaselineP50Ms: what NATS adds to the database's latency.
	Ratio float64 `json:"ratio"`
}

// latencyRequests is how many requests the latency figure sends.
func latencyRequests(o Options) int {
	return max(int(float64(o.LatencyRate)*o.LatencyDuration.Seconds()), 1)
}

func (r *rig) latencyFigure(ctx context.Context, rep *Report) error {
	n := latencyRequests(r.opts)
	conc := rep.Consume.Best.Concurrency
	f := LatencyFigure{Rate: r.opts.LatencyRate, Requests: n, Concurrency: conc, Pool: r.opts.Pool}
	ids := r.consIDs[:n]
	interval := time.Second / time.Duration(r.opts.LatencyRate)
	prov := &instantProvider{}
	if err := r.vacuum(ctx); err != nil {
		return err
	}
	if err := r.resetStreams(ctx); err != nil {
		return err
	}

	// Every acknowledgement also reaches a plain subscriber of the ack subjects.
	var mu sync.Mutex
	acked := make(map[uint64]time.Time, n)
	sub, err := r.nc.Subscribe("$JS.ACK."+stream.Stream+".>", func(m *nats.Msg) {
		t := time.Now()
		if string(m.Data) != "+ACK" {
			return
		}
		if seq, ok := ackStreamSeq(m.Subject); ok {
			mu.Lock()
			acked[seq] = t
			mu.Unlock()
		}
	})
	if err != nil {
		return fmt.Errorf("subscribe to acknowledgements: %w", err)
	}
	defer sub.Unsubscribe()
	if err := r.nc.Flush(); err != nil {
		return err
	}

	sent := make(map[uint64]time.Time, n)
	sentByID := make(map[int64]time.Time, n)
	var first, last time.Time
	publishAtRate := func(ctx context.Context) error {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for i, id := range ids {
			<-tick.C
			t0 := time.Now()
			msg := requestMsg(serviceConsume, id)
			msg.Header.Set(model.HeaderRequestedAt, model.FormatRequestedAt(t0))
			ack, err := r.js.PublishMsg(ctx, msg)
			if err != nil {
				return fmt.Errorf("publish request %d: %w", i, err)
			}
			sent[ack.Sequence] = t0
			sentByID[id] = t0
			if i == 0 {
				first = t0
			}
			last = t0
		}
		return nil
	}
	run, err := r.consumePooled(ctx, serviceConsume, prov, conc, n, publishAtRate)
	if err != nil {
		return err
	}
	if run.stats.Refreshed != int64(n) {
		return fmt.Errorf("refreshed %d of %d requests: %+v", run.stats.Refreshed, n, run.stats)
	}
	if n > 1 {
		f.AchievedRate = float64(n-1) / last.Sub(first).Seconds()
	}
	// The subscriber may still be a message behind the consumer's own confirmation.
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		got := len(acked)
		mu.Unlock()
		if got >= n {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("saw %d of %d acknowledgements on $JS.ACK", got, n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	var toAck, toRefreshed []time.Duration
	mu.Lock()
	for seq, t0 := range sent {
		if t, ok := acked[seq]; ok {
			toAck = append(toAck, t.Sub(t0))
		}
	}
	mu.Unlock()
	refreshed, err := r.refreshedAt(ctx, ids)
	if err != nil {
		return err
	}
	for id, t0 := range sentByID {
		if t, ok := refreshed[id]; ok {
			toRefreshed = append(toRefreshed, t.Sub(t0))
		}
	}
	f.AckP50Ms, f.AckP99Ms = ms(percentile(toAck, 50)), ms(percentile(toAck, 99))
	f.RefreshedP50Ms, f.RefreshedP99Ms = ms(percentile(toRefreshed, 50)), ms(percentile(toRefreshed, 99))

	db, err := r.openPool(ctx, r.opts.Pool)
	if err != nil {
		return err
	}
	defer db.Close()
	base, err := r.directAtRate(ctx, db, conc, ids, interval)
	if err != nil {
		return err
	}
	f.BaselineP50Ms, f.BaselineP99Ms = ms(percentile(base, 50)), ms(percentile(base, 99))
	f.Ratio = ratio(f.AckP50Ms, f.BaselineP50Ms)
	rep.Latency = f
	return nil
}

// directAtRate starts one RefreshNow per interval, at most conc at once,
// and returns each one's time from its scheduled start to its commit.
func (r *rig) directAtRate(ctx context.Context, db *bun.DB, conc int, ids []int64, interval time.Duration) ([]time.Duration, error) {
	c, err := r.directConsumer(db, &instantProvider{}, conc)
	if err != nil {
		return nil, err
	}
	out := make([]time.Duration, len(ids))
	slots := make(chan struct{}, conc)
	var (
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
	)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i, id := range ids {
		<-tick.C
		t0 := time.Now()
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			ok, err := directTx(ctx, c, model.Key{Service: serviceConsume, ID: id}, t0)
			if err == nil && !ok {
				err = fmt.Errorf("credential %d: skipped, want a refresh", id)
			}
			if err != nil {
				errOnce.Do(func() { first = err })
			}
			out[i] = time.Since(t0)
		}()
		if ctx.Err() != nil {
			break
		}
	}
	wg.Wait()
	if first != nil {
		return nil, fmt.Errorf("direct transactions at a fixed rate: %w", first)
	}
	return out, ctx.Err()
}

// ackStreamSeq is the stream sequence in a JetStream ack subject:
// $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>,
// or the longer form with domain and account hash after $JS.ACK.
func ackStreamSeq(subject string) (uint64, bool) {
	tok := strings.Split(subject, ".")
	var s string
	switch {
	case len(tok) == 9:
		s = tok[5]
	case len(tok) >= 11:
		s = tok[7]
	default:
		return 0, false
	}
	seq, err := strconv.ParseUint(s, 10, 64)
	return seq, err == nil
}

// percentile is the nearest-rank p-th percentile of ds (0 for none).
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
