package consumer

import "errors"

// The consumer's sentinel errors, for errors.Is.

// ErrLockTimeout means another writer held the row past REFRESHER_LOCK_TIMEOUT.
var ErrLockTimeout = errors.New("row lock timeout")

// ErrClaimHeld means another attempt's claim on the credential outlived the wait for
// it (its owner is slow to commit, or the database could not be read meanwhile).
var ErrClaimHeld = errors.New("another attempt still holds the credential's claim")

// ErrTooManyRounds means a request went back to the claim step maxRounds times.
var ErrTooManyRounds = errors.New("credential changed under every attempt")

// errStopping aborts a message whose provider call has not begun when shutdown starts.
var errStopping = errors.New("shutting down")
