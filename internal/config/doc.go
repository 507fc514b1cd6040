package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/logging"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/stream"
)

// Var documents one environment variable.
type Var struct {
	Key      string
	Default  string
	Required bool
	Secret   string // "", "true" (mask whole value) or "url" (mask by redact.URL)
	Desc     string
	typ      reflect.Type
}

// Vars lists the variables of an envconfig spec under prefix ("" for specs whose tags
// carry full names).
func Vars(prefix string, spec any) []Var {
	t := reflect.TypeOf(spec)
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var out []Var
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() || f.Tag.Get("ignored") == "true" {
			continue
		}
		key := strings.ToUpper(f.Tag.Get("envconfig"))
		if key == "" {
			key = strings.ToUpper(f.Name)
		}
		if prefix != "" {
			key = prefix + "_" + key
		}
		out = append(out, Var{
			Key:      key,
			Default:  f.Tag.Get("default"),
			Required: f.Tag.Get("required") == "true",
			Secret:   f.Tag.Get("secret"),
			Desc:     f.Tag.Get("desc"),
			typ:      f.Type,
		})
	}
	return out
}

func isSecret(spec any, field string) bool {
	t := reflect.TypeOf(spec)
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	f, ok := t.FieldByName(field)
	return ok && f.Tag.Get("secret") != ""
}

// AllVars lists every variable refresher reads, with the per-service ones for each
// service in REFRESHER_SERVICES (or for a placeholder <SERVICE> when none is set).
func AllVars() []Var {
	var vars []Var
	for _, spec := range []any{&Connections{}, &Logging{}, &Services{}, &consumer.Config{}, &stream.StreamConfig{}, &Publish{}, &HTTP{}, &Console{}, &Encryption{}, &NATS{}, &Tracing{}} {
		vars = append(vars, Vars("", spec)...)
	}
	names := []string{"<SERVICE>"}
	if v := os.Getenv("REFRESHER_SERVICES"); v != "" {
		names = nil
		for _, n := range strings.Split(v, ",") {
			if n = strings.TrimSpace(n); model.ValidateService(n) == nil {
				names = append(names, n)
			}
		}
	}
	for _, n := range names {
		prefix := ServicePrefix(n)
		if n == "<SERVICE>" {
			prefix = "REFRESHER_<SERVICE>"
		}
		vars = append(vars, Vars(prefix, &Service{})...)
	}
	return vars
}

// Shown is the value of v as `refresher config` prints it: secrets masked.
func (v Var) Shown() string {
	val, ok := os.LookupEnv(v.Key)
	switch {
	case !ok:
		return "(unset)"
	case v.Secret == "url":
		return model.RedactURL(val)
	case v.Secret != "" && val != "":
		return "****"
	}
	return val
}

// Check reports whether the variable's current value parses as its type (a whole
// number, a duration, ...); nil when it is unset or does.
func (v Var) Check() error {
	val, ok := os.LookupEnv(v.Key)
	if !ok || val == "" || v.typ == nil {
		return nil
	}
	if err := checkType(v.typ, val); err != nil {
		return err
	}
	return nil
}

var durationType = reflect.TypeOf(time.Duration(0))

func checkType(t reflect.Type, val string) error {
	switch {
	case t == durationType:
		if _, err := time.ParseDuration(val); err != nil {
			return fmt.Errorf("not a valid %s", describeType("time.Duration"))
		}
	case t.Kind() == reflect.Slice:
		for _, part := range strings.Split(val, ",") {
			if err := checkType(t.Elem(), strings.TrimSpace(part)); err != nil {
				return fmt.Errorf("not a valid %s", describeType(t.String()))
			}
		}
	case t.Kind() == reflect.Int || t.Kind() == reflect.Int64 || t.Kind() == reflect.Int32:
		if _, err := strconv.ParseInt(strings.TrimSpace(val), 0, t.Bits()); err != nil {
			return fmt.Errorf("not a valid %s", describeType("int"))
		}
	case t.Kind() == reflect.Uint || t.Kind() == reflect.Uint64 || t.Kind() == reflect.Uint32:
		if _, err := strconv.ParseUint(strings.TrimSpace(val), 0, t.Bits()); err != nil {
			return errors.New("not a valid whole number of 0 or more")
		}
	case t.Kind() == reflect.Bool:
		if _, err := strconv.ParseBool(val); err != nil {
			return errors.New("not a valid boolean (true or false)")
		}
	case t.Kind() == reflect.Float64:
		if _, err := strconv.ParseFloat(val, 64); err != nil {
			return errors.New("not a valid number")
		}
	}
	return nil
}

