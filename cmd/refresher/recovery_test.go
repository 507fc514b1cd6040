package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/internal/testtier"
	"github.com/refresher/refresher/internal/verify"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
)

// kill is one SIGKILL of a consume process: when, which pid, and how many claims it
// left on credentials (calls in flight or answered but not committed).
type kill struct {
	at     time.Time
	pid    int
	claims int
	// cleared is how long after the kill no credential was claimed by the dead
	// process any more: every claim taken over (or, for a statement it had sent just
	// before dying, committed by the server after all).
	cleared time.Duration
}

// takeover is a "taking over a claim" log line.
type takeover struct {
	at    time.Time
	owner string
}

// takeovers reads every takeover logged by procs (JSON logs).
func takeovers(t *testing.T, procs []*proc) []takeover {
	t.Helper()
	var out []takeover
	for _, p := range procs {
		sc := bufio.NewScanner(strings.NewReader(p.stderr.String()))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var line struct {
				Time  time.Time `json:"time"`
				Msg   string    `json:"msg"`
				Owner string    `json:"owner"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "taking over a claim" {
				out = append(out, takeover{at: line.Time, owner: line.Owner})
			}
		}
	}
	return out
}

// sigkillRecovery runs three consume processes with env over rows credentials against
// a provider with a 30 s reuse interval, and kills one of them with SIGKILL kills
// times while it has provider calls in flight, restarting it each time. It returns
// the kills and, once every request has settled, the oracle's report and every
// takeover logged.
func sigkillRecovery(t *testing.T, settings []string, rows, kills int, settle time.Duration) ([]kill, verify.Report, []takeover, *fleettest.Env) {
	// The provider rotates at once and answers 400 ms later: a process killed in
	// those 400 ms takes the only copy of a rotated token with it.
	fx := fleettest.New(t, fleettest.Options{ResponseLatency: 400 * time.Millisecond, Grace: 30 * time.Second})
	env := append(defaultEnv(fx), "REFRESHER_GITHUB_REUSE_INTERVAL=30s", "REFRESHER_GOOGLE_REUSE_INTERVAL=30s")
	env = append(env, settings...)
	ids := fx.Seed("github", rows)
	var all []*proc
	consumers := make([]*proc, 3)
	for i := range consumers {
		consumers[i] = start(t, env, "consume")
		consumers[i].waitBound(t)
		all = append(all, consumers[i])
	}
	if _, err := fx.Publisher(publisher.WithWindow(0)).Publish(context.Background(), "github", ids...); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var done []kill
	for len(done) < kills {
		victim := consumers[0]
		pid := victim.cmd.Process.Pid
		owned := fmt.Sprintf("%%/%d/%%", pid)
		// Mid-call: the victim holds claims taken 150 ms ago or more, so their requests
		// have reached the provider (which rotates on receipt and answers 400 ms later).
		fleettest.Eventually(t, time.Minute, "the victim holding claims for calls in flight", func() bool {
			var n int
			err := fx.DB.NewSelect().Model((*model.Credential)(nil)).ColumnExpr("count(*)").
				Where("claim_owner LIKE ?", owned).
				Where("claim_started_at < now() - interval '150 milliseconds'").Scan(ctx, &n)
			return err == nil && n > 0
		})
		if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		k := kill{at: time.Now(), pid: pid}
		victim.wait(t, 10*time.Second)
		var held []int64
		if err := fx.DB.NewSelect().Model((*model.Credential)(nil)).Column("id").
			Where("claim_owner LIKE ?", owned).Scan(ctx, &held); err != nil {
			t.Fatal(err)
		}
		k.claims = len(held)
		fleettest.Eventually(t, settle, "the killed process's claims taken over", func() bool {
			var n int
			err := fx.DB.NewSelect().Model((*model.Credential)(nil)).ColumnExpr("count(*)").
				Where("claim_owner LIKE ?", owned).Scan(ctx, &n)
			return err == nil && n == 0
		})
		k.cleared = time.Since(k.at)
		done = append(done, k)
		consumers[0] = start(t, env, "consume")
		consumers[0].waitBound(t)
		all = append(all, consumers[0])
		// The next kill comes once every credential this one left claimed is refreshed
		// by another process: two crashes on one credential within the provider's reuse
		// interval cannot be recovered, by any client.
		if len(held) > 0 && len(done) < kills {
			fleettest.Eventually(t, settle, "the killed process's credentials refreshed by others", func() bool {
				var n int
				err := fx.DB.NewSelect().Model((*model.Credential)(nil)).ColumnExpr("count(*)").
					Where("id IN (?)", bun.In(held)).Where("claim_id IS NULL AND version > 0").Scan(ctx, &n)
				return err == nil && n == len(held)
			})
		}
	}
	fx.WaitIdle(3 * time.Minute)
	for _, c := range consumers {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		c.wait(t, 30*time.Second)
	}
	rep, err := verify.Check(ctx, fx.DB, verify.Local{P: fx.Fake})
	if err != nil {
		t.Fatal(err)
	}
	return done, rep, takeovers(t, all), fx
}

// TestSIGKILLRecoveryWithinReuseInterval: with default settings a consume process
// killed while its provider calls are in flight has its claims taken over within 15 s
// (its messages are redelivered after REFRESHER_ACK_WAIT, its death is seen when its
// liveness key expires after REFRESHER_OWNER_TTL), inside a 30 s reuse interval:
// nothing is lost, no replaced token is sent.
func TestSIGKILLRecoveryWithinReuseInterval(t *testing.T) {
	testtier.Slow(t, "a subprocess")
	if _, err := buildBinary(); err != nil {
		t.Fatal(err)
	}
	t.Parallel()
	kills, rep, tos, fx := sigkillRecovery(t, []string{"REFRESHER_CONCURRENCY=16"}, 5000, 3, 30*time.Second)
	var slowest time.Duration
	for _, k := range kills {
		if k.claims == 0 {
			t.Fatalf("kill of pid %d left no claim: the test did not kill a process mid-call", k.pid)
		}
		n := 0
		for _, to := range tos {
			if !strings.Contains(to.owner, fmt.Sprintf("/%d/", k.pid)) {
				continue
			}
			n++
			d := to.at.Sub(k.at)
			slowest = max(slowest, d)
			if d > 15*time.Second {
				t.Errorf("a claim of pid %d taken over %s after the kill: want within 15s", k.pid, d.Round(time.Millisecond))
			}
		}
		if n == 0 {
			t.Errorf("pid %d left %d claims and no takeover was logged", k.pid, k.claims)
		}
		if k.cleared > 15*time.Second {
			t.Errorf("pid %d's claims were all taken over only %s after the kill: want within 15s", k.pid, k.cleared.Round(time.Millisecond))
		}
	}
	if !rep.OK() {
		t.Fatalf("after %d kills: %s %v", len(kills), rep, rep.Examples)
	}
	st := fx.Fake.Stats()
	t.Logf("%d kills leaving %v claims, all taken over within %v of the kill (slowest logged takeover %s); %s; provider grace hits %d",
		len(kills), claimsOf(kills), clearedOf(kills), slowest.Round(time.Millisecond), rep, st.GraceHits)
}

// TestSIGKILLRecoveryOldTimingControl is the control: the timing before owner
// liveness (a 60 s ack wait, claims taken over only when they expire) recovers a
// killed process's calls outside the provider's 30 s reuse interval, and loses those
// credentials. It shows that the test above can fail.
func TestSIGKILLRecoveryOldTimingControl(t *testing.T) {
	testtier.Slow(t, "a subprocess")
	if _, err := buildBinary(); err != nil {
		t.Fatal(err)
	}
	t.Parallel() // mostly waiting out the ack wait
	kills, rep, _, _ := sigkillRecovery(t, []string{"REFRESHER_CONCURRENCY=16", "REFRESHER_ACK_WAIT=60s", "REFRESHER_OWNER_TTL=0"}, 200, 1, 2*time.Minute)
	if rep.OK() {
		t.Fatalf("the old timing lost nothing after killing a process holding %d claims (%s): the recovery test cannot fail", kills[0].claims, rep)
	}
	t.Logf("old timing: %s after killing a process holding %d claims", rep, kills[0].claims)
}

func claimsOf(ks []kill) []int {
	out := make([]int, len(ks))
	for i, k := range ks {
		out[i] = k.claims
	}
	return out
}

func clearedOf(ks []kill) []time.Duration {
	out := make([]time.Duration, len(ks))
	for i, k := range ks {
		out[i] = k.cleared.Round(100 * time.Millisecond)
	}
	return out
}
