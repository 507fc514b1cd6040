package console_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/refresher/refresher/internal/console"
	"github.com/refresher/refresher/internal/fleettest"
)

// browserPath finds a Chromium to drive: REFRESHER_CHROMIUM, else the usual names.
func browserPath() (string, error) {
	if p := os.Getenv("REFRESHER_CHROMIUM"); p != "" {
		return p, nil
	}
	var errs []string
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "headless-shell"} {
		p, err := exec.LookPath(name)
		if err == nil {
			return p, nil
		}
		errs = append(errs, name)
	}
	return "", fmt.Errorf("none of %s is on PATH", strings.Join(errs, ", "))
}

// screenshotDir is where the browser test keeps its screenshots:
// REFRESHER_SCREENSHOTS, else a new directory under the system's temp dir that
// outlives the test (its path is logged).
func screenshotDir(t *testing.T) string {
	if d := os.Getenv("REFRESHER_SCREENSHOTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	d, err := os.MkdirTemp("", "refresher-console-screenshots-")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestConsoleInBrowser drives headless Chromium against a console on a fresh
// database and fleet, as a person would: open the overview (and see it update
// itself), find a dead letter by its reason, replay it after the confirmation, and
// see its credential refreshed; search a credential by account and ask for a
// refresh; and, from another site, forge a POST that the console must refuse. No page
// may contain a token. A screenshot of each page is kept.
func TestConsoleInBrowser(t *testing.T) {
	chrome, err := browserPath()
	if err != nil {
		msg := fmt.Sprintf("BROWSER TEST NOT RUN: no headless Chromium (%v). Install it (Debian: apt-get install -y chromium; .ci/run does) or set REFRESHER_CHROMIUM.", err)
		if os.Getenv("REFRESHER_BROWSER_TEST") == "require" {
			t.Fatal(msg)
		}
		fmt.Fprintln(os.Stderr, "\n*** "+msg+" ***")
		t.Skip(msg)
	}
	r := newRig(t, console.Options{Refresh: 300 * time.Millisecond})
	base := r.srv.URL
	shots := screenshotDir(t)
	t.Logf("screenshots in %s", shots)

	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome), chromedp.NoSandbox, chromedp.WindowSize(1280, 900),
		chromedp.UserDataDir(t.TempDir()), chromedp.Flag("disable-gpu", true))...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(alloc)
	defer cancelBrowser()
	// The first run starts the browser; no timeout on it (it would stop the browser).
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start %s: %v", chrome, err)
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		ctx, cancel := context.WithTimeout(bctx, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	// until waits for a JavaScript condition, through the navigations a click or a
	// submit starts (a poll in a page being replaced fails, and is asked again).
	until := func(what, expr string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(bctx, 5*time.Second)
			_, err := chromedp.Run(ctx, chromedp.Poll[bool](expr))
			cancel()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				ctx, cancel := context.WithTimeout(bctx, 10*time.Second)
				if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
					_ = os.WriteFile(filepath.Join(shots, "failed.png"), png, 0o644)
				}
				loc, _ := chromedp.Run(ctx, chromedp.Location())
				cancel()
				t.Fatalf("%s (at %s; screenshot failed.png): %v\n%s", what, loc, err, r.logs.String())
			}
		}
	}
	text := func(sel string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(bctx, 30*time.Second)
		defer cancel()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	// shoot keeps a full-page screenshot and checks the page's HTML for tokens.
	shoot := func(name string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(bctx, 30*time.Second)
		defer cancel()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(shots, name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
		html, err := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("html")))
		if err != nil {
			t.Fatalf("HTML of %s: %v", name, err)
		}
		r.checkNoToken(t, name+" page", html)
	}

	// Overview: both services, and it updates itself without a reload.
	do("open the overview", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS(`tr.svc[data-service="github"]`)))
	if s := text("table.services"); !strings.Contains(s, "github") || !strings.Contains(s, "google") {
		t.Fatalf("overview services: %q", s)
	}
	until("the overview updates itself", `document.getElementById("live").hasAttribute("data-updated")`)
	shoot("overview")

	// Dead letters: filter by the reason, select the one found, replay, confirm.
	do("open the dead letters", chromedp.Navigate(base+"/deadletters"), chromedp.WaitVisible(chromedp.CSS("#matching")))
	if n := text("#matching"); n != "2" {
		t.Fatalf("dead letters before filtering: %q", n)
	}
	do("filter by reason",
		chromedp.SetValue(chromedp.CSS(`select[name="reason"]`), deadReason),
		chromedp.Submit(chromedp.CSS(`select[name="reason"]`)))
	until("the filtered list", `location.search.indexOf("reason=") >= 0 && document.readyState === "complete" && document.getElementById("matching").textContent === "1"`)
	row := text("table.deadletters tbody")
	if !strings.Contains(row, fmt.Sprintf("refresh.github.%d", r.deadID)) || !strings.Contains(row, deadReason) {
		t.Fatalf("the filtered dead letter: %q", row)
	}
	shoot("deadletters")
	before := r.version(t, r.deadID)
	do("select and replay", chromedp.Click(chromedp.CSS(`input[name="seq"]`)), chromedp.Click(chromedp.CSS("#replay-selected")))
	until("the confirmation", `document.readyState === "complete" && document.getElementById("confirm") !== null`)
	if s := text("h1"); s != "Confirm: replay 1 dead letter(s)" {
		t.Fatalf("confirmation heading %q", s)
	}
	shoot("confirm")
	if r.version(t, r.deadID) != before {
		t.Fatal("replayed before the confirmation")
	}
	do("confirm", chromedp.Click(chromedp.CSS("#confirm")))
	until("the replay's outcome", `document.readyState === "complete" && document.querySelector(".flash") !== null`)
	if s := text(".flash"); !strings.Contains(s, "1 republished") {
		t.Fatalf("after the replay: %q", s)
	}
	fleettest.Eventually(t, 20*time.Second, "the replayed credential refreshed", func() bool { return r.version(t, r.deadID) > before })
	do("the credential's page", chromedp.Navigate(fmt.Sprintf("%s/credentials/%d", base, r.deadID)), chromedp.WaitVisible(chromedp.CSS("#version")))
	if v, _ := strconv.ParseInt(text("#version"), 10, 64); v <= before {
		t.Fatalf("the page shows version %d, the credential was at %d before the replay", v, before)
	}
	if !strings.Contains(text("main"), "console replay") {
		t.Errorf("the replayed request is not listed among the stream's requests: %q", text("main"))
	}
	shoot("credential-replayed")

	// Credentials: search by account id, then refresh now.
	cred := r.env.Credential(r.ids[4])
	do("search by account", chromedp.Navigate(base+"/credentials"), chromedp.WaitVisible(chromedp.CSS("#q")),
		chromedp.SendKeys(chromedp.CSS("#q"), strconv.FormatInt(cred.AccountID, 10)), chromedp.Submit(chromedp.CSS("#q")))
	until("the search results", `document.readyState === "complete" && document.querySelector("table") !== null`)
	shoot("search")
	do("open the result", chromedp.Click(chromedp.CSS(fmt.Sprintf(`a[href="/credentials/%d"]`, cred.ID))))
	until("the credential's page", `document.readyState === "complete" && document.getElementById("refresh-now") !== null`)
	do("refresh now", chromedp.Click(chromedp.CSS("#refresh-now")))
	until("refresh now's outcome", `document.readyState === "complete" && document.querySelector(".flash") !== null`)
	fleettest.Eventually(t, 20*time.Second, "refresh now done", func() bool { return r.version(t, cred.ID) > cred.Version })
	shoot("credential")

	// A forged POST from another site (localhost is not 127.0.0.1's site): refused, and
	// nothing published.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><form id="f" method="post" action="%s/credentials/%d/refresh"><input name="csrf" value="%s"></form>
<script>document.getElementById("f").submit()</script>`, base, cred.ID, strings.Repeat("a", 64))
	}))
	defer evil.Close()
	eu, _ := url.Parse(evil.URL)
	stored := r.requestsStored(t)
	do("the forged POST", chromedp.Navigate("http://localhost:"+eu.Port()+"/"))
	until("the console's refusal", `document.readyState === "complete" && document.body.innerText.indexOf("forbidden") >= 0`)
	shoot("forged-post")
	if !strings.Contains(r.logs.String(), "refused a POST without a valid CSRF token") {
		t.Errorf("the forged POST was not logged: %s", r.logs.String())
	}
	do("back to the overview", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#live")))
	if n := r.requestsStored(t); n != stored {
		t.Fatalf("the forged POST published a request: REFRESH went from %d to %d messages", stored, n)
	}
	t.Logf("screenshots: %s", strings.Join([]string{"overview", "deadletters", "confirm", "credential-replayed", "search", "credential", "forged-post"}, ", "))
}
