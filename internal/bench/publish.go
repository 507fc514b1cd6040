package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/internal/natsconn"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
)

// PublishFigure is figure 1: the publisher's acknowledged rate over a keyset scan,
// beside a raw PublishAsync loop of the same messages, and the publish command's
// peak memory at two sizes.
type PublishFigure struct {
	Rows int `json:"rows"`
	// Rate is acknowledged messages per second of (*publisher.Publisher).PublishScan.
	Rate    float64 `json:"rate"`
	Seconds float64 `json:"seconds"`
	// BaselineRate is the same count of identical messages (subject, Nats-Msg-Id)
	// published by a bare jetstream PublishMsgAsync loop with the same in-flight
	// bound, in the same process, on an empty stream like the scan's.
	BaselineRate    float64   `json:"baseline_rate"`
	BaselineSeconds float64   `json:"baseline_seconds"`
	Ratio           float64   `json:"ratio"`
	MessageBytes    int       `json:"message_bytes"`
	RSS             RSSFigure `json:"rss"`
}

// RSSFigure is the peak resident memory of `refresher publish`, run as a child
// process against the bench's nats-server and database, at two row counts.
type RSSFigure struct {
	SmallRows int     `json:"small_rows"`
	SmallKiB  int64   `json:"small_kib"`
	SmallRate float64 `json:"small_rate"`
	LargeRows int     `json:"large_rows"`
	LargeKiB  int64   `json:"large_kib"`
	LargeRate float64 `json:"large_rate"`
	// Ratio is LargeKiB / SmallKiB: 1 means memory does not grow with the row count.
	Ratio float64 `json:"ratio"`
}

// maxInFlight is the publisher's default window, used by both sides of the figure.
const maxInFlight = 1024

func (r *rig) publishFigure(ctx context.Context, rep *Report) error {
	n := r.opts.Rows
	ids, err := r.ids(ctx, servicePublish)
	if err != nil {
		return err
	}
	if len(ids) != n {
		return fmt.Errorf("%d %s rows seeded, want %d", len(ids), servicePublish, n)
	}
	f := PublishFigure{Rows: n}

	if err := r.resetStreams(ctx); err != nil {
		return err
	}
	raw, err := r.rawPublish(ctx, ids)
	if err != nil {
		return err
	}
	f.BaselineRate, f.BaselineSeconds, f.MessageBytes = raw.rate, raw.seconds, raw.msgBytes

	if err := r.resetStreams(ctx); err != nil {
		return err
	}
	nc, err := natsconn.Local(r.ns.URL(), "refresher-bench-publish", r.log)
	if err != nil {
		return err
	}
	defer nc.Close()
	p, err := publisher.New(nc, publisher.WithLogger(r.quiet))
	if err != nil {
		return err
	}
	db, err := model.Open(ctx, r.dbURL, 2) // as `refresher publish` opens it
	if err != nil {
		return err
	}
	defer db.Close()
	start := time.Now()
	res, err := p.PublishScan(ctx, db, publisher.Scan{Service: servicePublish})
	elapsed := time.Since(start)
	if err != nil {
		return err
	}
	if res.Published != n {
		return fmt.Errorf("PublishScan stored %d of %d (duplicate %d, failed %d)", res.Published, n, res.Duplicate, res.Failed)
	}
	f.Rate, f.Seconds = float64(res.Published)/elapsed.Seconds(), elapsed.Seconds()
	f.Ratio = ratio(f.Rate, f.BaselineRate)
	r.log.Info("bench: publish", "scan_rate", int(f.Rate), "raw_rate", int(f.BaselineRate))

	f.RSS.SmallRows, f.RSS.LargeRows = smallRows(n), n
	if err := r.resetStreams(ctx); err != nil {
		return err
	}
	if f.RSS.SmallKiB, f.RSS.SmallRate, err = r.childPublish(ctx, f.RSS.SmallRows, "--expiring-within", soonWindow.String()); err != nil {
		return err
	}
	if err := r.resetStreams(ctx); err != nil {
		return err
	}
	if f.RSS.LargeKiB, f.RSS.LargeRate, err = r.childPublish(ctx, f.RSS.LargeRows); err != nil {
		return err
	}
	f.RSS.Ratio = ratio(float64(f.RSS.LargeKiB), float64(f.RSS.SmallKiB))
	rep.Publish = f
	return r.resetStreams(ctx)
}

type rawResult struct {
	rate, seconds float64
	msgBytes      int
}

