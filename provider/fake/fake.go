// Package fake is an in-memory OAuth2 token endpoint (RFC 6749 section 6) that
// rotates refresh tokens and rejects reuse, like the strictest real providers.
//
// It is the project's test oracle: it knows which refresh token is the latest for
// every credential, so a test can compare the database against it (Verify) and can
// count how often a stale token reached the provider (Stats.Reuses). A lost update
// in the system under test shows up here as a reuse or as a Verify failure.
//
// Tokens carry their lineage (the credential) and generation in plain text, so a
// Provider adopts tokens it never issued, such as those written by a seed command
// before it started, and errors can name a generation instead of a secret.
package fake

import (
	"context"
	"encoding/json"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options configures a Provider. The zero value is a provider with no client
// authentication, no latency, no grace period and one-hour access tokens.
type Options struct {
	// ClientID and ClientSecret, when ClientID is set, must be presented by every
	// token request, in the Authorization header or in the form body, so that tests
	// catch a client that forgets its credentials or sends them the wrong way.
	ClientID, ClientSecret string
	// Latency is added to every token request before it is decided; SetLatency
	// changes it later. A client that hangs up meanwhile leaves nothing rotated.
	Latency time.Duration
	// ResponseLatency is added after the decision, before the answer is written: the
	// answer in transit. A client that dies meanwhile (SIGKILL) loses a rotated
	// token, as with a real provider; only the grace period can recover it.
	ResponseLatency time.Duration
	// GracePeriod lets the immediately previous refresh token be presented again,
	// for this long after the rotation that replaced it, and get the current pair
	// back. Some providers do this to survive lost responses; 0 disables it, which
	// is the strict setting that exposes lost updates.
	GracePeriod time.Duration
	// AccessTTL is reported as expires_in; 0 means one hour.
	AccessTTL time.Duration
	// Logger receives one line per token request; nil discards them. Lines carry
	// lineages and generations, never token values.
	Logger *slog.Logger
}

// Stats counts what the provider has seen. Tests assert on it; Reuses and
// Unrecognized should stay zero in a system without lost updates.
type Stats struct {
	// Calls is every request to a token endpoint, including those answered with
	// an error or a fault.
	Calls int `json:"calls"`
	// Rotations counts refresh tokens replaced, including rotations whose
	// response was then dropped by SetFailAfterRotate.
	Rotations int `json:"rotations"`
	// Reuses counts replaced refresh tokens presented outside the grace period:
	// the symptom of a client that stored a stale token.
	Reuses int `json:"reuses"`
	// GraceHits counts replaced tokens accepted thanks to the grace period.
	GraceHits int `json:"grace_hits"`
	// Unavailable counts 503 and 429 answers, injected or lost-after-rotate.
	Unavailable int `json:"unavailable"`
	// BadRequests counts 400 and 405 answers other than reuses: malformed or
	// unrecognized tokens, missing parameters, unsupported grant types.
	BadRequests int `json:"bad_requests"`
	// InvalidClient counts 401 answers.
	InvalidClient int `json:"invalid_client"`
	// HeaderAuth and ParamsAuth count requests that presented client credentials
	// by HTTP Basic or by form parameters, whether or not they were right.
	HeaderAuth int `json:"header_auth"`
	ParamsAuth int `json:"params_auth"`
	// Unrecognized counts well-formed refresh tokens of a known lineage that this
	// provider never issued nor adopted, e.g. a lineage seeded twice. They are
	// rejected like reuses but counted apart, since the provider cannot tell
	// whether they are stale.
	Unrecognized int `json:"unrecognized"`
	// Adoptions counts lineages first seen through a token this provider did not
	// issue, normally seeded ones.
	Adoptions int `json:"adoptions"`
	// LostResponses counts rotations answered with 503 by SetFailAfterRotate.
	LostResponses int `json:"lost_responses"`
	// CallsByLineage counts token requests per lineage named by a well-formed
	// refresh token, faults included, so a test can check that redelivered
	// messages did not cost extra provider calls.
	CallsByLineage map[string]int `json:"calls_by_lineage"`
}

// Provider is the fake token endpoint. It is safe for concurrent use; all Set
// methods may be called while it is serving.
type Provider struct {
	clientID, clientSecret string
	grace                  time.Duration
	accessTTL              time.Duration
	log                    *slog.Logger
	// now is replaceable so that tests of the grace period need not sleep.
	now func() time.Time

	latency         atomic.Int64 // time.Duration
	respLatency     time.Duration
	outage          atomic.Bool
	failRate        atomic.Uint64 // math.Float64bits
	rateLimited     atomic.Bool
	retryAfter      atomic.Int64 // time.Duration
	noRotate        atomic.Bool  // inverted so the zero value rotates
	failAfterRotate atomic.Int64

	mu       sync.Mutex
	lineages map[string]*lineageState
	stats    Stats
	calls    []Call
	// faults are per service: the first path segment of /<service>/token.
	faults map[string]*serviceFault
}

// Call is one token request as the provider saw it: when it arrived and when its
// answer was written, so tests can check rates and concurrency as a provider would.
type Call struct {
	// Service is the first segment of the request's path (/<service>/token), "" for
	// /token.
	Service    string
	Start, End time.Time
	Status     int
}

// serviceFault is a fault injected for one service's token path.
type serviceFault struct {
	outage        bool
	rateLimitNext int           // answer this many more requests with 429
	retryAfter    time.Duration // their Retry-After
}

// lineageState is everything the provider remembers about one credential.
type lineageState struct {
	refresh string
	gen     int
	access  string
	// prev and rotatedAt describe the last rotation, which the grace period
	// is measured from.
	prev      string
	rotatedAt time.Time
	// issued maps every refresh token this lineage has had to its generation,
	// which is how a replaced token is told apart from one never seen.
	issued map[string]int
}

// New returns a Provider with no lineages; they appear as tokens are presented.
func New(opts Options) *Provider {
	p := &Provider{
		clientID:     opts.ClientID,
		clientSecret: opts.ClientSecret,
		grace:        opts.GracePeriod,
		respLatency:  opts.ResponseLatency,
		accessTTL:    opts.AccessTTL,
		log:          opts.Logger,
		now:          time.Now,
		lineages:     make(map[string]*lineageState),
	}
	if p.accessTTL <= 0 {
		p.accessTTL = time.Hour
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.latency.Store(int64(opts.Latency))
	p.stats.CallsByLineage = make(map[string]int)
	return p
}

// SetLatency changes the delay added to every token request, to exercise client
// timeouts and to widen race windows in concurrency tests.
func (p *Provider) SetLatency(d time.Duration) { p.latency.Store(int64(d)) }

// SetOutage makes every token request answer 503 while on, without rotating.
func (p *Provider) SetOutage(on bool) { p.outage.Store(on) }

// SetFailRate makes a random fraction f (0..1) of token requests answer 503
// before they are looked at.
func (p *Provider) SetFailRate(f float64) { p.failRate.Store(math.Float64bits(f)) }

// SetRateLimit makes every token request answer 429 with a Retry-After of
// retryAfter, rounded up to whole seconds, while on.
func (p *Provider) SetRateLimit(on bool, retryAfter time.Duration) {
	p.retryAfter.Store(int64(retryAfter))
	p.rateLimited.Store(on)
}

// SetRotate turns rotation off to mimic providers that keep refresh tokens: a
// refresh then returns only a new access token and the refresh token stays valid.
func (p *Provider) SetRotate(on bool) { p.noRotate.Store(!on) }

// SetFailAfterRotate makes the next n rotations commit and then answer 503, the
// case where the provider rotated but the client never learnt the new token.
func (p *Provider) SetFailAfterRotate(n int) { p.failAfterRotate.Store(int64(n)) }

// Latest returns the refresh token the provider currently accepts for lineage.
func (p *Provider) Latest(lineage string) (token string, gen int, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st, ok := p.lineages[lineage]
	if !ok {
		return "", 0, false
	}
	return st.refresh, st.gen, true
}

// Lineages returns the lineages presented so far, sorted, so a test can walk
// them all with Verify.
func (p *Provider) Lineages() []string {
	p.mu.Lock()
	names := make([]string, 0, len(p.lineages))
	for name := range p.lineages {
		names = append(names, name)
	}
	p.mu.Unlock()
	slices.Sort(names)
	return names
}

// Stats returns a snapshot; the map is a copy the caller may keep.
func (p *Provider) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.CallsByLineage = make(map[string]int, len(p.stats.CallsByLineage))
	for k, v := range p.stats.CallsByLineage {
		s.CallsByLineage[k] = v
	}
	return s
}

// ServeHTTP routes token requests (POST to any path ending in /token, so one fake
// can stand in for several providers) and the oracle endpoints /latest, /stats
// and /healthz.
func (p *Provider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	switch {
	case path == "/token" || strings.HasSuffix(path, "/token"):
		p.serveToken(w, r)
	case path == "/latest":
		p.serveLatest(w, r)
	case path == "/stats":
		if !allowGet(w, r) {
			return
		}
		writeJSON(w, http.StatusOK, p.Stats())
	case path == "/healthz":
		if !allowGet(w, r) {
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("ok\n"))
	default:
		http.NotFound(w, r)
	}
}

func allowGet(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	return false
}

type latestResponse struct {
	Lineage      string `json:"lineage"`
	RefreshToken string `json:"refresh_token"`
	Generation   int    `json:"generation"`
}

// serveLatest exposes the oracle over HTTP for processes that do not share memory
// with the fake, such as the demo. It returns a token value by design: it exists
// only in the fake.
func (p *Provider) serveLatest(w http.ResponseWriter, r *http.Request) {
	if !allowGet(w, r) {
		return
	}
	lineage := r.URL.Query().Get("lineage")
	token, gen, ok := p.Latest(lineage)
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "unknown lineage"})
		return
	}
	writeJSON(w, http.StatusOK, latestResponse{Lineage: lineage, RefreshToken: token, Generation: gen})
}

