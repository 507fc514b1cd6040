package fake

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/testtier"
)

// clock lets grace-period tests move time without sleeping.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type reply struct {
	status int
	header http.Header
	body   map[string]any
}

func (r reply) str(key string) string {
	s, _ := r.body[key].(string)
	return s
}

func start(t *testing.T, opts Options) (*Provider, *httptest.Server) {
	t.Helper()
	p := New(opts)
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	return p, srv
}

func startWithClock(t *testing.T, opts Options) (*Provider, *httptest.Server, *clock) {
	t.Helper()
	p := New(opts)
	c := &clock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	p.now = c.Now
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	return p, srv, c
}

func refreshForm(rt string) url.Values {
	return url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}
}

// post sends a form to the token endpoint; edit may adjust the request (auth).
func post(t *testing.T, endpoint string, form url.Values, edit func(*http.Request)) reply {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if edit != nil {
		edit(req)
	}
	return do(t, req)
}

func do(t *testing.T, req *http.Request) reply {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := reply{status: resp.StatusCode, header: resp.Header}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &r.body); err != nil {
			t.Fatalf("decoding %q: %v", raw, err)
		}
	}
	return r
}

// mustRotate refreshes rt and returns the new refresh token, failing otherwise.
func mustRotate(t *testing.T, srv *httptest.Server, rt string) string {
	t.Helper()
	r := post(t, srv.URL+"/token", refreshForm(rt), nil)
	if r.status != http.StatusOK {
		t.Fatalf("refresh: status %d, body %v", r.status, r.body)
	}
	return r.str("refresh_token")
}

func TestTokenFormat(t *testing.T) {
	access, refresh := SeedTokens("github-17")
	for _, tok := range []string{access, refresh} {
		if l, ok := Lineage(tok); !ok || l != "github-17" {
			t.Errorf("Lineage(seed) = %q, %v", l, ok)
		}
		if g, ok := Generation(tok); !ok || g != 0 {
			t.Errorf("Generation(seed) = %d, %v", g, ok)
		}
	}
	if !strings.HasPrefix(refresh, "rt.github-17.0.") || !strings.HasPrefix(access, "at.github-17.0.") {
		t.Errorf("unexpected seed shapes (prefixes)")
	}
	_, again := SeedTokens("github-17")
	if again == refresh {
		t.Error("two seeds of one lineage are identical")
	}

	random := strings.Repeat("a", 22)
	tests := []struct {
		name    string
		token   string
		lineage string
		ok      bool
	}{
		{"refresh", "rt.svc_1.3." + random, "svc_1", true},
		{"access", "at.svc-1.3." + random, "svc-1", true},
		{"hex random", "rt.a.12." + strings.Repeat("0f", 16), "a", true},
		{"empty", "", "", false},
		{"wrong kind", "xx.svc.3." + random, "", false},
		{"uppercase lineage", "rt.Svc.3." + random, "", false},
		{"empty lineage", "rt..3." + random, "", false},
		{"negative gen", "rt.svc.-3." + random, "", false},
		{"signed gen", "rt.svc.+3." + random, "", false},
		{"huge gen", "rt.svc.99999999999." + random, "", false},
		{"empty gen", "rt.svc.." + random, "", false},
		{"short random", "rt.svc.3.abc", "", false},
		{"bad random chars", "rt.svc.3." + strings.Repeat("a", 21) + "=", "", false},
		{"extra dot", "rt.svc.3." + random + ".x", "", false},
		{"too few parts", "rt.svc." + random, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, ok := Lineage(tt.token)
			if ok != tt.ok || l != tt.lineage {
				t.Errorf("Lineage = %q, %v; want %q, %v", l, ok, tt.lineage, tt.ok)
			}
		})
	}
}

func TestSeedTokensPanicsOnBadLineage(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("SeedTokens accepted a lineage with a dot")
		}
	}()
	SeedTokens("a.b")
}

