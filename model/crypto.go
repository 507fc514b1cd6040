package model

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Token columns can be stored encrypted (AES-256-GCM). A sealed value reads
// "enc:v1:<key id>:<base64url(nonce | ciphertext)>"; anything else is plaintext, so
// encryption can be switched on for a table that already has rows and `refresher rekey`
// converts them.
const sealedPrefix = "enc:v1:"

// Errors of the keyring.
var (
	// ErrBadKeyring is returned for a REFRESHER_ENCRYPTION_KEYS value that does not parse.
	ErrBadKeyring = errors.New("bad REFRESHER_ENCRYPTION_KEYS")
	// ErrUnknownKey is returned for a sealed value whose key is not in the keyring (or
	// when there is no keyring at all).
	ErrUnknownKey = errors.New("token sealed with a key that is not configured")
	// ErrCorrupt is returned for a sealed value that fails authentication.
	ErrCorrupt = errors.New("sealed token is corrupt or was moved from another column")
)

var keyIDRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

// Keyring holds the token-encryption keys. The first key seals; any key opens, so keys
// rotate without downtime: add the new key first, roll out, rekey, then drop the old.
// A nil *Keyring stores plaintext.
type Keyring struct {
	ids   []string
	aeads map[string]cipher.AEAD
}

// ParseKeyring reads "id:base64key,id2:base64key2" (standard or URL base64 of 32
// random bytes). An empty spec means no encryption: it returns nil, nil.
func ParseKeyring(spec string) (*Keyring, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, nil
	}
	k := &Keyring{aeads: map[string]cipher.AEAD{}}
	for i, part := range strings.Split(spec, ",") {
		id, b64, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok || !keyIDRE.MatchString(id) {
			return nil, fmt.Errorf("%w: entry %d: want <id>:<base64 key> with an id of [A-Za-z0-9_-]{1,32}", ErrBadKeyring, i+1)
		}
		if _, dup := k.aeads[id]; dup {
			return nil, fmt.Errorf("%w: key id %q is listed twice", ErrBadKeyring, id)
		}
		raw, err := decodeKey(b64)
		if err != nil || len(raw) != 32 {
			// Never echo key material, not even a bad one.
			return nil, fmt.Errorf("%w: key %q: want 32 bytes in base64 (openssl rand -base64 32)", ErrBadKeyring, id)
		}
		block, err := aes.NewCipher(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: key %q: %w", ErrBadKeyring, id, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("%w: key %q: %w", ErrBadKeyring, id, err)
		}
		k.ids = append(k.ids, id)
		k.aeads[id] = aead
	}
	return k, nil
}

func decodeKey(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, errors.New("not base64")
}

// PrimaryID is the id of the key that seals, "" without a keyring.
func (k *Keyring) PrimaryID() string {
	if k == nil {
		return ""
	}
	return k.ids[0]
}

// Seal encrypts a token for column (the column name is authenticated, so a sealed
// access token cannot be passed off as a refresh token). Without a keyring it returns
// the plaintext.
func (k *Keyring) Seal(column, plaintext string) (string, error) {
	if k == nil {
		return plaintext, nil
	}
	id := k.ids[0]
	aead := k.aeads[id]
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plaintext)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("seal %s: %w", column, err)
	}
	out := aead.Seal(nonce, nonce, []byte(plaintext), []byte(column))
	return sealedPrefix + id + ":" + base64.RawURLEncoding.EncodeToString(out), nil
}

// Open decrypts a stored token of column; a plaintext value is returned as is.
func (k *Keyring) Open(column, stored string) (string, error) {
	rest, sealed := strings.CutPrefix(stored, sealedPrefix)
	if !sealed {
		return stored, nil
	}
	id, b64, ok := strings.Cut(rest, ":")
	if !ok {
		return "", fmt.Errorf("open %s: %w", column, ErrCorrupt)
	}
	if k == nil {
		return "", fmt.Errorf("open %s: %w (key %q; REFRESHER_ENCRYPTION_KEYS is not set)", column, ErrUnknownKey, id)
	}
	aead, ok := k.aeads[id]
	if !ok {
		return "", fmt.Errorf("open %s: %w (key %q)", column, ErrUnknownKey, id)
	}
	raw, err := base64.RawURLEncoding.DecodeString(b64)
	if err != nil || len(raw) < aead.NonceSize()+aead.Overhead() {
		return "", fmt.Errorf("open %s: %w", column, ErrCorrupt)
	}
	plain, err := aead.Open(nil, raw[:aead.NonceSize()], raw[aead.NonceSize():], []byte(column))
	if err != nil {
		return "", fmt.Errorf("open %s: %w", column, ErrCorrupt)
	}
	return string(plain), nil
}

// SealedWith reports the key id a stored value is sealed with ("" for plaintext).
func SealedWith(stored string) string {
	rest, ok := strings.CutPrefix(stored, sealedPrefix)
	if !ok {
		return ""
	}
	id, _, _ := strings.Cut(rest, ":")
	return id
}

// OpenTokens decrypts both token fields of c in place.
func (k *Keyring) OpenTokens(c *Credential) error {
	var err error
	if c.AccessToken, err = k.Open("access_token", c.AccessToken); err != nil {
		return fmt.Errorf("credential %d: %w", c.ID, err)
	}
	if c.RefreshToken, err = k.Open("refresh_token", c.RefreshToken); err != nil {
		return fmt.Errorf("credential %d: %w", c.ID, err)
	}
	return nil
}

// SealTokens encrypts access and refresh for storage.
func (k *Keyring) SealTokens(access, refresh string) (sealedAccess, sealedRefresh string, err error) {
	if sealedAccess, err = k.Seal("access_token", access); err != nil {
		return "", "", err
	}
	if sealedRefresh, err = k.Seal("refresh_token", refresh); err != nil {
		return "", "", err
	}
	return sealedAccess, sealedRefresh, nil
}