// tokenResponse is RFC 6749 section 5.1.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token,omitempty"`
}

// errorResponse is RFC 6749 section 5.2.
type errorResponse struct {
	Error       string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

// maxBody bounds what a token request may send; real ones are a few hundred bytes.
const maxBody = 64 << 10

func (p *Provider) serveToken(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.stats.Calls++
	p.mu.Unlock()
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	w = rec
	call := Call{Service: serviceOf(r.URL.Path), Start: p.now()}
	defer func() {
		call.End, call.Status = p.now(), rec.status
		p.mu.Lock()
		p.calls = append(p.calls, call)
		p.mu.Unlock()
	}()
	if p.serviceFault(w, call.Service) {
		return
	}

	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		p.fail(w, http.StatusMethodNotAllowed, "", "invalid_request", "token endpoint accepts POST only")
		return
	}
	// The body is read before the latency because net/http notices a client
	// hanging up (and cancels the context) only once the body has been consumed.
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := r.ParseForm(); err != nil {
		p.fail(w, http.StatusBadRequest, "", "invalid_request", "cannot parse form body")
		return
	}
	if d := time.Duration(p.latency.Load()); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			// The client is gone; nothing was decided, so nothing is counted
			// beyond the call.
			t.Stop()
			p.log.Debug("token request cancelled during latency")
			return
		}
	}
	form := r.PostForm
	// The lineage is attributed before faults so CallsByLineage counts every
	// call a credential cost, failed or not.
	presented := form.Get("refresh_token")
	pt, wellFormed := parseRefresh(presented)
	if wellFormed {
		p.mu.Lock()
		p.stats.CallsByLineage[pt.lineage]++
		p.mu.Unlock()
	}

	if p.injectFault(w, pt.lineage) {
		return
	}
	if !p.authenticate(w, r, form, pt.lineage) {
		return
	}

	for _, name := range []string{"grant_type", "refresh_token", "scope"} {
		if len(form[name]) > 1 {
			p.fail(w, http.StatusBadRequest, pt.lineage, "invalid_request", "parameter "+name+" repeated")
			return
		}
	}
	switch grant := form.Get("grant_type"); grant {
	case "refresh_token":
	case "":
		p.fail(w, http.StatusBadRequest, pt.lineage, "invalid_request", "missing grant_type")
		return
	default:
		p.fail(w, http.StatusBadRequest, pt.lineage, "unsupported_grant_type", "only refresh_token is supported")
		return
	}
	if presented == "" {
		p.fail(w, http.StatusBadRequest, "", "invalid_request", "missing refresh_token")
		return
	}
	if !wellFormed {
		p.fail(w, http.StatusBadRequest, "", "invalid_grant", "malformed refresh token")
		return
	}
	p.refresh(w, pt, presented)
}