func TestRotation(t *testing.T) {
	p, srv := start(t, Options{AccessTTL: 90 * time.Second})
	_, rt0 := SeedTokens("github-1")

	r := post(t, srv.URL+"/github/token", refreshForm(rt0), nil)
	if r.status != http.StatusOK {
		t.Fatalf("status %d, body %v", r.status, r.body)
	}
	if got := r.header.Get("Cache-Control"); got != "no-store" {
		t.Errorf("Cache-Control = %q", got)
	}
	if got := r.header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type = %q", got)
	}
	if r.str("token_type") != "Bearer" || r.body["expires_in"] != float64(90) {
		t.Errorf("token_type/expires_in = %v/%v", r.body["token_type"], r.body["expires_in"])
	}
	rt1 := r.str("refresh_token")
	if g, _ := Generation(rt1); g != 1 {
		t.Errorf("rotated generation = %d, want 1", g)
	}
	if g, _ := Generation(r.str("access_token")); g != 1 || !strings.HasPrefix(r.str("access_token"), "at.github-1.") {
		t.Errorf("access token has wrong shape (gen %d)", g)
	}

	rt2 := mustRotate(t, srv, rt1)
	latest, gen, ok := p.Latest("github-1")
	if !ok || latest != rt2 || gen != 2 {
		t.Errorf("Latest = gen %d, ok %v, matches rt2: %v", gen, ok, latest == rt2)
	}
	s := p.Stats()
	if s.Calls != 2 || s.Rotations != 2 || s.Reuses != 0 || s.Adoptions != 1 || s.CallsByLineage["github-1"] != 2 {
		t.Errorf("stats = %+v", s)
	}
	if got := p.Lineages(); len(got) != 1 || got[0] != "github-1" {
		t.Errorf("Lineages = %v", got)
	}
}

func TestReuseRejected(t *testing.T) {
	p, srv := start(t, Options{})
	_, rt0 := SeedTokens("svc-1")
	rt1 := mustRotate(t, srv, rt0)
	rt2 := mustRotate(t, srv, rt1)

	for _, stale := range []string{rt0, rt1} {
		r := post(t, srv.URL+"/token", refreshForm(stale), nil)
		if r.status != http.StatusBadRequest || r.str("error") != "invalid_grant" {
			t.Errorf("stale token: status %d, body %v", r.status, r.body)
		}
	}
	if latest, _, _ := p.Latest("svc-1"); latest != rt2 {
		t.Error("a rejected reuse changed the latest token")
	}
	mustRotate(t, srv, rt2)
	s := p.Stats()
	if s.Reuses != 2 || s.Rotations != 3 || s.BadRequests != 0 {
		t.Errorf("stats = %+v", s)
	}
}

func TestUnrecognizedTokenOfKnownLineage(t *testing.T) {
	p, srv := start(t, Options{})
	_, rtA := SeedTokens("svc-2")
	_, rtB := SeedTokens("svc-2")
	mustRotate(t, srv, rtA)
	r := post(t, srv.URL+"/token", refreshForm(rtB), nil)
	if r.status != http.StatusBadRequest || r.str("error") != "invalid_grant" {
		t.Fatalf("status %d, body %v", r.status, r.body)
	}
	if s := p.Stats(); s.Unrecognized != 1 || s.Reuses != 0 {
		t.Errorf("stats = %+v", s)
	}
}

func TestGracePeriod(t *testing.T) {
	p, srv, clk := startWithClock(t, Options{GracePeriod: 10 * time.Second})
	_, rt0 := SeedTokens("svc-3")
	r1 := post(t, srv.URL+"/token", refreshForm(rt0), nil)
	rt1 := r1.str("refresh_token")
	rt2 := mustRotate(t, srv, rt1)

	tests := []struct {
		name      string
		advance   time.Duration
		token     string
		status    int
		wantGrace int
		wantReuse int
	}{
		{"previous token within grace", 5 * time.Second, rt1, http.StatusOK, 1, 0},
		{"older token within grace", 0, rt0, http.StatusBadRequest, 1, 1},
		{"previous token at the edge", 5 * time.Second, rt1, http.StatusOK, 2, 1},
		{"previous token after grace", time.Second, rt1, http.StatusBadRequest, 2, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk.Advance(tt.advance)
			r := post(t, srv.URL+"/token", refreshForm(tt.token), nil)
			if r.status != tt.status {
				t.Fatalf("status %d, body %v", r.status, r.body)
			}
			if r.status == http.StatusOK && r.str("refresh_token") != rt2 {
				t.Error("grace answer is not the current refresh token")
			}
			s := p.Stats()
			if s.GraceHits != tt.wantGrace || s.Reuses != tt.wantReuse || s.Rotations != 2 {
				t.Errorf("stats = %+v", s)
			}
		})
	}
	if latest, gen, _ := p.Latest("svc-3"); latest != rt2 || gen != 2 {
		t.Errorf("grace hits rotated: gen %d", gen)
	}
}

