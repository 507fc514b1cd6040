package consumer

// Unit tests of the consumer's pure rules: no server, no database. They live in the
// package (not consumer_test) because the rules are unexported; they run under -short.

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/refresher/refresher/model"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		want string // "" for valid; else the start of the error, naming the bad value
	}{
		{"defaults", func(*Config) {}, ""},
		{"concurrency 0", func(c *Config) { c.Concurrency = 0 }, "REFRESHER_CONCURRENCY=0:"},
		{"concurrency too high", func(c *Config) { c.Concurrency, c.MaxAckPending = 4097, 5000 }, "REFRESHER_CONCURRENCY=4097:"},
		{"concurrency at the top", func(c *Config) { c.Concurrency, c.MaxAckPending = 4096, 4096 }, ""},
		{"max deliver 0", func(c *Config) { c.MaxDeliver = 0 }, "REFRESHER_MAX_DELIVER=0:"},
		{"ack pending below concurrency", func(c *Config) { c.MaxAckPending = 255 }, "REFRESHER_MAX_ACK_PENDING=255: want at least REFRESHER_CONCURRENCY (256)"},
		{"ack pending equal to concurrency", func(c *Config) { c.MaxAckPending = 256 }, ""},
		{"lock timeout 0", func(c *Config) { c.LockTimeout = 0 }, "REFRESHER_LOCK_TIMEOUT=0s:"},
		{"lock timeout negative", func(c *Config) { c.LockTimeout = -time.Second }, "REFRESHER_LOCK_TIMEOUT=-1s:"},
		{"provider timeout 0", func(c *Config) { c.ProviderTimeout = 0 }, "REFRESHER_PROVIDER_TIMEOUT=0s:"},
		{"ack wait below 1s", func(c *Config) { c.AckWait = 999 * time.Millisecond }, "REFRESHER_ACK_WAIT=999ms:"},
		{"ack wait 1s", func(c *Config) { c.AckWait = time.Second }, ""},
		{"owner ttl below 1s", func(c *Config) { c.OwnerTTL = 500 * time.Millisecond }, "REFRESHER_OWNER_TTL=500ms:"},
		{"owner ttl negative", func(c *Config) { c.OwnerTTL = -time.Second }, "REFRESHER_OWNER_TTL=-1s:"},
		{"owner ttl 0 disables", func(c *Config) { c.OwnerTTL = 0 }, ""},
		{"drain equal to provider timeout", func(c *Config) { c.DrainTimeout = c.ProviderTimeout }, "REFRESHER_DRAIN_TIMEOUT=15s: must exceed REFRESHER_PROVIDER_TIMEOUT (15s)"},
		{"batch 0", func(c *Config) { c.BatchSize = 0 }, "REFRESHER_BATCH_SIZE=0:"},
		{"batch too big", func(c *Config) { c.BatchSize, c.Concurrency, c.MaxAckPending = 513, 1024, 1024 }, "REFRESHER_BATCH_SIZE=513:"},
		{"batch above concurrency", func(c *Config) { c.BatchSize, c.Concurrency = 8, 4 }, "REFRESHER_BATCH_SIZE=8: must not exceed REFRESHER_CONCURRENCY (4)"},
		{"batch at the top", func(c *Config) { c.BatchSize = 256 }, ""},
		{"default token ttl 0", func(c *Config) { c.DefaultTokenTTL = 0 }, "REFRESHER_DEFAULT_TOKEN_TTL=0s:"},
		{"backoff empty", func(c *Config) { c.Backoff = nil }, "REFRESHER_BACKOFF is empty"},
		{"backoff with a zero", func(c *Config) { c.Backoff = []time.Duration{time.Second, 0} }, "REFRESHER_BACKOFF: delay 0s"},
		{"backoff negative", func(c *Config) { c.Backoff = []time.Duration{-time.Second} }, "REFRESHER_BACKOFF: delay -1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.edit(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.want)):
				t.Fatalf("Validate() = %v, want an error starting %q", err, tt.want)
			}
		})
	}
}