// Calls returns every token request so far, in the order their answers were written.
func (p *Provider) Calls() []Call {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.calls)
}

// SetServiceOutage makes /<service>/token answer 503 (no Retry-After) while on,
// leaving the other services' paths alone.
func (p *Provider) SetServiceOutage(service string, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault(service).outage = on
}

// RateLimitNext answers the next n requests to /<service>/token with 429 and
// Retry-After (whole seconds, rounded up).
func (p *Provider) RateLimitNext(service string, n int, retryAfter time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.fault(service)
	f.rateLimitNext, f.retryAfter = n, retryAfter
}

// fault returns service's fault, created empty. p.mu is held.
func (p *Provider) fault(service string) *serviceFault {
	if p.faults == nil {
		p.faults = map[string]*serviceFault{}
	}
	f := p.faults[service]
	if f == nil {
		f = &serviceFault{}
		p.faults[service] = f
	}
	return f
}

// serviceFault answers with service's injected fault, if any, and reports whether it
// did.
func (p *Provider) serviceFault(w http.ResponseWriter, service string) bool {
	p.mu.Lock()
	f := p.faults[service]
	var outage, limited bool
	var retryAfter time.Duration
	if f != nil {
		outage = f.outage
		if !outage && f.rateLimitNext > 0 {
			f.rateLimitNext--
			limited, retryAfter = true, f.retryAfter
		}
	}
	if outage || limited {
		p.stats.Unavailable++
	}
	p.mu.Unlock()
	switch {
	case outage:
		writeJSON(w, http.StatusServiceUnavailable, errorResponse{Error: "temporarily_unavailable", Description: "outage of " + service})
	case limited:
		w.Header().Set("Retry-After", strconv.FormatInt(int64(math.Ceil(retryAfter.Seconds())), 10))
		writeJSON(w, http.StatusTooManyRequests, errorResponse{Error: "temporarily_unavailable", Description: "rate limited"})
	}
	return outage || limited
}

