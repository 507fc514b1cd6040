// Package natsconn opens NATS connections the way every refresher process wants them:
// named, authenticated and encrypted as the NATS_* variables say, reconnecting through
// server restarts, and logging connection changes.
//
// Credentials the server refuses are never retried in a loop: the first dial fails
// with the server's "authorization violation", and a connection whose credentials
// stop being accepted later (a rotated password, a revoked user) is closed by the
// NATS client after the same server has refused it twice in a row, each refusal
// logged at error level.
package natsconn

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/internal/redact"
)

// Connect dials urls (comma-separated) as a client called name, authenticating and
// using TLS as the NATS_* variables say (config.NATS). The connection keeps
// reconnecting through server restarts and failovers; only the first dial must
// succeed. A bad NATS_* setting is a *config.Error. Error and closed handlers among
// extra run after natsconn's own, which log refused credentials, instead of
// replacing them.
func Connect(urls, name string, log *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	auth, err := config.LoadNATS()
	if err != nil {
		return nil, err
	}
	return connect(urls, name, log, auth, extra)
}

// ConnectWith is Connect with the authentication and TLS settings given rather than
// read from the environment: for a server this process started itself, which must not
// be offered an operator's NATS_* credentials, and for tests.
func ConnectWith(urls, name string, log *slog.Logger, auth config.NATS, extra ...nats.Option) (*nats.Conn, error) {
	if err := auth.Validate(); err != nil {
		return nil, err
	}
	return connect(urls, name, log, auth, extra)
}

func connect(urls, name string, log *slog.Logger, auth config.NATS, extra []nats.Option) (*nats.Conn, error) {
	if err := checkURLs(urls, auth); err != nil {
		return nil, err
	}
	authOpts, err := AuthOptions(auth)
	if err != nil {
		return nil, err
	}
	how := auth.Auth()
	opts := []nats.Option{
		nats.Name(name),
		// RetryOnFailedConnect stays off: a first dial that fails, refused
		// credentials included, is returned to the caller instead of retried.
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.Timeout(5 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "server", redactURLs(nc.ConnectedUrl()))
		}),
	}
	opts = append(opts, authOpts...)
	opts = append(opts, extra...)
	// Last, so that a caller's own handlers run after these instead of replacing them:
	// refused credentials must always be logged.
	opts = append(opts, func(o *nats.Options) error {
		callerErr, callerClosed := o.AsyncErrorCB, o.ClosedCB
		o.AsyncErrorCB = func(nc *nats.Conn, sub *nats.Subscription, err error) {
			if isAuthError(err) {
				log.Error("nats server refused the credentials; the connection is closed if it refuses them again",
					"error", err, "auth", authName(how))
			} else {
				log.Warn("nats error", "error", err)
			}
			if callerErr != nil {
				callerErr(nc, sub, err)
			}
		}
		o.ClosedCB = func(nc *nats.Conn) {
			// A close the program asked for has no error; one the client decided on
			// (credentials refused twice in a row) leaves the connection unusable.
			if err := nc.LastError(); err != nil {
				log.Error("nats connection closed for good", "error", err, "auth", authName(how))
			}
			if callerClosed != nil {
				callerClosed(nc)
			}
		}
		return nil
	})
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		return nil, dialError(urls, auth, err)
	}
	return nc, nil
}

// AuthOptions turns NATS_* settings into client options. It does not validate them
// (config.NATS.Validate does); the client reads the files again at every connection,
// so files replaced in place are picked up at the next reconnection.
func AuthOptions(auth config.NATS) ([]nats.Option, error) {
	var opts []nats.Option
	switch {
	case auth.Creds != "":
		opts = append(opts, nats.UserCredentials(auth.Creds))
	case auth.NkeySeedFile != "":
		o, err := nats.NkeyOptionFromSeed(auth.NkeySeedFile)
		if err != nil {
			return nil, &config.Error{Err: fmt.Errorf("NATS_NKEY_SEED_FILE=%s: %w", auth.NkeySeedFile, err)}
		}
		opts = append(opts, o)
	case auth.User != "":
		opts = append(opts, nats.UserInfo(auth.User, auth.Password))
	case auth.Token != "":
		opts = append(opts, nats.Token(auth.Token))
	}
	if auth.TLSCA != "" {
		opts = append(opts, nats.RootCAs(auth.TLSCA))
	}
	if auth.TLSCert != "" {
		opts = append(opts, nats.ClientCert(auth.TLSCert, auth.TLSKey))
	}
	return opts, nil
}