func TestConfigBackoff(t *testing.T) {
	c := DefaultConfig()
	c.Backoff = []time.Duration{time.Second, 5 * time.Second, 30 * time.Second}
	tests := []struct {
		delivered  uint64
		retryAfter time.Duration
		want       time.Duration
	}{
		{0, 0, time.Second}, // not delivered yet: the first delay, not an index of -1
		{1, 0, time.Second},
		{2, 0, 5 * time.Second},
		{3, 0, 30 * time.Second},
		{4, 0, 30 * time.Second}, // the last repeats
		{100, 0, 30 * time.Second},
		{1, 500 * time.Millisecond, time.Second}, // a shorter Retry-After does not hurry
		{1, 10 * time.Second, 10 * time.Second},  // a longer one is honoured
		{3, 10 * time.Second, 30 * time.Second},  // but never shortens the backoff
		{1, 15 * time.Minute, 15 * time.Minute},  // up to the cap
		{1, 48 * time.Hour, 15 * time.Minute},    // a header of days is capped
		{100, time.Hour + time.Second, 15 * time.Minute},
	}
	for _, tt := range tests {
		if got := c.backoff(tt.delivered, tt.retryAfter); got != tt.want {
			t.Errorf("backoff(%d, %s) = %s, want %s", tt.delivered, tt.retryAfter, got, tt.want)
		}
	}
}

