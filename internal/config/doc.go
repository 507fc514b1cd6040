package config

import (
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"text/tabwriter"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
)

// Var documents one environment variable.
type Var struct {
	Key      string
	Default  string
	Required bool
	Secret   string // "", "true" (mask whole value) or "url" (mask the password)
	Desc     string
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
	for _, spec := range []any{&Connections{}, &Logging{}, &Services{}, &consumer.Config{}, &publisher.StreamConfig{}, &Publish{}, &HTTP{}, &Encryption{}, &NATS{}} {
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

// Print writes the table that `refresher config` shows.
func Print(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VARIABLE\tDEFAULT\tCURRENT\tDESCRIPTION")
	for _, v := range AllVars() {
		def := v.Default
		if v.Required {
			def = "(required)"
		} else if def == "" {
			def = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.Key, def, v.Shown(), v.Desc)
	}
	return tw.Flush()
}