// serviceOf is the first segment of /<service>/token ("" for /token).
func serviceOf(path string) string {
	rest, ok := strings.CutSuffix(strings.TrimPrefix(path, "/"), "/token")
	if !ok || strings.Contains(rest, "/") {
		return ""
	}
	return rest
}

// statusRecorder remembers the status written.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// injectFault answers the request with a configured fault, if any, and reports
// whether it did.
func (p *Provider) injectFault(w http.ResponseWriter, lineage string) bool {
	switch {
	case p.outage.Load():
		p.unavailable(w, lineage, "outage")
		return true
	case p.rateLimited.Load():
		secs := int64(math.Ceil(time.Duration(p.retryAfter.Load()).Seconds()))
		w.Header().Set("Retry-After", strconv.FormatInt(max(secs, 0), 10))
		p.mu.Lock()
		p.stats.Unavailable++
		p.mu.Unlock()
		p.log.Info("token request rate limited", "lineage", lineage, "retry_after_s", secs)
		writeJSON(w, http.StatusTooManyRequests, errorResponse{Error: "temporarily_unavailable", Description: "rate limited"})
		return true
	}
	if f := math.Float64frombits(p.failRate.Load()); f > 0 && rand.Float64() < f {
		p.unavailable(w, lineage, "injected failure")
		return true
	}
	return false
}

