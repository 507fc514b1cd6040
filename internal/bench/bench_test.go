package bench

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestValidateNamesTheBadValue(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Options)
		want   string
	}{
		{"too few rows", func(o *Options) { o.Rows = 9 }, "rows 9"},
		{"no requests", func(o *Options) { o.Requests = 0 }, "requests 0"},
		{"no sweep requests", func(o *Options) { o.SweepRequests = 0 }, "sweep requests 0"},
		{"no concurrency", func(o *Options) { o.Concurrencies = nil }, "no consume concurrency"},
		{"zero concurrency", func(o *Options) { o.Concurrencies = []int{8, 0} }, "concurrency 0"},
		{"huge slow concurrency", func(o *Options) { o.SlowConcurrencies = []int{5000} }, "concurrency 5000"},
		{"no slow concurrency", func(o *Options) { o.SlowConcurrencies = nil }, "no slow-provider concurrency"},
		{"instant slow provider", func(o *Options) { o.SlowLatency = 0 }, "slow provider latency 0s"},
		{"no slow rounds", func(o *Options) { o.SlowRounds = 0 }, "slow rounds 0"},
		{"rate zero", func(o *Options) { o.LatencyRate = 0 }, "latency rate 0/s"},
		{"no latency duration", func(o *Options) { o.LatencyDuration = -time.Second }, "latency duration -1s"},
		{"one request per row", func(o *Options) { o.DuplicateFactor = 1 }, "duplicates 5000 rows x 1"},
		{"no skip requests", func(o *Options) { o.SkipRequests = 0 }, "skip requests 0"},
		{"tiny pool", func(o *Options) { o.MaxConns = 3 }, "max connections 3"},
		{"no binary", func(o *Options) { o.Exe = "" }, "no refresher binary"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := DefaultOptions()
			o.Exe = "/bin/refresher"
			tt.change(&o)
			err := o.Validate()
			if !errors.Is(err, ErrOptions) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want ErrOptions naming %q", err, tt.want)
			}
		})
	}
	for _, o := range []Options{DefaultOptions(), QuickOptions()} {
		o.Exe = "/bin/refresher"
		if err := o.Validate(); err != nil {
			t.Errorf("built-in options refused: %v", err)
		}
	}
}

func TestAckStreamSeq(t *testing.T) {
	tests := []struct {
		subject string
		want    uint64
		ok      bool
	}{
		{"$JS.ACK.REFRESH.refresher.1.42.40.1764180000000000000.7", 42, true},
		{"$JS.ACK.hub.ACCHASH.REFRESH.refresher.2.43.41.1764180000000000000.0.tok", 43, true},
		{"$JS.ACK.REFRESH.refresher.1.x.40.1764180000000000000.7", 0, false},
		{"$JS.ACK.REFRESH.refresher", 0, false},
	}
	for _, tt := range tests {
		got, ok := ackStreamSeq(tt.subject)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ackStreamSeq(%q) = %d, %v; want %d, %v", tt.subject, got, ok, tt.want, tt.ok)
		}
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for _, tt := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0, time.Millisecond}} {
		if got := percentile(ds, tt.p); got != tt.want {
			t.Errorf("p%.0f = %s, want %s", tt.p, got, tt.want)
		}
	}
	if ds[0] != 100*time.Millisecond {
		t.Error("percentile sorted its input in place")
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("p50 of nothing = %s", got)
	}
}

func TestCompareSQL(t *testing.T) {
	consumer := []string{
		shape(`BEGIN`),
		shape(`SET LOCAL lock_timeout = 5000`),
		shape(`SELECT "c"."id" FROM "credentials" AS "c" WHERE (id = 17) AND (service = 'cons') FOR UPDATE`),
		shape(`INSERT INTO "refresh_attempts" VALUES (17, 3, now())`),
		shape(`UPDATE "credentials" SET refresh_token = 'rt-it''s', refreshed_at = '2026-11-26 10:00:00.5+00:00' WHERE (id = 17)`),
		shape(`COMMIT`),
	}
	baseline := []string{
		shape(`BEGIN`),
		shape(`SET LOCAL lock_timeout = 5000`),
		shape(`SELECT "c"."id" FROM "credentials" AS "c" WHERE (id = 18) AND (service = 'cons') FOR UPDATE`),
		shape(`UPDATE "credentials" SET refresh_token = 'other', refreshed_at = '2026-11-26 11:00:00+00:00' WHERE (id = 18)`),
		shape(`COMMIT`),
	}
	missing, extra := compareSQL(consumer, baseline)
	if len(missing) != 0 {
		t.Errorf("missing %q, want none: literals should not count", missing)
	}
	if want := []string{`INSERT INTO "refresh_attempts" VALUES (?, ?, now())`}; !slices.Equal(extra, want) {
		t.Errorf("extra %q, want %q", extra, want)
	}
	// A baseline statement the consumer does not send is reported, not hidden.
	missing, _ = compareSQL(consumer[:3], baseline)
	if len(missing) != 2 || !strings.HasPrefix(missing[0], "UPDATE") {
		t.Errorf("missing %q, want the UPDATE and COMMIT", missing)
	}
}

func TestJudge(t *testing.T) {
	rep := &Report{}
	rep.Consume.Best.Ratio = 0.8
	rep.Publish.Ratio = 0.69
	rep.Publish.RSS.Ratio = 1.2
	rep.Duplicates.CallsPerRow = 1
	rep.Skip.DB.RowsUpdated = 1
	rep.Consume.BestBatch.Ratio = 2
	rep.judge()
	got := map[string]bool{}
	for _, tg := range rep.Targets {
		got[tg.Name] = tg.Pass
	}
	want := map[string]bool{
		TargetConsume:    true,
		TargetPublish:    false,
		TargetRSS:        false,
		TargetDuplicates: true,
		TargetSkipWrites: false,
		TargetBatch:      true,
	}
	if len(got) != len(want) {
		t.Fatalf("targets %v, want %v", got, want)
	}
	for name, pass := range want {
		if got[name] != pass {
			t.Errorf("%s: pass %v, want %v", name, got[name], pass)
		}
	}
	if rep.Missed() != 3 {
		t.Errorf("Missed() = %d, want 3", rep.Missed())
	}
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	if strings.Count(b.String(), "MISS") != 3 || strings.Count(b.String(), "PASS") != 2 {
		t.Errorf("table does not show 3 MISS and 2 PASS:\n%s", b.String())
	}
}

func TestNum(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 12.34: "12.3", 999: "999", 1000: "1,000", 1234567.8: "1,234,568", -4321: "-4,321"} {
		if got := num(in); got != want {
			t.Errorf("num(%v) = %q, want %q", in, got, want)
		}
	}
}
