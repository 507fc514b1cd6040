package bench

import (
	"context"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/refresher/refresher/provider"
)

// instantProvider answers every refresh at once with a new token pair, in process:
// what is left to measure is refresher and the database.
type instantProvider struct {
	n atomic.Int64
}

// Refresh returns fresh tokens of a realistic length, never the one it was given.
func (p *instantProvider) Refresh(context.Context, string) (provider.Token, error) {
	n := strconv.FormatInt(p.n.Add(1), 36)
	return provider.Token{
		AccessToken:  "bench-at-" + n + "-" + tokenPad,
		RefreshToken: "bench-rt-" + n + "-" + tokenPad,
		Expiry:       time.Now().Add(time.Hour),
	}, nil
}

// tokenPad brings bench tokens to the size of the fake provider's (about 60 bytes).
const tokenPad = "0123456789abcdef0123456789abcdef0123456789"

// slowProvider answers like instantProvider after latency, or gives up with ctx.
type slowProvider struct {
	instantProvider
	latency time.Duration
}

// Refresh waits latency, then answers.
func (p *slowProvider) Refresh(ctx context.Context, rt string) (provider.Token, error) {
	t := time.NewTimer(p.latency)
	defer t.Stop()
	select {
	case <-t.C:
		return p.instantProvider.Refresh(ctx, rt)
	case <-ctx.Done():
		return provider.Token{}, ctx.Err()
	}
}
