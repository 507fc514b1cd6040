package bench

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is everything one run measured. Every rate is per second, every figure
// carries its baseline from the same run and their ratio.
type Report struct {
	Quick   bool      `json:"quick"`
	Started time.Time `json:"started"`
	Elapsed float64   `json:"elapsed_s"`
	// Database is the database the run created, and dropped when it ended.
	Database   string           `json:"database"`
	Machine    Machine          `json:"machine"`
	Seed       SeedFigure       `json:"seed"`
	Publish    PublishFigure    `json:"publish"`
	Consume    ConsumeFigure    `json:"consume"`
	Latency    LatencyFigure    `json:"latency"`
	Slow       SlowFigure       `json:"slow_provider"`
	Duplicates DuplicatesFigure `json:"duplicates"`
	Skip       SkipFigure       `json:"skip"`
	Limits     LimitsFigure     `json:"limits"`
	Targets    []Target         `json:"targets"`
}

// Target is one of the targets, judged on this run's ratio.
type Target struct {
	Name string `json:"name"`
	// Figure is where Value is in the JSON report.
	Figure string  `json:"figure"`
	Value  float64 `json:"value"`
	Op     string  `json:"op"`
	Limit  float64 `json:"limit"`
	Pass   bool    `json:"pass"`
}

// Targets (issues 5 and 8): their names, as in Report.Targets, and limits.
const (
	TargetConsume    = "per-row consume / direct claim-call-commit (RefreshNow), same calls in flight and pool"
	TargetMinimal    = "per-row consume / bare lock-and-update, same connections"
	TargetPublish    = "publish / raw PublishAsync"
	TargetRSS        = "publish peak RSS, large / small row count"
	TargetDuplicates = "provider calls per row, duplicated requests"
	TargetSkipWrites = "rows written by the skip path"
	TargetBatch      = "batched commits / bare lock-and-update, same connections"
	TargetSlow       = "slow provider, most calls in flight: rate / min(ideal, instant-provider per-row rate)"
	TargetSlowConns  = "slow provider, most calls in flight: peak database connections"

	targetConsumeRatio = 0.8
	// targetMinimalRatio is what the consumer reached before claims (issue 8: "today
	// 0.57x; do not fall below").
	targetMinimalRatio = 0.57
	targetPublishRatio = 0.7
	targetBatchRatio   = 2.0
	targetRSSRatio     = 1.10
	targetCallsPerRow  = 1.05
	targetSlowRatio    = 0.8
	targetSlowConns    = 8
)

// judge sets Targets from the figures.
func (rep *Report) judge() {
	atLeast := func(name, figure string, v, limit float64) Target {
		return Target{Name: name, Figure: figure, Value: v, Op: ">=", Limit: limit, Pass: v >= limit}
	}
	atMost := func(name, figure string, v, limit float64) Target {
		return Target{Name: name, Figure: figure, Value: v, Op: "<=", Limit: limit, Pass: v <= limit}
	}
	slow, at := rep.Slow.judged()
	slowFig := fmt.Sprintf("slow_provider.points[%d]", at)
	rep.Targets = []Target{
		atLeast(TargetConsume, "consume.best.ratio", rep.Consume.Best.Ratio, targetConsumeRatio),
		atLeast(TargetMinimal, "consume.best.minimal_ratio", rep.Consume.Best.MinimalRatio, targetMinimalRatio),
		atLeast(TargetPublish, "publish.ratio", rep.Publish.Ratio, targetPublishRatio),
		atMost(TargetRSS, "publish.rss.ratio", rep.Publish.RSS.Ratio, targetRSSRatio),
		atMost(TargetDuplicates, "duplicates.calls_per_row", rep.Duplicates.CallsPerRow, targetCallsPerRow),
		atMost(TargetSkipWrites, "skip.db.rows_updated", float64(rep.Skip.DB.RowsUpdated), 0),
		atLeast(TargetBatch, "consume.best_batch.ratio", rep.Consume.BestBatch.Ratio, targetBatchRatio),
		atLeast(TargetSlow, slowFig+".ratio", slow.Ratio, targetSlowRatio),
		// No point measured means no connection count to judge: missed, not passed.
		atMost(TargetSlowConns, slowFig+".conns.peak", float64(cmp.Or(slow.Conns.Peak, math.MaxInt32)), targetSlowConns),
	}
}

