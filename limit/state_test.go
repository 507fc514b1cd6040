package limit

import (
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in    string
		want  Rate
		wrong bool
	}{
		{in: "", want: Rate{}},
		{in: "600/m", want: Rate{N: 600, Per: time.Minute, Burst: 1}},
		{in: "20/s", want: Rate{N: 20, Per: time.Second, Burst: 2}},
		{in: "50/s", want: Rate{N: 50, Per: time.Second, Burst: 5}},
		{in: "5000/h", want: Rate{N: 5000, Per: time.Hour, Burst: 1}},
		{in: " 7 / s ", want: Rate{N: 7, Per: time.Second, Burst: 1}},
		{in: "20", wrong: true},
		{in: "20/d", wrong: true},
		{in: "-3/s", wrong: true},
		{in: "0/s", wrong: true},
		{in: "x/s", wrong: true},
		{in: "1.5/s", wrong: true},
		{in: "2000000/s", wrong: true},
	} {
		got, err := ParseRate(tc.in)
		if tc.wrong {
			if err == nil {
				t.Errorf("ParseRate(%q) = %v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestLimitsValidate(t *testing.T) {
	ok := DefaultLimits()
	ok.Rate, _ = ParseRate("10/s")
	ok.MaxInFlight = 4
	if err := ok.Validate("REFRESHER_GITHUB"); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Limits){
		"_MAX_IN_FLIGHT=-1":   func(l *Limits) { l.MaxInFlight = -1 },
		"_CIRCUIT_THRESHOLD":  func(l *Limits) { l.CircuitThreshold = -2 },
		"_PROBE_INTERVAL=1ms": func(l *Limits) { l.ProbeInterval = time.Millisecond },
		"_PROBE_MAX=1s":       func(l *Limits) { l.ProbeMax = time.Second },
		"_RATE":               func(l *Limits) { l.Rate.Burst = 0 },
	} {
		l := ok
		mod(&l)
		err := l.Validate("REFRESHER_GITHUB")
		if err == nil || !contains(err.Error(), "REFRESHER_GITHUB"+name) {
			t.Errorf("%s: got %v, want an error naming REFRESHER_GITHUB%s", name, err, name)
		}
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

var t0 = time.Unix(1_800_000_000, 0)

func set(l Limits, owner string) settings {
	return settings{Limits: l, owner: owner, lease: 5 * time.Second, probeTimeout: 10 * time.Second}
}

// TestRateWindow grants permits as fast as the plan allows over a simulated 10 s and
// checks that no 1 s window holds more than the rate plus the burst, and that the
// sustained pace is the rate.
func TestRateWindow(t *testing.T) {
	r, _ := ParseRate("50/s")
	s := set(Limits{Rate: r}, "a")
	s.reserveAhead = reserveAhead
	var st State
	var grants []time.Time // when the calls start
	now := t0
	for now.Before(t0.Add(10 * time.Second)) {
		p := makePlan(st, events{}, 0, 3, now, s)
		st = p.next
		for _, at := range p.tokenAt {
			if at.Before(t0.Add(10 * time.Second)) { // not those reserved for later
				grants = append(grants, at)
			}
		}
		now = now.Add(time.Millisecond)
	}
	for i := range grants {
		n := 0
		for j := i; j < len(grants) && grants[j].Sub(grants[i]) < time.Second; j++ {
			n++
		}
		if n > 50+r.Burst {
			t.Fatalf("%d grants in the second from %s, want at most %d", n, grants[i].Sub(t0), 50+r.Burst)
		}
	}
	// Paced at paceShare of the rate: 475 in 10 s, plus the send burst.
	if want := int(500 * paceShare); len(grants) < want || len(grants) > want+r.sendBurst() {
		t.Fatalf("%d grants in 10 s, want %d (+ send burst %d)", len(grants), want, r.sendBurst())
	}
}

func TestRefundGivesTokenBack(t *testing.T) {
	r, _ := ParseRate("1/s")
	s := set(Limits{Rate: r}, "a")
	p := makePlan(State{}, events{}, 0, 1, t0, s)
	if len(p.tokenAt) != 1 {
		t.Fatalf("tokens %d", len(p.tokenAt))
	}
	if q := makePlan(p.next, events{}, 0, 1, t0, s); len(q.tokenAt) != 0 || !q.wake.Equal(t0.Add(r.interval())) {
		t.Fatalf("second token: %d, wake %v; want 0 until t0+%v", len(q.tokenAt), q.wake.Sub(t0), r.interval())
	}
	q := makePlan(p.next, events{refund: 1}, 0, 1, t0, s)
	if len(q.tokenAt) != 1 {
		t.Fatalf("after a refund: tokens %d, want 1", len(q.tokenAt))
	}
	if h := makePlan(State{PausedUntil: t0.Add(time.Second).UnixNano()}, events{}, 0, 1, t0, s); !h.held || len(h.tokenAt) != 0 {
		t.Fatal("a token was taken during a pause")
	}
}

func TestMaxInFlightAcrossOwners(t *testing.T) {
	l := Limits{MaxInFlight: 4}
	a, b := set(l, "a"), set(l, "b")
	p := makePlan(State{}, events{}, 3, 0, t0, a)
	if p.granted != 3 {
		t.Fatalf("a granted %d", p.granted)
	}
	q := makePlan(p.next, events{}, 3, 0, t0, b)
	if q.granted != 1 {
		t.Fatalf("b granted %d, want 1", q.granted)
	}
	if got := q.next.InFlight(t0); got != 4 {
		t.Fatalf("in flight %d", got)
	}
	// a releases two: b gets them.
	r := makePlan(q.next, events{release: 2}, 0, 0, t0, a)
	s := makePlan(r.next, events{}, 5, 0, t0, b)
	if s.granted != 2 {
		t.Fatalf("b granted %d after a's release, want 2", s.granted)
	}
	// a dies holding one: when its lease runs out that slot comes back, while b's
	// own three still count although b renews late.
	late := t0.Add(5*time.Second + time.Nanosecond)
	u := makePlan(s.next, events{}, 5, 0, late, b)
	if u.granted != 1 || u.next.InFlight(late) != 4 {
		t.Fatalf("b granted %d (in flight %d) after a's lease ran out, want 1 (4)", u.granted, u.next.InFlight(late))
	}
}

func TestDeadOwnerSlotsComeBack(t *testing.T) {
	l := Limits{MaxInFlight: 2}
	p := makePlan(State{}, events{}, 2, 0, t0, set(l, "dead"))
	q := makePlan(p.next, events{}, 1, 0, t0.Add(time.Second), set(l, "alive"))
	if q.granted != 0 || !q.wake.Equal(t0.Add(5*time.Second)) {
		t.Fatalf("granted %d, wake %v; want 0 until the lease ends", q.granted, q.wake.Sub(t0))
	}
	r := makePlan(q.next, events{}, 2, 0, t0.Add(5*time.Second), set(l, "alive"))
	if r.granted != 2 {
		t.Fatalf("after the lease: granted %d, want 2", r.granted)
	}
	if _, ok := r.next.Slots["dead"]; ok {
		t.Fatal("the dead owner's entry is still there")
	}
}

func TestPause(t *testing.T) {
	s := set(Limits{}, "a")
	p := makePlan(State{}, events{pause: 5 * time.Second, reason: "429"}, 1, 0, t0, s)
	if p.granted != 0 || !p.wake.Equal(t0.Add(5*time.Second)) {
		t.Fatalf("granted %d wake %v during a pause", p.granted, p.wake.Sub(t0))
	}
	// A shorter Retry-After does not shorten it; a longer one lengthens it.
	q := makePlan(p.next, events{pause: time.Second}, 0, 0, t0, s)
	if q.next.PausedUntil != p.next.PausedUntil {
		t.Fatal("a shorter Retry-After shortened the pause")
	}
	if r := makePlan(p.next, events{pause: 99 * time.Hour}, 0, 0, t0, s); r.next.PausedUntil != t0.Add(MaxPause).UnixNano() {
		t.Fatalf("pause of 99h: until %v, want capped at %v", time.Unix(0, r.next.PausedUntil).Sub(t0), MaxPause)
	}
	after := makePlan(p.next, events{}, 1, 0, t0.Add(5*time.Second), s)
	if after.granted != 1 || after.next.PausedUntil != 0 {
		t.Fatalf("after the pause: granted %d, paused until %d", after.granted, after.next.PausedUntil)
	}
}

func TestCircuit(t *testing.T) {
	l := Limits{CircuitThreshold: 3, ProbeInterval: time.Second, ProbeMax: 4 * time.Second}
	a, b := set(l, "a"), set(l, "b")
	st := makePlan(State{}, events{failures: 2}, 0, 0, t0, a).next
	st = makePlan(st, events{successes: 1}, 0, 0, t0, b).next
	if st.Failures != 0 {
		t.Fatalf("a success did not end the run: %d", st.Failures)
	}
	st = makePlan(st, events{failures: 2}, 0, 0, t0, a).next
	st = makePlan(st, events{failures: 1}, 0, 0, t0, b).next
	if st.Circuit != Open || !time.Unix(0, st.NextProbe).Equal(t0.Add(time.Second)) {
		t.Fatalf("after 3 failures: %s, next probe %v", st.Circuit, time.Unix(0, st.NextProbe).Sub(t0))
	}
	if p := makePlan(st, events{}, 5, 0, t0.Add(500*time.Millisecond), a); p.granted != 0 {
		t.Fatal("granted while open")
	}
	// The probe: one call, to one process.
	p := makePlan(st, events{}, 5, 0, t0.Add(time.Second), a)
	if p.granted != 1 || !p.probe || p.next.Circuit != HalfOpen || p.next.ProbeOwner != "a" {
		t.Fatalf("probe: granted %d probe %v circuit %s owner %q", p.granted, p.probe, p.next.Circuit, p.next.ProbeOwner)
	}
	if q := makePlan(p.next, events{}, 5, 0, t0.Add(time.Second), b); q.granted != 0 {
		t.Fatal("b granted during a's probe")
	}
	// Failed probes grow the interval up to the maximum.
	st = p.next
	now := t0.Add(time.Second)
	for i, want := range []time.Duration{2 * time.Second, 4 * time.Second, 4 * time.Second} {
		st = makePlan(st, events{probe: probeFailed}, 0, 0, now, a).next
		if st.Circuit != Open || time.Unix(0, st.NextProbe).Sub(now) != want {
			t.Fatalf("failed probe %d: %s, next in %v, want %v", i+1, st.Circuit, time.Unix(0, st.NextProbe).Sub(now), want)
		}
		now = time.Unix(0, st.NextProbe)
		pp := makePlan(st, events{}, 1, 0, now, a)
		if !pp.probe {
			t.Fatalf("no probe at %v", now.Sub(t0))
		}
		st = pp.next
	}
	// A returned probe lets another process probe at once; a successful one closes.
	st = makePlan(st, events{probe: probeReturned}, 0, 0, now, a).next
	pb := makePlan(st, events{}, 1, 0, now, b)
	if !pb.probe || pb.next.ProbeOwner != "b" {
		t.Fatal("b could not probe after a returned its probe")
	}
	st = makePlan(pb.next, events{probe: probeSucceeded}, 3, 0, now, b).next
	if st.Circuit != Closed || st.Failures != 0 {
		t.Fatalf("after a good probe: %s, %d failures", st.Circuit, st.Failures)
	}
	// A probe holder that dies: past ProbeUntil another may probe.
	st = makePlan(State{}, events{failures: 3}, 0, 0, t0, a).next
	st = makePlan(st, events{}, 1, 0, t0.Add(time.Second), a).next
	if p := makePlan(st, events{}, 1, 0, t0.Add(time.Second+s10), b); !p.probe {
		t.Fatal("nobody may probe after the probing process died")
	}
}

const s10 = 10 * time.Second

func TestShare(t *testing.T) {
	r, _ := ParseRate("60/s")
	l := Limits{Rate: r, MaxInFlight: 10}.share(3)
	if got := l.Rate.PerSecond(); got != 20 {
		t.Fatalf("rate share %v/s, want 20", got)
	}
	if l.MaxInFlight != 4 || l.Rate.Burst != 2 {
		t.Fatalf("share %+v", l)
	}
}

// TestReservedTokensKeepTheirTime: a process that reaches the bucket only every 80 ms
// (a loaded machine, a slow round trip) still starts calls at the rate when tokens
// are handed out a tenth of a second ahead with their start times, and never more
// than the rate plus the burst in any second; without reserving ahead it loses the
// slots it was late for.
func TestReservedTokensKeepTheirTime(t *testing.T) {
	r, _ := ParseRate("50/s")
	starts := func(ahead time.Duration) []time.Time {
		s := set(Limits{Rate: r}, "a")
		s.reserveAhead = ahead
		var st State
		var out []time.Time
		for now := t0; now.Before(t0.Add(10 * time.Second)); now = now.Add(80 * time.Millisecond) {
			p := makePlan(st, events{}, 0, 10, now, s)
			st = p.next
			for _, at := range p.tokenAt {
				if at.Before(now) || at.After(now.Add(ahead)) {
					t.Fatalf("token to start at %s handed out at %s (ahead %s)", at.Sub(t0), now.Sub(t0), ahead)
				}
				out = append(out, at)
			}
		}
		return out
	}
	reserved, late := starts(100*time.Millisecond), starts(0)
	if worst := busiest(reserved); worst > 50+r.Burst {
		t.Errorf("reserved ahead: %d calls start in one second, want at most %d", worst, 50+r.Burst)
	}
	want := int(500 * paceShare)
	t.Logf("calls started in 10 s asking every 80 ms: %d reserving ahead, %d not (paced: %d)", len(reserved), len(late), want)
	if len(reserved) < want-r.Burst {
		t.Errorf("reserving ahead: %d calls in 10 s, want about %d", len(reserved), want)
	}
	if len(late) >= len(reserved) {
		t.Errorf("without reserving ahead %d calls, with %d: the control shows no loss", len(late), len(reserved))
	}
}

// busiest is the most times within any one second.
func busiest(ts []time.Time) int {
	worst := 0
	for i := range ts {
		n := 0
		for j := i; j < len(ts) && ts[j].Sub(ts[i]) < time.Second; j++ {
			n++
		}
		worst = max(worst, n)
	}
	return worst
}
