package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/internal/testtier"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

// buildBinary compiles refresher once per test process.
var buildBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "refresher-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "refresher")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return bin, nil
})

// proc is a refresher subprocess with its output captured.
type proc struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr fleettest.SyncBuffer
	done   chan error
}

func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	testtier.Slow(t, "a subprocess")
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: exec.Command(bin, args...), done: make(chan error, 1)}
	p.cmd.Env = env
	p.cmd.Stdout = &p.stdout
	p.cmd.Stderr = &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done //nolint:errcheck // killed: the exit error says only that
	})
	return p
}

// waitBound waits until a consume process logs that it is bound to the durable, and
// fails with its output if it exits or takes too long.
func (p *proc) waitBound(t *testing.T) {
	t.Helper()
	p.waitBoundWithin(t, 30*time.Second)
}

// waitBoundWithin is waitBound with its own limit.
func (p *proc) waitBoundWithin(t *testing.T, limit time.Duration) {
	t.Helper()
	deadline := time.After(limit)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(p.stderr.String(), `"msg":"consuming"`) {
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("%v exited before binding: %v\n%s", p.cmd.Args, err, p.stderr.String())
		case <-deadline:
			t.Fatalf("%v not bound after %s\n%s", p.cmd.Args, limit, p.stderr.String())
		case <-tick.C:
		}
	}
}

// wait returns the exit code, failing the test if the process outlives timeout.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // keep it for the cleanup
		if err == nil {
			return 0
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		t.Fatalf("%v: %v", p.cmd.Args, err)
	case <-time.After(timeout):
		t.Fatalf("%v still running after %s\nstderr:\n%s", p.cmd.Args, timeout, p.stderr.String())
	}
	return -1
}

func (p *proc) run(t *testing.T) (int, string) {
	t.Helper()
	code := p.wait(t, 2*time.Minute)
	return code, p.stdout.String() + p.stderr.String()
}

// processEnv is the environment of refresher subprocesses working on fx.
func processEnv(fx *fleettest.Env) []string {
	// Shortened delays on top of the defaults, so that faults play out in seconds.
	return append(defaultEnv(fx),
		"REFRESHER_CONCURRENCY=8",
		"REFRESHER_ACK_WAIT=3s",
		"REFRESHER_LOCK_TIMEOUT=1s",
		"REFRESHER_PROVIDER_TIMEOUT=2s",
		"REFRESHER_DRAIN_TIMEOUT=6s",
		"REFRESHER_BACKOFF=50ms,100ms,200ms",
	)
}

// tokenRE matches any token the fake provider issues.
var tokenRE = regexp.MustCompile(`\b(rt|at)\.[a-z0-9_-]+\.[0-9]+\.[A-Za-z0-9_-]{8,}`)

