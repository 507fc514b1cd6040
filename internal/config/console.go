package config

// DefaultConsoleAddr is where `refresher console` listens without --listen:
// loopback, so nothing is exposed by accident.
const DefaultConsoleAddr = "127.0.0.1:8080"

// Console configures `refresher console`; --listen and --read-only are flags.
type Console struct {
	Token string `envconfig:"REFRESHER_CONSOLE_TOKEN" secret:"true" desc:"bearer token (or login-form password) the console requires of every request; required to listen on a non-loopback address unless --read-only"`
}
