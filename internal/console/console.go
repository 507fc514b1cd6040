// Package console serves `refresher console`: a web page for the person on call,
// working from NATS JetStream and PostgreSQL only, like `refresher status`. It shows
// the overview (backlog, throughput over the last hour, in-flight calls, dead letters,
// credentials needing attention, the fleet's consumers), the dead letters with filters,
// replay and purge, and the credentials with search and a "refresh now" button. It
// never renders a token column.
//
// Safety: every state-changing request is a POST carrying a CSRF token (double-submit
// cookie, plus an Origin check); with a token configured every request must carry it
// (Authorization: Bearer, or the session cookie set by the login form); read-only mode
// refuses every action. Every action is logged with who did what.
package console

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"
)

//go:embed assets templates
var embedded embed.FS

// Cookie names.
const (
	csrfCookie    = "refresher_console_csrf"
	sessionCookie = "refresher_console_session"
	csrfField     = "csrf"
)

// Options configure a console.
type Options struct {
	// Token, when set, is required of every request: "Authorization: Bearer <token>",
	// or the session cookie the login form sets.
	Token string
	// ReadOnly refuses every action (replay, purge, refresh now).
	ReadOnly bool
	// Services are the configured services (REFRESHER_SERVICES), shown even when they
	// have no credential yet; optional.
	Services []string
	// DLQScan caps how many of the newest dead letters a page reads (default 10,000).
	DLQScan int
	// ExpiringWithin is the overview's "expiring soon" horizon (default 30m).
	ExpiringWithin time.Duration
	// Refresh is how often the overview updates itself in the browser (default 5s).
	Refresh time.Duration
	// Log receives one line per action, with who did what.
	Log *slog.Logger
	// Now replaces time.Now, for tests.
	Now func() time.Time
}

// Console is the web console's handler.
type Console struct {
	db   bun.IDB
	nc   *nats.Conn
	js   jetstream.JetStream
	opts Options
	log  *slog.Logger
	tmpl *template.Template
	mux  *http.ServeMux
}

