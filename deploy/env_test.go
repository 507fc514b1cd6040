package deploy_test

import (
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/internal/logging"
	"github.com/refresher/refresher/model"
)

// requiredByCommand lists, per subcommand a manifest runs, the variables it must set
// even where the binary has a default: in a container NATS_URL's default
// (127.0.0.1) is the container itself, and consume's REFRESHER_HTTP_ADDR default
// (loopback) is unreachable for probes and scrapes. consume additionally needs every
// required REFRESHER_<SERVICE>_* variable of each service it lists. A command missing
// here fails the test: decide what it needs, then add it.
var requiredByCommand = map[string][]string{
	"consume":       {"DATABASE_URL", "NATS_URL", "REFRESHER_SERVICES", "REFRESHER_HTTP_ADDR"},
	"publish":       {"DATABASE_URL", "NATS_URL"},
	"migrate":       {"DATABASE_URL"},
	"seed":          {"DATABASE_URL"},
	"status":        {"DATABASE_URL", "NATS_URL"},
	"replay":        {"NATS_URL"},
	"dlq":           {"NATS_URL"},
	"fake-provider": nil,
}

// servicePlaceholder is how config.AllVars names the per-service variables when
// REFRESHER_SERVICES is unset.
const servicePlaceholder = "REFRESHER_<SERVICE>_"

// varSet is every variable the binary reads, per config.AllVars.
type varSet struct {
	global     map[string]config.Var
	perService map[string]config.Var // by suffix: TOKEN_URL, CLIENT_ID, ...
}

// currentVars reads config.AllVars with REFRESHER_SERVICES unset, so that the
// per-service variables come back once, under the placeholder.
func currentVars() varSet {
	vs := varSet{global: map[string]config.Var{}, perService: map[string]config.Var{}}
	withEnv(nil, func() {
		for _, v := range config.AllVars() {
			if suffix, ok := strings.CutPrefix(v.Key, servicePlaceholder); ok {
				vs.perService[suffix] = v
			} else {
				vs.global[v.Key] = v
			}
		}
	})
	return vs
}

// without returns a copy of vs without key, as if the code had renamed it.
func (vs varSet) without(key string) varSet {
	out := varSet{global: map[string]config.Var{}, perService: vs.perService}
	for k, v := range vs.global {
		if k != key {
			out.global[k] = v
		}
	}
	return out
}

// lookup finds the variable name among the global ones and the per-service ones of
// services.
func (vs varSet) lookup(name string, services []string) (config.Var, bool) {
	if v, ok := vs.global[name]; ok {
		return v, true
	}
	for _, s := range services {
		if suffix, ok := strings.CutPrefix(name, config.ServicePrefix(s)+"_"); ok {
			if v, ok := vs.perService[suffix]; ok {
				return v, true
			}
		}
	}
	return config.Var{}, false
}

// withEnv runs fn with exactly env as refresher's environment: every variable
// config.AllVars knows (and the ones env sets) is unset first and restored after.
// The drift tests do not run in parallel, so the process environment is theirs.
func withEnv(env map[string]string, fn func()) {
	keys := map[string]bool{"REFRESHER_SERVICES": true}
	for _, v := range config.AllVars() { // with the caller's REFRESHER_SERVICES, if any
		keys[v.Key] = true
		if suffix, ok := strings.CutPrefix(v.Key, servicePlaceholder); ok {
			keys[suffix] = true
		}
	}
	for k := range env {
		keys[k] = true
	}
	for _, s := range servicesOf(env) {
		for _, suffix := range []string{"TOKEN_URL", "CLIENT_ID", "CLIENT_SECRET", "AUTH_STYLE"} {
			keys[config.ServicePrefix(s)+"_"+suffix] = true
			keys[suffix] = true
		}
	}
	saved := map[string]*string{}
	for k := range keys {
		if v, ok := os.LookupEnv(k); ok {
			saved[k] = &v
		} else {
			saved[k] = nil
		}
		os.Unsetenv(k)
	}
	defer func() {
		for k, v := range saved {
			if v == nil {
				os.Unsetenv(k)
			} else {
				os.Setenv(k, *v)
			}
		}
	}()
	for k, v := range env {
		os.Setenv(k, v)
	}
	fn()
}

