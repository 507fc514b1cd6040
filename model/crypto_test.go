package model_test

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/refresher/refresher/model"
)

func newKey(t testing.TB) string {
	t.Helper()
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

func TestKeyringSealOpen(t *testing.T) {
	k, err := model.ParseKeyring("k1:" + newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := k.Seal("refresh_token", "rt.secret-value")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(sealed, "secret-value") || model.SealedWith(sealed) != "k1" {
		t.Fatalf("sealed value %q", sealed)
	}
	again, _ := k.Seal("refresh_token", "rt.secret-value")
	if again == sealed {
		t.Fatal("two seals of one value are identical: the nonce is not random")
	}
	if got, err := k.Open("refresh_token", sealed); err != nil || got != "rt.secret-value" {
		t.Fatalf("Open = %q, %v", got, err)
	}
	// Moved to the other column: refused.
	if _, err := k.Open("access_token", sealed); !errors.Is(err, model.ErrCorrupt) {
		t.Fatalf("open in another column: %v", err)
	}
	// Tampered: refused.
	tampered := sealed[:len(sealed)-2] + "AA"
	if _, err := k.Open("refresh_token", tampered); !errors.Is(err, model.ErrCorrupt) {
		t.Fatalf("open tampered: %v", err)
	}
	// Plaintext passes through, so encryption can be switched on for existing rows.
	if got, err := k.Open("refresh_token", "rt.plain"); err != nil || got != "rt.plain" {
		t.Fatalf("open plaintext = %q, %v", got, err)
	}
	// Without a keyring: plaintext stays, sealed values cannot be read.
	var none *model.Keyring
	if got, _ := none.Seal("refresh_token", "x"); got != "x" {
		t.Fatalf("nil keyring sealed %q", got)
	}
	if _, err := none.Open("refresh_token", sealed); !errors.Is(err, model.ErrUnknownKey) {
		t.Fatalf("nil keyring open: %v", err)
	}
}

// TestKeyRotation: the first key seals, every listed key opens.
func TestKeyRotation(t *testing.T) {
	oldKey, newK := newKey(t), newKey(t)
	old, _ := model.ParseKeyring("old:" + oldKey)
	sealedOld, _ := old.Seal("access_token", "at.value")
	both, err := model.ParseKeyring("new:" + newK + ",old:" + oldKey)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := both.Open("access_token", sealedOld); err != nil || got != "at.value" {
		t.Fatalf("open old-key value with both keys = %q, %v", got, err)
	}
	sealedNew, _ := both.Seal("access_token", "at.value")
	if model.SealedWith(sealedNew) != "new" {
		t.Fatalf("sealed with %q, want the first key", model.SealedWith(sealedNew))
	}
	onlyNew, _ := model.ParseKeyring("new:" + newK)
	if _, err := onlyNew.Open("access_token", sealedOld); !errors.Is(err, model.ErrUnknownKey) {
		t.Fatalf("open with the old key dropped: %v", err)
	}
}

func TestParseKeyringRejects(t *testing.T) {
	key := newKey(t)
	for _, tt := range []struct{ name, spec, want string }{
		{"no id", key, "entry 1"},
		{"bad id", "bad id:" + key, "entry 1"},
		{"short key", "k:" + base64.StdEncoding.EncodeToString([]byte("short")), `key "k": want 32 bytes`},
		{"not base64", "k:!!!", `key "k": want 32 bytes`},
		{"duplicate id", "k:" + key + ",k:" + key, "listed twice"},
		{"empty entry", "k:" + key + ",", "entry 2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := model.ParseKeyring(tt.spec)
			if !errors.Is(err, model.ErrBadKeyring) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want %q", err, tt.want)
			}
			if strings.Contains(err.Error(), key) {
				t.Fatal("error shows key material")
			}
		})
	}
	if k, err := model.ParseKeyring("  "); k != nil || err != nil {
		t.Fatalf("empty spec = %v, %v; want no keyring", k, err)
	}
}
