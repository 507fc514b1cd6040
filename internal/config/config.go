// Package config composes every component's envconfig struct, loads them from the
// environment, and documents them for `refresher config`.
package config

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/limit"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider"
	"github.com/refresher/refresher/stream"
)

// Error is a configuration problem; commands exit 2 on it.
type Error struct{ Err error }

func (e *Error) Error() string { return "configuration: " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Errorf builds an *Error.
func Errorf(format string, args ...any) error { return &Error{Err: fmt.Errorf(format, args...)} }

// Connections is where the backing services are.
type Connections struct {
	DatabaseURL string `envconfig:"DATABASE_URL" secret:"url" desc:"PostgreSQL URL (postgres://user:pass@host:5432/db?sslmode=...)"`
	NATSURL     string `envconfig:"NATS_URL" default:"nats://127.0.0.1:4222" secret:"url" desc:"NATS server URL(s), comma-separated"`
}

// Logging configures log/slog.
type Logging struct {
	Format string `envconfig:"REFRESHER_LOG_FORMAT" default:"text" desc:"text or json"`
	Level  string `envconfig:"REFRESHER_LOG_LEVEL" default:"info" desc:"debug, info, warn or error"`
}

// Services lists the services whose tokens are refreshed.
type Services struct {
	Names      []string `envconfig:"REFRESHER_SERVICES" desc:"comma-separated service names; each needs REFRESHER_<SERVICE>_* below"`
	DBMaxConns int      `envconfig:"REFRESHER_DB_MAX_CONNS" default:"4" desc:"database connections one consume process may hold; provider calls hold none, so a handful serves hundreds of calls in flight (idle ones close within seconds)"`
}

// Service is one service's token endpoint, read from REFRESHER_<SERVICE>_*.
type Service struct {
	TokenURL     string `envconfig:"TOKEN_URL" required:"true" secret:"url" desc:"OAuth2 token endpoint"`
	ClientID     string `envconfig:"CLIENT_ID" required:"true" desc:"OAuth2 client id"`
	ClientSecret string `envconfig:"CLIENT_SECRET" required:"true" secret:"true" desc:"OAuth2 client secret"`
	AuthStyle    string `envconfig:"AUTH_STYLE" default:"header" desc:"client authentication: header (HTTP Basic) or params"`
	// ReuseInterval is declared, not discovered: consume compares it with its crash
	// recovery time and warns when a crash would outlast it.
	ReuseInterval time.Duration `envconfig:"REUSE_INTERVAL" default:"0s" desc:"how long the provider still accepts a refresh token it has just replaced (Okta 30s, Auth0 0 unless set); consume warns when its crash recovery time is longer"`
	// The provider's limits, shared by the whole fleet (package limit).
	Rate             string        `envconfig:"RATE" desc:"the fleet's calls to this provider per second, minute or hour, like 600/m or 20/s; empty: no rate limit"`
	Burst            int           `envconfig:"BURST" default:"0" desc:"calls that may start at once on top of RATE's pace; 0: a tenth of a second's worth, at least 1"`
	MaxInFlight      int           `envconfig:"MAX_IN_FLIGHT" default:"0" desc:"calls to this provider in flight at once across the fleet; 0: no cap"`
	CircuitThreshold int           `envconfig:"CIRCUIT_THRESHOLD" default:"5" desc:"transient failures in a row (5xx, timeouts, refused connections) after which no call starts and requests wait in the stream; 0: never"`
	ProbeInterval    time.Duration `envconfig:"PROBE_INTERVAL" default:"5s" desc:"wait before an open circuit's first probe (one call); doubles with every failed probe"`
	ProbeMax         time.Duration `envconfig:"PROBE_MAX" default:"2m" desc:"longest wait between probes of an open circuit"`
}

// Limits are the service's provider limits as package limit takes them.
func (s Service) Limits(prefix string) (limit.Limits, error) {
	r, err := limit.ParseRate(s.Rate)
	if err != nil {
		return limit.Limits{}, Errorf("%s_RATE=%q: %w", prefix, s.Rate, err)
	}
	if s.Burst < 0 {
		return limit.Limits{}, Errorf("%s_BURST=%d: want 0 (default) or more", prefix, s.Burst)
	}
	if s.Burst > 0 {
		if r.IsZero() {
			return limit.Limits{}, Errorf("%s_BURST=%d: set %s_RATE too; a burst is on top of a rate", prefix, s.Burst, prefix)
		}
		r.Burst = s.Burst
	}
	l := limit.Limits{Rate: r, MaxInFlight: s.MaxInFlight, CircuitThreshold: s.CircuitThreshold, ProbeInterval: s.ProbeInterval, ProbeMax: s.ProbeMax}
	if err := l.Validate(prefix); err != nil {
		return l, &Error{Err: err}
	}
	return l, nil
}

// LoadLimits reads the provider limits of each service.
func LoadLimits(names []string) (map[string]limit.Limits, error) {
	out := make(map[string]limit.Limits, len(names))
	for _, name := range names {
		svc, err := LoadService(name)
		if err != nil {
			return nil, err
		}
		if out[name], err = svc.Limits(ServicePrefix(name)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Publish configures `refresher publish`; flags override it.
type Publish struct {
	Window      time.Duration `envconfig:"REFRESHER_PUBLISH_WINDOW" default:"15m" desc:"schedule period: publishers in the same period publish each row once"`
	MaxInFlight int           `envconfig:"REFRESHER_PUBLISH_MAX_IN_FLIGHT" default:"1024" desc:"publishes awaiting their ack at once"`
}

// ServicePrefix is the env prefix of a service's variables: upper-cased, '-' as '_'.
func ServicePrefix(name string) string {
	return "REFRESHER_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Load fills spec from the environment, turning envconfig's errors into ones that
// name the variable and, for secrets, do not echo the value.
func Load(spec any) error {
	return load("", spec)
}

func load(prefix string, spec any) error {
	err := envconfig.Process(prefix, spec)
	if err == nil {
		return nil
	}
	var pe *envconfig.ParseError
	if errors.As(err, &pe) {
		val := fmt.Sprintf("%q", pe.Value)
		if isSecret(spec, pe.FieldName) {
			val = "(hidden)"
		}
		return Errorf("%s=%s: not a valid %s", pe.KeyName, val, describeType(pe.TypeName))
	}
	return &Error{Err: err}
}

func describeType(t string) string {
	switch t {
	case "time.Duration":
		return "duration (like 30s, 5m, 1h)"
	case "[]time.Duration":
		return "comma-separated list of durations (like 1s,5s,30s)"
	case "int":
		return "whole number"
	}
	return t
}

// LoadServices reads REFRESHER_SERVICES and each listed service's endpoint settings,
// and returns a Refresher per service.
func LoadServices(providerTimeout time.Duration) (map[string]provider.Refresher, error) {
	var s Services
	if err := Load(&s); err != nil {
		return nil, err
	}
	if len(s.Names) == 0 {
		return nil, Errorf("REFRESHER_SERVICES is not set: list the services to refresh, like REFRESHER_SERVICES=github,google")
	}
	out := make(map[string]provider.Refresher, len(s.Names))
	for _, name := range s.Names {
		name = strings.TrimSpace(name)
		if err := model.ValidateService(name); err != nil {
			return nil, Errorf("REFRESHER_SERVICES: %w", err)
		}
		if _, dup := out[name]; dup {
			return nil, Errorf("REFRESHER_SERVICES: %q is listed twice", name)
		}
		svc, err := LoadService(name)
		if err != nil {
			return nil, err
		}
		r, err := provider.NewOAuth2(provider.Config{
			TokenURL: svc.TokenURL, ClientID: svc.ClientID, ClientSecret: svc.ClientSecret,
			AuthStyle: svc.AuthStyle, Timeout: providerTimeout,
		})
		if err != nil {
			return nil, Errorf("%s_*: %w", ServicePrefix(name), err)
		}
		out[name] = r
	}
	return out, nil
}

// LoadService reads one service's REFRESHER_<SERVICE>_* variables.
func LoadService(name string) (Service, error) {
	prefix := ServicePrefix(name)
	var svc Service
	// envconfig falls back to the unprefixed name (CLIENT_SECRET) when the prefixed one
	// is unset; one service must never pick up a stray generic variable, so required
	// variables are checked here first.
	for _, v := range Vars(prefix, &svc) {
		if v.Required {
			if val, ok := os.LookupEnv(v.Key); !ok || val == "" {
				return svc, Errorf("%s is required because REFRESHER_SERVICES lists %q", v.Key, name)
			}
		}
	}
	if err := load(prefix, &svc); err != nil {
		return svc, err
	}
	if svc.AuthStyle != provider.AuthStyleHeader && svc.AuthStyle != provider.AuthStyleParams {
		return svc, Errorf("%s_AUTH_STYLE=%q: want header or params", prefix, svc.AuthStyle)
	}
	return svc, nil
}

// Consumer loads and validates the consumer's settings.
func Consumer() (consumer.Config, error) {
	var c consumer.Config
	if err := Load(&c); err != nil {
		return c, err
	}
	if err := c.Validate(); err != nil {
		return c, &Error{Err: err}
	}
	return c, nil
}

// Streams loads and validates the stream settings.
func Streams() (stream.StreamConfig, error) {
	var s stream.StreamConfig
	if err := Load(&s); err != nil {
		return s, err
	}
	if err := s.Validate(); err != nil {
		return s, &Error{Err: err}
	}
	return s, nil
}

// DatabaseURL returns DATABASE_URL or an error naming it.
func DatabaseURL() (string, error) {
	var c Connections
	if err := Load(&c); err != nil {
		return "", err
	}
	if c.DatabaseURL == "" {
		return "", Errorf("DATABASE_URL is not set: give a PostgreSQL URL, like postgres://refresher@127.0.0.1:5432/refresher?sslmode=disable")
	}
	return c.DatabaseURL, nil
}

// NATSURL returns NATS_URL (or its default), checked by ValidateNATSURL.
func NATSURL() (string, error) {
	var c Connections
	if err := Load(&c); err != nil {
		return "", err
	}
	if err := ValidateNATSURL(c.NATSURL); err != nil {
		return "", err
	}
	return c.NATSURL, nil
}
