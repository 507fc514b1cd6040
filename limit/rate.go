package limit

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Rate is a provider's request quota: N calls per Per, with up to Burst calls at once
// on top of the steady pace. The zero Rate is no limit.
type Rate struct {
	N     int
	Per   time.Duration
	Burst int
}

// ErrBadRate means a rate could not be parsed.
var ErrBadRate = errors.New("want <calls>/<s|m|h>, like 600/m or 20/s")

// ParseRate reads "600/m", "20/s" or "5000/h"; "" is no limit. The burst is
// DefaultBurst of the rate; SetBurst changes it.
func ParseRate(s string) (Rate, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "0" {
		return Rate{}, nil
	}
	num, unit, ok := strings.Cut(s, "/")
	if !ok {
		return Rate{}, fmt.Errorf("rate %q: %w", s, ErrBadRate)
	}
	n, err := strconv.Atoi(strings.TrimSpace(num))
	if err != nil || n < 1 || n > 1_000_000 {
		return Rate{}, fmt.Errorf("rate %q: calls must be a whole number from 1 to 1000000: %w", s, ErrBadRate)
	}
	var per time.Duration
	switch strings.TrimSpace(unit) {
	case "s", "sec", "second":
		per = time.Second
	case "m", "min", "minute":
		per = time.Minute
	case "h", "hour":
		per = time.Hour
	default:
		return Rate{}, fmt.Errorf("rate %q: unit %q: %w", s, unit, ErrBadRate)
	}
	r := Rate{N: n, Per: per}
	r.Burst = r.DefaultBurst()
	return r, nil
}

// DefaultBurst is a tenth of a second's worth of calls, at least one: enough that
// processes taking tokens one round trip at a time keep up with the pace, small
// enough that a provider never sees a noticeable spike.
func (r Rate) DefaultBurst() int {
	if r.IsZero() {
		return 0
	}
	return max(1, int(math.Ceil(r.PerSecond()/10)))
}

// sendBurst is the burst refresher itself uses: a few milliseconds' worth of calls
// (one below 200/s), at most half of Burst. A process late for its token does not
// lose it: tokens are taken reserveAhead before their time. The rest of Burst, and
// the pace kept at paceShare of the rate, are the margin the provider's own count
// sees on top: calls start a little after their time (scheduling, the network), and
// calls delayed that way arrive together with calls on time.
func (r Rate) sendBurst() int {
	n := max(1, int(math.Ceil(r.PerSecond()*0.005)))
	return max(1, min(n, (r.Burst+1)/2))
}

// paceShare is the share of the rate refresher paces at: the margin above keeps a
// provider's sliding second within rate + burst when calls reach it up to about a
// seventh of a second late (at 50/s with a burst of 5: 46.5 paced + 1 sent at once,
// 7.5 calls of margin), as on two loaded cores where the provider shares the machine.
const paceShare = 0.93

// IsZero reports whether r is no limit.
func (r Rate) IsZero() bool { return r.N == 0 }

// PerSecond is the steady pace.
func (r Rate) PerSecond() float64 {
	if r.IsZero() {
		return 0
	}
	return float64(r.N) / r.Per.Seconds()
}

// interval is the time one call's token takes to come back, at paceShare of the rate.
func (r Rate) interval() time.Duration {
	return time.Duration(float64(r.Per) / (float64(r.N) * paceShare))
}

// String writes r the way ParseRate reads it, with the burst.
func (r Rate) String() string {
	if r.IsZero() {
		return "unlimited"
	}
	unit := map[time.Duration]string{time.Second: "s", time.Minute: "m", time.Hour: "h"}[r.Per]
	if unit == "" {
		unit = r.Per.String()
	}
	return fmt.Sprintf("%d/%s (burst %d)", r.N, unit, r.Burst)
}
