package config_test

import (
	"os"
	"reflect"
	"testing"

	"github.com/kelseyhightower/envconfig"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/stream"
)

// TestDefaultsMatchTags: each Default…() function, for code that configures itself
// without envconfig, says what the struct's default tags say, so the two cannot drift.
func TestDefaultsMatchTags(t *testing.T) {
	for _, tt := range []struct {
		name       string
		spec, want any // spec: a pointer to the zero struct
	}{
		{"consumer.DefaultConfig", new(consumer.Config), consumer.DefaultConfig()},
		{"stream.DefaultStreamConfig", new(stream.StreamConfig), stream.DefaultStreamConfig()},
	} {
		unsetVars(t, tt.spec)
		if err := envconfig.Process("", tt.spec); err != nil {
			t.Fatalf("%s: envconfig with no variables set: %v", tt.name, err)
		}
		if got := reflect.ValueOf(tt.spec).Elem().Interface(); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s() = %+v,\nthe default tags say %+v", tt.name, tt.want, got)
		}
	}
}

// unsetVars unsets, for the test, the variables spec's fields are read from.
func unsetVars(t *testing.T, spec any) {
	typ := reflect.TypeOf(spec).Elem()
	for i := range typ.NumField() {
		name := typ.Field(i).Tag.Get("envconfig")
		if v, ok := os.LookupEnv(name); ok && name != "" {
			t.Setenv(name, v) // restored after the test
			if err := os.Unsetenv(name); err != nil {
				t.Fatal(err)
			}
		}
	}
}