// Print writes the table that `refresher config` shows. A value that does not parse
// is marked "(invalid: ...)" in it; then the settings are checked as the commands
// check them (ranges, combinations, files, URLs), without connecting anywhere. Print
// returns an *Error listing every problem found, after writing the whole table.
func Print(w io.Writer) error {
	vars := AllVars()
	var problems []string
	bad := map[string]string{} // variable -> why, for the table
	for _, v := range vars {
		if err := v.Check(); err != nil {
			problems = append(problems, v.Key+"="+quoteShown(v)+": "+err.Error())
			bad[v.Key] = "invalid: " + err.Error()
		}
	}
	for _, err := range checkAll() {
		msg := err.Error()
		var e *Error
		if errors.As(err, &e) {
			msg = e.Err.Error()
		}
		key := leadingKey(msg)
		if _, seen := bad[key]; seen && strings.HasPrefix(bad[key], "invalid: not a valid") {
			continue // already reported as not parsing
		}
		problems = append(problems, msg)
		if key != "" {
			if _, seen := bad[key]; !seen {
				bad[key] = "invalid, see below"
			}
		}
	}

	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VARIABLE\tDEFAULT\tCURRENT\tDESCRIPTION")
	for _, v := range vars {
		def := v.Default
		if v.Required {
			def = "(required)"
		} else if def == "" {
			def = "-"
		}
		shown := v.Shown()
		if why, ok := bad[v.Key]; ok {
			shown += " (" + why + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.Key, def, shown, v.Desc)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(problems) == 0 {
		printRecovery(w)
		return nil
	}
	for _, p := range problems {
		fmt.Fprintln(w, "invalid:", p)
	}
	if len(problems) == 1 {
		return Errorf("%s", problems[0])
	}
	return Errorf("%d settings are invalid (listed above)", len(problems))
}

// leadingKey is the variable an error message starts with (NAME=value: ..., NAME is
// ..., NAME: ...), or "".
func leadingKey(msg string) string {
	end := strings.IndexFunc(msg, func(r rune) bool { return !(r == '_' || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9')) })
	if end <= 0 {
		return ""
	}
	return msg[:end]
}

func quoteShown(v Var) string {
	if v.Secret != "" {
		return v.Shown()
	}
	val, _ := os.LookupEnv(v.Key)
	return strconv.Quote(val)
}

// checkAll runs every component's own validation, as the commands do before they
// connect, and returns the errors found (each component stops at its first).
func checkAll() []error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var lc Logging
	if err := Load(&lc); err != nil {
		add(err)
	} else if _, err := logging.New(io.Discard, lc.Format, lc.Level); err != nil {
		add(err)
	}
	var conns Connections
	if err := Load(&conns); err != nil {
		add(err)
	} else {
		if _, ok := os.LookupEnv("DATABASE_URL"); ok {
			if conns.DatabaseURL == "" {
				add(Errorf("DATABASE_URL is set but empty"))
			} else {
				add(model.CheckURL(conns.DatabaseURL))
			}
		}
		_, err := NATSURL()
		add(err)
	}
	_, err := Consumer()
	add(err)
	_, err = Streams()
	add(err)
	var pub Publish
	add(Load(&pub))
	_, err = LoadHTTP()
	add(err)
	_, err = LoadNATS()
	add(err)
	_, err = Keyring()
	add(err)
	if os.Getenv("REFRESHER_SERVICES") != "" {
		var c consumer.Config
		timeout := consumer.DefaultConfig().ProviderTimeout
		if Load(&c) == nil && c.ProviderTimeout > 0 {
			timeout = c.ProviderTimeout
		}
		_, err = LoadServices(timeout)
		add(err)
	}
	var svc Services
	add(Load(&svc))
	return errs
}

// printRecovery states the crash recovery time the consumer settings give and, for
// each configured service, whether its declared reuse interval covers it.
func printRecovery(w io.Writer) {
	c, err := Consumer()
	if err != nil {
		return
	}
	fmt.Fprintf(w, "\ncrash recovery: a consume process killed between a provider's answer and its commit has its calls retried within %s\n", c.RecoveryTime())
	fmt.Fprintf(w, "  (max(REFRESHER_ACK_WAIT, REFRESHER_OWNER_TTL) + 0.25s; with REFRESHER_OWNER_TTL=0, the claim's expiry instead)\n")
	var s Services
	if Load(&s) != nil {
		return
	}
	for _, name := range s.Names {
		name = strings.TrimSpace(name)
		svc, err := LoadService(name)
		if err != nil {
			continue
		}
		verdict := "covered: such a credential is recovered"
		if svc.ReuseInterval < c.RecoveryTime() {
			verdict = "NOT covered: such a credential ends reauth_required"
		}
		fmt.Fprintf(w, "  %s: %s_REUSE_INTERVAL=%s, %s\n", name, ServicePrefix(name), svc.ReuseInterval, verdict)
	}
}