func (p *Provider) unavailable(w http.ResponseWriter, lineage, why string) {
	p.mu.Lock()
	p.stats.Unavailable++
	p.mu.Unlock()
	p.log.Info("token request unavailable", "lineage", lineage, "reason", why)
	writeJSON(w, http.StatusServiceUnavailable, errorResponse{Error: "temporarily_unavailable", Description: why})
}

// authenticate checks client credentials (RFC 6749 section 2.3.1) and answers 401
// when they are wrong. It records the style used even when no credentials are
// configured, so tests can see how a client authenticates.
func (p *Provider) authenticate(w http.ResponseWriter, r *http.Request, form url.Values, lineage string) bool {
	user, pass, hasHeader := r.BasicAuth()
	_, hasParamSecret := form["client_secret"]
	hasParams := hasParamSecret || (!hasHeader && form.Get("client_id") != "")

	p.mu.Lock()
	if hasHeader {
		p.stats.HeaderAuth++
	}
	if hasParams {
		p.stats.ParamsAuth++
	}
	p.mu.Unlock()

	if p.clientID == "" {
		return true
	}
	var ok bool
	var why string
	switch {
	case hasHeader && hasParamSecret:
		// The RFC forbids more than one method per request; a client doing
		// both is misconfigured and should hear about it.
		why = "client credentials sent both in header and in body"
	case hasHeader:
		ok = p.clientMatches(user, pass, true)
		if id := form.Get("client_id"); ok && id != "" && id != p.clientID {
			ok = false
		}
		why = "bad client credentials in Authorization header"
	case hasParams:
		ok = p.clientMatches(form.Get("client_id"), form.Get("client_secret"), false)
		why = "bad client credentials in form body"
	default:
		why = "client authentication required"
	}
	if ok {
		return true
	}
	p.mu.Lock()
	p.stats.InvalidClient++
	p.mu.Unlock()
	p.log.Info("token request rejected", "lineage", lineage, "status", http.StatusUnauthorized, "error", "invalid_client", "reason", why)
	w.Header().Set("WWW-Authenticate", `Basic realm="fake-oauth2"`)
	writeJSON(w, http.StatusUnauthorized, errorResponse{Error: "invalid_client", Description: why})
	return false
}

// clientMatches compares presented credentials. Header credentials are meant to
// be form-urlencoded before base64 (RFC 6749 2.3.1), which golang.org/x/oauth2
// does and curl does not, so both spellings are accepted.
func (p *Provider) clientMatches(id, secret string, header bool) bool {
	if id == p.clientID && secret == p.clientSecret {
		return true
	}
	if !header {
		return false
	}
	uid, err1 := url.QueryUnescape(id)
	usecret, err2 := url.QueryUnescape(secret)
	return err1 == nil && err2 == nil && uid == p.clientID && usecret == p.clientSecret
}

// outcome is decided under the lock and written after it, so slow clients never
// hold up other lineages.
type outcome struct {
	status  int
	body    any
	event   string
	gen     int // generation presented
	newGen  int // generation current after the request
	lineage string
}