func TestAdoption(t *testing.T) {
	p, srv := start(t, Options{})
	seeded := "rt.legacy_9.7." + strings.Repeat("Zz", 12)
	if err := p.Verify("legacy_9", seeded); err == nil {
		t.Error("Verify accepted an unpresented lineage at generation 7")
	}
	rt := mustRotate(t, srv, seeded)
	if g, _ := Generation(rt); g != 8 {
		t.Errorf("adopted then rotated generation = %d, want 8", g)
	}
	if err := p.Verify("legacy_9", rt); err != nil {
		t.Error(err)
	}
	r := post(t, srv.URL+"/token", refreshForm(seeded), nil)
	if r.status != http.StatusBadRequest || p.Stats().Reuses != 1 {
		t.Errorf("adopted token reused: status %d, stats %+v", r.status, p.Stats())
	}
}

func TestBadRequests(t *testing.T) {
	_, rt := SeedTokens("svc-4")
	at, _ := SeedTokens("svc-4")
	tests := []struct {
		name   string
		method string
		form   url.Values
		status int
		code   string
	}{
		{"wrong grant type", "POST", url.Values{"grant_type": {"authorization_code"}, "refresh_token": {rt}}, 400, "unsupported_grant_type"},
		{"client credentials grant", "POST", url.Values{"grant_type": {"client_credentials"}}, 400, "unsupported_grant_type"},
		{"missing grant type", "POST", url.Values{"refresh_token": {rt}}, 400, "invalid_request"},
		{"missing refresh token", "POST", url.Values{"grant_type": {"refresh_token"}}, 400, "invalid_request"},
		{"repeated refresh token", "POST", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt, rt}}, 400, "invalid_request"},
		{"malformed token", "POST", refreshForm("not-a-token"), 400, "invalid_grant"},
		{"dotted garbage", "POST", refreshForm("rt.svc.x.yyyyyyyyyyyyyyyyyyyyyyyy"), 400, "invalid_grant"},
		{"access token as refresh", "POST", refreshForm(at), 400, "invalid_grant"},
		{"GET on token endpoint", "GET", nil, 405, "invalid_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := start(t, Options{})
			req, err := http.NewRequest(tt.method, srv.URL+"/token", strings.NewReader(tt.form.Encode()))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			r := do(t, req)
			if r.status != tt.status || r.str("error") != tt.code {
				t.Errorf("got %d %v, want %d %s", r.status, r.body, tt.status, tt.code)
			}
			s := p.Stats()
			if s.BadRequests != 1 || s.Calls != 1 || s.Rotations != 0 || len(p.Lineages()) != 0 {
				t.Errorf("stats = %+v, lineages %v", s, p.Lineages())
			}
		})
	}
}

func TestClientAuth(t *testing.T) {
	const id, secret = "client-1", "s3cr3t+/%"
	basic := func(u, pw string) func(*http.Request) {
		return func(r *http.Request) { r.SetBasicAuth(u, pw) }
	}
	tests := []struct {
		name       string
		edit       func(*http.Request)
		params     url.Values
		status     int
		header     int
		paramsAuth int
	}{
		{"header raw", basic(id, secret), nil, 200, 1, 0},
		{"header urlencoded", basic(url.QueryEscape(id), url.QueryEscape(secret)), nil, 200, 1, 0},
		{"header with matching client_id param", basic(id, secret), url.Values{"client_id": {id}}, 200, 1, 0},
		{"params", nil, url.Values{"client_id": {id}, "client_secret": {secret}}, 200, 0, 1},
		{"header wrong secret", basic(id, "nope"), nil, 401, 1, 0},
		{"header wrong id", basic("other", secret), nil, 401, 1, 0},
		{"params wrong secret", nil, url.Values{"client_id": {id}, "client_secret": {"nope"}}, 401, 0, 1},
		{"params missing secret", nil, url.Values{"client_id": {id}}, 401, 0, 1},
		{"both styles", basic(id, secret), url.Values{"client_id": {id}, "client_secret": {secret}}, 401, 1, 1},
		{"none", nil, nil, 401, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := start(t, Options{ClientID: id, ClientSecret: secret})
			_, rt := SeedTokens("svc-5")
			form := refreshForm(rt)
			for k, v := range tt.params {
				form[k] = v
			}
			r := post(t, srv.URL+"/token", form, tt.edit)
			if r.status != tt.status {
				t.Fatalf("status %d, body %v", r.status, r.body)
			}
			s := p.Stats()
			if s.HeaderAuth != tt.header || s.ParamsAuth != tt.paramsAuth {
				t.Errorf("header/params auth = %d/%d, want %d/%d", s.HeaderAuth, s.ParamsAuth, tt.header, tt.paramsAuth)
			}
			if tt.status == http.StatusUnauthorized {
				if r.str("error") != "invalid_client" || s.InvalidClient != 1 || s.Rotations != 0 {
					t.Errorf("body %v, stats %+v", r.body, s)
				}
				if r.header.Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
			}
		})
	}
}

