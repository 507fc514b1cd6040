// Command mutants checks that every protection of refresher has a test that fails
// without it. For each named break it copies the module to a temporary directory,
// applies the break (a textual patch that must match the source exactly once, so a
// patch that no longer applies is reported, never skipped), runs the one test meant
// to catch it, and prints one line: killed (the test failed), survived (it passed) or
// error (the patch did not apply or the copy did not build).
//
// Run by hand before a release, from the module root; it is not part of CI:
//
//	go run ./internal/mutants                 # every break, the test once each
//	go run ./internal/mutants -runs 5         # each test 5 times: killed only if it failed every time
//	go run ./internal/mutants -baseline       # also run each test on the unbroken copy (must pass)
//	go run ./internal/mutants -only ack,claim # breaks whose name contains any of these
//	go run ./internal/mutants -v -only live # and show why each run failed
//	go run ./internal/mutants -list           # the breaks and their tests, nothing run
//
// Tests run one at a time (they use real PostgreSQL and NATS, like the suite). The
// exit status is 1 if any break survived or any run failed to build.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

var verbose bool

// edit replaces old, which must occur exactly once in file, with new.
type edit struct{ file, old, new string }

// mutant is one deliberate break and the test that must catch it.
type mutant struct {
	name  string
	what  string
	pkg   string // package of the test, e.g. ./consumer
	test  string // test name (run as ^name$)
	edits []edit
}

