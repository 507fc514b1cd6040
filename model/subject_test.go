package model

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSubject(t *testing.T) {
	tests := []struct {
		subject string
		want    Key
		wantErr bool
	}{
		{"refresh.github.42", Key{"github", 42}, false},
		{"refresh.my_svc-2.9223372036854775807", Key{"my_svc-2", 9223372036854775807}, false},
		{"refresh." + strings.Repeat("a", 64) + ".1", Key{strings.Repeat("a", 64), 1}, false},
		{"refresh." + strings.Repeat("a", 65) + ".1", Key{}, true},
		{"refresh.github", Key{}, true},
		{"refresh.github.42.extra", Key{}, true},
		{"refresh..42", Key{}, true},
		{"refresh.GitHub.42", Key{}, true},
		{"refresh.git hub.42", Key{}, true},
		{"refresh.github.0", Key{}, true},
		{"refresh.github.-1", Key{}, true},
		{"refresh.github.+1", Key{}, true},
		{"refresh.github.042", Key{}, true},
		{"refresh.github.9223372036854775808", Key{}, true},
		{"refresh.github.1e3", Key{}, true},
		{"refresh.github.", Key{}, true},
		{"refresh.github.abc", Key{}, true},
		{"refresh.gïthub.1", Key{}, true},
		{"other.github.1", Key{}, true},
		{"", Key{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.subject, func(t *testing.T) {
			got, err := ParseSubject(tt.subject)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseSubject(%q) = %v, want error", tt.subject, got)
				}
				if !errors.Is(err, ErrBadSubject) {
					t.Fatalf("error %v does not wrap ErrBadSubject", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSubject(%q): %v", tt.subject, err)
			}
			if got != tt.want {
				t.Fatalf("ParseSubject(%q) = %v, want %v", tt.subject, got, tt.want)
			}
			if got.Subject() != tt.subject {
				t.Fatalf("round trip: %q != %q", got.Subject(), tt.subject)
			}
		})
	}
}

func FuzzParseSubject(f *testing.F) {
	for _, s := range []string{"refresh.github.42", "refresh.a.1", "refresh..", "refresh.x.007", "refresh.x.-0", "refresh.\xff.1", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseSubject(s)
		if err != nil {
			if !errors.Is(err, ErrBadSubject) {
				t.Fatalf("error %v does not wrap ErrBadSubject", err)
			}
			return
		}
		// Anything accepted is canonical: it formats back to the same subject.
		if k.Subject() != s || k.ID <= 0 || ValidateService(k.Service) != nil {
			t.Fatalf("accepted %q as %+v", s, k)
		}
	})
}