func TestFaults(t *testing.T) {
	tests := []struct {
		name       string
		set        func(*Provider)
		status     int
		retryAfter string
	}{
		{"outage", func(p *Provider) { p.SetOutage(true) }, 503, ""},
		{"rate limit", func(p *Provider) { p.SetRateLimit(true, 1500*time.Millisecond) }, 429, "2"},
		{"fail rate 1", func(p *Provider) { p.SetFailRate(1) }, 503, ""},
		{"fail rate 0", func(p *Provider) { p.SetFailRate(0) }, 200, ""},
		{"outage cleared", func(p *Provider) { p.SetOutage(true); p.SetOutage(false) }, 200, ""},
		{"rate limit cleared", func(p *Provider) { p.SetRateLimit(true, time.Second); p.SetRateLimit(false, 0) }, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := start(t, Options{})
			tt.set(p)
			_, rt := SeedTokens("svc-6")
			for range 3 {
				r := post(t, srv.URL+"/token", refreshForm(rt), nil)
				if r.status != tt.status {
					t.Fatalf("status %d, body %v", r.status, r.body)
				}
				if got := r.header.Get("Retry-After"); got != tt.retryAfter {
					t.Errorf("Retry-After = %q, want %q", got, tt.retryAfter)
				}
				if r.status == http.StatusOK {
					rt = r.str("refresh_token")
				}
			}
			s := p.Stats()
			if s.Calls != 3 || s.CallsByLineage["svc-6"] != 3 {
				t.Errorf("calls = %d, by lineage %v", s.Calls, s.CallsByLineage)
			}
			if tt.status != http.StatusOK && (s.Unavailable != 3 || s.Rotations != 0) {
				t.Errorf("stats = %+v", s)
			}
		})
	}
}

func TestRotateOff(t *testing.T) {
	p, srv := start(t, Options{})
	p.SetRotate(false)
	_, rt := SeedTokens("svc-7")
	var accesses []string
	for range 2 {
		r := post(t, srv.URL+"/token", refreshForm(rt), nil)
		if r.status != http.StatusOK {
			t.Fatalf("status %d, body %v", r.status, r.body)
		}
		if _, present := r.body["refresh_token"]; present {
			t.Error("refresh_token present with rotation off")
		}
		accesses = append(accesses, r.str("access_token"))
	}
	if accesses[0] == accesses[1] || accesses[0] == "" {
		t.Error("access token not renewed")
	}
	if err := p.Verify("svc-7", rt); err != nil {
		t.Error(err)
	}
	p.SetRotate(true)
	rt1 := mustRotate(t, srv, rt)
	if g, _ := Generation(rt1); g != 1 {
		t.Errorf("generation after rotation resumed = %d", g)
	}
	if s := p.Stats(); s.Rotations != 1 || s.Reuses != 0 {
		t.Errorf("stats = %+v", s)
	}
}

func TestFailAfterRotate(t *testing.T) {
	tests := []struct {
		name      string
		grace     time.Duration
		retry     int
		wantGrace int
		wantReuse int
	}{
		{"strict provider loses the grant", 0, 400, 0, 1},
		{"grace period recovers", time.Minute, 200, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := start(t, Options{GracePeriod: tt.grace})
			p.SetFailAfterRotate(1)
			_, rt := SeedTokens("svc-8")
			r := post(t, srv.URL+"/token", refreshForm(rt), nil)
			if r.status != http.StatusServiceUnavailable {
				t.Fatalf("status %d", r.status)
			}
			latest, gen, _ := p.Latest("svc-8")
			if gen != 1 {
				t.Fatalf("rotation not committed: gen %d", gen)
			}
			r = post(t, srv.URL+"/token", refreshForm(rt), nil)
			if r.status != tt.retry {
				t.Fatalf("retry status %d, body %v", r.status, r.body)
			}
			if r.status == http.StatusOK && r.str("refresh_token") != latest {
				t.Error("grace answer is not the committed token")
			}
			s := p.Stats()
			if s.LostResponses != 1 || s.Rotations != 1 || s.GraceHits != tt.wantGrace || s.Reuses != tt.wantReuse {
				t.Errorf("stats = %+v", s)
			}
		})
	}
}

