package bench

import (
	"encoding/json"
	"errors"
	"slices"
	"strconv"
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
		{"cap below the pool", func(o *Options) { o.MaxConns = 3 }, "max connections 3"},
		{"no pool", func(o *Options) { o.Pool = 0 }, "pool 0"},
		{"huge pool", func(o *Options) { o.Pool = 65 }, "pool 65"},
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

// claimCallCommit is what the consumer sends for one refresh (as recorded from bun's
// query hook): a claim transaction and a commit transaction.
func claimCallCommit(id, claim string) []string {
	begin := []string{
		`BEGIN`,
		`SET LOCAL lock_timeout = 5000; SET LOCAL synchronous_commit = on`,
		`SELECT c.*, c.claim_expires_at > now() AS claim_live, extract(epoch FROM now() - c.claim_started_at)::float8 AS claim_age ` +
			`FROM "credentials" AS "c" WHERE (c.id = ` + id + `) FOR UPDATE OF c`,
		`SAVEPOINT rows`,
	}
	stmts := append(append([]string{}, begin...),
		`UPDATE credentials AS c SET claim_id = v.claim, claim_owner = 'host-1'::text, claim_started_at = now(),
			claim_expires_at = now() + 28000::bigint * interval '1 millisecond'
		FROM (VALUES (`+id+`::bigint, `+claim+`::bigint)) AS v (id, claim) WHERE c.id = v.id`,
		`RELEASE SAVEPOINT rows`,
		`COMMIT`)
	stmts = append(stmts, begin...)
	stmts = append(stmts,
		`UPDATE credentials AS c SET
			access_token = v.access_token, refresh_token = v.refresh_token, expires_at = v.expires_at,
			refreshed_at = v.refreshed_at, version = c.version + 1, failures = 0, last_error = NULL, updated_at = now(),
			claim_id = NULL, claim_owner = NULL, claim_started_at = NULL, claim_expires_at = NULL
		FROM (VALUES (`+id+`::bigint, 'at-it''s'::text, 'rt'::text, '2026-12-01 10:00:00+00:00'::timestamptz, `+
			`'2026-12-01 09:00:00.5+00:00'::timestamptz, `+claim+`::bigint)) AS v (id, access_token, refresh_token, expires_at, refreshed_at, claim_id)
		WHERE c.id = v.id AND c.claim_id IS NOT DISTINCT FROM v.claim_id`,
		`RELEASE SAVEPOINT rows`,
		`COMMIT`)
	for i, q := range stmts {
		stmts[i] = shape(q)
	}
	return stmts
}

func TestCompareSQL(t *testing.T) {
	consumer := claimCallCommit("17", "4611686018427387")
	// RefreshNow sends the same statements for another row and claim.
	direct := claimCallCommit("18", "99")
	missing, extra := compareSQL(consumer, direct, nil)
	if len(missing) != 0 || len(extra) != 0 {
		t.Errorf("missing %q, extra %q; want none: literals should not count", missing, extra)
	}
	// A baseline statement the consumer does not send is reported, not hidden.
	missing, _ = compareSQL(consumer[:11], direct, nil)
	if len(missing) != 3 || !strings.HasPrefix(missing[0], "UPDATE credentials AS c SET\n") || missing[2] != "COMMIT" {
		t.Errorf("missing %q, want the commit transaction's last 3 statements", missing)
	}

	// The bare lock-and-update, written with bun's builders, compares by kind: what
	// the consumer sends beyond it is the claim transaction and the savepoints.
	minimal := []string{
		shape(`BEGIN`),
		shape(`SET LOCAL lock_timeout = 5000`),
		shape(`SELECT "c"."id", "c"."refresh_token" FROM "credentials" AS "c" WHERE (id = 18) AND (service = 'cons') FOR UPDATE`),
		shape(`UPDATE "credentials" AS "c" SET access_token = 'a', refresh_token = 'rt-it''s', refreshed_at = '2026-11-26 10:00:00.5+00:00' WHERE (id = 18)`),
		shape(`COMMIT`),
	}
	missing, extra = compareSQL(consumer, minimal, stmtKind)
	if len(missing) != 0 {
		t.Errorf("by kind, missing %q, want none", missing)
	}
	want := []string{
		"SAVEPOINT", "UPDATE credentials SET claim_id …", "RELEASE SAVEPOINT", "COMMIT",
		"BEGIN", "SET LOCAL", "SELECT credentials FOR UPDATE", "SAVEPOINT", "RELEASE SAVEPOINT",
	}
	if !slices.Equal(extra, want) {
		t.Errorf("by kind, extra\n%q\nwant\n%q", extra, want)
	}
	// A claim alone lacks the bare transaction's token UPDATE and its COMMIT after it.
	missing, _ = compareSQL(consumer[:7], minimal, stmtKind)
	if !slices.Equal(missing, []string{"UPDATE credentials SET access_token …", "COMMIT"}) {
		t.Errorf("by kind, missing %q, want the token UPDATE and COMMIT", missing)
	}
}

func TestStmtKind(t *testing.T) {
	for q, want := range map[string]string{
		"begin":                                     "BEGIN",
		"SET LOCAL lock_timeout = ?":                "SET LOCAL",
		"ROLLBACK TO SAVEPOINT rows":                "ROLLBACK SAVEPOINT",
		"ROLLBACK":                                  "ROLLBACK",
		`SELECT claim_id FROM "credentials"`:        "SELECT credentials",
		`INSERT INTO "refresh_attempts" VALUES (?)`: "INSERT refresh_attempts",
		`UPDATE "credentials" AS "c" SET "failures" = failures + ?`: "UPDATE credentials SET failures …",
	} {
		if got := stmtKind(q); got != want {
			t.Errorf("stmtKind(%q) = %q, want %q", q, got, want)
		}
	}
}

func TestJudge(t *testing.T) {
	rep := &Report{}
	rep.Consume.Best.Ratio = 0.8
	rep.Consume.Best.MinimalRatio = 0.56
	rep.Publish.Ratio = 0.69
	rep.Publish.RSS.Ratio = 1.2
	rep.Duplicates.CallsPerRow = 1
	rep.Skip.DB.RowsUpdated = 1
	rep.Consume.BestBatch.Ratio = 2
	// The largest in-flight point is judged, wherever it is listed.
	rep.Slow.Points = []SlowPoint{
		{InFlight: 1024, Ratio: 0.8, Conns: ConnPeaks{Peak: 8}},
		{InFlight: 64, Ratio: 0.1, Conns: ConnPeaks{Peak: 9}},
	}
	rep.judge()
	got := map[string]bool{}
	for _, tg := range rep.Targets {
		got[tg.Name] = tg.Pass
	}
	want := map[string]bool{
		TargetConsume:    true,
		TargetMinimal:    false,
		TargetPublish:    false,
		TargetRSS:        false,
		TargetDuplicates: true,
		TargetSkipWrites: false,
		TargetBatch:      true,
		TargetSlow:       true,
		TargetSlowConns:  true,
	}
	if len(got) != len(want) {
		t.Fatalf("targets %v, want %v", got, want)
	}
	for name, pass := range want {
		if got[name] != pass {
			t.Errorf("%s: pass %v, want %v", name, got[name], pass)
		}
	}
	if rep.Missed() != 4 {
		t.Errorf("Missed() = %d, want 4", rep.Missed())
	}
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	// The table shows every target but the batch one, which needs a batch row:
	// publish, RSS, minimal and skip writes missed; the other four passed.
	if strings.Count(b.String(), "MISS") != 4 || strings.Count(b.String(), "PASS") != 4 {
		t.Errorf("table does not show 4 MISS and 4 PASS:\n%s", b.String())
	}

	// With no slow-provider point, there are no connections to judge: missed.
	rep = &Report{}
	rep.judge()
	for _, tg := range rep.Targets {
		if tg.Name == TargetSlowConns && tg.Pass {
			t.Errorf("%s passed with no point measured", tg.Name)
		}
	}
}

func TestNum(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 12.34: "12.3", 999: "999", 1000: "1,000", 1234567.8: "1,234,568", -4321: "-4,321"} {
		if got := num(in); got != want {
			t.Errorf("num(%v) = %q, want %q", in, got, want)
		}
	}
}

