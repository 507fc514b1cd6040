package console

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/tracing"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/stream"
)

// CredentialView is what the console shows of a credential: never a token column.
// It is read by naming these columns only, so a token never even reaches the
// console's memory.
type CredentialView struct {
	ID             int64      `bun:"id" json:"id"`
	AccountID      int64      `bun:"account_id" json:"account_id"`
	Service        string     `bun:"service" json:"service"`
	Status         string     `bun:"status" json:"status"`
	Version        int64      `bun:"version" json:"version"`
	RefreshedAt    *time.Time `bun:"refreshed_at" json:"refreshed_at"`
	ExpiresAt      time.Time  `bun:"expires_at" json:"expires_at"`
	Failures       int        `bun:"failures" json:"failures"`
	LastError      *string    `bun:"last_error" json:"last_error"`
	UpdatedAt      time.Time  `bun:"updated_at" json:"updated_at"`
	ClaimOwner     *string    `bun:"claim_owner" json:"claim_owner"`
	ClaimExpiresAt *time.Time `bun:"claim_expires_at" json:"claim_expires_at"`
}

// credentialColumns are the only columns the console reads.
var credentialColumns = []string{"id", "account_id", "service", "status", "version", "refreshed_at", "expires_at",
	"failures", "last_error", "updated_at", "claim_owner", "claim_expires_at"}

func (c *Console) selectCredentials() *bun.SelectQuery {
	return c.db.NewSelect().Model((*model.Credential)(nil)).Column(credentialColumns...)
}

// SearchCredentials finds credentials by id or account id (q is a number), at most
// limit, by id.
func (c *Console) SearchCredentials(ctx context.Context, q string, limit int) ([]CredentialView, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(q), "#")), 10, 64)
	if err != nil || n <= 0 {
		return nil, fmt.Errorf("%q: search by a credential id or an account id (a positive number)", q)
	}
	var out []CredentialView
	err = c.selectCredentials().Where("id = ? OR account_id = ?", n, n).OrderExpr("id").Limit(int64(limit)).Scan(ctx, &out)
	return out, err
}

// Credential reads one credential.
func (c *Console) Credential(ctx context.Context, id int64) (CredentialView, error) {
	var v CredentialView
	err := c.selectCredentials().Where("id = ?", id).Scan(ctx, &v)
	return v, err
}

type credentialsView struct {
	Query   string
	Results []CredentialView
}

func (c *Console) credentialsPage(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := c.ctx(r)
	defer cancel()
	q := strings.TrimSpace(r.URL.Query().Get("q"))
	p := page{Title: "Credentials", Nav: "credentials"}
	v := credentialsView{Query: q}
	if q != "" {
		res, err := c.SearchCredentials(ctx, q, 100)
		if err != nil {
			p.Error = err.Error()
		}
		if len(res) == 1 && res[0].ID == mustInt(q) {
			http.Redirect(w, r, fmt.Sprintf("/credentials/%d", res[0].ID), http.StatusSeeOther)
			return
		}
		v.Results = res
	}
	p.Data = v
	c.render(w, r, "credentials.html", p)
}

func mustInt(s string) int64 {
	n, _ := strconv.ParseInt(strings.TrimPrefix(s, "#"), 10, 64)
	return n
}

// StreamRequest is one request for a credential still in REFRESH.
type StreamRequest struct {
	Sequence    uint64
	Stored      time.Time
	RequestedAt string
	Reason      string
	// State is "acknowledged", "delivered, not yet acknowledged" or "waiting".
	State string
}

type credentialView struct {
	CredentialView
	Requests      []StreamRequest
	MoreRequests  bool
	RequestsError string
	DeadLetters   string
}

const maxRequestsShown = 50

