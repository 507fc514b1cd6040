package main

import (
	"context"
	"errors"

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
	if errors.Is(err, model.ErrBadURL) {
		return nil, &config.Error{Err: err}
	}
	return db, err
}
