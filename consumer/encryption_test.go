package consumer_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
)

func keyring(t *testing.T, ids ...string) (*model.Keyring, []string) {
	t.Helper()
	var parts []string
	for _, id := range ids {
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		parts = append(parts, id+":"+base64.StdEncoding.EncodeToString(b))
	}
	k, err := model.ParseKeyring(strings.Join(parts, ","))
	if err != nil {
		t.Fatal(err)
	}
	return k, parts
}

// plaintextRows counts rows whose token columns are not sealed with key id.
func plaintextRows(t *testing.T, env *fleettest.Env, id string) int {
	t.Helper()
	var rows []model.Credential
	if err := env.DB.NewSelect().Model(&rows).Column("id", "access_token", "refresh_token").Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range rows {
		if model.SealedWith(r.AccessToken) != id || model.SealedWith(r.RefreshToken) != id ||
			strings.Contains(r.AccessToken, "at.") || strings.Contains(r.RefreshToken, "rt.") {
			n++
		}
	}
	return n
}

// TestEncryptedTokens runs the duplicate-request scenario with the token columns
// encrypted: nothing is lost, and no plaintext token is left in the table.
func TestEncryptedTokens(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		k, _ := keyring(t, "k1")
		env := fleettest.New(t, fleettest.Options{Latency: 5 * time.Millisecond, BatchSize: batch, Keyring: k})
		ids := env.Seed("github", 30)
		for range 2 {
			env.StartConsumer(env.Config())
		}
		p := env.Publisher(publisher.WithWindow(0))
		for range 3 {
			if _, err := p.Publish(context.Background(), "github", ids...); err != nil {
				t.Fatal(err)
			}
		}
		env.WaitIdle(time.Minute)
		env.Verify()
		if n := plaintextRows(t, env, "k1"); n != 0 {
			t.Fatalf("%d rows hold a token not sealed with k1", n)
		}
		if st := env.Fake.Stats(); st.Rotations < len(ids) || st.Reuses != 0 {
			t.Fatalf("provider %+v", st)
		}
	})
}

// TestKeyRotationWhileRunning switches encryption on for a plaintext table, rotates
// to a new key and rekeys while consumers refresh, then drops the old key.
func TestKeyRotationWhileRunning(t *testing.T) {
	t.Parallel()
	both, parts := keyring(t, "new", "old")
	old, err := model.ParseKeyring(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	env := fleettest.New(t, fleettest.Options{Latency: 2 * time.Millisecond, Keyring: old})
	ids := env.Seed("github", 200) // sealed with old
	// Some rows written in plaintext before encryption was switched on.
	if _, err := env.DB.NewUpdate().Model((*model.Credential)(nil)).
		Set("access_token = 'at.' || id").Where("id <= ?", ids[9]).Exec(context.Background()); err != nil {
		t.Fatal(err)
	}
	env.Keyring = both // every process now has new (encrypting) and old
	env.StartConsumer(env.Config())
	p := env.Publisher(publisher.WithWindow(0))
	if _, err := p.Publish(context.Background(), "github", ids...); err != nil {
		t.Fatal(err)
	}
	res, err := model.Rekey(context.Background(), env.DB, both, 2*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Rows != len(ids) {
		t.Fatalf("rekey examined %d rows, want %d", res.Rows, len(ids))
	}
	env.WaitIdle(time.Minute)
	if n := plaintextRows(t, env, "new"); n != 0 {
		t.Fatalf("%d rows not sealed with the new key after rekey", n)
	}
	// The old key can go: everything still verifies and refreshes.
	onlyNew, err := model.ParseKeyring(parts[0])
	if err != nil {
		t.Fatal(err)
	}
	env.Keyring = onlyNew
	env.StartConsumer(env.Config())
	if _, err := p.Publish(context.Background(), "github", ids...); err != nil {
		t.Fatal(err)
	}
	env.WaitIdle(time.Minute)
	env.Verify()
	if st := env.Fake.Stats(); st.Reuses != 0 {
		t.Fatalf("%d replaced tokens sent", st.Reuses)
	}
}
