package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/console"
	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/internal/pgtest"
	"github.com/refresher/refresher/limit"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// rig is a fresh database and fleet, refreshed once, with two dead letters (one a
// real request whose provider failed, one garbage), and a console over them.
type rig struct {
	env     *fleettest.Env
	ids     []int64 // github credentials
	console *console.Console
	srv     *httptest.Server
	logs    *fleettest.SyncBuffer
	// deadID is the credential of the replayable dead letter.
	deadID int64
}

const deadReason = "retried: provider answered 503: temporarily_unavailable (last delivery)"

func newRig(t *testing.T, opts console.Options) *rig {
	t.Helper()
	env := fleettest.New(t, fleettest.Options{})
	ctx := context.Background()
	r := &rig{env: env, ids: env.Seed("github", 6), logs: &fleettest.SyncBuffer{}}
	env.Seed("google", 3)
	env.StartConsumer(env.Config())
	p := env.Publisher()
	for _, s := range []string{"github", "google"} {
		if _, err := p.PublishScan(ctx, env.DB, publisher.Scan{Service: s}); err != nil {
			t.Fatal(err)
		}
	}
	env.WaitIdle(30 * time.Second)
	// Dead letters as the consumer writes them: a request whose provider kept failing,
	// and a garbage subject.
	r.deadID = r.ids[2]
	nc := env.Conn()
	requested := time.Now().UTC()
	for _, m := range []*nats.Msg{
		{Subject: stream.DLQPrefix + fmt.Sprintf("refresh.github.%d", r.deadID), Header: nats.Header{
			stream.HeaderOriginalSubject: {fmt.Sprintf("refresh.github.%d", r.deadID)},
			stream.HeaderReason:          {deadReason},
			stream.HeaderDeliveries:      {"5"},
			model.HeaderRequestedAt:      {model.FormatRequestedAt(requested)},
		}},
		{Subject: stream.DLQPrefix + "refresh.bogus", Header: nats.Header{
			stream.HeaderOriginalSubject: {"refresh.bogus"},
			stream.HeaderReason:          {`malformed: bad subject "refresh.bogus": want refresh.<service>.<id>`},
		}, Data: []byte("x")},
	} {
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	fleettest.Eventually(t, 10*time.Second, "two dead letters", func() bool { return len(env.DeadLetters()) == 2 })
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(r.logs, nil))
	}
	opts.Services = env.Services
	c, err := console.New(env.DB, env.Conn(), opts)
	if err != nil {
		t.Fatal(err)
	}
	r.console = c
	r.srv = httptest.NewServer(c)
	t.Cleanup(r.srv.Close)
	return r
}

// tokens are every token value in the table: no page may contain one.
func (r *rig) tokens(t *testing.T) []string {
	t.Helper()
	var creds []model.Credential
	if err := r.env.DB.NewSelect().Model(&creds).Column("access_token", "refresh_token").Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range creds {
		out = append(out, c.AccessToken, c.RefreshToken)
	}
	if len(out) == 0 {
		t.Fatal("no tokens to look for")
	}
	return out
}

func (r *rig) checkNoToken(t *testing.T, where, body string) {
	t.Helper()
	for _, tok := range r.tokens(t) {
		if tok != "" && strings.Contains(body, tok) {
			t.Fatalf("%s contains a token", where)
		}
	}
}

func (r *rig) version(t *testing.T, id int64) int64 {
	t.Helper()
	return r.env.Credential(id).Version
}

