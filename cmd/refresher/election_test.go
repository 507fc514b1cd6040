package main

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/internal/natsserver"
	"github.com/refresher/refresher/internal/testtier"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

// natsNode is one member of a JetStream cluster run as a `refresher nats-node`
// process, so that it can be killed with SIGKILL and started again on its store.
type natsNode struct {
	name, store string
	args        []string
	proc        *proc
}

// freeLoopbackPorts returns n distinct free ports.
func freeLoopbackPorts(t *testing.T, n int) []int {
	t.Helper()
	ports, err := natsserver.FreePorts(n)
	if err != nil {
		t.Fatal(err)
	}
	return ports
}

// TestConsumersSurviveClusterElections starts a 3-node JetStream cluster (separate
// processes) at the same moment as three consume processes with replicated streams:
// none may exit while the cluster elects its leaders. Then, mid-run, the REFRESH
// stream leader is killed with SIGKILL and started again: no consumer exits,
// processing resumes, and nothing is lost.
func TestConsumersSurviveClusterElections(t *testing.T) {
	testtier.Slow(t, "a subprocess")
	if _, err := buildBinary(); err != nil {
		t.Fatal(err)
	}
	fx := fleettest.New(t, fleettest.Options{Latency: 20 * time.Millisecond, Grace: 30 * time.Second})
	ports := freeLoopbackPorts(t, 6)
	var urls, routes []string
	for i := range 3 {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[3+i]))
	}
	nodes := make([]*natsNode, 3)
	base := defaultEnv(fx)
	for i := range nodes {
		var others []string
		for j, r := range routes {
			if j != i {
				others = append(others, r)
			}
		}
		n := &natsNode{name: fmt.Sprintf("node-%d", i+1), store: t.TempDir()}
		n.args = []string{"nats-node", "--name", n.name, "--store", n.store, "--port", fmt.Sprint(ports[i]),
			"--cluster-port", fmt.Sprint(ports[3+i]), "--routes", strings.Join(others, ",")}
		nodes[i] = n
	}
	natsURL := strings.Join(urls, ",")
	env := append(base, "NATS_URL="+natsURL, "REFRESHER_STREAM_REPLICAS=3", "REFRESHER_CONCURRENCY=32")

	// The cluster and the fleet start together: the consumers meet a cluster with no
	// meta leader yet.
	consumers := make([]*proc, 3)
	for i, n := range nodes {
		n.proc = start(t, env, n.args...)
		consumers[i] = start(t, env, "consume")
	}
	for i, c := range consumers {
		select {
		case err := <-c.done:
			c.done <- err
			t.Fatalf("consumer %d exited while the cluster was electing: %v\n%s", i, err, c.stderr.String())
		default:
		}
		c.waitBoundWithin(t, 90*time.Second)
	}

	nc, err := nats.Connect(natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	const rows = 600
	ids := fx.Seed("github", rows)
	p, err := publisher.New(nc, publisher.WithWindow(0))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := p.Publish(ctx, "github", ids[:rows/2]...); err != nil {
		t.Fatal(err)
	}

	// Mid-run, the REFRESH leader dies without warning.
	fleettest.Eventually(t, time.Minute, "some rows refreshed", func() bool { return fx.Fake.Stats().Rotations >= rows/8 })
	var leader string
	fleettest.Eventually(t, 10*time.Second, "the REFRESH stream leader", func() bool {
		s, err := js.Stream(ctx, stream.Stream)
		if err != nil {
			return false
		}
		info, err := s.Info(ctx)
		if err != nil || info.Cluster == nil {
			return false
		}
		leader = info.Cluster.Leader
		return leader != ""
	})
	var victim *natsNode
	for _, n := range nodes {
		if n.name == leader {
			victim = n
		}
	}
	if victim == nil {
		t.Fatalf("stream leader %q is none of the nodes", leader)
	}
	if err := victim.proc.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	victim.proc.wait(t, 10*time.Second)
	killed := time.Now()
	// The rest of the requests are published while it is down, through the others.
	if _, err := p.Publish(ctx, "github", ids[rows/2:]...); err != nil {
		t.Fatal(err)
	}
	before := fx.Fake.Stats().Rotations
	fleettest.Eventually(t, time.Minute, "processing to resume without the old leader", func() bool {
		return fx.Fake.Stats().Rotations > before+rows/10
	})
	resumed := time.Since(killed)
	victim.proc = start(t, env, victim.args...)

	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := consumer.WaitIdle(wctx, js, 50*time.Millisecond); err != nil {
		// Where the fleet stands, most telling first: the output of a failed CI run is
		// cut after its first lines.
		t.Log(err)
		for i, c := range consumers {
			t.Logf("consumer %d's log, last lines:\n%s", i, lastLines(c.stderr.String(), 10))
		}
		for _, u := range urls {
			t.Logf("JetStream as seen from %s:\n%s", u, jetStreamView(u))
		}
		for _, n := range nodes {
			t.Logf("%s's log, JetStream lines:\n%s", n.name, jetStreamLines(n.proc.stderr.String(), 20))
		}
		for i, c := range consumers {
			t.Logf("consumer %d's goroutines:\n%s", i, goroutineDump(t, c))
		}
		t.Fatal(err)
	}
	for i, c := range consumers {
		select {
		case err := <-c.done:
			c.done <- err
			t.Fatalf("consumer %d exited during the run: %v\n%s", i, err, c.stderr.String())
		default:
		}
		if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := c.wait(t, 30*time.Second); code != 0 {
			t.Fatalf("consumer %d exit %d on SIGTERM\n%s", i, code, c.stderr.String())
		}
	}
	rep := fx.Verify()
	if rep.Rows != rows {
		t.Fatalf("verified %d rows, want %d", rep.Rows, rows)
	}
	retries := 0
	for _, c := range consumers {
		retries += strings.Count(c.stderr.String(), "failed, retrying")
	}
	t.Logf("%s; leader %s killed, processing resumed %s later; %d set-up retries logged during the elections",
		rep, leader, resumed.Round(time.Millisecond), retries)
}

