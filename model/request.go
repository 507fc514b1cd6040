package model

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"
	"unicode/utf8"
)

// HeaderRequestedAt carries the time a refresh was asked for (RFC 3339). Replays set it
// to the original request time so the skip rule still recognises satisfied requests.
const HeaderRequestedAt = "Refresh-Requested-At"

// Limits on request bodies: a request is ids and metadata, never payload.
const (
	MaxBodyBytes  = 4096
	MaxReasonLen  = 256
	maxClockAhead = 5 * time.Minute
)

// ErrBadBody is returned for a body that is neither empty nor a valid request object.
var ErrBadBody = errors.New("bad body")

// ErrBadHeader is returned for a malformed Refresh-Requested-At header.
var ErrBadHeader = errors.New("bad header")

// ErrBadRequestTime is returned for a request time later than the message itself.
var ErrBadRequestTime = errors.New("bad request time")

// Body is the optional JSON body of a refresh request.
type Body struct {
	Reason      string     `json:"reason,omitempty"`
	RequestedAt *time.Time `json:"requested_at,omitempty"`
}

// ParseBody parses an optional request body. Empty (or all-space) means no metadata.
// Unknown fields are refused: a typo in "requested_at" must not silently turn a
// replayed request into a new one.
func ParseBody(data []byte) (Body, error) {
	var b Body
	if len(bytes.TrimSpace(data)) == 0 {
		return b, nil
	}
	if len(data) > MaxBodyBytes {
		return b, fmt.Errorf("%w: %d bytes, limit %d", ErrBadBody, len(data), MaxBodyBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return Body{}, fmt.Errorf("%w: %s", ErrBadBody, describeJSONError(err))
	}
	if dec.More() {
		return Body{}, fmt.Errorf("%w: trailing data after the JSON object", ErrBadBody)
	}
	if !utf8.ValidString(b.Reason) || len(b.Reason) > MaxReasonLen {
		return Body{}, fmt.Errorf("%w: reason must be valid UTF-8 of at most %d bytes", ErrBadBody, MaxReasonLen)
	}
	if b.RequestedAt != nil && b.RequestedAt.IsZero() {
		return Body{}, fmt.Errorf("%w: requested_at is the zero time", ErrBadBody)
	}
	return b, nil
}

// describeJSONError keeps decoder errors short and free of the input's bytes.
func describeJSONError(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("invalid JSON at byte %d", syn.Offset)
	case errors.As(err, &typ) && typ.Field == "":
		// The body itself is not an object ([] or "x"): no Go type names.
		return fmt.Sprintf("want a JSON object like {\"reason\": \"...\"}, not a JSON %s", typ.Value)
	case errors.As(err, &typ):
		return fmt.Sprintf("field %q has the wrong type (want %s)", typ.Field, jsonType(typ.Type.Kind()))
	case strings.Contains(err.Error(), "Time.UnmarshalJSON") || strings.Contains(err.Error(), "parsing time"):
		// The only time field; the time package's own words name Go types.
		return `field "requested_at" is not an RFC 3339 time string`
	default:
		msg := err.Error()
		if len(msg) > 120 {
			msg = msg[:120]
		}
		return msg
	}
}

// ParseRequestedAt parses the Refresh-Requested-At header value (RFC 3339).
func ParseRequestedAt(v string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		shown := v
		if len(shown) > 64 || !utf8.ValidString(shown) {
			shown = "(unprintable or too long)"
		}
		return time.Time{}, fmt.Errorf("%w %s %q: want RFC 3339", ErrBadHeader, HeaderRequestedAt, shown)
	}
	if t.IsZero() {
		// As in the body: a request "made at the beginning of time" is satisfied by any
		// refresh ever made, so it would never refresh anything.
		return time.Time{}, fmt.Errorf("%w %s %q: the zero time", ErrBadHeader, HeaderRequestedAt, v)
	}
	return t, nil
}

// RequestedAtHeader picks the Refresh-Requested-At value out of a message's values for
// it: none (hasHeader false), or exactly one. Two or more are refused rather than one
// silently winning.
func RequestedAtHeader(values []string) (header string, hasHeader bool, err error) {
	switch len(values) {
	case 0:
		return "", false, nil
	case 1:
		return values[0], true, nil
	}
	return "", false, fmt.Errorf("%w: %d %s headers, want at most one", ErrBadHeader, len(values), HeaderRequestedAt)
}

// FormatRequestedAt formats t for the Refresh-Requested-At header.
func FormatRequestedAt(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// RequestTime decides when a request was made: the header if present, else the body's
// requested_at, else the time the stream stored it. A time well after the stream stored
// the message is refused, because it would make the request unsatisfiable by any
// refresh that already happened and so defeat the skip rule.
func RequestTime(header string, hasHeader bool, body Body, stored time.Time) (time.Time, error) {
	t := stored
	switch {
	case hasHeader:
		h, err := ParseRequestedAt(header)
		if err != nil {
			return time.Time{}, err
		}
		t = h
	case body.RequestedAt != nil:
		t = *body.RequestedAt
	}
	if !stored.IsZero() && t.After(stored.Add(maxClockAhead)) {
		return time.Time{}, fmt.Errorf("%w: %s is after the message was stored (%s)",
			ErrBadRequestTime, t.UTC().Format(time.RFC3339), stored.UTC().Format(time.RFC3339))
	}
	return t, nil
}

// jsonType names a Go kind as the JSON type a field wants.
func jsonType(k reflect.Kind) string {
	switch k {
	case reflect.String:
		return "a string"
	case reflect.Struct, reflect.Pointer:
		return "an RFC 3339 time string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map:
		return "an object"
	}
	return "a number"
}