func (c *Console) credentialPage(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := c.ctx(r)
	defer cancel()
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		http.Error(w, "credential id: want a positive number", http.StatusBadRequest)
		return
	}
	cred, err := c.Credential(ctx, id)
	if errors.Is(err, sql.ErrNoRows) {
		w.WriteHeader(http.StatusNotFound)
		c.render(w, r, "credentials.html", page{Title: "Credentials", Nav: "credentials", Error: fmt.Sprintf("No credential %d.", id), Data: credentialsView{}})
		return
	}
	if err != nil {
		http.Error(w, "read credential: "+err.Error(), http.StatusBadGateway)
		return
	}
	v := credentialView{CredentialView: cred}
	key := model.Key{Service: cred.Service, ID: cred.ID}
	v.Requests, v.MoreRequests, err = c.requestsFor(ctx, key)
	if err != nil {
		v.RequestsError = err.Error()
	}
	v.DeadLetters = "/deadletters?" + DeadLetterFilter{Credential: id}.Query()
	c.render(w, r, "credential.html", page{Title: fmt.Sprintf("Credential %d", id), Nav: "credentials", Data: v})
}

// requestsFor lists the requests for key still in REFRESH, oldest first, at most
// maxRequestsShown, with their state against the fleet's durable consumer.
func (c *Console) requestsFor(ctx context.Context, key model.Key) ([]StreamRequest, bool, error) {
	s, err := c.js.Stream(ctx, stream.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	var delivered, ackFloor uint64
	if ci, err := s.Consumer(ctx, consumer.ServiceDurable(key.Service)); err == nil {
		if info, err := ci.Info(ctx); err == nil {
			delivered, ackFloor = info.Delivered.Stream, info.AckFloor.Stream
		}
	}
	var out []StreamRequest
	seq := uint64(1)
	for {
		raw, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(key.Subject()))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, false, nil
		}
		if err != nil {
			return out, false, err
		}
		if len(out) == maxRequestsShown {
			return out, true, nil
		}
		req := StreamRequest{Sequence: raw.Sequence, Stored: raw.Time.UTC(), RequestedAt: raw.Header.Get(model.HeaderRequestedAt)}
		if b, err := model.ParseBody(raw.Data); err == nil {
			req.Reason = b.Reason
		}
		switch {
		case raw.Sequence <= ackFloor:
			req.State = "acknowledged"
		case raw.Sequence <= delivered:
			req.State = "delivered (acknowledged, or in progress)"
		default:
			req.State = "waiting"
		}
		out = append(out, req)
		seq = raw.Sequence + 1
	}
}

// RefreshNow publishes one request for the credential, without a dedupe id (a
// scheduled request in the same window must not swallow it), and returns the stream
// sequence it was stored at.
func (c *Console) RefreshNow(ctx context.Context, key model.Key, who string) (uint64, error) {
	m := nats.NewMsg(key.Subject())
	m.Header.Set(model.HeaderRequestedAt, model.FormatRequestedAt(c.opts.Now()))
	reason := "console refresh now by " + who
	if len(reason) > model.MaxReasonLen {
		reason = reason[:model.MaxReasonLen]
	}
	m.Data, _ = json.Marshal(model.Body{Reason: reason})
	ctx, span := tracing.Tracer().Start(ctx, "publish", trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("refresher.service", key.Service), attribute.Int64("refresher.credential_id", key.ID)))
	defer span.End()
	tracing.Inject(ctx, m.Header)
	ack, err := c.js.PublishMsg(ctx, m)
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

func (c *Console) refreshNow(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := c.ctx(r)
	defer cancel()
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		http.Error(w, "credential id: want a positive number", http.StatusBadRequest)
		return
	}
	cred, err := c.Credential(ctx, id)
	if err != nil {
		c.logAction(r, "refresh now", err, "credential", id)
		http.Error(w, "read credential: "+err.Error(), http.StatusNotFound)
		return
	}
	key := model.Key{Service: cred.Service, ID: cred.ID}
	seq, err := c.RefreshNow(ctx, key, c.who(r))
	c.logAction(r, "refresh now", err, "credential", id, "subject", key.Subject(), "stream_seq", seq)
	flash := fmt.Sprintf("Requested a refresh of credential %d (stream sequence %d).", id, seq)
	if err != nil {
		flash = "Could not publish the request: " + err.Error()
	}
	http.Redirect(w, r, fmt.Sprintf("/credentials/%d?%s", id, withFlash("", flash)), http.StatusSeeOther)
}