// goroutineDump stops a process with SIGQUIT and returns the goroutines the Go
// runtime then prints that run the module's code, so a stalled process shows where.
func goroutineDump(t *testing.T, p *proc) string {
	t.Helper()
	before := len(p.stderr.String())
	if err := p.cmd.Process.Signal(syscall.SIGQUIT); err != nil {
		return err.Error()
	}
	p.wait(t, 10*time.Second)
	// Goroutines stuck at the same place are told once, with their number.
	count := map[string]int{}
	var order []string
	for _, g := range strings.Split(p.stderr.String()[before:], "\n\n") {
		if !strings.Contains(g, "refresher/refresher/") {
			continue
		}
		head, full, _ := strings.Cut(g, "\n")
		var frames []string
		for _, l := range strings.Split(full, "\n") {
			l = strings.TrimSpace(l)
			if !strings.Contains(l, "refresher/refresher/") || strings.HasPrefix(l, "/") || strings.HasPrefix(l, "created by") {
				continue
			}
			if i := strings.LastIndex(l, "("); i > 0 && strings.HasSuffix(l, ")") {
				l = l[:i] // the arguments: addresses, different in every goroutine
			}
			frames = append(frames, "  "+l)
		}
		stack := strings.Join(frames, "\n")
		state := head
		if i := strings.Index(head, "["); i >= 0 {
			state = head[i:]
		}
		key := state + "\n" + stack
		if count[key] == 0 {
			order = append(order, key)
		}
		count[key]++
	}
	var out []string
	for _, k := range order {
		out = append(out, fmt.Sprintf("%d goroutine(s) %s", count[k], k))
	}
	return strings.Join(out, "\n\n")
}

// jetStreamView describes the REFRESH stream and its durables as the server at url
// answers about them, each with its leader and replicas, or the error.
func jetStreamView(url string) string {
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second))
	if err != nil {
		return err.Error()
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err.Error()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	replicas := func(ci *jetstream.ClusterInfo) string {
		if ci == nil {
			return "not clustered"
		}
		out := "leader " + ci.Leader
		for _, r := range ci.Replicas {
			out += fmt.Sprintf(", %s current=%t lag=%d seen %s ago", r.Name, r.Current, r.Lag, r.Active.Round(time.Millisecond))
		}
		return out
	}
	s, err := js.Stream(ctx, stream.Stream)
	if err != nil {
		return "stream: " + err.Error()
	}
	si, err := s.Info(ctx)
	if err != nil {
		return "stream info: " + err.Error()
	}
	lines := []string{fmt.Sprintf("stream %s: %d messages, last seq %d; %s", stream.Stream, si.State.Msgs, si.State.LastSeq, replicas(si.Cluster))}
	for _, name := range []string{consumer.Durable, consumer.ServiceDurable("github")} {
		c, err := s.Consumer(ctx, name)
		if err != nil {
			lines = append(lines, name+": "+err.Error())
			continue
		}
		ci, err := c.Info(ctx)
		if err != nil {
			lines = append(lines, name+" info: "+err.Error())
			continue
		}
		lines = append(lines, fmt.Sprintf("%s: ack floor %d, delivered %d, pending %d, awaiting ack %d, redelivered %d, pulls waiting %d; %s",
			name, ci.AckFloor.Stream, ci.Delivered.Stream, ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.NumWaiting, replicas(ci.Cluster)))
	}
	return strings.Join(lines, "\n")
}

// jetStreamLines is the last n lines of a node's log that speak of JetStream
// (leaders, catch-up, warnings and errors), without the route connections' churn.
func jetStreamLines(log string, n int) string {
	var keep []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "Route connection") || strings.Contains(l, "Router connection") || strings.Contains(l, "to connect to route") {
			continue
		}
		if strings.Contains(l, `"level":"WARN"`) || strings.Contains(l, `"level":"ERROR"`) || strings.Contains(l, "JetStream") || strings.Contains(l, "atchup") {
			keep = append(keep, l)
		}
	}
	return lastLines(strings.Join(keep, "\n"), n)
}

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
