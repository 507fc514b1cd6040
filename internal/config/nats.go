package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/refresher/refresher/internal/redact"
)

// NATS is how every refresher process authenticates to NATS and checks the server's
// TLS certificate. At most one way of authenticating may be set; TLS combines with
// any of them. Files are read and parsed when the configuration is loaded, so a
// missing or malformed one stops the command with exit 2 instead of surfacing as a
// connection error.
type NATS struct {
	Creds        string `envconfig:"NATS_CREDS" desc:"NATS credentials file: user JWT and nkey seed (operator mode, e.g. from nsc)"`
	NkeySeedFile string `envconfig:"NATS_NKEY_SEED_FILE" desc:"file holding a NATS user nkey seed (SU...)"`
	User         string `envconfig:"NATS_USER" desc:"NATS user name; needs NATS_PASSWORD"`
	Password     string `envconfig:"NATS_PASSWORD" secret:"true" desc:"password of NATS_USER"`
	Token        string `envconfig:"NATS_TOKEN" secret:"true" desc:"NATS authentication token"`
	TLSCA        string `envconfig:"NATS_TLS_CA" desc:"PEM file of the CA that signed the NATS server certificate; turns TLS on"`
	TLSCert      string `envconfig:"NATS_TLS_CERT" desc:"PEM client certificate for NATS servers that verify clients; needs NATS_TLS_KEY"`
	TLSKey       string `envconfig:"NATS_TLS_KEY" desc:"PEM private key of NATS_TLS_CERT"`
}

// LoadNATS reads the NATS_* authentication and TLS variables and validates them.
func LoadNATS() (NATS, error) {
	var n NATS
	if err := Load(&n); err != nil {
		return n, err
	}
	return n, n.Validate()
}

// Validate checks that at most one way of authenticating is set, that paired
// variables come together, and that every file named can be read and holds what it
// should. Errors are *Error; they name the variables and paths, never a secret or a
// file's contents.
func (n NATS) Validate() error {
	var methods []string
	for _, m := range []struct{ name, val string }{
		{"NATS_CREDS", n.Creds},
		{"NATS_NKEY_SEED_FILE", n.NkeySeedFile},
		{"NATS_USER", n.User},
		{"NATS_TOKEN", n.Token},
	} {
		if m.val != "" {
			methods = append(methods, m.name)
		}
	}
	if n.User == "" && n.Password != "" {
		// Named as the method it is half of, so a stray password next to a token is
		// reported as the conflict it is.
		if len(methods) > 0 {
			methods = append(methods, "NATS_PASSWORD")
		} else {
			return Errorf("NATS_PASSWORD is set without NATS_USER")
		}
	}
	switch len(methods) {
	case 0, 1:
	case 2:
		return Errorf("%s and %s are both set: give one way to authenticate to NATS", methods[0], methods[1])
	default:
		return Errorf("%s and %s are all set: give one way to authenticate to NATS",
			strings.Join(methods[:len(methods)-1], ", "), methods[len(methods)-1])
	}
	if n.User != "" && n.Password == "" {
		return Errorf("NATS_USER=%q is set without NATS_PASSWORD", n.User)
	}
	if n.Creds != "" {
		if err := checkCreds(n.Creds); err != nil {
			return &Error{Err: fmt.Errorf("NATS_CREDS=%s: %w", n.Creds, err)}
		}
	}
	if n.NkeySeedFile != "" {
		if err := checkSeedFile(n.NkeySeedFile); err != nil {
			return &Error{Err: fmt.Errorf("NATS_NKEY_SEED_FILE=%s: %w", n.NkeySeedFile, err)}
		}
	}
	if n.TLSCA != "" {
		pem, err := readFile(n.TLSCA)
		if err != nil {
			return &Error{Err: fmt.Errorf("NATS_TLS_CA=%s: %w", n.TLSCA, err)}
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return Errorf("NATS_TLS_CA=%s: no PEM certificate in it", n.TLSCA)
		}
	}
	switch {
	case n.TLSCert != "" && n.TLSKey == "":
		return Errorf("NATS_TLS_CERT=%s is set without NATS_TLS_KEY: a client certificate needs its private key", n.TLSCert)
	case n.TLSKey != "" && n.TLSCert == "":
		return Errorf("NATS_TLS_KEY=%s is set without NATS_TLS_CERT", n.TLSKey)
	case n.TLSCert != "":
		for _, f := range []struct{ name, path string }{{"NATS_TLS_CERT", n.TLSCert}, {"NATS_TLS_KEY", n.TLSKey}} {
			if _, err := readFile(f.path); err != nil {
				return &Error{Err: fmt.Errorf("%s=%s: %w", f.name, f.path, err)}
			}
		}
		// crypto/tls errors describe the PEM blocks found, never the key itself.
		if _, err := tls.LoadX509KeyPair(n.TLSCert, n.TLSKey); err != nil {
			return &Error{Err: fmt.Errorf("NATS_TLS_CERT=%s, NATS_TLS_KEY=%s: not a certificate and its key: %w", n.TLSCert, n.TLSKey, err)}
		}
	}
	return nil
}

// Auth describes how the connection authenticates, for messages: the method and the
// variables it comes from, never a secret. Empty when none is set.
func (n NATS) Auth() string {
	switch {
	case n.Creds != "":
		return "credentials file " + n.Creds + " (NATS_CREDS)"
	case n.NkeySeedFile != "":
		return "nkey seed file " + n.NkeySeedFile + " (NATS_NKEY_SEED_FILE)"
	case n.User != "":
		return fmt.Sprintf("user %q (NATS_USER, NATS_PASSWORD)", n.User)
	case n.Token != "":
		return "a token (NATS_TOKEN)"
	}
	return ""
}

