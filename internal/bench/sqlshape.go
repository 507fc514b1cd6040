package bench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/uptrace/bun"

	"github.com/refresher/refresher/model"
)

// sqlRecorder is a bun query hook that keeps the shape of every statement run
// through its handle.
type sqlRecorder struct {
	mu    sync.Mutex
	stmts []string
}

func (s *sqlRecorder) BeforeQuery(ctx context.Context, _ *bun.QueryEvent) context.Context { return ctx }

func (s *sqlRecorder) AfterQuery(_ context.Context, e *bun.QueryEvent) {
	if errors.Is(e.Err, sql.ErrTxDone) {
		// bun reports the deferred Rollback after a Commit, which database/sql
		// answers itself: nothing reached the server.
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// The consumer sends some statements together (BEGIN with its settings, writes
	// with COMMIT): each counts as what it is.
	for _, q := range splitStatements(e.Query) {
		s.stmts = append(s.stmts, shape(q))
	}
}

// splitStatements splits a string of statements at the semicolons outside quoted
// literals and identifiers.
func splitStatements(q string) []string {
	var out []string
	start, quote := 0, rune(0)
	for i, r := range q {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0 // a doubled quote closes and reopens: same effect
			}
		case r == '\'' || r == '"':
			quote = r
		case r == ';':
			if part := strings.TrimSpace(q[start:i]); part != "" {
				out = append(out, part)
			}
			start = i + 1
		}
	}
	if part := strings.TrimSpace(q[start:]); part != "" {
		out = append(out, part)
	}
	return out
}

func (s *sqlRecorder) statements() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.stmts...)
}

// literalRe matches the literal values bun writes into a statement: quoted strings
// (timestamps, tokens, service names) and numbers.
var literalRe = regexp.MustCompile(`'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b`)

// shape is a statement with its literal values blanked, so that two transactions
// on different rows at different times compare equal when they send the same SQL.
func shape(q string) string { return literalRe.ReplaceAllString(q, "?") }

// sqlShapes records the statements of one consumer message, of one RefreshNow and
// of one bare lock-and-update, each on a pool of its own with a recording hook, so
// the report can say whether the baselines still do the consumer's work.
func (r *rig) sqlShapes(ctx context.Context) (consumerSQL, directSQL, minimalSQL []string, err error) {
	prov := &instantProvider{}
	rec := &sqlRecorder{}
	db, err := r.openPool(ctx, 1)
	if err != nil {
		return nil, nil, nil, err
	}
	defer db.Close()
	db.AddQueryHook(rec)
	if err := r.resetStreams(ctx); err != nil {
		return nil, nil, nil, err
	}
	id := r.consIDs[0]
	if err := r.publishRequests(ctx, 1, func(int) *nats.Msg { return requestMsg(serviceConsume, id) }); err != nil {
		return nil, nil, nil, err
	}
	run, err := r.consume(ctx, db, serviceConsume, prov, 1, 1, nil)
	if err != nil {
		return nil, nil, nil, err
	}
	if run.stats.Refreshed != 1 {
		return nil, nil, nil, fmt.Errorf("statement check: consumer did not refresh credential %d: %+v", id, run.stats)
	}

	directRec := &sqlRecorder{}
	ddb, err := r.openPool(ctx, 1)
	if err != nil {
		return nil, nil, nil, err
	}
	defer ddb.Close()
	ddb.AddQueryHook(directRec)
	dc, err := r.directConsumer(ddb, prov, 1)
	if err != nil {
		return nil, nil, nil, err
	}
	ok, err := directTx(ctx, dc, model.Key{Service: serviceConsume, ID: r.consIDs[1]}, time.Now())
	if err != nil {
		return nil, nil, nil, err
	}
	if !ok {
		return nil, nil, nil, fmt.Errorf("statement check: baseline skipped credential %d", r.consIDs[1])
	}

	minimalRec := &sqlRecorder{}
	mdb, err := r.openPool(ctx, 1)
	if err != nil {
		return nil, nil, nil, err
	}
	defer mdb.Close()
	mdb.AddQueryHook(minimalRec)
	ok, err = minimalTx(ctx, mdb, r.consumerConfig(1), model.Key{Service: serviceConsume, ID: r.consIDs[2]}, time.Now(), prov)
	if err != nil {
		return nil, nil, nil, err
	}
	if !ok {
		return nil, nil, nil, fmt.Errorf("statement check: bare transaction skipped credential %d", r.consIDs[2])
	}
	return rec.statements(), directRec.statements(), minimalRec.statements(), nil
}

// compareSQL matches the baseline's statements, in order, against the consumer's,
// as they are or, with key set, by key(statement). missing are baseline statements
// the consumer does not send (then the baseline measures other work); extra are
// consumer statements the baseline leaves out, whose cost the consumer's side of the
// ratio carries. Both are reported as key gives them.
func compareSQL(consumerSQL, baselineSQL []string, key func(string) string) (missing, extra []string) {
	if key == nil {
		key = func(s string) string { return s }
	}
	j := 0
	for _, s := range consumerSQL {
		k := key(s)
		if j < len(baselineSQL) && k == key(baselineSQL[j]) {
			j++
			continue
		}
		extra = append(extra, k)
	}
	for _, s := range baselineSQL[j:] {
		missing = append(missing, key(s))
	}
	return missing, extra
}

var (
	spaceRe     = regexp.MustCompile(`\s+`)
	identRe     = regexp.MustCompile(`^"?([A-Za-z_][A-Za-z0-9_]*)"?`)
	setColumnRe = regexp.MustCompile(`(?i)\bSET\s+"?([A-Za-z_][A-Za-z0-9_]*)"?\s*=`)
	fromTableRe = regexp.MustCompile(`(?i)\bFROM\s+"?([A-Za-z_][A-Za-z0-9_]*)"?(?:\s|$)`) // a table, not now()
)

// stmtKind is what a statement does, however it is written: its verb, the table it
// reads or writes, FOR UPDATE, and for an UPDATE the first column it sets (claims
// set claim_id, refreshes access_token). Two statements of one kind cost about the
// same round trip.
func stmtKind(q string) string {
	q = strings.TrimSpace(spaceRe.ReplaceAllString(q, " "))
	verb, rest, _ := strings.Cut(q, " ")
	verb = strings.ToUpper(verb)
	switch verb {
	case "SET":
		if l, _, _ := strings.Cut(rest, " "); strings.EqualFold(l, "LOCAL") {
			return "SET LOCAL"
		}
		return "SET"
	case "SELECT":
		kind := "SELECT"
		if m := fromTableRe.FindStringSubmatch(rest); m != nil {
			kind += " " + m[1]
		}
		if strings.Contains(strings.ToUpper(rest), " FOR UPDATE") {
			kind += " FOR UPDATE"
		}
		return kind
	case "UPDATE", "INSERT", "DELETE":
		kind := verb
		if verb != "UPDATE" {
			// INSERT INTO t, DELETE FROM t
			_, rest, _ = strings.Cut(rest, " ")
		}
		if m := identRe.FindStringSubmatch(rest); m != nil {
			kind += " " + m[1]
		}
		if m := setColumnRe.FindStringSubmatch(rest); verb == "UPDATE" && m != nil {
			kind += " SET " + m[1] + " …"
		}
		return kind
	case "RELEASE", "ROLLBACK":
		if strings.HasPrefix(strings.ToUpper(rest), "TO SAVEPOINT") || strings.HasPrefix(strings.ToUpper(rest), "SAVEPOINT") {
			return verb + " SAVEPOINT"
		}
	}
	return verb
}