var mutants = []mutant{
	// The ten breaks the suite already caught when issue 13 was filed.
	{
		name: "row-lock", what: "lockRows selects without FOR UPDATE",
		pkg: "./consumer", test: "TestNoLostUpdate",
		edits: []edit{{"consumer/store.go",
			"\tif err := q.For(lock).Scan(ctx); err != nil",
			"\t_ = lock\n\tif err := q.Scan(ctx); err != nil"}},
	},
	{
		name: "skip-rule-never", what: "a request is never taken as satisfied",
		pkg: "./consumer", test: "TestSkipRule",
		edits: []edit{{"consumer/skiprule.go",
			"return refreshedAt != nil && refreshedAt.After(requestedAt)",
			"return false && refreshedAt != nil && refreshedAt.After(requestedAt)"}},
	},
	{
		name: "skip-rule-always", what: "any refreshed row satisfies any request",
		pkg: "./consumer", test: "TestSkipRule",
		edits: []edit{{"consumer/skiprule.go",
			"return refreshedAt != nil && refreshedAt.After(requestedAt)",
			"return refreshedAt != nil // any refresh satisfies any request"}},
	},
	{
		name: "migration-lock", what: "migrate runs without its advisory lock",
		pkg: "./model", test: "TestMigrateConcurrently",
		edits: []edit{{"model/migrate.go",
			`"SELECT pg_advisory_lock(?)"`,
			`"SELECT ?::bigint"`}},
	},
	{
		name: "auth-style", what: "the OAuth2 client auto-detects its auth style",
		pkg: "./provider", test: "TestNoAuthStyleRetry",
		edits: []edit{{"provider/oauth2.go",
			"\tcase AuthStyleHeader, \"\":\n\t\tstyle = oauth2.AuthStyleInHeader",
			"\tcase AuthStyleHeader, \"\":\n\t\tstyle = oauth2.AuthStyleAutoDetect"}},
	},
	{
		name: "replay-latest-request", what: "replay keeps the last request time seen, not the latest",
		pkg: "./publisher", test: "TestReplayCollapsesToLatestRequestTime",
		edits: []edit{{"publisher/replay.go",
			"if cur, seen := latest[key]; !seen || at.After(cur) {",
			"if cur, seen := latest[key]; !seen || !at.Equal(cur) {"}},
	},
	{
		name: "dedupe-id", what: "the publish dedupe id carries the publish time, not the window",
		pkg: "./publisher", test: "TestTwoPublishersSameWindow",
		edits: []edit{{"publisher/publisher.go",
			`return key.Subject() + "@" + start.UTC().Format(time.RFC3339)`,
			`return key.Subject() + "@" + time.Now().UTC().Format(time.RFC3339Nano)`}},
	},
	{
		name: "dead-letter-id", what: "the dead-letter dedupe id is not derived from the stream sequence alone",
		pkg: "./consumer", test: "TestMaxDeliveriesAdvisory",
		edits: []edit{{"stream/deadletter.go",
			`return "dlq-" + strconv.FormatUint(seq, 10) }`,
			`return "dlq-" + strconv.FormatUint(seq, 10) + "-" + strconv.FormatInt(time.Now().UnixNano(), 10) }`}},
	},
	{
		name: "error-body-redaction", what: "a transient provider error keeps the response body",
		pkg: "./provider", test: "TestErrorsDoNotEchoBodies",
		edits: []edit{{"provider/oauth2.go",
			"Reason: sanitize(reason)}",
			"Reason: sanitize(reason) + \" \" + string(re.Body)}"}},
	},
	{
		name: "claim-fence", what: "the commit step does not check the row still holds the presented token",
		pkg: "./consumer", test: "TestReauthorisationRace",
		edits: []edit{{"consumer/commit.go",
			"\tcase !c.samePresented(row.RefreshToken, g):\n\t\treturn replacedGrant",
			"\tcase false && !c.samePresented(row.RefreshToken, g):\n\t\treturn replacedGrant"}},
	},

	// The five breaks issue 13 found uncaught, and their tests.
	{
		name: "ack-inside-transaction", what: "the message is acknowledged after the token write, before COMMIT",
		pkg: "./consumer", test: "TestAckOnlyAfterCommit",
		edits: []edit{{"consumer/commit.go",
			"\t_, err = tx.writeAndCommit(ctx, groups,\n\t\tfunc(gs []*group) (string, error) { return c.writeSQL(gs, locked, verdicts) },",
			"\tfor _, g := range groups {\n\t\tif verdicts[g] == writeToken {\n\t\t\tfor _, j := range g.jobs {\n\t\t\t\tif j.msg != nil {\n\t\t\t\t\t_ = j.msg.Ack()\n\t\t\t\t}\n\t\t\t}\n\t\t}\n\t}\n" +
				"\t_, err = tx.writeAndCommit(ctx, groups,\n\t\tfunc(gs []*group) (string, error) { return c.writeSQL(gs, locked, verdicts) },"}},
	},
	{
		name: "token-in-provider-error", what: "the provider error is wrapped with the refresh token presented",
		pkg: "./consumer", test: "TestNoTokenInFailurePaths",
		edits: []edit{{"consumer/refresh.go",
			"\t\t\tg.tok, g.err = g.lead.prov.Refresh(ctx, g.presented)\n",
			"\t\t\tg.tok, g.err = g.lead.prov.Refresh(ctx, g.presented)\n\t\t\tif g.err != nil {\n\t\t\t\tg.err = fmt.Errorf(\"refresh with %s: %w\", g.presented, g.err)\n\t\t\t}\n"}},
	},
	{
		name: "invalid-grant-body", what: "the invalid_grant error keeps the response body",
		pkg: "./provider", test: "TestErrorBodiesNeverEchoed",
		edits: []edit{{"provider/oauth2.go",
			`return fmt.Errorf("%w (status %d)", ErrInvalidGrant, status)`,
			`return fmt.Errorf("%w (status %d): %s", ErrInvalidGrant, status, re.Body)`}},
	},
	{
		name: "live-claim-ignored", what: "the claim step takes a row another attempt holds a live claim on",
		pkg: "./consumer", test: "TestLiveClaimRespected",
		edits: []edit{{"consumer/claim.go",
			"\t\tcase row.liveClaim() && !c.deadOwner(ctx, row):",
			"\t\tcase false && row.liveClaim() && !c.deadOwner(ctx, row):"}},
	},
	{
		name: "token-write-via-pool", what: "the tokens are written through the pool after the checked transaction",
		pkg: "./consumer", test: "TestTokenWriteInCheckedTransaction",
		edits: []edit{
			{"consumer/store.go",
				"\t\t\ttokens = append(tokens, w)\n",
				"\t\t\t_ = w\n"},
			{"consumer/commit.go",
				"\tif err != nil {\n\t\treturn nil, fmt.Errorf(\"commit: %w\", err)\n\t}\n",
				"\tif err != nil {\n\t\treturn nil, fmt.Errorf(\"commit: %w\", err)\n\t}\n" +
					"\ttx.close(ctx) // the lock ends here; the write goes through the pool after it\n" +
					"\tfor _, g := range groups {\n\t\tif verdicts[g] == writeToken {\n\t\t\tw, err := c.sealed(locked[g.key.ID], g)\n\t\t\tif err != nil {\n\t\t\t\treturn nil, err\n\t\t\t}\n" +
					"\t\t\tif _, err := c.db.ExecContext(ctx, c.tokensSQL([]tokenWrite{w}, false)); err != nil {\n\t\t\t\treturn nil, err\n\t\t\t}\n\t\t}\n\t}\n"},
		},
	},
	// Issue 10's protections: the fleet-wide provider limits.
	{
		name: "fleet-rate", what: "the rate's tokens are handed out without advancing the shared bucket",
		pkg: "./limit", test: "TestFleetRateAcrossProcesses",
		edits: []edit{{"limit/state.go",
			"\t\tst.TAT = tat + int64(k)*iv\n",
			"\t\tst.TAT = tat\n"}},
	},
	{
		name: "max-in-flight-own-only", what: "a process counts only its own calls in flight against MAX_IN_FLIGHT",
		pkg: "./limit", test: "TestFleetMaxInFlightAndLease",
		edits: []edit{{"limit/state.go",
			"free := s.MaxInFlight - st.InFlight(now)",
			"free := s.MaxInFlight - mine.N"}},
	},
	{
		name: "retry-after-ignored", what: "a 429's Retry-After does not pause the service",
		pkg: "./cmd/refresher", test: "TestRetryAfterPausesFleet",
		edits: []edit{{"limit/state.go",
			"\tif ev.pause > 0 {\n",
			"\tif false && ev.pause > 0 {\n"}},
	},
	{
		name: "circuit-never-opens", what: "the circuit never opens, however many failures in a row",
		pkg: "./cmd/refresher", test: "TestOutageWaitsInStream",
		edits: []edit{{"limit/state.go",
			"if s.CircuitThreshold > 0 && st.Failures >= s.CircuitThreshold {",
			"if false && s.CircuitThreshold > 0 && st.Failures >= s.CircuitThreshold {"}},
	},
	{
		name: "unclaimed-grant-admitted", what: "a permit granted to a wait that gave up still counts among the admitted",
		pkg: "./limit", test: "TestGrantNobodyWaitsForIsNotAdmitted",
		edits: []edit{{"limit/agent.go",
			"\t\tif len(a.waiters) == 0 {\n",
			"\t\tif pm.rated && !pm.probe {\n\t\t\tpm.admitted = true\n\t\t\ta.admitted++\n\t\t}\n\t\tif len(a.waiters) == 0 {\n"}},
	},
	{
		name: "term-reason-old-server", what: "+TERM carries a reason on servers before 2.10.4, which then redeliver",
		pkg: "./consumer", test: "TestTerminatedOnSystemNATSServer",
		edits: []edit{{"consumer/terminate.go",
			"if termTakesReason(c.js.Conn().ConnectedServerVersion()) {",
			"if true || termTakesReason(c.js.Conn().ConnectedServerVersion()) {"}},
	},
}