// rawPublish is the baseline: the messages PublishScan would send for ids, built the
// same way (subject, Nats-Msg-Id of the current window), sent by a bare async loop
// that lets the library bound the in-flight window.
func (r *rig) rawPublish(ctx context.Context, ids []int64) (rawResult, error) {
	nc, err := natsconn.Local(r.ns.URL(), "refresher-bench-raw", r.log)
	if err != nil {
		return rawResult{}, err
	}
	defer nc.Close()
	var failed atomic.Int64
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(maxInFlight),
		jetstream.WithPublishAsyncTimeout(5*time.Second),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { failed.Add(1) }),
	)
	if err != nil {
		return rawResult{}, fmt.Errorf("jetstream: %w", err)
	}
	window := time.Now().UTC().Truncate(15 * time.Minute) // the publisher's default window
	msg := func(id int64) *nats.Msg {
		key := model.Key{Service: servicePublish, ID: id}
		m := nats.NewMsg(key.Subject())
		m.Header.Set(jetstream.MsgIDHeader, publisher.MsgID(key, window))
		return m
	}
	size := msg(ids[len(ids)-1]).Size()
	start := time.Now()
	for _, id := range ids {
		m := msg(id)
		for {
			_, err := js.PublishMsgAsync(m, jetstream.WithStallWait(10*time.Second))
			if err == nil {
				break
			}
			if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				return rawResult{}, fmt.Errorf("raw PublishMsgAsync: %w", err)
			}
		}
		if ctx.Err() != nil {
			return rawResult{}, ctx.Err()
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return rawResult{}, ctx.Err()
	}
	elapsed := time.Since(start)
	acked := int64(len(ids)) - failed.Load()
	if acked != int64(len(ids)) {
		return rawResult{}, fmt.Errorf("raw PublishMsgAsync: %d of %d not acknowledged", failed.Load(), len(ids))
	}
	return rawResult{rate: float64(acked) / elapsed.Seconds(), seconds: elapsed.Seconds(), msgBytes: size}, nil
}

var (
	// publish prints unknown= (and collided= when any) between failed= and elapsed=.
	publishedRe = regexp.MustCompile(`published=(\d+) duplicate=(\d+) failed=(\d+) (?:\S+ )*?elapsed=(\S+)`)
	peakRe      = regexp.MustCompile(PeakRSSKey + `=(\d+)`)
)

// PeakRSSKey names the peak-RSS line a publish child prints last: PeakRSSKey=<KiB>.
const PeakRSSKey = "vmhwm_kib"

// PeakRSSKiB is this process's peak resident set (VmHWM of /proc/self/status), in
// KiB. The kernel's ru_maxrss would not do for a child: Go starts children with
// vfork semantics, and exec carries the parent's high-water mark into it.
func PeakRSSKiB() (int64, error) {
	for _, line := range strings.Split(readFile("/proc/self/status"), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmHWM %q: %w", rest, err)
			}
			return kib, nil
		}
	}
	return 0, errors.New("no VmHWM in /proc/self/status (not Linux?)")
}

// childPublish runs `refresher publish` for the publish service in a child process
// (Options.Exe with Options.ExeArgs, which print the peak RSS after publishing) and
// returns that peak and the child's rate. A child's peak owes nothing to the
// seeding or to the nats-server living in this process.
func (r *rig) childPublish(ctx context.Context, want int, extra ...string) (int64, float64, error) {
	args := append(append(slices.Clone(r.opts.ExeArgs), "--service", servicePublish), extra...)
	cmd := exec.CommandContext(ctx, r.opts.Exe, args...)
	cmd.Env = append(childEnv(),
		"DATABASE_URL="+r.dbURL,
		"NATS_URL="+r.ns.URL(),
		"REFRESHER_LOG_LEVEL=warn",
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	line := r.opts.Exe + " " + strings.Join(args, " ")
	if err := cmd.Run(); err != nil {
		return 0, 0, fmt.Errorf("%s: %w: %s", line, err, strings.TrimSpace(stderr.String()))
	}
	m := publishedRe.FindStringSubmatch(stdout.String())
	if m == nil {
		return 0, 0, fmt.Errorf("%s printed no counts: %q", line, stdout.String())
	}
	published, _ := strconv.Atoi(m[1])
	if published != want {
		return 0, 0, fmt.Errorf("%s stored %d messages, want %d: %s", line, published, want, m[0])
	}
	elapsed, err := time.ParseDuration(m[4])
	if err != nil || elapsed <= 0 {
		return 0, 0, fmt.Errorf("%s printed elapsed %q", line, m[4])
	}
	p := peakRe.FindStringSubmatch(stdout.String())
	if p == nil {
		return 0, 0, fmt.Errorf("%s printed no %s: %q", line, PeakRSSKey, stdout.String())
	}
	kib, _ := strconv.ParseInt(p[1], 10, 64)
	if kib <= 0 {
		return 0, 0, fmt.Errorf("%s printed %s", line, p[0])
	}
	return kib, float64(published) / elapsed.Seconds(), nil
}

// childEnv is this process's environment without refresher's own variables, so the
// child runs on defaults whatever the caller has exported.
func childEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "REFRESHER_") || k == "DATABASE_URL" || k == "NATS_URL" {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// ratio is a/b, 0 when b is 0.
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