func TestVerify(t *testing.T) {
	p, srv := start(t, Options{})
	_, rt0 := SeedTokens("svc-9")
	rt1 := mustRotate(t, srv, rt0)
	rt2 := mustRotate(t, srv, rt1)
	_, otherSeed := SeedTokens("svc-9")
	_, untouched := SeedTokens("svc-10")
	_, foreign := SeedTokens("svc-11")
	at, _ := SeedTokens("svc-9")

	tests := []struct {
		name    string
		lineage string
		stored  string
		wantErr string // substring; "" means nil
	}{
		{"latest", "svc-9", rt2, ""},
		{"stale by one", "svc-9", rt1, "generation 1, latest is generation 2: stale"},
		{"stale seed", "svc-9", rt0, "generation 0, latest is generation 2: stale"},
		{"never issued", "svc-9", otherSeed, "never issued"},
		{"untouched seed", "svc-10", untouched, ""},
		{"untouched lineage at gen 3", "svc-10", "rt.svc-10.3." + strings.Repeat("a", 22), "never presented"},
		{"wrong lineage", "svc-9", foreign, "belongs to lineage svc-11"},
		{"malformed", "svc-9", "garbage", "malformed"},
		{"access token", "svc-9", at, "malformed"},
		{"empty", "svc-9", "", "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := p.Verify(tt.lineage, tt.stored)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("want error")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q lacks %q", err, tt.wantErr)
			}
			var verr *VerifyError
			if !errors.As(err, &verr) || verr.Lineage != tt.lineage {
				t.Errorf("not a *VerifyError for %s: %v", tt.lineage, err)
			}
			for _, tok := range []string{rt0, rt1, rt2, otherSeed, untouched, foreign, at} {
				if strings.Contains(err.Error(), tok) {
					t.Error("error message contains a token value")
				}
			}
		})
	}
}

func TestConcurrentSameToken(t *testing.T) {
	p, srv := start(t, Options{Latency: 5 * time.Millisecond})
	_, rt := SeedTokens("svc-12")
	const n = 20
	statuses := make([]int, n)
	tokens := make([]string, n)
	var wg sync.WaitGroup
	begin := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-begin
			req, err := http.NewRequest(http.MethodPost, srv.URL+"/token", strings.NewReader(refreshForm(rt).Encode()))
			if err != nil {
				t.Error(err)
				return
			}
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			var body map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&body)
			statuses[i] = resp.StatusCode
			tokens[i], _ = body["refresh_token"].(string)
		})
	}
	close(begin)
	wg.Wait()

	ok, rejected := 0, 0
	var winner string
	for i, s := range statuses {
		switch s {
		case http.StatusOK:
			ok++
			winner = tokens[i]
		case http.StatusBadRequest:
			rejected++
		}
	}
	if ok != 1 || rejected != n-1 {
		t.Fatalf("ok=%d rejected=%d, statuses %v", ok, rejected, statuses)
	}
	if err := p.Verify("svc-12", winner); err != nil {
		t.Error(err)
	}
	s := p.Stats()
	if s.Calls != n || s.Rotations != 1 || s.Reuses != n-1 || s.CallsByLineage["svc-12"] != n {
		t.Errorf("stats = %+v", s)
	}
}

// TestConcurrentLineages drives many lineages and fault settings at once so the
// race detector sees every shared field.
func TestConcurrentLineages(t *testing.T) {
	p, srv := start(t, Options{})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			lineage := "svc-c" + string(rune('a'+i))
			_, rt := SeedTokens(lineage)
			for range 10 {
				r := post(t, srv.URL+"/token", refreshForm(rt), nil)
				if r.status == http.StatusOK {
					rt = r.str("refresh_token")
				}
			}
			if err := p.Verify(lineage, rt); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			p.SetFailRate(0.3)
			p.SetLatency(time.Millisecond)
			p.SetFailRate(0)
			_ = p.Stats()
			_ = p.Lineages()
		}
	})
	wg.Wait()
	if s := p.Stats(); s.Reuses != 0 || s.Unrecognized != 0 {
		t.Errorf("stats = %+v", s)
	}
}