// TLS reports whether TLS settings are given (the URL scheme tls:// turns TLS on
// too, with the system's CAs).
func (n NATS) TLS() bool { return n.TLSCA != "" || n.TLSCert != "" }

// readFile reads path, keeping only the reason from a failure: callers name the
// variable and the path once, which the *fs.PathError would repeat.
func readFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return nil, fmt.Errorf("cannot read it: %w", pe.Err)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read it: %w", err)
	}
	return b, nil
}

// checkCreds parses a credentials file as the NATS client will, and checks that its
// seed belongs to its JWT and that the JWT has not expired: a server answers all of
// these with a bare "authorization violation".
func checkCreds(path string) error {
	b, err := readFile(path)
	if err != nil {
		return err
	}
	defer wipe(b)
	token, err := nkeys.ParseDecoratedJWT(b)
	if err != nil {
		return fmt.Errorf("no user JWT in it: %w", err)
	}
	claims, err := jwt.DecodeUserClaims(token)
	if err != nil {
		return fmt.Errorf("no valid user JWT in it (want the file nsc generates: a JWT block then a seed block): %w", err)
	}
	kp, err := nkeys.ParseDecoratedUserNKey(b)
	if err != nil {
		return fmt.Errorf("no user nkey seed in it: %w", err)
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return fmt.Errorf("user nkey seed: %w", err)
	}
	if pub != claims.Subject {
		return fmt.Errorf("its seed is for user %s but its JWT is for user %s", pub, claims.Subject)
	}
	if claims.Expires > 0 && time.Unix(claims.Expires, 0).Before(time.Now()) {
		return fmt.Errorf("its JWT for user %s expired at %s", claims.Subject, time.Unix(claims.Expires, 0).UTC().Format(time.RFC3339))
	}
	return nil
}

// checkSeedFile parses an nkey seed file as the NATS client will.
func checkSeedFile(path string) error {
	b, err := readFile(path)
	if err != nil {
		return err
	}
	defer wipe(b)
	kp, err := nkeys.ParseDecoratedUserNKey(b)
	if err != nil {
		return fmt.Errorf("no user nkey seed (SU...) in it: %w", err)
	}
	kp.Wipe()
	return nil
}

// wipe overwrites a buffer that held a seed, as the NATS client does with its own.
func wipe(b []byte) {
	for i := range b {
		b[i] = 'x'
	}
}

// natsSchemes are the URL schemes the NATS client dials.
var natsSchemes = map[string]bool{"nats": true, "tls": true, "ws": true, "wss": true}

// ValidateNATSURL checks NATS_URL as the NATS client will read it: a comma-separated
// list of nats://, tls://, ws:// or wss:// URLs with a host and, if given, a numeric
// port. An empty entry is refused, not read as the default server. Errors are *Error,
// name NATS_URL and show the value through redact.URL.
func ValidateNATSURL(urls string) error {
	if strings.TrimSpace(urls) == "" {
		return Errorf("NATS_URL=%q: empty; give the server's URL, like nats://127.0.0.1:4222", urls)
	}
	shown := redact.URL(urls)
	parts := redact.SplitURLs(urls)
	for _, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			return Errorf("NATS_URL=%s: an empty entry in the list; give URLs separated by commas, like nats://n1:4222,nats://n2:4222", shown)
		}
		if err := checkNATSURL(p); err != nil {
			if len(parts) == 1 {
				return Errorf("NATS_URL=%s: %w", shown, err)
			}
			return Errorf("NATS_URL=%s: %s: %w", shown, redact.URL(p), err)
		}
	}
	return nil
}

func checkNATSURL(p string) error {
	scheme, rest, ok := strings.Cut(p, "://")
	if !ok {
		return errors.New("not a URL: want nats://host:port")
	}
	if !natsSchemes[strings.ToLower(scheme)] {
		return fmt.Errorf("scheme %q: want nats, tls, ws or wss", scheme)
	}
	// The host and port follow the user info (up to the last '@') and end at the path.
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		if strings.Contains(rest[:at], ",") {
			// The client splits the list at every comma.
			return errors.New("a comma in the user info: percent-encode it as %2C")
		}
		rest = rest[at+1:]
	}
	if k := strings.IndexAny(rest, "/?#"); k >= 0 {
		rest = rest[:k]
	}
	host, port := rest, ""
	if strings.HasPrefix(rest, "[") {
		end := strings.Index(rest, "]")
		if end < 0 {
			return errors.New("unclosed '[' in the host")
		}
		host, port = rest[:end+1], strings.TrimPrefix(rest[end+1:], ":")
		if rest[end+1:] != "" && !strings.HasPrefix(rest[end+1:], ":") {
			return errors.New("want host:port")
		}
	} else if c := strings.LastIndex(rest, ":"); c >= 0 {
		host, port = rest[:c], rest[c+1:]
	}
	if host == "" || host == "[]" {
		return errors.New("no host")
	}
	if strings.ContainsAny(host, " \t") {
		return fmt.Errorf("host %q has blanks", host)
	}
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("port %q: want a number from 1 to 65535", port)
		}
	}
	if _, err := url.Parse(p); err != nil {
		// url.Error repeats the URL, secrets included: keep only that it failed.
		return errors.New("not a valid URL")
	}
	return nil
}
