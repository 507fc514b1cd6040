package limit_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/natstest"
	"github.com/refresher/refresher/limit"
	"github.com/refresher/refresher/provider"
)

var owners atomic.Int64

// fleet starts n Fleets, each on its own connection, as n consume processes would.
func fleet(t *testing.T, url string, n int, limits map[string]limit.Limits, o limit.Options) []*limit.Fleet {
	t.Helper()
	var out []*limit.Fleet
	for range n {
		_, js := natstest.Connect(t, url)
		oi := o
		oi.Owner = fmt.Sprintf("process-%d", owners.Add(1))
		oi.Log = slog.New(slog.DiscardHandler)
		f := limit.New(js, limits, oi)
		f.Start(context.Background())
		t.Cleanup(f.Stop)
		out = append(out, f)
	}
	return out
}

func TestFleetRateAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a nats-server")
	}
	srv := natstest.Start(t)
	r, _ := limit.ParseRate("50/s")
	fs := fleet(t, srv.URL(), 3, map[string]limit.Limits{"svc": {Rate: r}}, limit.Options{})
	var (
		mu    sync.Mutex
		times []time.Time
		wg    sync.WaitGroup
	)
	const calls = 150
	var next atomic.Int64
	for _, f := range fs {
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= calls {
					p, err := f.Acquire(context.Background(), "svc")
					if err == nil {
						err = f.Pace(context.Background(), p)
					}
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					times = append(times, time.Now())
					mu.Unlock()
					p.Done(nil)
				}
			}()
		}
	}
	wg.Wait()
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	worst := limit.Busiest(times)
	took := times[len(times)-1].Sub(times[0])
	rate := float64(len(times)-r.Burst) / took.Seconds()
	t.Logf("%d permits over %s: %.1f/s sustained, busiest second %d (limit 50 + burst %d)", len(times), took.Round(time.Millisecond), rate, worst, r.Burst)
	if worst > 50+r.Burst {
		t.Errorf("busiest second had %d permits, limit 50 + burst %d", worst, r.Burst)
	}
	if rate < 45 {
		t.Errorf("sustained %.1f/s, want at least 45/s", rate)
	}
}

func TestFleetMaxInFlightAndLease(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a nats-server")
	}
	srv := natstest.Start(t)
	lim := map[string]limit.Limits{"svc": {MaxInFlight: 4}}
	fs := fleet(t, srv.URL(), 3, lim, limit.Options{Lease: time.Second})
	var inFlight, peak atomic.Int64
	var wg sync.WaitGroup
	for _, f := range fs {
		for range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 10 {
					p, err := f.Acquire(context.Background(), "svc")
					if err != nil {
						t.Error(err)
						return
					}
					n := inFlight.Add(1)
					for {
						old := peak.Load()
						if n <= old || peak.CompareAndSwap(old, n) {
							break
						}
					}
					time.Sleep(5 * time.Millisecond) // the call
					inFlight.Add(-1)
					p.Done(nil)
				}
			}()
		}
	}
	wg.Wait()
	if peak.Load() > 4 {
		t.Fatalf("peak %d calls in flight across the fleet, cap 4", peak.Load())
	}
	if peak.Load() < 3 {
		t.Fatalf("peak %d calls in flight: the cap of 4 was not used", peak.Load())
	}

	// A process dies holding slots: a fresh fleet member gets them after the lease.
	dying := fleet(t, srv.URL(), 1, lim, limit.Options{Lease: time.Second})[0]
	for range 4 {
		if _, err := dying.Acquire(context.Background(), "svc"); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	dying.Kill()
	p, err := fs[0].Acquire(wctx, "svc")
	if err != nil {
		t.Fatalf("slots of a dead process did not come back: %v", err)
	}
	p.Done(nil)
	waited := time.Since(start)
	t.Logf("slot of a killed process back after %s (lease 1s)", waited.Round(time.Millisecond))
	if waited < 500*time.Millisecond || waited > 3*time.Second {
		t.Fatalf("slot back after %s, want about the 1 s lease", waited)
	}
}

func TestFleetPauseAndCircuit(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a nats-server")
	}
	srv := natstest.Start(t)
	lim := map[string]limit.Limits{
		"svc":   {CircuitThreshold: 3, ProbeInterval: 300 * time.Millisecond, ProbeMax: time.Second},
		"other": {CircuitThreshold: 3, ProbeInterval: 300 * time.Millisecond, ProbeMax: time.Second},
	}
	fs := fleet(t, srv.URL(), 2, lim, limit.Options{})
	ctx := context.Background()

	// A 429 with Retry-After on one process pauses the other.
	p, _ := fs[0].Acquire(ctx, "svc")
	p.Done(&provider.TransientError{Status: 429, RetryAfter: time.Second, Reason: "Too Many Requests"})
	waitBlocked(t, fs[1], "svc", true)
	start := time.Now()
	if q, err := fs[1].Acquire(ctx, "other"); err != nil {
		t.Fatal(err)
	} else {
		q.Done(nil) // another service is not held up
	}
	q, err := fs[1].Acquire(ctx, "svc")
	if err != nil {
		t.Fatal(err)
	}
	q.Done(nil)
	if waited := time.Since(start); waited < 800*time.Millisecond {
		t.Fatalf("a call started %s into a 1 s pause", waited)
	}

	// Three failures across the fleet open the circuit; calls wait; the probe is one
	// call; its success closes the circuit.
	for i := range 3 {
		p, _ := fs[i%2].Acquire(ctx, "svc")
		p.Done(&provider.TransientError{Status: 502, Reason: "Bad Gateway"})
	}
	waitBlocked(t, fs[0], "svc", true)
	waitBlocked(t, fs[1], "svc", true)
	var probes atomic.Int64
	var wg sync.WaitGroup
	for _, f := range fs {
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p, err := f.Acquire(ctx, "svc")
				if err != nil {
					t.Error(err)
					return
				}
				if p.Probe() {
					if probes.Add(1) == 1 {
						p.Done(&provider.TransientError{Status: 503, Reason: "Service Unavailable"})
						return
					}
				}
				p.Done(nil)
			}()
		}
	}
	wg.Wait()
	if probes.Load() != 2 {
		t.Fatalf("%d probes, want 2 (one failed, one that closed the circuit)", probes.Load())
	}
	if st, _ := fs[0].Snapshot("svc"); st.Circuit != limit.Closed {
		t.Fatalf("circuit %s after a good probe", st.Circuit)
	}
}

func waitBlocked(t *testing.T, f *limit.Fleet, svc string, want bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _, _ := f.Blocked(svc)
		if b == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s blocked=%v after 5 s, want %v", svc, b, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFleetFallsBackToShare(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a nats-server")
	}
	srv := natstest.Start(t)
	r, _ := limit.ParseRate("20/s")
	f := fleet(t, srv.URL(), 1, map[string]limit.Limits{"svc": {Rate: r}}, limit.Options{FleetSize: func() int { return 2 }})[0]
	srv.Stop()
	start := time.Now()
	for range 12 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		p, err := f.Acquire(ctx, "svc")
		if err == nil {
			err = f.Pace(ctx, p)
		}
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatal("no permit while the bucket is unreachable")
		}
		p.Done(nil)
	}
	// Half of 20/s, burst 1: twelve permits take at least ~1 s.
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Fatalf("12 permits in %s with NATS down: not limited to the share of 10/s", took)
	}
}
