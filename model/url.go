package model

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/refresher/refresher/internal/redact"
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

// RedactURL hides the secrets of a URL or connection string so it can be logged or
// printed: see redact.URL, the one rule every printed URL goes through.
func RedactURL(raw string) string { return redact.URL(raw) }

// CheckURL reports whether raw is a PostgreSQL URL or keyword/value connection string
// that can be used to connect; its error names DATABASE_URL and shows the value only
// through RedactURL.
func CheckURL(raw string) error {
	_, err := parseURL(raw)
	return err
}