// judged is the point the slow-provider targets judge, the most calls in flight,
// and its index in Points (-1: none).
func (f SlowFigure) judged() (SlowPoint, int) {
	var p SlowPoint
	at := -1
	for i, pt := range f.Points {
		if pt.InFlight >= p.InFlight {
			p, at = pt, i
		}
	}
	return p, at
}

// Missed counts the targets not met.
func (rep *Report) Missed() int {
	n := 0
	for _, t := range rep.Targets {
		if !t.Pass {
			n++
		}
	}
	return n
}

// WriteJSON writes the report as indented JSON.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// WriteTable writes the report for people: the machine, then one line per figure
// with its baseline, ratio, and target verdict.
func (rep *Report) WriteTable(w io.Writer) error {
	m := rep.Machine
	kind := "full run"
	if rep.Quick {
		kind = "quick run (--quick): sizes too small for the figures to mean much"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "refresher bench: %s, %s, started %s\n", kind, (time.Duration(rep.Elapsed * float64(time.Second))).Round(time.Second), rep.Started.Format(time.RFC3339))
	fmt.Fprintf(&b, "machine:     %s, %d cores, GOMAXPROCS %d, %.1f GiB RAM, Linux %s, %s\n",
		m.CPUModel, m.Cores, m.GOMAXPROCS, float64(m.MemTotalMiB)/1024, m.Kernel, m.GoVersion)
	fmt.Fprintf(&b, "load avg:    %s at start, %s at end\n", m.LoadAvgStart, m.LoadAvgEnd)
	fmt.Fprintf(&b, "PostgreSQL:  %s, max_connections %d, synchronous_commit %s, fsync %s, shared_buffers %s; %d other client connections at start\n",
		m.PostgreSQL, m.PGMaxConnections, m.PGSynchronousCommit, m.PGFsync, m.PGSharedBuffers, m.PGOtherBackends)
	fmt.Fprintf(&b, "nats-server: %s, %s\n", m.NATSServer, m.NATSStorage)
	fmt.Fprintf(&b, "pool:        %d connections for every consumer and baseline, whatever the calls in flight (cap %d: %s)\n",
		rep.Consume.Pool, m.PoolCap, m.PoolCapReason)
	fmt.Fprintf(&b, "seeded:      %s rows with COPY in %.1f s (%s rows/s)\n\n", num(float64(rep.Seed.Rows)), rep.Seed.Seconds, num(rep.Seed.RowsPerSec))

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FIGURE\tVALUE\tBASELINE (same run)\tRATIO\tTARGET\tRESULT")
	row := func(fig, val, base string, ratio float64, target string) {
		rs := "-"
		if ratio != 0 && !math.IsNaN(ratio) {
			rs = strconv.FormatFloat(ratio, 'f', 2, 64)
		}
		res := ""
		for _, t := range rep.Targets {
			if t.Name == target {
				res = "MISS"
				if t.Pass {
					res = "PASS"
				}
				target = t.Op + " " + strconv.FormatFloat(t.Limit, 'f', -1, 64)
			}
		}
		if res == "" {
			target = ""
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", fig, val, base, rs, target, res)
	}

	p := rep.Publish
	row(fmt.Sprintf("1 publish: PublishScan, %s rows", num(float64(p.Rows))), num(p.Rate)+" msg/s",
		fmt.Sprintf("raw PublishAsync: %s msg/s", num(p.BaselineRate)), p.Ratio, TargetPublish)
	row(fmt.Sprintf("1 publish: peak RSS, %s rows", num(float64(p.RSS.LargeRows))), mib(p.RSS.LargeKiB),
		fmt.Sprintf("%s rows: %s", num(float64(p.RSS.SmallRows)), mib(p.RSS.SmallKiB)), p.RSS.Ratio, TargetRSS)

	c := rep.Consume
	row(fmt.Sprintf("2 consume %s, %d in flight, pool %d (%d open at most), %s requests", c.Mode, c.Best.Concurrency, c.Best.Pool, c.Best.Conns.Peak, num(float64(c.Best.Requests))),
		num(c.Best.Rate)+" refresh/s", fmt.Sprintf("bare lock-and-update, %d conns: %s tx/s", c.Best.Pool, num(c.Best.MinimalRate)), c.Best.MinimalRatio, TargetMinimal)
	row("    the same consumer beside its own claim, call and commit (RefreshNow, no NATS)", num(c.Best.Rate)+" refresh/s",
		fmt.Sprintf("RefreshNow, %d in flight, pool %d: %s/s", c.Best.Concurrency, c.Best.Pool, num(c.Best.BaselineRate)), c.Best.Ratio, TargetConsume)
	row("    RefreshNow beside the bare lock-and-update (what the claim costs)", num(c.Best.BaselineRate)+" refresh/s",
		fmt.Sprintf("bare lock-and-update: %s tx/s", num(c.Best.MinimalRate)), ratio(c.Best.BaselineRate, c.Best.MinimalRate), "")
	for _, s := range c.Sweep {
		row(fmt.Sprintf("    sweep %d in flight, pool %d, %s requests", s.Concurrency, s.Pool, num(float64(s.Requests))),
			num(s.Rate)+" refresh/s", fmt.Sprintf("bare: %s tx/s, RefreshNow: %s/s", num(s.MinimalRate), num(s.BaselineRate)), s.MinimalRatio, "")
	}
	for _, b := range c.Batch {
		target := ""
		if b == c.BestBatch {
			target = TargetBatch
		}
		row(fmt.Sprintf("2 consume batched, %d per commit, %d in flight, pool %d (%d open at most), %s requests", b.BatchSize, b.Concurrency, b.Pool, b.Conns.Peak, num(float64(b.Requests))),
			num(b.Rate)+" refresh/s", fmt.Sprintf("bare lock-and-update, %d conns: %s tx/s (per-row: %s/s, %.2fx)", b.Pool, num(b.MinimalRate), num(b.PerRowRate), b.PerRowRatio), b.Ratio, target)
	}

	l := rep.Latency
	row(fmt.Sprintf("3 latency at %d/s (achieved %.0f), %d in flight: publish to ack after commit", l.Rate, l.AchievedRate, l.Concurrency),
		fmt.Sprintf("p50 %.1f ms, p99 %.1f ms", l.AckP50Ms, l.AckP99Ms),
		fmt.Sprintf("RefreshNow: p50 %.1f ms, p99 %.1f ms", l.BaselineP50Ms, l.BaselineP99Ms), l.Ratio, "")
	row("    publish to refreshed_at (provider call began)", fmt.Sprintf("p50 %.1f ms, p99 %.1f ms", l.RefreshedP50Ms, l.RefreshedP99Ms), "", 0, "")

	s := rep.Slow
	judged, _ := s.judged()
	for _, pt := range s.Points {
		target, connTarget := "", ""
		if pt.InFlight == judged.InFlight {
			target, connTarget = TargetSlow, TargetSlowConns
		}
		row(fmt.Sprintf("4 slow provider %.0f ms, %s in flight, pool %d", s.LatencyMs, num(float64(pt.InFlight)), pt.Pool),
			num(pt.Rate)+" refresh/s", fmt.Sprintf("min(ideal %s/s, instant per-row %s/s); RefreshNow %s/s", num(pt.IdealRate), num(pt.InstantRate), num(pt.BaselineRate)), pt.Ratio, target)
		row("    peak connections open (busy at once; waits for one)", fmt.Sprintf("%d (%d busy; %s waits, %.0f ms)", pt.Conns.Peak, pt.Conns.InUse, num(float64(pt.Conns.WaitCount)), pt.Conns.WaitMs),
			fmt.Sprintf("pool %d, %s in flight", pt.Pool, num(float64(pt.InFlight))), 0, connTarget)
	}

	d := rep.Duplicates
	row(fmt.Sprintf("5 duplicates: %d per row, %s rows, %d in flight", d.PerRow, num(float64(d.Rows)), d.Concurrency),
		fmt.Sprintf("%.3f calls/row", d.CallsPerRow), fmt.Sprintf("%s provider calls, %s skipped", num(float64(d.ProviderCalls)), num(float64(d.Skipped))), 0, TargetDuplicates)
	row("5 duplicates: handling time of a skip (mean, lock wait included)", fmt.Sprintf("%s µs", num(d.SkipMicros)), fmt.Sprintf("of a refresh: %s µs", num(d.RefreshMicros)), d.Ratio, "")

	k := rep.Skip
	row(fmt.Sprintf("6 skip path: %s requests, %d in flight", num(float64(k.Requests)), k.Concurrency), fmt.Sprintf("%s skip/s (%s µs each)", num(k.Rate), num(ratio(1e6, k.Rate))),
		fmt.Sprintf("refresh, %d in flight: %s/s (%s µs each)", k.Concurrency, num(k.BaselineRate), num(ratio(1e6, k.BaselineRate))), k.Ratio, "")
	row("6 skip path: rows updated (tup_updated)", num(float64(k.DB.RowsUpdated)),
		fmt.Sprintf("refresh: %s (%.2f per message)", num(float64(k.BaselineDB.RowsUpdated)), k.BaselineDB.perMessage(k.BaselineDB.RowsUpdated)), 0, TargetSkipWrites)
	row("6 skip path: commits per message", fmt.Sprintf("%.3f (%s rollbacks)", k.DB.perMessage(k.DB.Commits), num(float64(k.DB.Rollbacks))),
		fmt.Sprintf("refresh: %.3f", k.BaselineDB.perMessage(k.BaselineDB.Commits)), ratio(k.DB.perMessage(k.DB.Commits), k.BaselineDB.perMessage(k.BaselineDB.Commits)), "")
	row("6 skip path: WAL bytes per message (whole server)", num(k.DB.perMessage(k.DB.WALBytes)),
		"refresh: "+num(k.BaselineDB.perMessage(k.BaselineDB.WALBytes)), ratio(k.DB.perMessage(k.DB.WALBytes), k.BaselineDB.perMessage(k.BaselineDB.WALBytes)), "")
	lf := rep.Limits
	row(fmt.Sprintf("7 provider limits that never bind (rate, cap, circuit via the shared bucket), %s requests, %d in flight", num(float64(lf.Requests)), lf.Concurrency),
		fmt.Sprintf("%s refresh/s (%+.0f µs per call)", num(lf.Rate), lf.CostMicros),
		fmt.Sprintf("no limits: %s refresh/s", num(lf.BaselineRate)), lf.Ratio, "")
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintf(&b, "\nslow provider: %s\n", s.Flattens)
	if len(c.MinimalSQL) > 0 {
		fmt.Fprintf(&b, "claim cost: per refresh the consumer sends %d statements, the bare lock-and-update %d; beyond it:\n    %s\n",
			len(c.SQL), len(c.MinimalSQL), strings.Join(c.MinimalExtra, "; "))
		if len(c.MinimalMissing) > 0 {
			fmt.Fprintf(&b, "    and the bare transaction sends %d kinds of statement the consumer does not: %s\n", len(c.MinimalMissing), strings.Join(c.MinimalMissing, "; "))
		}
	}
	switch {
	case len(c.SQLMissing) > 0:
		fmt.Fprintf(&b, "baseline SQL: MISMATCH, the consumer does not send %d of RefreshNow's statements; figures 2-4 compare unlike work:\n", len(c.SQLMissing))
		for _, s := range c.SQLMissing {
			fmt.Fprintf(&b, "    %s\n", s)
		}
	case len(c.SQLExtra) == 0:
		fmt.Fprintf(&b, "baseline SQL: RefreshNow sends exactly the consumer's %d statements (literal values aside)\n", len(c.SQL))
	default:
		fmt.Fprintf(&b, "baseline SQL: RefreshNow sends %d of the consumer's %d statements per message, in its order; "+
			"the consumer's side of figures 2-4 also pays for:\n", len(c.BaselineSQL), len(c.SQL))
		for _, s := range c.SQLExtra {
			fmt.Fprintf(&b, "    %s\n", s)
		}
	}
	fmt.Fprintf(&b, "targets: %d of %d met\n", len(rep.Targets)-rep.Missed(), len(rep.Targets))
	// tabwriter pads the empty last columns; trailing blanks help nobody.
	lines := strings.Split(b.String(), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	_, err := io.WriteString(w, strings.Join(lines, "\n"))
	return err
}

// mib formats KiB as MiB.
func mib(kib int64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }

// num formats a figure with thousands separators, and small ones with a decimal.
func num(f float64) string {
	if f < 100 && f != math.Trunc(f) {
		return strconv.FormatFloat(f, 'f', 1, 64)
	}
	s := strconv.FormatInt(int64(math.Round(f)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}