// servicesOf parses REFRESHER_SERVICES as the binary does.
func servicesOf(env map[string]string) []string {
	var out []string
	for _, s := range strings.Split(env["REFRESHER_SERVICES"], ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// checkEnvironment checks one workload's variables: each is read by the binary, each
// one its command needs is set, and the values load.
func checkEnvironment(w workload, vs varSet) []string {
	var problems []string
	bad := func(format string, args ...any) {
		problems = append(problems, w.where+": "+fmt.Sprintf(format, args...))
	}
	services := servicesOf(w.env)
	for _, s := range services {
		if err := model.ValidateService(s); err != nil {
			bad("REFRESHER_SERVICES: %v", err)
		}
	}
	names := make([]string, 0, len(w.env))
	for k := range w.env {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if _, ok := vs.lookup(k, services); ok {
			continue
		}
		hint := "see `refresher config` for the variables it reads"
		for suffix := range vs.perService {
			if strings.HasPrefix(k, "REFRESHER_") && strings.HasSuffix(k, "_"+suffix) {
				hint = fmt.Sprintf("a per-service variable of a service REFRESHER_SERVICES (%q) does not list", w.env["REFRESHER_SERVICES"])
			}
		}
		bad("sets %s, which refresher does not read (%s)", k, hint)
	}

	cmd := w.command()
	required, known := requiredByCommand[cmd]
	if !known {
		bad("runs %q, which requiredByCommand in deploy/env_test.go does not know: add what it needs", cmd)
	}
	for _, k := range required {
		if _, ok := vs.global[k]; !ok {
			bad("requiredByCommand names %s, which refresher no longer reads", k)
		}
	}
	if cmd == "consume" {
		for _, s := range services {
			for suffix, v := range vs.perService {
				if v.Required {
					required = append(required, config.ServicePrefix(s)+"_"+suffix)
				}
			}
		}
	}
	sort.Strings(required)
	for _, k := range required {
		if v, ok := w.env[k]; !ok || (v == "" && !w.opaque[k]) {
			bad("%s needs %s, which is not set", cmd, k)
		}
	}
	if len(problems) > 0 {
		return problems // the values would only fail for the same reasons
	}
	for _, p := range checkValues(w) {
		bad("%s", p)
	}
	return problems
}

// checkValues loads the workload's environment through the same functions its command
// uses at start, so that a value the binary would refuse (a bad duration, an unknown
// auth style) fails here rather than in a crash-looping pod.
func checkValues(w workload) []string {
	env := map[string]string{}
	for k, v := range w.env {
		if !w.opaque[k] {
			env[k] = v
		}
	}
	var problems []string
	try := func(what string, err error) {
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", what, err))
		}
	}
	withEnv(env, func() {
		var lc config.Logging
		err := config.Load(&lc)
		if err == nil {
			_, err = logging.New(io.Discard, lc.Format, lc.Level)
		}
		try("logging", err)
		switch w.command() {
		case "consume":
			cfg, err := config.Consumer()
			try("consumer settings", err)
			_, err = config.Streams()
			try("stream settings", err)
			if err == nil {
				_, err = config.LoadServices(cfg.ProviderTimeout)
				try("services", err)
			}
			try("services", config.Load(&config.Services{}))
			h, err := config.LoadHTTP()
			try("http", err)
			if err == nil {
				try("REFRESHER_HTTP_ADDR", reachableAddr(h.Addr))
			}
			_, err = config.Keyring()
			try("REFRESHER_ENCRYPTION_KEYS", err)
			problems = append(problems, checkConnections()...)
		case "publish":
			try("publish settings", config.Load(&config.Publish{}))
			_, err := config.Streams()
			try("stream settings", err)
			problems = append(problems, checkConnections()...)
		case "migrate", "seed":
			problems = append(problems, checkDatabaseURL()...)
		}
		if natsCommands[w.command()] {
			try("NATS authentication", checkNATSAuth())
		}
	})
	return problems
}

// natsCommands are the subcommands that connect to NATS.
var natsCommands = map[string]bool{"consume": true, "publish": true, "status": true, "replay": true, "dlq": true}

// checkNATSAuth applies the binary's rules on the NATS_* variables (one way to
// authenticate, paired variables together) unless they name files, which exist only
// where they are mounted.
func checkNATSAuth() error {
	var n config.NATS
	if err := config.Load(&n); err != nil {
		return err
	}
	if n.Creds != "" || n.NkeySeedFile != "" || n.TLSCA != "" || n.TLSCert != "" || n.TLSKey != "" {
		return nil
	}
	return n.Validate()
}

// reachableAddr refuses a loopback listen address: in a container nothing outside it
// (kubelet probes, Prometheus, compose port mappings) could reach it.
func reachableAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: %w", addr, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		return nil
	}
	return fmt.Errorf("%q: listen on 0.0.0.0 in a container, or probes and scrapes cannot reach it", addr)
}

// checkConnections checks DATABASE_URL and NATS_URL from the environment.
func checkConnections() []string {
	problems := checkDatabaseURL()
	raw, err := config.NATSURL()
	if err != nil {
		return append(problems, err.Error())
	}
	for _, s := range strings.Split(raw, ",") {
		u, err := url.Parse(strings.TrimSpace(s))
		if err != nil || u.Hostname() == "" {
			problems = append(problems, fmt.Sprintf("NATS_URL %q: not a URL with a host", s))
			continue
		}
		if isLoopback(u.Hostname()) {
			problems = append(problems, fmt.Sprintf("NATS_URL %q: loopback is the container itself", s))
		}
	}
	return problems
}

func checkDatabaseURL() []string {
	raw, err := config.DatabaseURL()
	if err != nil {
		return []string{err.Error()}
	}
	cfg, err := pgx.ParseConfig(raw)
	if err != nil {
		return []string{fmt.Sprintf("DATABASE_URL %s: %v", model.RedactURL(raw), err)}
	}
	if isLoopback(cfg.Host) {
		return []string{fmt.Sprintf("DATABASE_URL %s: loopback is the container itself", model.RedactURL(raw))}
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