// TestProcessesEndToEnd is the story of the README run by hand, through separate
// processes: migrate, three consumers, both services' publishers started at the same
// moment, extra requests and garbage from a plain NATS client, one consumer killed
// with SIGKILL half-way and restarted, then SIGTERM to all. Every credential must hold
// the refresh token its provider issued last, no replaced token may reach the provider,
// the garbage must be in REFRESH_DLQ, no token may appear in any output, and every
// consumer must exit 0 on SIGTERM.
func TestProcessesEndToEnd(t *testing.T) {
	testtier.Slow(t, "a subprocess")
	if _, err := buildBinary(); err != nil {
		t.Fatal(err)
	}
	t.Parallel()
	// A process killed after the provider rotated a token but before its commit takes
	// the only copy of the new token with it; real providers answer that with a reuse
	// interval for the just-replaced token, and so does the fake here. A grace hit is
	// not counted as a replaced token sent; a token older than that still is.
	fx := fleettest.New(t, fleettest.Options{Latency: 15 * time.Millisecond, Grace: 30 * time.Second})
	env := processEnv(fx)
	var outputs []*proc
	mustRun := func(args ...string) string {
		t.Helper()
		p := start(t, env, args...)
		outputs = append(outputs, p)
		code, out := p.run(t)
		if code != 0 {
			t.Fatalf("refresher %v: exit %d\n%s", args, code, out)
		}
		return out
	}

	mustRun("migrate")
	const perService = 150
	mustRun("seed", "--service", "github", "--count", fmt.Sprint(perService))
	mustRun("seed", "--service", "google", "--count", fmt.Sprint(perService))

	consumers := make([]*proc, 3)
	for i := range consumers {
		consumers[i] = start(t, env, "consume")
		outputs = append(outputs, consumers[i])
	}
	for _, c := range consumers {
		c.waitBound(t)
	}

	// Both services' schedules, each run twice at the same moment.
	var pubs []*proc
	for _, s := range []string{"github", "google", "github", "google"} {
		p := start(t, env, "publish", "--service", s, "--expiring-within", "30m")
		pubs = append(pubs, p)
		outputs = append(outputs, p)
	}
	published, duplicates := 0, 0
	for _, p := range pubs {
		code, out := p.run(t)
		if code != 0 {
			t.Fatalf("publish: exit %d\n%s", code, out)
		}
		var svc string
		var pub, dup, failed int
		if _, err := fmt.Sscanf(strings.TrimSpace(p.stdout.String()), "service=%s published=%d duplicate=%d failed=%d", &svc, &pub, &dup, &failed); err != nil {
			t.Fatalf("publish output %q: %v", p.stdout.String(), err)
		}
		published += pub
		duplicates += dup
	}
	// Each row is published exactly once. A twin's scan may find fewer rows than its
	// first page promised: the consumers refresh rows (moving expires_at past the
	// horizon) while it pages, so duplicates may fall short of the row count.
	if published != 2*perService || duplicates > 2*perService {
		t.Fatalf("published %d, duplicates %d: want each row published once", published, duplicates)
	}

	// Any NATS client can ask, and send garbage.
	nc, err := nats.Connect(fx.NATS.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	garbage := []string{"refresh.github.x", "refresh.nosuch.1", "refresh.github.-5", "refresh.google"}
	for _, g := range garbage {
		if err := nc.Publish(g, nil); err != nil {
			t.Fatal(err)
		}
	}
	for id := int64(1); id <= 20; id++ {
		if err := nc.Publish(model.Key{Service: "github", ID: id}.Subject(), []byte(`{"reason":"user clicked refresh"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	// Half-way, one consumer dies without warning and comes back.
	fleettest.Eventually(t, time.Minute, "a third of the rows refreshed", func() bool {
		return fx.Fake.Stats().Rotations >= 2*perService/3
	})
	if err := consumers[0].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := consumers[0].wait(t, 10*time.Second); code != -1 && code != 137 && code != 0 {
		t.Logf("killed consumer exit code %d", code)
	}
	consumers[0] = start(t, env, "consume")
	outputs = append(outputs, consumers[0])

	fx.WaitIdle(2 * time.Minute)
	for i, c := range consumers {
		if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := c.wait(t, 30*time.Second); code != 0 {
			t.Fatalf("consumer %d exit %d on SIGTERM\n%s", i, code, c.stderr.String())
		}
	}

	out := mustRun("verify", "--provider", fx.FakeURL)
	if !strings.Contains(out, "OK: every credential") {
		t.Fatalf("verify: %s", out)
	}
	rep := fx.Verify()
	if rep.Rows != 2*perService {
		t.Fatalf("verified %d rows", rep.Rows)
	}
	var unrefreshed int
	if err := fx.DB.NewSelect().Model((*model.Credential)(nil)).ColumnExpr("count(*)").Where("refreshed_at IS NULL").
		Scan(context.Background(), &unrefreshed); err != nil || unrefreshed != 0 {
		t.Fatalf("%d credentials never refreshed (%v)", unrefreshed, err)
	}
	dls := fx.DeadLetters()
	if len(dls) != len(garbage) {
		t.Fatalf("%d dead letters, want %d: %+v", len(dls), len(garbage), dls)
	}
	for _, p := range outputs {
		all := p.stdout.String() + p.stderr.String()
		if m := tokenRE.FindString(all); m != "" {
			t.Fatalf("a token value appears in the output of %v", p.cmd.Args)
		}
	}
	t.Logf("provider: %d calls, %d rotations, %d grace hits after the SIGKILL", fx.Fake.Stats().Calls, fx.Fake.Stats().Rotations, fx.Fake.Stats().GraceHits)
	if m := tokenRE.FindString(fx.Logs()); m != "" {
		t.Fatalf("a token value appears in the fake provider's logs")
	}
	assertNoTokenInMessages(t, fx)
	// Errors recorded on rows carry no token either.
	var lastErrors []string
	if err := fx.DB.NewSelect().Model((*model.Credential)(nil)).Column("last_error").Where("last_error IS NOT NULL").
		Scan(context.Background(), &lastErrors); err != nil {
		t.Fatal(err)
	}
	for _, e := range lastErrors {
		if tokenRE.MatchString(e) {
			t.Fatal("a token value appears in credentials.last_error")
		}
	}
}

// assertNoTokenInMessages reads every message of REFRESH and REFRESH_DLQ, subject,
// headers and body, and fails if any carries a token value.
func assertNoTokenInMessages(t *testing.T, fx *fleettest.Env) {
	t.Helper()
	js := fx.JS()
	for _, name := range []string{stream.Stream, stream.DLQStream} {
		msgs := fleettest.StreamMessages(t, js, name)
		for _, m := range msgs {
			all := m.Subject + fmt.Sprint(m.Header) + string(m.Data)
			if tokenRE.MatchString(all) {
				t.Fatalf("%s message %d carries a token value", name, m.Sequence)
			}
		}
		if len(msgs) == 0 && name == stream.Stream {
			t.Fatalf("read no message from %s: the check proved nothing", name)
		}
	}
}

// TestSIGKILLFleet kills consumer processes with SIGKILL at random moments, several
// times, during a run of thousands of requests, restarting each. Every request must end
// satisfied or dead-lettered, every credential must hold the latest token, and no
// replaced token may reach the provider (a token rotated by a process that died before
// its commit is recovered through the provider's reuse interval, as with real
// providers; see README "Crashes and rotating providers").
func TestSIGKILLFleet(t *testing.T) {
	testtier.Slow(t, "a subprocess")
	if _, err := buildBinary(); err != nil {
		t.Fatal(err)
	}
	t.Parallel()
	fleettest.BothModes(t, testSIGKILLFleet)
}

func testSIGKILLFleet(t *testing.T, batch int) {
	fx := fleettest.New(t, fleettest.Options{Latency: 5 * time.Millisecond, Grace: 30 * time.Second})
	env := append(processEnv(fx), fmt.Sprintf("REFRESHER_BATCH_SIZE=%d", batch))
	const rows = 1000
	ids := fx.Seed("github", rows)
	consumers := make([]*proc, 3)
	startConsumer := func(i int) {
		consumers[i] = start(t, env, "consume")
		consumers[i].waitBound(t)
	}
	for i := range consumers {
		startConsumer(i)
	}
	p := fx.Publisher(publisher.WithWindow(0))
	for range 3 { // 3,000 requests
		if _, err := p.Publish(context.Background(), "github", ids...); err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	kills := 0
	for kills < 5 && fx.Fake.Stats().Rotations < rows {
		// A random moment: once some more rows have rotated.
		target := fx.Fake.Stats().Rotations + 20 + rng.IntN(100)
		fleettest.Eventually(t, time.Minute, "progress between kills", func() bool {
			return fx.Fake.Stats().Rotations >= min(target, rows)
		})
		i := rng.IntN(len(consumers))
		if err := consumers[i].cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		consumers[i].wait(t, 10*time.Second)
		kills++
		startConsumer(i)
	}
	fx.WaitIdle(3 * time.Minute)
	for i, c := range consumers {
		if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := c.wait(t, 30*time.Second); code != 0 {
			t.Fatalf("consumer %d exit %d on SIGTERM", i, code)
		}
	}
	rep := fx.Verify()
	var unrefreshed int
	if err := fx.DB.NewSelect().Model((*model.Credential)(nil)).ColumnExpr("count(*)").Where("refreshed_at IS NULL").
		Scan(context.Background(), &unrefreshed); err != nil || unrefreshed != 0 {
		t.Fatalf("%d credentials never refreshed (%v)", unrefreshed, err)
	}
	if dls := fx.DeadLetters(); len(dls) != 0 {
		t.Fatalf("%d requests dead-lettered", len(dls))
	}
	st := fx.Fake.Stats()
	t.Logf("%s after %d kills; provider: %d calls, %d grace hits", rep, kills, st.Calls, st.GraceHits)
}