// TestTargetFigures checks that every target names where its value is in the JSON
// report, and that the value there is the one judged.
func TestTargetFigures(t *testing.T) {
	rep := &Report{}
	rep.Consume.Best.Ratio = 0.91
	rep.Consume.Best.MinimalRatio = 0.61
	rep.Consume.BestBatch.Ratio = 2.5
	rep.Publish.Ratio = 0.93
	rep.Publish.RSS.Ratio = 1.02
	rep.Duplicates.CallsPerRow = 1.001
	rep.Slow.Points = []SlowPoint{{InFlight: 64, Ratio: 0.5}, {InFlight: 1024, Ratio: 0.85, Conns: ConnPeaks{Peak: 7}}, {InFlight: 256}}
	rep.judge()
	var b strings.Builder
	if err := rep.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal([]byte(b.String()), &doc); err != nil {
		t.Fatal(err)
	}
	for _, tg := range rep.Targets {
		v, ok := lookup(doc, tg.Figure)
		if !ok {
			t.Errorf("%s: figure %q not in the report", tg.Name, tg.Figure)
			continue
		}
		if v != tg.Value {
			t.Errorf("%s: %s is %v, target judged %v", tg.Name, tg.Figure, v, tg.Value)
		}
	}
}

// lookup follows a path like "a.b[2].c" through decoded JSON to a number.
func lookup(doc any, path string) (float64, bool) {
	for _, part := range strings.Split(path, ".") {
		name, idx, indexed := strings.Cut(part, "[")
		m, ok := doc.(map[string]any)
		if !ok {
			return 0, false
		}
		if doc, ok = m[name]; !ok {
			return 0, false
		}
		if indexed {
			i, err := strconv.Atoi(strings.TrimSuffix(idx, "]"))
			a, ok := doc.([]any)
			if err != nil || !ok || i < 0 || i >= len(a) {
				return 0, false
			}
			doc = a[i]
		}
	}
	f, ok := doc.(float64)
	return f, ok
}

func TestSplitStatements(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want []string
	}{
		{"BEGIN; SET LOCAL lock_timeout = 5; SET LOCAL synchronous_commit = on", []string{"BEGIN", "SET LOCAL lock_timeout = 5", "SET LOCAL synchronous_commit = on"}},
		{`UPDATE t SET a = 'x; y', "b;c" = 1; COMMIT`, []string{`UPDATE t SET a = 'x; y', "b;c" = 1`, "COMMIT"}},
		{"SELECT 'it''s; fine'", []string{"SELECT 'it''s; fine'"}},
		{"COMMIT;", []string{"COMMIT"}},
	} {
		if got := splitStatements(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("splitStatements(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