func (p *Provider) refresh(w http.ResponseWriter, pt parsedToken, presented string) {
	o := p.decide(pt, presented)
	level := slog.LevelInfo
	if o.status >= 400 {
		level = slog.LevelWarn
	}
	p.log.Log(context.Background(), level, "token request",
		"lineage", o.lineage, "event", o.event, "status", o.status,
		"presented_gen", o.gen, "current_gen", o.newGen)
	if p.respLatency > 0 {
		time.Sleep(p.respLatency) // decided: the answer is on its way whatever happens
	}
	writeJSON(w, o.status, o.body)
}

func (p *Provider) decide(pt parsedToken, presented string) outcome {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	o := outcome{lineage: pt.lineage, gen: pt.gen}

	st, known := p.lineages[pt.lineage]
	if !known {
		st = &lineageState{refresh: presented, gen: pt.gen, issued: map[string]int{presented: pt.gen}}
		p.lineages[pt.lineage] = st
		p.stats.Adoptions++
	}
	switch {
	case presented == st.refresh:
		// Fall through to the refresh below.
	case p.grace > 0 && presented == st.prev && now.Sub(st.rotatedAt) <= p.grace:
		p.stats.GraceHits++
		o.event, o.newGen, o.status = "grace", st.gen, http.StatusOK
		o.body = tokenResponse{AccessToken: st.access, TokenType: "Bearer", ExpiresIn: p.expiresIn(), RefreshToken: st.refresh}
		return o
	default:
		o.newGen, o.status = st.gen, http.StatusBadRequest
		if _, replaced := st.issued[presented]; replaced {
			p.stats.Reuses++
			o.event = "reuse"
			o.body = errorResponse{Error: "invalid_grant", Description: "refresh token was already used and has been rotated"}
		} else {
			p.stats.Unrecognized++
			p.stats.BadRequests++
			o.event = "unrecognized"
			o.body = errorResponse{Error: "invalid_grant", Description: "refresh token was not issued by this provider"}
		}
		return o
	}

	if p.noRotate.Load() {
		st.access = makeToken(kindAccess, pt.lineage, st.gen)
		o.event, o.newGen, o.status = "refresh", st.gen, http.StatusOK
		o.body = tokenResponse{AccessToken: st.access, TokenType: "Bearer", ExpiresIn: p.expiresIn()}
		return o
	}

	st.prev, st.rotatedAt = st.refresh, now
	st.gen++
	st.refresh = makeToken(kindRefresh, pt.lineage, st.gen)
	st.access = makeToken(kindAccess, pt.lineage, st.gen)
	st.issued[st.refresh] = st.gen
	p.stats.Rotations++
	o.newGen = st.gen

	if p.takeFailAfterRotate() {
		p.stats.LostResponses++
		p.stats.Unavailable++
		o.event, o.status = "rotate_lost", http.StatusServiceUnavailable
		o.body = errorResponse{Error: "temporarily_unavailable", Description: "injected failure after rotation"}
		return o
	}
	o.event, o.status = "rotate", http.StatusOK
	o.body = tokenResponse{AccessToken: st.access, TokenType: "Bearer", ExpiresIn: p.expiresIn(), RefreshToken: st.refresh}
	return o
}

// takeFailAfterRotate consumes one injected post-rotation failure, if any are
// left; the CAS keeps a concurrent SetFailAfterRotate from driving it negative.
func (p *Provider) takeFailAfterRotate() bool {
	for {
		n := p.failAfterRotate.Load()
		if n <= 0 {
			return false
		}
		if p.failAfterRotate.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

func (p *Provider) expiresIn() int64 { return int64(p.accessTTL / time.Second) }

// fail answers a request rejected before any lineage state was looked at.
func (p *Provider) fail(w http.ResponseWriter, status int, lineage, code, desc string) {
	p.mu.Lock()
	p.stats.BadRequests++
	p.mu.Unlock()
	p.log.Info("token request rejected", "lineage", lineage, "status", status, "error", code, "reason", desc)
	writeJSON(w, status, errorResponse{Error: code, Description: desc})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	// RFC 6749 5.1: responses carrying tokens must not be cached.
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
