package config

import (
	"errors"

	"github.com/refresher/refresher/model"
)

// Encryption configures encryption of the token columns at rest.
type Encryption struct {
	Keys string `envconfig:"REFRESHER_ENCRYPTION_KEYS" secret:"true" desc:"id:base64(32 bytes),... AES-256-GCM keys for the token columns; the first encrypts, any decrypts; empty: plaintext"`
}

// Keyring loads REFRESHER_ENCRYPTION_KEYS; nil when it is not set.
func Keyring() (*model.Keyring, error) {
	var e Encryption
	if err := Load(&e); err != nil {
		return nil, err
	}
	k, err := model.ParseKeyring(e.Keys)
	if err != nil {
		if errors.Is(err, model.ErrBadKeyring) {
			return nil, &Error{Err: err}
		}
		return nil, err
	}
	return k, nil
}
