package model

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseBody(t *testing.T) {
	at := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		body    string
		want    Body
		wantErr string
	}{
		{"empty", "", Body{}, ""},
		{"whitespace", " \n\t", Body{}, ""},
		{"empty object", "{}", Body{}, ""},
		{"reason", `{"reason":"schedule"}`, Body{Reason: "schedule"}, ""},
		{"requested_at", `{"requested_at":"2026-11-26T10:00:00Z"}`, Body{RequestedAt: &at}, ""},
		{"not json", "{not json", Body{}, "invalid JSON"},
		{"array", `[1,2]`, Body{}, "want a JSON object"},
		{"empty array", `[]`, Body{}, `want a JSON object like {"reason": "..."}, not a JSON array`},
		{"string", `"hello"`, Body{}, "not a JSON string"},
		{"time of the wrong type", `{"requested_at":5}`, Body{}, `field "requested_at" is not an RFC 3339 time string`},
		{"unknown field", `{"requested":"2026-11-26T10:00:00Z"}`, Body{}, "unknown field"},
		{"bad time", `{"requested_at":"yesterday"}`, Body{}, "bad body"},
		{"zero time", `{"requested_at":"0001-01-01T00:00:00Z"}`, Body{}, "zero time"},
		{"reason type", `{"reason":42}`, Body{}, `field "reason" has the wrong type (want a string)`},
		{"trailing", `{} {}`, Body{}, "trailing data"},
		{"long reason", `{"reason":"` + strings.Repeat("x", MaxReasonLen+1) + `"}`, Body{}, "at most"},
		{"too big", `{"reason":"` + strings.Repeat(" ", MaxBodyBytes) + `"}`, Body{}, "limit"},
		{"null", `null`, Body{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseBody([]byte(tt.body))
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, ErrBadBody) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseBody(%q) error = %v, want ErrBadBody containing %q", tt.body, err, tt.wantErr)
				}
				for _, goName := range []string{"model.", "time.Time", "[]", "struct", "Body", "UnmarshalJSON"} {
					if strings.Contains(strings.TrimPrefix(err.Error(), "bad body: "), goName) && !strings.Contains(tt.body, goName) {
						t.Errorf("ParseBody(%q) error %q names a Go type (%s)", tt.body, err, goName)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseBody(%q): %v", tt.body, err)
			}
			if got.Reason != tt.want.Reason || (got.RequestedAt == nil) != (tt.want.RequestedAt == nil) ||
				(got.RequestedAt != nil && !got.RequestedAt.Equal(*tt.want.RequestedAt)) {
				t.Fatalf("ParseBody(%q) = %+v, want %+v", tt.body, got, tt.want)
			}
		})
	}
}

func TestRequestTime(t *testing.T) {
	stored := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	earlier := stored.Add(-time.Hour)
	bodyAt := stored.Add(-2 * time.Hour)
	tests := []struct {
		name      string
		header    string
		hasHeader bool
		body      Body
		want      time.Time
		wantErr   error
	}{
		{"stored time by default", "", false, Body{}, stored, nil},
		{"header wins", earlier.Format(time.RFC3339Nano), true, Body{RequestedAt: &bodyAt}, earlier, nil},
		{"body when no header", "", false, Body{RequestedAt: &bodyAt}, bodyAt, nil},
		{"bad header", "yesterday", true, Body{}, time.Time{}, ErrBadHeader},
		{"empty header", "", true, Body{}, time.Time{}, ErrBadHeader},
		{"zero time header", "0001-01-01T00:00:00Z", true, Body{}, time.Time{}, ErrBadHeader},
		{"header far in the future", stored.Add(time.Hour).Format(time.RFC3339), true, Body{}, time.Time{}, ErrBadRequestTime},
		{"slightly ahead is clock skew", stored.Add(time.Minute).Format(time.RFC3339), true, Body{}, stored.Add(time.Minute), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := RequestTime(tt.header, tt.hasHeader, tt.body, stored)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil || !got.Equal(tt.want) {
				t.Fatalf("RequestTime = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func FuzzParseBody(f *testing.F) {
	for _, s := range []string{"", "{}", `{"reason":"x"}`, `{"requested_at":"2026-11-26T10:00:00Z"}`, "{", "null", `{"reason":"\u0000"}`, "[]"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBody(data)
		if err != nil {
			if !errors.Is(err, ErrBadBody) {
				t.Fatalf("error %v does not wrap ErrBadBody", err)
			}
			return
		}
		if len(b.Reason) > MaxReasonLen {
			t.Fatalf("accepted a reason of %d bytes", len(b.Reason))
		}
	})
}

func FuzzParseRequestedAt(f *testing.F) {
	for _, s := range []string{"2026-11-26T10:00:00Z", "2026-11-26T10:00:00.123456789+02:00", "", "yesterday", "2026-13-01T00:00:00Z"} {
		f.Add(s)
	}
	stored := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		at, err := RequestTime(v, true, Body{}, stored)
		if err != nil {
			if !errors.Is(err, ErrBadHeader) && !errors.Is(err, ErrBadRequestTime) {
				t.Fatalf("error %v is neither ErrBadHeader nor ErrBadRequestTime", err)
			}
			return
		}
		if at.After(stored.Add(maxClockAhead)) {
			t.Fatalf("accepted %v, after the stored time", at)
		}
	})
}

func TestRequestedAtHeader(t *testing.T) {
	at := "2026-11-26T10:00:00Z"
	for _, tc := range []struct {
		name    string
		values  []string
		header  string
		has     bool
		wantErr bool
	}{
		{"none", nil, "", false, false},
		{"one", []string{at}, at, true, false},
		{"two", []string{at, "0001-01-01T00:00:00Z"}, "", false, true},
		{"two equal", []string{at, at}, "", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, has, err := RequestedAtHeader(tc.values)
			if (err != nil) != tc.wantErr || (err != nil && !errors.Is(err, ErrBadHeader)) {
				t.Fatalf("error %v, want error %v (ErrBadHeader)", err, tc.wantErr)
			}
			if h != tc.header || has != tc.has {
				t.Fatalf("got %q, %v; want %q, %v", h, has, tc.header, tc.has)
			}
		})
	}
}