func TestSatisfied(t *testing.T) {
	req := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { t := req.Add(d); return &t }
	tests := []struct {
		name        string
		refreshedAt *time.Time
		want        bool
	}{
		{"never refreshed", nil, false},
		{"refreshed before the request", at(-time.Second), false},
		{"refreshed at the request's instant", at(0), false}, // a call begun then may predate the change asked for
		{"refreshed after the request", at(time.Nanosecond), true},
		{"refreshed long after", at(time.Hour), true},
	}
	for _, tt := range tests {
		if got := satisfied(tt.refreshedAt, req); got != tt.want {
			t.Errorf("%s: satisfied = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestDecide(t *testing.T) {
	req := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	before, after := req.Add(-time.Minute), req.Add(time.Minute)
	key := model.Key{Service: "github", ID: 7}
	row := func(service, status string, refreshedAt *time.Time) *lockedRow {
		return &lockedRow{Credential: model.Credential{ID: 7, Service: service, Status: status, RefreshedAt: refreshedAt}}
	}
	cfg := DefaultConfig()
	cfg.MaxDeliver = 3
	tests := []struct {
		name      string
		row       *lockedRow
		stopping  bool
		delivered uint64
		want      Outcome
	}{
		{"needs a call", row("github", model.StatusActive, &before), false, 1, undecidedOutcome},
		{"never refreshed needs a call", row("github", model.StatusActive, nil), false, 1, undecidedOutcome},
		{"fresh: the skip rule", row("github", model.StatusActive, &after), false, 1, SkippedFresh},
		{"other service's id", row("google", model.StatusActive, &before), false, 1, NotFound},
		{"other service wins over fresh", row("google", model.StatusActive, &after), false, 1, NotFound},
		{"reauth required", row("github", model.StatusReauthRequired, &before), false, 1, SkippedReauth},
		{"reauth wins over fresh", row("github", model.StatusReauthRequired, &after), false, 1, SkippedReauth},
		{"stopping: interrupted", row("github", model.StatusActive, &before), true, 2, Interrupted},
		{"stopping but fresh: skipped", row("github", model.StatusActive, &after), true, 1, SkippedFresh},
		{"stopping on the last delivery: worked through", row("github", model.StatusActive, &before), true, 3, undecidedOutcome},
		{"stopping past the last delivery: worked through", row("github", model.StatusActive, &before), true, 4, undecidedOutcome},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Consumer{cfg: cfg, stopping: make(chan struct{})}
			if tt.stopping {
				close(c.stopping)
			}
			got, err := c.decide(key, tt.row, req, tt.delivered)
			if got != tt.want || err != nil {
				t.Fatalf("decide = %q, %v; want %q, nil", got, err, tt.want)
			}
		})
	}
}

func TestGroupJobs(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	mk := func(service string, id int64, at time.Duration) *job {
		return &job{req: request{key: model.Key{Service: service, ID: id}, requestedAt: t0.Add(at)}}
	}
	if got := groupJobs(nil); len(got) != 0 {
		t.Fatalf("groupJobs(nil) = %d groups", len(got))
	}
	a1, a2, a3 := mk("github", 9, 0), mk("github", 9, 2*time.Second), mk("github", 9, time.Second)
	b := mk("github", 3, 0)
	other := mk("google", 9, 5*time.Second) // same id, other service: another credential key
	same1, same2 := mk("github", 5, 0), mk("github", 5, 0)
	groups := groupJobs([]*job{a1, b, a2, other, same1, a3, same2})

	var keys []model.Key
	for _, g := range groups {
		keys = append(keys, g.key)
	}
	if len(groups) != 4 || keys[0].ID != 3 || keys[1].ID != 5 || keys[2].ID != 9 || keys[3].ID != 9 {
		t.Fatalf("groups %v: want one group per (service, id), in id order", keys)
	}
	byKey := map[model.Key]*group{}
	for _, g := range groups {
		byKey[g.key] = g
		if g.state != undecided {
			t.Errorf("group %v starts in state %d, want undecided", g.key, g.state)
		}
	}
	tests := []struct {
		key  model.Key
		jobs []*job
		lead *job
	}{
		{b.req.key, []*job{b}, b},
		{same1.req.key, []*job{same1, same2}, same1}, // a tie keeps the first as lead
		{a1.req.key, []*job{a1, a2, a3}, a2},         // the latest request leads
		{other.req.key, []*job{other}, other},
	}
	for _, tt := range tests {
		g := byKey[tt.key]
		if g == nil {
			t.Fatalf("no group for %v", tt.key)
		}
		if len(g.jobs) != len(tt.jobs) {
			t.Fatalf("group %v has %d jobs, want %d", tt.key, len(g.jobs), len(tt.jobs))
		}
		for i := range tt.jobs {
			if g.jobs[i] != tt.jobs[i] {
				t.Errorf("group %v job %d out of arrival order", tt.key, i)
			}
		}
		if g.lead != tt.lead {
			t.Errorf("group %v lead requested at %s, want the one at %s", tt.key, g.lead.req.requestedAt, tt.lead.req.requestedAt)
		}
	}
}

func TestParseRequest(t *testing.T) {
	stored := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	earlier := stored.Add(-time.Hour)
	tests := []struct {
		name      string
		subject   string
		body      string
		header    string
		hasHeader bool
		want      request
		wantErr   error
	}{
		{"bare", "refresh.github.42", "", "", false, request{key: model.Key{Service: "github", ID: 42}, requestedAt: stored}, nil},
		{"reason", "refresh.github.42", `{"reason":"login"}`, "", false, request{key: model.Key{Service: "github", ID: 42}, requestedAt: stored, reason: "login"}, nil},
		{"body time", "refresh.github.42", `{"requested_at":"2026-11-26T09:00:00Z"}`, "", false, request{key: model.Key{Service: "github", ID: 42}, requestedAt: earlier}, nil},
		{"header wins over body", "refresh.github.42", `{"requested_at":"2026-11-26T09:30:00Z"}`, "2026-11-26T09:00:00Z", true, request{key: model.Key{Service: "github", ID: 42}, requestedAt: earlier}, nil},
		{"bad subject", "refresh.github.042", "", "", false, request{}, model.ErrBadSubject},
		{"bad service", "refresh.Git Hub.1", "", "", false, request{}, model.ErrBadSubject},
		{"bad body", "refresh.github.1", "{", "", false, request{}, model.ErrBadBody},
		{"bad header", "refresh.github.1", "", "yesterday", true, request{}, model.ErrBadHeader},
		{"empty header present", "refresh.github.1", "", "", true, request{}, model.ErrBadHeader},
		{"request from the future", "refresh.github.1", "", "2026-11-26T11:00:00Z", true, request{}, model.ErrBadRequestTime},
		{"subject checked before body", "refresh.x", "{", "", false, request{}, model.ErrBadSubject},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseRequest(tt.subject, []byte(tt.body), tt.header, tt.hasHeader, stored)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("parseRequest error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseRequest: %v", err)
			}
			if got.key != tt.want.key || !got.requestedAt.Equal(tt.want.requestedAt) || got.reason != tt.want.reason {
				t.Fatalf("parseRequest = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestTermTakesReason(t *testing.T) {
	for _, tc := range []struct {
		version string
		want    bool
	}{
		{"2.9.10", false}, {"2.10.0", false}, {"2.10.3", false}, {"2.10.4", true},
		{"2.10.22", true}, {"2.11.0-RC.1", true}, {"2.15.2", true}, {"3.0.0", true},
		{"1.4.1", false}, {"", false}, {"unknown", false},
	} {
		if got := termTakesReason(tc.version); got != tc.want {
			t.Errorf("termTakesReason(%q) = %v, want %v", tc.version, got, tc.want)
		}
	}
}
