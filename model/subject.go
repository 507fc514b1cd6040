package model

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// SubjectPrefix is the first token of every refresh request subject:
// refresh.<service>.<id>. It lives here, with the parsing, so that model knows no
// NATS; package stream builds the streams' subjects from it.
const SubjectPrefix = "refresh"

// ErrBadSubject is returned for a subject that is not refresh.<service>.<id>.
var ErrBadSubject = errors.New("bad subject")

// ErrBadService is returned for a service name outside [a-z0-9_-]{1,64}.
var ErrBadService = errors.New("bad service name")

var serviceRE = regexp.MustCompile(`^[a-z0-9_-]{1,64}$`)

// Key names one credential in a request: the service and the row id.
type Key struct {
	Service string
	ID      int64
}

// Subject returns refresh.<service>.<id>.
func (k Key) Subject() string {
	return SubjectPrefix + "." + k.Service + "." + strconv.FormatInt(k.ID, 10)
}

// String is the subject form, handy in logs.
func (k Key) String() string { return k.Subject() }

// ValidateService reports whether name is a valid service name.
func ValidateService(name string) error {
	if !serviceRE.MatchString(name) {
		return fmt.Errorf("%w %q: want [a-z0-9_-]{1,64}", ErrBadService, name)
	}
	return nil
}

// ParseSubject parses refresh.<service>.<id>. The id must be a positive int64 written
// canonically (no sign, no leading zeros), so that one row has exactly one subject and
// the publisher's dedupe ids cannot be bypassed by spelling an id differently.
func ParseSubject(subject string) (Key, error) {
	parts := strings.Split(subject, ".")
	if len(parts) != 3 || parts[0] != SubjectPrefix {
		return Key{}, fmt.Errorf("%w %q: want %s.<service>.<id>", ErrBadSubject, subject, SubjectPrefix)
	}
	if err := ValidateService(parts[1]); err != nil {
		return Key{}, fmt.Errorf("%w %q: %w", ErrBadSubject, subject, err)
	}
	id, err := ParseID(parts[2])
	if err != nil {
		return Key{}, fmt.Errorf("%w %q: %w", ErrBadSubject, subject, err)
	}
	return Key{Service: parts[1], ID: id}, nil
}

// ParseID parses a positive int64 in canonical decimal form.
func ParseID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 || strconv.FormatInt(id, 10) != s {
		return 0, fmt.Errorf("id %q is not a positive integer", s)
	}
	return id, nil
}