func TestLatency(t *testing.T) {
	testtier.Slow(t, "real time (it measures latency)")
	p, srv := start(t, Options{})
	p.SetLatency(300 * time.Millisecond)
	_, rt := SeedTokens("svc-13")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/token", strings.NewReader(refreshForm(rt).Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("request outlived its context")
	}

	p.SetLatency(50 * time.Millisecond)
	begin := time.Now()
	r := post(t, srv.URL+"/token", refreshForm(rt), nil)
	if r.status != http.StatusOK {
		t.Fatalf("status %d, body %v", r.status, r.body)
	}
	if d := time.Since(begin); d < 50*time.Millisecond {
		t.Errorf("answered in %v, before the latency", d)
	}
	// Once the cancelled request's latency has passed, it must still not have
	// rotated: had it carried on, it would now show as a reuse.
	time.Sleep(300 * time.Millisecond)
	if s := p.Stats(); s.Calls != 2 || s.Rotations != 1 || s.Reuses != 0 {
		t.Errorf("stats = %+v", s)
	}
}

func TestOracleEndpoints(t *testing.T) {
	p, srv := start(t, Options{})
	_, rt := SeedTokens("svc-14")
	rt1 := mustRotate(t, srv, rt)

	get := func(path string) reply {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		return do(t, req)
	}
	r := get("/latest?lineage=svc-14")
	if r.status != http.StatusOK || r.str("refresh_token") != rt1 || r.body["generation"] != float64(1) || r.str("lineage") != "svc-14" {
		t.Errorf("/latest = %d %v", r.status, r.body)
	}
	if r := get("/latest?lineage=nope"); r.status != http.StatusNotFound {
		t.Errorf("/latest unknown = %d", r.status)
	}
	r = get("/stats")
	var s Stats
	raw, _ := json.Marshal(r.body)
	if err := json.Unmarshal(raw, &s); err != nil || r.status != http.StatusOK {
		t.Fatalf("/stats: %d %v", r.status, err)
	}
	if s.Rotations != 1 || s.CallsByLineage["svc-14"] != 1 {
		t.Errorf("/stats = %+v", s)
	}
	if r := get("/healthz"); r.status != http.StatusOK {
		t.Errorf("/healthz = %d", r.status)
	}
	if r := get("/elsewhere"); r.status != http.StatusNotFound {
		t.Errorf("/elsewhere = %d", r.status)
	}
	if got := p.Stats().Calls; got != 1 {
		t.Errorf("oracle endpoints counted as calls: %d", got)
	}
}

func TestStart(t *testing.T) {
	p := New(Options{})
	base, stop, err := p.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stop(context.Background()) }()
	if !strings.HasPrefix(base, "http://127.0.0.1:") {
		t.Errorf("url = %q", base)
	}
	_, rt := SeedTokens("svc-15")
	r := post(t, base+"/token", refreshForm(rt), nil)
	if r.status != http.StatusOK {
		t.Fatalf("status %d", r.status)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := stop(ctx); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.Get(base + "/healthz"); err == nil {
		resp.Body.Close()
		t.Error("server still answering after stop")
	}
}

// TestLogsCarryNoTokens guards invariant 3 of the design: tokens never reach logs.
func TestLogsCarryNoTokens(t *testing.T) {
	var buf bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(&lockedWriter{w: &buf, mu: &mu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, srv := start(t, Options{Logger: logger, ClientID: "c", ClientSecret: "s"})
	auth := func(r *http.Request) { r.SetBasicAuth("c", "s") }

	_, rt0 := SeedTokens("svc-16")
	seen := []string{rt0}
	r := post(t, srv.URL+"/token", refreshForm(rt0), auth)
	seen = append(seen, r.str("refresh_token"), r.str("access_token"))
	post(t, srv.URL+"/token", refreshForm(rt0), auth)      // reuse
	post(t, srv.URL+"/token", refreshForm(rt0+"x!"), auth) // malformed
	post(t, srv.URL+"/token", refreshForm(rt0), nil)       // no client auth
	p.SetOutage(true)
	post(t, srv.URL+"/token", refreshForm(seen[1]), auth)

	mu.Lock()
	out := buf.String()
	mu.Unlock()
	if !strings.Contains(out, "svc-16") {
		t.Errorf("logs do not name the lineage:\n%s", out)
	}
	for _, tok := range seen {
		random := tok[strings.LastIndex(tok, ".")+1:]
		if strings.Contains(out, random) {
			t.Errorf("logs contain a token:\n%s", out)
		}
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}