// New returns the console over db and the NATS connection nc.
func New(db bun.IDB, nc *nats.Conn, opts Options) (*Console, error) {
	if opts.DLQScan <= 0 {
		opts.DLQScan = 10000
	}
	if opts.ExpiringWithin <= 0 {
		opts.ExpiringWithin = 30 * time.Minute
	}
	if opts.Refresh <= 0 {
		opts.Refresh = 5 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	tmpl, err := template.New("").Funcs(funcs).ParseFS(embedded, "templates/*.html")
	if err != nil {
		return nil, fmt.Errorf("console templates: %w", err)
	}
	c := &Console{db: db, nc: nc, js: js, opts: opts, log: opts.Log, tmpl: tmpl, mux: http.NewServeMux()}
	assets, _ := fs.Sub(embedded, "assets")
	c.mux.Handle("GET /assets/", http.StripPrefix("/assets/", http.FileServerFS(assets)))
	c.mux.HandleFunc("GET /login", c.loginPage)
	c.mux.HandleFunc("POST /login", c.login)
	c.mux.HandleFunc("POST /logout", c.action(c.logout))
	c.mux.HandleFunc("GET /{$}", c.overviewPage)
	c.mux.HandleFunc("GET /api/overview", c.overviewJSON)
	c.mux.HandleFunc("GET /deadletters", c.deadLettersPage)
	c.mux.HandleFunc("POST /deadletters", c.action(c.deadLettersAction))
	c.mux.HandleFunc("GET /credentials", c.credentialsPage)
	c.mux.HandleFunc("GET /credentials/{id}", c.credentialPage)
	c.mux.HandleFunc("POST /credentials/{id}/refresh", c.action(c.refreshNow))
	return c, nil
}

// ServeHTTP applies the security headers and authentication, then routes.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	// same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on
	// the console's own form POSTs, which the CSRF check refuses.
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	if c.opts.Token != "" && !strings.HasPrefix(r.URL.Path, "/assets/") && r.URL.Path != "/login" && !c.authenticated(r) {
		if r.Method == http.MethodGet && !strings.HasPrefix(r.URL.Path, "/api/") {
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="refresher console"`)
		http.Error(w, "authentication required: Authorization: Bearer <REFRESHER_CONSOLE_TOKEN>, or sign in at /login", http.StatusUnauthorized)
		return
	}
	c.mux.ServeHTTP(w, r)
}

// bearer reports whether r carries the token in an Authorization header.
func (c *Console) bearer(r *http.Request) bool {
	if c.opts.Token == "" {
		return false
	}
	v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(v)), []byte(c.opts.Token)) == 1
}

// sessionValue is the session cookie's value: derived from the token, never the
// token itself, so the cookie jar does not hold it.
func (c *Console) sessionValue() string {
	m := hmac.New(sha256.New, []byte(c.opts.Token))
	m.Write([]byte("refresher console session v1"))
	return hex.EncodeToString(m.Sum(nil))
}

func (c *Console) authenticated(r *http.Request) bool {
	if c.bearer(r) {
		return true
	}
	ck, err := r.Cookie(sessionCookie)
	return err == nil && subtle.ConstantTimeCompare([]byte(ck.Value), []byte(c.sessionValue())) == 1
}

// who names the person behind a request for the action log.
func (c *Console) who(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	switch {
	case c.opts.Token == "":
		return "anonymous@" + host
	case c.bearer(r):
		return "bearer-token@" + host
	default:
		return "session@" + host
	}
}

// csrfToken returns the request's CSRF token, setting the cookie when it has none.
func csrfToken(w http.ResponseWriter, r *http.Request) string {
	if ck, err := r.Cookie(csrfCookie); err == nil && len(ck.Value) == 64 {
		return ck.Value
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	v := hex.EncodeToString(b)
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: v, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	r.AddCookie(&http.Cookie{Name: csrfCookie, Value: v})
	return v
}

// errCSRF is why a POST was refused.
var errCSRF = errors.New("forbidden: missing or wrong CSRF token (reload the page and try again)")

// checkCSRF accepts a POST whose form carries the CSRF cookie's value and that comes
// from this site (Origin and Sec-Fetch-Site, when the browser sends them). A request
// authenticated by a bearer header cannot be forged by a browser and needs neither.
func (c *Console) checkCSRF(r *http.Request) error {
	if c.bearer(r) {
		return nil
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return errCSRF
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return errCSRF
		}
	}
	ck, err := r.Cookie(csrfCookie)
	if err != nil || ck.Value == "" {
		return errCSRF
	}
	if subtle.ConstantTimeCompare([]byte(r.PostFormValue(csrfField)), []byte(ck.Value)) != 1 {
		return errCSRF
	}
	return nil
}

// action wraps a state-changing handler: CSRF, read-only mode, a form size limit.
func (c *Console) action(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
		if err := c.checkCSRF(r); err != nil {
			c.log.Warn("console: refused a POST without a valid CSRF token", "who", c.who(r), "path", r.URL.Path,
				"origin", r.Header.Get("Origin"))
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		if c.opts.ReadOnly && r.URL.Path != "/logout" {
			http.Error(w, "forbidden: the console runs with --read-only", http.StatusForbidden)
			return
		}
		h(w, r)
	}
}

// logAction records one action: who did what, to how many, and how it ended.
func (c *Console) logAction(r *http.Request, action string, err error, attrs ...any) {
	attrs = append([]any{"who", c.who(r), "action", action}, attrs...)
	if err != nil {
		c.log.Error("console action failed", append(attrs, "error", err)...)
		return
	}
	c.log.Info("console action", attrs...)
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, "login.html", page{Title: "Sign in", Data: map[string]string{"Next": safeNext(r.URL.Query().Get("next"))}})
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 1<<16)
	if c.opts.Token == "" {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	if o := r.Header.Get("Origin"); o != "" {
		if u, err := url.Parse(o); err != nil || u.Host != r.Host {
			http.Error(w, errCSRF.Error(), http.StatusForbidden)
			return
		}
	}
	if subtle.ConstantTimeCompare([]byte(r.PostFormValue("token")), []byte(c.opts.Token)) != 1 {
		c.log.Warn("console: sign-in refused", "remote", r.RemoteAddr)
		w.WriteHeader(http.StatusUnauthorized)
		c.render(w, r, "login.html", page{Title: "Sign in", Error: "That is not the console token.",
			Data: map[string]string{"Next": safeNext(r.PostFormValue("next"))}})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: c.sessionValue(), Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil, MaxAge: 12 * 3600})
	c.log.Info("console sign-in", "who", "session@"+r.RemoteAddr)
	http.Redirect(w, r, safeNext(r.PostFormValue("next")), http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// safeNext keeps a post-login redirect on this site.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/"
	}
	return next
}

// page is what every template gets.
type page struct {
	Title    string
	Nav      string
	CSRF     string
	ReadOnly bool
	Auth     bool
	Flash    string
	Error    string
	Data     any
}

func (c *Console) render(w http.ResponseWriter, r *http.Request, name string, p page) {
	p.CSRF = csrfToken(w, r)
	p.ReadOnly = c.opts.ReadOnly
	p.Auth = c.opts.Token != ""
	if p.Flash == "" {
		p.Flash = r.URL.Query().Get("flash")
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := c.tmpl.ExecuteTemplate(w, name, p); err != nil {
		c.log.Error("console: render", "template", name, "error", err)
	}
}

// ctx bounds the work of one page.
func (c *Console) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), 20*time.Second)
}

// IsLoopback reports whether a listen address only accepts connections from this
// machine: a loopback IP or "localhost". An empty host listens on every interface.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