func main() {
	runs := flag.Int("runs", 1, "runs of each test against its break; killed only if every run fails")
	baseline := flag.Bool("baseline", false, "also run each test on the unbroken copy, where it must pass")
	only := flag.String("only", "", "comma-separated substrings: run only the breaks whose name contains one")
	list := flag.Bool("list", false, "list the breaks and their tests, run nothing")
	timeout := flag.Duration("timeout", 10*time.Minute, "bound on one test run")
	flag.BoolVar(&verbose, "v", false, "print the end of each failing run's output (why the test failed)")
	flag.Parse()

	var todo []mutant
	for _, m := range mutants {
		if selected(m.name, *only) {
			todo = append(todo, m)
		}
	}
	if len(todo) == 0 {
		fmt.Fprintf(os.Stderr, "mutants: no break matches -only %q\n", *only)
		os.Exit(2)
	}
	if *list {
		for _, m := range todo {
			fmt.Printf("%-24s %-40s %-12s %s\n", m.name, m.test, m.pkg, m.what)
		}
		return
	}
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "mutants:", err)
		os.Exit(2)
	}
	bad := false
	for _, m := range todo {
		line, ok := check(root, m, *runs, *baseline, *timeout)
		fmt.Println(line)
		bad = bad || !ok
	}
	if bad {
		os.Exit(1)
	}
}