// checkURLs refuses credentials in NATS_URL next to NATS_* credentials: one would
// silently win over the other.
func checkURLs(urls string, auth config.NATS) error {
	how := auth.Auth()
	if how == "" {
		return nil
	}
	for _, p := range strings.Split(urls, ",") {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			return config.Errorf("NATS_URL %s carries credentials and %s is set too: give one", redactURLs(p), how)
		}
	}
	return nil
}

// dialError says what the first dial ran into, with a hint at the variable to fix
// when the cause is clear.
func dialError(urls string, auth config.NATS, err error) error {
	as := ""
	if how := auth.Auth(); how != "" {
		as = " as " + how
	}
	var hint string
	var unknownCA x509.UnknownAuthorityError
	switch {
	case isAuthError(err) && auth.Auth() == "":
		hint = "; the server requires authentication: set NATS_CREDS, NATS_NKEY_SEED_FILE, NATS_USER and NATS_PASSWORD, or NATS_TOKEN"
	case isAuthError(err):
		hint = "; the server refused these credentials"
	case errors.Is(err, nats.ErrSecureConnRequired):
		hint = "; the server requires TLS: set NATS_TLS_CA (and NATS_TLS_CERT, NATS_TLS_KEY if it verifies clients), or use a tls:// URL"
	case errors.Is(err, nats.ErrSecureConnWanted):
		hint = "; NATS_TLS_* asks for TLS but the server does not offer it"
	case errors.As(err, &unknownCA) && auth.TLSCA == "":
		hint = "; set NATS_TLS_CA to the CA that signed the server's certificate"
	case errors.As(err, &unknownCA):
		hint = "; NATS_TLS_CA " + auth.TLSCA + " did not sign the server's certificate"
	case clientRefused(err) && auth.TLSCert == "":
		hint = "; the server refused the TLS client: if it verifies clients, set NATS_TLS_CERT and NATS_TLS_KEY"
	case clientRefused(err):
		hint = "; the server refused the TLS client: is NATS_TLS_CERT " + auth.TLSCert + " signed by a CA the server trusts?"
	case errors.Is(err, nats.ErrNoServers):
		hint = "; unreachable: no server answered at NATS_URL (is it running, and are host and port right?)"
	}
	return fmt.Errorf("connect to NATS at %s%s: %w%s", redactURLs(urls), as, scrub(err, urls), hint)
}

// scrub hides the URLs' userinfo in err's message (a URL that does not parse comes
// back whole in the error), keeping err for errors.Is.
func scrub(err error, urls string) error {
	msg := err.Error()
	clean := msg
	for _, p := range strings.Split(urls, ",") {
		if p = strings.TrimSpace(p); p != "" {
			clean = strings.ReplaceAll(clean, p, redactURLs(p))
		}
	}
	if clean == msg {
		return err
	}
	return scrubbed{msg: clean, err: err}
}

type scrubbed struct {
	msg string
	err error
}

func (s scrubbed) Error() string { return s.msg }
func (s scrubbed) Unwrap() error { return s.err }

// clientRefused reports a server ending the TLS session after the handshake, which is
// how it refuses a missing or foreign client certificate. Depending on timing the
// client sees the alert or only the closed connection. Go offers a client certificate
// only if a CA the server names issued it, so a foreign one arrives as none at all.
func clientRefused(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "remote error: tls:") ||
		(errors.Is(err, nats.ErrTLS) && strings.Contains(msg, "after TLS handshake"))
}

// isAuthError reports a refusal of the credentials themselves, as opposed to a
// permission violation on a subject.
func isAuthError(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired)
}

func authName(how string) string {
	if how == "" {
		return "none"
	}
	return how
}

// redact hides passwords and tokens in NATS URLs, by the program's one rule.
func redactURLs(urls string) string { return redact.URL(urls) }

// Local connects to a server this process started itself (the demo, tests, the
// benchmark): the operator's NATS_* credentials are for the real cluster, not for it.
func Local(url, name string, log *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	return ConnectWith(url, name, log, config.NATS{}, extra...)
}
