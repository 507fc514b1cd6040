// Package status gathers the one snapshot an operator reads to know whether the
// refresh fleet keeps up: the request stream, the shared durable consumer, the dead
// letters and why they died, and the credentials table by service and freshness. It
// only reads; printing is the command's business.
package status

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"
)

// Defaults of Options.
const (
	DefaultWindow     = 30 * time.Minute
	DefaultDLQScan    = 10000
	DefaultTopReasons = 5
)

// Options shape a Gather.
type Options struct {
	// Window is the horizon of "expires soon" (default DefaultWindow).
	Window time.Duration
	// DLQScan caps how many of the most recent dead letters are read for their reason
	// (default DefaultDLQScan; negative reads none).
	DLQScan int
	// TopReasons is how many reason groups are kept (default DefaultTopReasons).
	TopReasons int
	// Now replaces time.Now, for tests.
	Now func() time.Time
	// SkipCredentials leaves Report.Credentials empty, for a caller that counts the
	// table its own way (the console counts it in the same pass as its chart).
	SkipCredentials bool
}

func (o Options) withDefaults() Options {
	if o.Window == 0 {
		o.Window = DefaultWindow
	}
	if o.DLQScan == 0 {
		o.DLQScan = DefaultDLQScan
	}
	if o.DLQScan < 0 {
		o.DLQScan = 0
	}
	if o.TopReasons <= 0 {
		o.TopReasons = DefaultTopReasons
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Report is the snapshot. Its JSON field names are a stable interface: scripts and
// dashboards read them.
type Report struct {
	// GeneratedAt is the moment every "expired" and "within window" count refers to.
	GeneratedAt time.Time `json:"generated_at"`
	// Stream is REFRESH, every request kept for replay (not the backlog: see Consumer).
	Stream StreamReport `json:"stream"`
	// Consumer is the fleet's shared durable, which takes requests no service's
	// durable does (unknown services, malformed subjects).
	Consumer ConsumerReport `json:"consumer"`
	// Services are the services' durables (their counts are the backlog), the age of
	// their oldest waiting request and their provider limits' state.
	Services []ServiceReport `json:"services"`
	// DeadLetters is REFRESH_DLQ and the commonest reasons.
	DeadLetters DeadLetterReport `json:"dead_letters"`
	// Credentials is the table by service.
	Credentials CredentialReport `json:"credentials"`
	// Connections is the database connections the fleet holds, as the server sees them.
	Connections ConnectionReport `json:"connections"`
	// Errors lists the parts that could not be gathered; the rest of the report stands.
	Errors []string `json:"errors"`
}

// Gather reads the snapshot. A stream, the consumer or the table that does not exist
// yet is reported as such (Exists false), not as an error. A part that cannot be read
// is left empty and named in Report.Errors, and Gather returns the report with an
// error joining those failures, so a caller can still show what was read. Both db and
// js are required.
func Gather(ctx context.Context, db bun.IDB, js jetstream.JetStream, opts Options) (Report, error) {
	opts = opts.withDefaults()
	if opts.Window < 0 {
		return Report{}, fmt.Errorf("window %s: must not be negative", opts.Window)
	}
	now := opts.Now()
	rep := Report{GeneratedAt: now.UTC(), Errors: []string{}}
	var errs []error
	fail := func(part string, err error) {
		err = fmt.Errorf("%s: %w", part, err)
		errs = append(errs, err)
		rep.Errors = append(rep.Errors, err.Error())
	}

	var err error
	if rep.Stream, err = streamReport(ctx, js, requestStream); err != nil {
		fail("stream", err)
	}
	if rep.Consumer, err = consumerReport(ctx, js, rep.Stream.Exists); err != nil {
		fail("consumer", err)
	}
	if rep.Services, err = serviceReports(ctx, js, now); err != nil {
		fail("services", err)
	}
	if rep.DeadLetters, err = deadLetterReport(ctx, js, opts.DLQScan, opts.TopReasons); err != nil {
		fail("dead letters", err)
	}
	if opts.SkipCredentials {
		rep.Credentials = CredentialReport{Window: opts.Window.String(), Services: []ServiceCredentials{}, Total: newService("")}
	} else if rep.Credentials, err = credentialReport(ctx, db, now, opts.Window); err != nil {
		fail("credentials", err)
	}
	if rep.Connections, err = connectionReport(ctx, db); err != nil {
		fail("connections", err)
	}
	return rep, errors.Join(errs...)
}
