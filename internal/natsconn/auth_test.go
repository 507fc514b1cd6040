package natsconn_test

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/internal/natsconn"
)

// failFast bounds a refused first dial: the client must give up at once, not retry.
const failFast = 3 * time.Second

// TestAuth connects with each way of authenticating, right and wrong, to a server
// that requires it. A refused dial fails at once with the server's "authorization
// violation" and names the method, never the secret.
func TestAuth(t *testing.T) {
	const password, token = "pw-0f7c1e", "tok-9b2d44"
	userServer := func(o *server.Options) {
		o.Users = []*server.User{{Username: "alice", Password: password}}
	}
	tokenServer := func(o *server.Options) { o.Authorization = token }
	goodPub, goodSeed := nkeyUser(t)
	_, otherSeed := nkeyUser(t)
	nkeyServer := func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: goodPub}} }
	op := newOperator(t)
	stranger, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		server func(*server.Options)
		auth   config.NATS
		want   []string // in the error; none: the dial succeeds
	}{
		{"user and password", userServer, config.NATS{User: "alice", Password: password}, nil},
		{"wrong password", userServer, config.NATS{User: "alice", Password: "not-" + password},
			[]string{"Authorization Violation", `as user "alice" (NATS_USER, NATS_PASSWORD)`, "refused these credentials"}},
		{"unknown user", userServer, config.NATS{User: "mallory", Password: password}, []string{"Authorization Violation", `user "mallory"`}},
		{"no credentials", userServer, config.NATS{},
			[]string{"Authorization Violation", "the server requires authentication: set NATS_CREDS"}},
		{"token", tokenServer, config.NATS{Token: token}, nil},
		{"wrong token", tokenServer, config.NATS{Token: token + "x"}, []string{"Authorization Violation", "as a token (NATS_TOKEN)"}},
		{"user against a token server", tokenServer, config.NATS{User: "alice", Password: password}, []string{"Authorization Violation"}},
		{"nkey seed", nkeyServer, config.NATS{NkeySeedFile: goodSeed}, nil},
		{"nkey seed of another user", nkeyServer, config.NATS{NkeySeedFile: otherSeed},
			[]string{"Authorization Violation", "nkey seed file " + otherSeed + " (NATS_NKEY_SEED_FILE)"}},
		{"creds", op.configure(t), config.NATS{Creds: op.creds(t, nil, nil)}, nil},
		{"creds of an account the server does not trust", op.configure(t), config.NATS{Creds: op.creds(t, stranger, nil)},
			[]string{"Authorization Violation", "(NATS_CREDS)"}},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startServer(t, tt.server)
			log, logs := newLog()
			start := time.Now()
			nc, err := natsconn.ConnectWith(clientURL(s), t.Name(), log, tt.auth)
			elapsed := time.Since(start)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("connect: %v", err)
				}
				defer nc.Close()
				if err := nc.Flush(); err != nil {
					t.Fatalf("flush on an authenticated connection: %v", err)
				}
				return
			}
			if err == nil {
				nc.Close()
				t.Fatal("connected; want the server to refuse the credentials")
			}
			if !errors.Is(err, nats.ErrAuthorization) {
				t.Errorf("error %v: want errors.Is nats.ErrAuthorization", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q: want it to contain %q", err, w)
				}
			}
			if elapsed > failFast {
				t.Errorf("refused dial took %s: want it to fail at once, not retry", elapsed)
			}
			noSecrets(t, err.Error()+logs.String(), password, token, seedOf(t, goodSeed), seedOf(t, otherSeed))
		})
	}
}

// noSecrets fails if any secret appears in s.
func noSecrets(t *testing.T, s string, secrets ...string) {
	t.Helper()
	for _, sec := range secrets {
		if sec != "" && strings.Contains(s, sec) {
			t.Errorf("secret %q leaked into %q", sec, s)
		}
	}
}

// seedOf reads an nkey seed file, to check that the seed leaks nowhere.
func seedOf(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