func selected(name, only string) bool {
	if only == "" {
		return true
	}
	for _, s := range strings.Split(only, ",") {
		if s = strings.TrimSpace(s); s != "" && strings.Contains(name, s) {
			return true
		}
	}
	return false
}

// check applies one break to a fresh copy and runs its test; it returns the line to
// print and whether the break was killed.
func check(root string, m mutant, runs int, baseline bool, timeout time.Duration) (string, bool) {
	start := time.Now()
	prefix := fmt.Sprintf("%-24s %-40s", m.name, m.test)
	dir, err := os.MkdirTemp("", "refresher-mutant-")
	if err != nil {
		return fmt.Sprintf("error    %s %v", prefix, err), false
	}
	defer os.RemoveAll(dir)
	if err := copyTree(root, dir); err != nil {
		return fmt.Sprintf("error    %s copy: %v", prefix, err), false
	}
	note := ""
	if baseline {
		failed, out := runTest(dir, m, timeout)
		if failed {
			return fmt.Sprintf("error    %s fails without the break:\n%s", prefix, tail(out)), false
		}
		note = ", passes unbroken"
	}
	for _, e := range m.edits {
		if err := apply(dir, e); err != nil {
			return fmt.Sprintf("error    %s patch: %v", prefix, err), false
		}
	}
	killed := 0
	var lastOut string
	for range runs {
		failed, out := runTest(dir, m, timeout)
		if buildFailed(out) {
			return fmt.Sprintf("error    %s the broken copy does not build:\n%s", prefix, tail(out)), false
		}
		if failed {
			killed++
			if strings.Contains(out, "panic: ") && !strings.Contains(note, "panicked") {
				note += ", panicked (check it fails for the right reason: -v)"
			}
			if verbose {
				fmt.Printf("--- %s: run failed:\n%s\n", m.name, tail(out))
			}
		} else {
			lastOut = out
		}
	}
	d := time.Since(start).Round(time.Second)
	if killed == runs {
		return fmt.Sprintf("killed   %s %d/%d runs failed%s (%s)", prefix, killed, runs, note, d), true
	}
	if verbose {
		fmt.Printf("--- %s: passing run:\n%s\n", m.name, tail(lastOut))
	}
	return fmt.Sprintf("SURVIVED %s %d/%d runs failed%s (%s): %s", prefix, killed, runs, note, d, m.what), false
}

// runTest runs m's test once in dir and reports whether it failed.
func runTest(dir string, m mutant, timeout time.Duration) (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "test", "-count=1", "-timeout", timeout.String(), "-run", "^"+m.test+"$", m.pkg)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return true, out.String() + "\n" + err.Error()
	}
	if err == nil && !strings.Contains(out.String(), "ok ") {
		return true, out.String() // no test ran: not a pass
	}
	if err == nil && strings.Contains(out.String(), "[no tests to run]") {
		return true, out.String()
	}
	return err != nil, out.String()
}

func buildFailed(out string) bool {
	return strings.Contains(out, "[build failed]") || strings.Contains(out, "[setup failed]")
}

func tail(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return "    " + strings.Join(lines, "\n    ")
}

// apply performs one edit in dir.
func apply(dir string, e edit) error {
	path := filepath.Join(dir, e.file)
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if n := strings.Count(string(b), e.old); n != 1 {
		return fmt.Errorf("%s: the text to replace occurs %d times, want 1 (the code changed: update the break)", e.file, n)
	}
	return os.WriteFile(path, []byte(strings.Replace(string(b), e.old, e.new, 1)), 0o644)
}

// moduleRoot is the directory of the go.mod of the working directory's module.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside a Go module: run from the refresher checkout")
	}
	return filepath.Dir(mod), nil
}

// copyTree copies the module's files (no .git) from src to dst.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || (rel != "." && strings.HasPrefix(d.Name(), "."))) {
			return filepath.SkipDir
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case !d.Type().IsRegular():
			return nil // .git file of a worktree, sockets, links
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(target)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
}
