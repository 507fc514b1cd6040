package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/uptrace/bun"

	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/model"
)

// openDB opens DATABASE_URL with a pool of maxConns (0: database/sql's default).
func openDB(ctx context.Context, maxConns int) (*bun.DB, error) {
	url, err := config.DatabaseURL()
	if err != nil {
		return nil, err
	}
	db, err := model.Open(ctx, url, maxConns)
	switch {
	case errors.Is(err, model.ErrBadURL):
		return nil, &config.Error{Err: err}
	case err != nil:
		// Not a configuration error (exit 1): the server may be down for a moment. The
		// variable is named so the operator knows where the address came from.
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	return db, nil
}

// openSealedDB opens DATABASE_URL for a command that reads or writes tokens, with the
// keyring from REFRESHER_ENCRYPTION_KEYS (nil when encryption is off).
func openSealedDB(ctx context.Context, maxConns int) (*bun.DB, *model.Keyring, error) {
	keyring, err := config.Keyring()
	if err != nil {
		return nil, nil, err
	}
	db, err := openDB(ctx, maxConns)
	if err != nil {
		return nil, nil, err
	}
	return db, keyring, nil
}