func client(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func get(t *testing.T, c *http.Client, u string, hdr ...string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func post(t *testing.T, c *http.Client, u string, form url.Values, hdr ...string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([0-9a-f]{64})"`)

func csrfOf(t *testing.T, body string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatal("no CSRF token in the page")
	}
	return m[1]
}

// TestConsoleHTTP drives the console as a browser without JavaScript would: the
// overview and its JSON, the dead letters filtered by reason, a replay after its
// confirmation, a purge of everything matching a filter, a credential's page and its
// "refresh now", forged POSTs refused, and no token in any page.
// serviceDurable creates a service's durable as a consume process serving it would,
// so that requests published to it wait there as its backlog.
func serviceDurable(t *testing.T, js jetstream.JetStream, service string) {
	t.Helper()
	if _, err := js.CreateConsumer(context.Background(), stream.Stream, jetstream.ConsumerConfig{
		Durable: consumer.ServiceDurable(service), FilterSubject: stream.ServiceRequests(service), AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
}

func TestConsoleHTTP(t *testing.T) {
	r := newRig(t, console.Options{})
	c := client(t)
	base := r.srv.URL

	code, body, hdr := get(t, c, base+"/")
	if code != 200 || !strings.Contains(body, "github") || !strings.Contains(body, `id="live"`) {
		t.Fatalf("overview: %d\n%s", code, body)
	}
	if csp := hdr.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("CSP %q", csp)
	}
	r.checkNoToken(t, "overview", body)

	code, body, _ = get(t, c, base+"/api/overview")
	var ov console.Overview
	if err := json.Unmarshal([]byte(body), &ov); code != 200 || err != nil {
		t.Fatalf("overview JSON: %d %v\n%s", code, err, body)
	}
	if len(ov.Services) != 2 || ov.Services[0].Service != "github" || ov.Services[0].Credentials != 6 ||
		ov.Services[0].RefreshedHour != 6 || ov.Services[0].DeadLetters != 1 || ov.DeadLetters != 2 || len(ov.Errors) != 0 || len(ov.Owners) != 1 || !ov.Owners[0].Alive {
		t.Fatalf("overview: %+v", ov)
	}
	if ov.Services[1].Service != "google" || ov.Services[1].Credentials != 3 || ov.Services[1].Backlog != 0 {
		t.Fatalf("google: %+v", ov.Services[1])
	}

	// Skips leave nothing in PostgreSQL: the chart takes them from the consumers'
	// per-minute counts (two processes' counts for this minute are summed).
	kv, err := r.env.JS().CreateOrUpdateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: consumer.SkipsBucket, TTL: consumer.SkipsTTL})
	if err != nil {
		t.Fatal(err)
	}
	minute := time.Now().Unix() / 60
	for owner, n := range map[string]string{"host_1_a": "4", "host_2_b": "3"} {
		if _, err := kv.Put(context.Background(), fmt.Sprintf("%d.github.%s", minute, owner), []byte(n)); err != nil {
			t.Fatal(err)
		}
	}
	code, body, _ = get(t, c, base+"/api/overview")
	if err := json.Unmarshal([]byte(body), &ov); code != 200 || err != nil {
		t.Fatalf("overview JSON: %d %v\n%s", code, err, body)
	}
	if s := ov.Services[0]; s.SkippedHour != 7 || s.Skipped[console.ChartMinutes-1] != 7 {
		t.Fatalf("github skips: hour %d, last minute %d; want 7", s.SkippedHour, s.Skipped[console.ChartMinutes-1])
	}

	// The provider's state, as the fleet shares it: google's circuit open.
	lkv, err := limit.OpenBucket(context.Background(), r.env.JS())
	if err != nil {
		t.Fatal(err)
	}
	open, err := json.Marshal(limit.State{Circuit: limit.Open, Failures: 5, OpenedAt: time.Now().UnixNano(),
		NextProbe: time.Now().Add(time.Minute).UnixNano()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lkv.Put(context.Background(), "google", open); err != nil {
		t.Fatal(err)
	}
	code, body, _ = get(t, c, base+"/")
	if code != 200 || !strings.Contains(body, `class="warn">open, probe in `) {
		t.Fatalf("overview does not show google's open circuit: %d\n%s", code, body)
	}
	code, body, _ = get(t, c, base+"/api/overview")
	if err := json.Unmarshal([]byte(body), &ov); code != 200 || err != nil {
		t.Fatalf("overview JSON: %d %v\n%s", code, err, body)
	}
	if l := ov.Services[1].Limits; l == nil || l.Circuit != "open" || l.Failures != 5 || l.NextProbe == nil {
		t.Fatalf("google's limits in the overview: %+v", l)
	}

	// A backlog: okta's durable holds three requests no process serves yet.
	serviceDurable(t, r.env.JS(), "okta")
	firstOkta := time.Now()
	for id := 1; id <= 3; id++ {
		if _, err := r.env.JS().Publish(context.Background(), fmt.Sprintf("refresh.okta.%d", id), nil); err != nil {
			t.Fatal(err)
		}
	}
	code, body, _ = get(t, c, base+"/api/overview")
	if err := json.Unmarshal([]byte(body), &ov); code != 200 || err != nil {
		t.Fatalf("overview JSON: %d %v\n%s", code, err, body)
	}
	if len(ov.Services) != 3 || ov.Services[2].Service != "okta" || ov.Services[2].Backlog != 3 ||
		ov.Services[2].OldestPending == nil || ov.Services[2].OldestPending.Before(firstOkta.Add(-time.Second)) {
		t.Fatalf("okta's backlog in the overview: %+v", ov.Services)
	}

	// Dead letters: filter by the reason group, then replay the one found.
	code, body, _ = get(t, c, base+"/deadletters?reason="+url.QueryEscape(deadReason))
	if code != 200 || !strings.Contains(body, `<b id="matching">1</b>`) || !strings.Contains(body, fmt.Sprintf("refresh.github.%d", r.deadID)) {
		t.Fatalf("dead letters by reason: %d\n%s", code, body)
	}
	r.checkNoToken(t, "dead letters", body)
	csrf := csrfOf(t, body)
	seq := regexp.MustCompile(`name="seq" value="(\d+)"`).FindStringSubmatch(body)[1]

	// Forged: no token, a wrong one, another site's origin.
	form := url.Values{"do": {"replay selected"}, "seq": {seq}, "confirm": {"1"}}
	if code, _, _ := post(t, http.DefaultClient, base+"/deadletters", form); code != http.StatusForbidden {
		t.Fatalf("POST without a CSRF cookie or field: %d", code)
	}
	bad := url.Values{"do": {"replay selected"}, "seq": {seq}, "confirm": {"1"}, "csrf": {strings.Repeat("0", 64)}}
	if code, _, _ := post(t, c, base+"/deadletters", bad); code != http.StatusForbidden {
		t.Fatalf("POST with a wrong CSRF token: %d", code)
	}
	good := url.Values{"do": {"replay selected"}, "seq": {seq}, "csrf": {csrf}}
	if code, _, _ := post(t, c, base+"/deadletters", good, "Origin", "http://evil.example"); code != http.StatusForbidden {
		t.Fatalf("POST from another origin: %d", code)
	}

	before := r.version(t, r.deadID)
	code, body, _ = post(t, c, base+"/deadletters", good)
	if code != 200 || !strings.Contains(body, "Confirm: replay 1 dead letter(s)") || !strings.Contains(body, `name="confirm" value="1"`) {
		t.Fatalf("confirmation: %d\n%s", code, body)
	}
	if r.version(t, r.deadID) != before {
		t.Fatal("replayed before the confirmation")
	}
	good.Set("confirm", "1")
	code, _, hdr = post(t, c, base+"/deadletters", good)
	if code != http.StatusSeeOther || !strings.Contains(hdr.Get("Location"), "1+republished") {
		t.Fatalf("replay: %d %s", code, hdr.Get("Location"))
	}
	fleettest.Eventually(t, 20*time.Second, "the dead letter's credential refreshed", func() bool { return r.version(t, r.deadID) > before })
	if !strings.Contains(r.logs.String(), `action="dead letters replay"`) || !strings.Contains(r.logs.String(), "who=anonymous@127.0.0.1") {
		t.Errorf("action log: %s", r.logs.String())
	}

	// Purge every dead letter matching "malformed": the confirmation says 1.
	pf := url.Values{"do": {"purge matching"}, "contains": {"malformed"}, "csrf": {csrf}}
	code, body, _ = post(t, c, base+"/deadletters", pf)
	if code != 200 || !strings.Contains(body, "Confirm: purge 1 dead letter(s)") {
		t.Fatalf("purge confirmation: %d\n%s", code, body)
	}
	pf.Set("confirm", "2") // a stale count: asked again
	if code, body, _ = post(t, c, base+"/deadletters", pf); code != 200 || !strings.Contains(body, "The number changed") {
		t.Fatalf("stale confirmation: %d\n%s", code, body)
	}
	pf.Set("confirm", "1")
	if code, _, hdr = post(t, c, base+"/deadletters", pf); code != http.StatusSeeOther || !strings.Contains(hdr.Get("Location"), "Purged+1") {
		t.Fatalf("purge: %d %s", code, hdr.Get("Location"))
	}
	var left []stream.DeadLetter
	if err := stream.ListDeadLetters(context.Background(), r.env.JS(), 0, func(dl stream.DeadLetter) error {
		left = append(left, dl)
		return nil
	}); err != nil || len(left) != 1 || left[0].Reason != deadReason {
		t.Fatalf("left after the purge: %+v, %v", left, err)
	}

	// Credentials: search by account, the page, refresh now.
	cred := r.env.Credential(r.ids[4])
	code, body, _ = get(t, c, base+"/credentials?q="+strconv.FormatInt(cred.AccountID, 10))
	if code != 200 && code != http.StatusSeeOther {
		t.Fatalf("search: %d", code)
	}
	r.checkNoToken(t, "credential search", body)
	code, body, _ = get(t, c, base+fmt.Sprintf("/credentials/%d", cred.ID))
	if code != 200 || !strings.Contains(body, `id="refresh-now"`) || !strings.Contains(body, "acknowledged") {
		t.Fatalf("credential page: %d\n%s", code, body)
	}
	r.checkNoToken(t, "credential page", body)
	if code, _, _ := post(t, http.DefaultClient, base+fmt.Sprintf("/credentials/%d/refresh", cred.ID), url.Values{}); code != http.StatusForbidden {
		t.Fatalf("forged refresh now: %d", code)
	}
	code, _, hdr = post(t, c, base+fmt.Sprintf("/credentials/%d/refresh", cred.ID), url.Values{"csrf": {csrfOf(t, body)}})
	if code != http.StatusSeeOther {
		t.Fatalf("refresh now: %d", code)
	}
	fleettest.Eventually(t, 20*time.Second, "refresh now done", func() bool { return r.version(t, cred.ID) > cred.Version })
	if !strings.Contains(r.logs.String(), `action="refresh now"`) {
		t.Errorf("no action log line for refresh now: %s", r.logs.String())
	}
	code, body, _ = get(t, c, base+hdr.Get("Location"))
	if code != 200 || !strings.Contains(body, "Requested a refresh") {
		t.Fatalf("after refresh now: %d\n%s", code, body)
	}
	r.checkNoToken(t, "credential page after refresh", body)
}

// TestConsoleAuth: with a token, nothing is served without it (bearer or the
// sign-in form); read-only refuses every action.
func TestConsoleAuth(t *testing.T) {
	r := newRig(t, console.Options{Token: "console-s3cret", ReadOnly: true})
	base := r.srv.URL
	c := client(t)
	if code, _, hdr := get(t, c, base+"/deadletters"); code != http.StatusSeeOther || !strings.HasPrefix(hdr.Get("Location"), "/login") {
		t.Fatalf("unauthenticated page: %d %s", code, hdr.Get("Location"))
	}
	if code, _, _ := get(t, c, base+"/api/overview"); code != http.StatusUnauthorized {
		t.Fatalf("unauthenticated API: %d", code)
	}
	if code, _, _ := get(t, c, base+"/api/overview", "Authorization", "Bearer wrong"); code != http.StatusUnauthorized {
		t.Fatalf("wrong bearer: %d", code)
	}
	if code, _, _ := get(t, c, base+"/api/overview", "Authorization", "Bearer console-s3cret"); code != 200 {
		t.Fatalf("bearer: %d", code)
	}
	if code, _, _ := post(t, c, base+"/login", url.Values{"token": {"nope"}}); code != http.StatusUnauthorized {
		t.Fatalf("wrong sign-in: %d", code)
	}
	if code, _, _ := post(t, c, base+"/login", url.Values{"token": {"console-s3cret"}, "next": {"//evil.example/"}}); code != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", code)
	}
	code, body, _ := get(t, c, base+fmt.Sprintf("/credentials/%d", r.ids[0]))
	if code != 200 || strings.Contains(body, `id="refresh-now"`) || strings.Contains(body, "console-s3cret") {
		t.Fatalf("signed-in credential page (read-only, no button, no token): %d\n%s", code, body)
	}
	for _, ck := range c.Jar.Cookies(mustURL(t, base)) {
		if strings.Contains(ck.Value, "console-s3cret") {
			t.Fatalf("cookie %s holds the token", ck.Name)
		}
	}
	if code, _, _ := post(t, c, base+fmt.Sprintf("/credentials/%d/refresh", r.ids[0]), url.Values{"csrf": {csrfOf(t, body)}}); code != http.StatusForbidden {
		t.Fatalf("read-only refresh now: %d", code)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8080": true, "[::1]:8080": true, "localhost:8080": true, "127.1.2.3:1": true,
		"0.0.0.0:8080": false, ":8080": false, "10.0.0.1:80": false, "[::]:80": false, "example.com:80": false,
	} {
		if got := console.IsLoopback(addr); got != want {
			t.Errorf("IsLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

// requestsStored is the number of messages REFRESH ever stored.
func (r *rig) requestsStored(t *testing.T) uint64 {
	t.Helper()
	s, err := r.env.JS().Stream(context.Background(), stream.Stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}
