package bench

import (
	"context"
	"fmt"
	"regexp"
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
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stmts = append(s.stmts, shape(e.Query))
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

// sqlShapes records the statements of one consumer message and of one baseline
// transaction, each on a pool of its own with a recording hook, so the report can
// say whether the baseline still does the consumer's work.
func (r *rig) sqlShapes(ctx context.Context) (consumerSQL, directSQL []string, err error) {
	prov := &instantProvider{}
	rec := &sqlRecorder{}
	db, err := r.openPool(ctx, 1)
	if err != nil {
		return nil, nil, err
	}
	defer db.Close()
	db.AddQueryHook(rec)
	if err := r.resetStreams(ctx); err != nil {
		return nil, nil, err
	}
	id := r.consIDs[0]
	if err := r.publishRequests(ctx, 1, func(int) *nats.Msg { return requestMsg(serviceConsume, id) }); err != nil {
		return nil, nil, err
	}
	run, err := r.consume(ctx, db, serviceConsume, prov, 1, 1, nil)
	if err != nil {
		return nil, nil, err
	}
	if run.stats.Refreshed != 1 {
		return nil, nil, fmt.Errorf("statement check: consumer did not refresh credential %d: %+v", id, run.stats)
	}

	directRec := &sqlRecorder{}
	ddb, err := r.openPool(ctx, 1)
	if err != nil {
		return nil, nil, err
	}
	defer ddb.Close()
	ddb.AddQueryHook(directRec)
	dc, err := r.directConsumer(ddb, prov, 1)
	if err != nil {
		return nil, nil, err
	}
	ok, err := directTx(ctx, dc, model.Key{Service: serviceConsume, ID: r.consIDs[1]}, time.Now())
	if err != nil {
		return nil, nil, err
	}
	if !ok {
		return nil, nil, fmt.Errorf("statement check: baseline skipped credential %d", r.consIDs[1])
	}
	return rec.statements(), directRec.statements(), nil
}

// compareSQL matches the baseline's statements, in order, against the consumer's.
// missing are baseline statements the consumer does not send (then the baseline
// measures other work); extra are consumer statements the baseline leaves out,
// whose cost the consumer's side of the ratio carries.
func compareSQL(consumerSQL, baselineSQL []string) (missing, extra []string) {
	j := 0
	for _, s := range consumerSQL {
		if j < len(baselineSQL) && s == baselineSQL[j] {
			j++
			continue
		}
		extra = append(extra, s)
	}
	return baselineSQL[j:], extra
}
