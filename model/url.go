package model

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/jackc/pgx/v5"
)

// ErrBadURL is returned for a database URL that cannot be parsed.
var ErrBadURL = errors.New("not a valid PostgreSQL URL")

func parseURL(raw string) (*pgx.ConnConfig, error) {
	if raw == "" {
		return nil, fmt.Errorf("DATABASE_URL is empty: %w", ErrBadURL)
	}
	cfg, err := pgx.ParseConfig(raw)
	if err != nil {
		// pgx echoes the input, password included: report only the redacted form.
		return nil, fmt.Errorf("DATABASE_URL %s: %w", RedactURL(raw), ErrBadURL)
	}
	return cfg, nil
}

// RedactURL hides the password of a URL so it can be logged or printed.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		if raw == "" {
			return `""`
		}
		return "(unparseable URL)"
	}
	return u.Redacted()
}
