package natsconn_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/internal/natsconn"
)

// natsVars are every variable config.NATS reads; each test starts with none set.
var natsVars = []string{"NATS_CREDS", "NATS_NKEY_SEED_FILE", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY"}

func setNATSEnv(t *testing.T, vars map[string]string) {
	t.Helper()
	for _, k := range natsVars {
		t.Setenv(k, vars[k])
	}
}

// TestConnectReadsEnvironment: Connect, which every command uses, takes its
// credentials and TLS settings from NATS_*; without them the same server refuses it.
func TestConnectReadsEnvironment(t *testing.T) {
	p := newPKI(t, "env")
	const password = "pw-env-c3a0"
	s := startServer(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "alice", Password: password}}
		o.TLSConfig = p.serverTLS(t, true)
		o.TLS, o.TLSVerify = true, true
	})
	log, logs := newLog()

	setNATSEnv(t, map[string]string{
		"NATS_USER": "alice", "NATS_PASSWORD": password,
		"NATS_TLS_CA": p.CA, "NATS_TLS_CERT": p.ClientCert, "NATS_TLS_KEY": p.ClientKey,
	})
	nc, err := natsconn.Connect(clientURL(s), t.Name(), log)
	if err != nil {
		t.Fatalf("connect with NATS_* set: %v", err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	nc.Close()

	setNATSEnv(t, map[string]string{"NATS_TLS_CA": p.CA, "NATS_TLS_CERT": p.ClientCert, "NATS_TLS_KEY": p.ClientKey})
	if nc, err := natsconn.Connect(clientURL(s), t.Name(), log); err == nil {
		nc.Close()
		t.Fatal("connected without NATS_USER: the server requires it")
	} else if !strings.Contains(err.Error(), "the server requires authentication") {
		t.Fatalf("error %q: want it to say the server requires authentication", err)
	}
	noSecrets(t, logs.String(), password)
}

// TestConfigurationErrors: every bad NATS_* setting is a *config.Error (exit 2) that
// names the variables and paths involved, found before anything is dialled, and
// never shows a password, a token or a seed.
func TestConfigurationErrors(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(t, "cfg")
	op := newOperator(t)
	goodCreds := op.creds(t, nil, nil)
	expired := op.creds(t, nil, func(uc *jwt.UserClaims) { uc.Expires = time.Now().Add(-time.Hour).Unix() })
	_, seed := nkeyUser(t)
	seedText := seedOf(t, seed)
	accountKP, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	accountSeed, _ := accountKP.Seed()
	accountSeedFile := writeFile(t, dir, "account.nk", accountSeed)
	// A creds file whose seed is not the one its JWT was issued to.
	mixed := writeFile(t, dir, "mixed.creds", []byte(strings.Replace(readText(t, goodCreds), seedBlock(t, goodCreds), seedText, 1)))
	garbage := writeFile(t, dir, "garbage", []byte("not a credential\n"))
	missing := dir + "/missing.pem"
	const password, token = "pw-cfg-8d1e", "tok-cfg-2b9f"

	tests := []struct {
		name string
		vars map[string]string
		url  string // NATS_URL; default a closed port that must never be dialled
		want []string
	}{
		{"creds and user", map[string]string{"NATS_CREDS": goodCreds, "NATS_USER": "alice", "NATS_PASSWORD": password},
			"", []string{"NATS_CREDS and NATS_USER are both set"}},
		{"token and password", map[string]string{"NATS_TOKEN": token, "NATS_PASSWORD": password},
			"", []string{"NATS_TOKEN and NATS_PASSWORD are both set"}},
		{"three methods", map[string]string{"NATS_CREDS": goodCreds, "NATS_NKEY_SEED_FILE": seed, "NATS_TOKEN": token},
			"", []string{"NATS_CREDS, NATS_NKEY_SEED_FILE and NATS_TOKEN are all set"}},
		{"password without user", map[string]string{"NATS_PASSWORD": password}, "", []string{"NATS_PASSWORD is set without NATS_USER"}},
		{"user without password", map[string]string{"NATS_USER": "alice"}, "", []string{`NATS_USER="alice" is set without NATS_PASSWORD`}},
		{"creds missing", map[string]string{"NATS_CREDS": missing}, "", []string{"NATS_CREDS=" + missing + ": cannot read it: no such file or directory"}},
		{"creds a directory", map[string]string{"NATS_CREDS": dir}, "", []string{"NATS_CREDS=" + dir + ": cannot read it: is a directory"}},
		{"creds not creds", map[string]string{"NATS_CREDS": garbage}, "", []string{"NATS_CREDS=" + garbage + ": no valid user JWT in it"}},
		{"creds expired", map[string]string{"NATS_CREDS": expired}, "", []string{"NATS_CREDS=" + expired + ": its JWT for user U", "expired at"}},
		{"creds seed of another user", map[string]string{"NATS_CREDS": mixed}, "", []string{"NATS_CREDS=" + mixed + ": its seed is for user U"}},
		{"seed file missing", map[string]string{"NATS_NKEY_SEED_FILE": missing}, "", []string{"NATS_NKEY_SEED_FILE=" + missing + ": cannot read it"}},
		{"seed file not a seed", map[string]string{"NATS_NKEY_SEED_FILE": garbage}, "", []string{"NATS_NKEY_SEED_FILE=" + garbage + ": no user nkey seed (SU...) in it"}},
		{"seed file of an account", map[string]string{"NATS_NKEY_SEED_FILE": accountSeedFile}, "", []string{"NATS_NKEY_SEED_FILE=" + accountSeedFile + ": no user nkey seed"}},
		{"CA missing", map[string]string{"NATS_TLS_CA": missing}, "", []string{"NATS_TLS_CA=" + missing + ": cannot read it"}},
		{"CA not PEM", map[string]string{"NATS_TLS_CA": garbage}, "", []string{"NATS_TLS_CA=" + garbage + ": no PEM certificate in it"}},
		{"cert without key", map[string]string{"NATS_TLS_CERT": p.ClientCert}, "", []string{"NATS_TLS_CERT=" + p.ClientCert + " is set without NATS_TLS_KEY"}},
		{"key without cert", map[string]string{"NATS_TLS_KEY": p.ClientKey}, "", []string{"NATS_TLS_KEY=" + p.ClientKey + " is set without NATS_TLS_CERT"}},
		{"key missing", map[string]string{"NATS_TLS_CERT": p.ClientCert, "NATS_TLS_KEY": missing}, "", []string{"NATS_TLS_KEY=" + missing + ": cannot read it"}},
		{"key of another certificate", map[string]string{"NATS_TLS_CERT": p.ClientCert, "NATS_TLS_KEY": p.ServerKey}, "",
			[]string{"NATS_TLS_CERT=" + p.ClientCert + ", NATS_TLS_KEY=" + p.ServerKey + ": not a certificate and its key"}},
		{"cert and key swapped", map[string]string{"NATS_TLS_CERT": p.ClientKey, "NATS_TLS_KEY": p.ClientCert}, "", []string{"not a certificate and its key"}},
		{"credentials in the URL too", map[string]string{"NATS_USER": "alice", "NATS_PASSWORD": password},
			"nats://bob:" + password + "@127.0.0.1:1", []string{"NATS_URL nats://bob:****@127.0.0.1:1 carries credentials", `user "alice"`}},
		{"token in the URL and NATS_TOKEN", map[string]string{"NATS_TOKEN": token},
			"nats://127.0.0.1:1,nats://" + token + "@127.0.0.1:2", []string{"NATS_URL nats://****@127.0.0.1:2 carries credentials"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setNATSEnv(t, tt.vars)
			url := tt.url
			if url == "" {
				url = "nats://127.0.0.1:1"
			}
			log, logs := newLog()
			nc, err := natsconn.Connect(url, t.Name(), log)
			if err == nil {
				nc.Close()
				t.Fatal("connected")
			}
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Errorf("error %v (%T): want a *config.Error, so the command exits 2", err, err)
			}
			if strings.Contains(err.Error(), "connect to NATS") {
				t.Errorf("error %q: want it found before dialling", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q: want it to contain %q", err, w)
				}
			}
			noSecrets(t, err.Error()+logs.String(), password, token, seedText, string(accountSeed), seedOf(t, seedFileOfCreds(t, goodCreds)))
		})
	}
}

// TestLoadNATSValid: good settings load as they are, and say how they authenticate.
func TestLoadNATSValid(t *testing.T) {
	op := newOperator(t)
	creds := op.creds(t, nil, nil)
	_, seed := nkeyUser(t)
	p := newPKI(t, "ok")
	tests := []struct {
		vars map[string]string
		auth string
		tls  bool
	}{
		{nil, "", false},
		{map[string]string{"NATS_CREDS": creds}, "credentials file " + creds + " (NATS_CREDS)", false},
		{map[string]string{"NATS_NKEY_SEED_FILE": seed}, "nkey seed file " + seed + " (NATS_NKEY_SEED_FILE)", false},
		{map[string]string{"NATS_USER": "alice", "NATS_PASSWORD": "pw"}, `user "alice" (NATS_USER, NATS_PASSWORD)`, false},
		{map[string]string{"NATS_TOKEN": "tok"}, "a token (NATS_TOKEN)", false},
		{map[string]string{"NATS_TLS_CA": p.CA}, "", true},
		{map[string]string{"NATS_TOKEN": "tok", "NATS_TLS_CA": p.CA, "NATS_TLS_CERT": p.ClientCert, "NATS_TLS_KEY": p.ClientKey}, "a token (NATS_TOKEN)", true},
	}
	for _, tt := range tests {
		setNATSEnv(t, tt.vars)
		n, err := config.LoadNATS()
		if err != nil {
			t.Errorf("%v: %v", tt.vars, err)
			continue
		}
		if n.Auth() != tt.auth || n.TLS() != tt.tls {
			t.Errorf("%v: auth %q tls %v, want %q %v", tt.vars, n.Auth(), n.TLS(), tt.auth, tt.tls)
		}
	}
}

// TestConfigListsNATSVariables: `refresher config` documents every NATS_* variable
// and masks the secret ones.
func TestConfigListsNATSVariables(t *testing.T) {
	setNATSEnv(t, map[string]string{"NATS_PASSWORD": "pw-listed", "NATS_TOKEN": "tok-listed", "NATS_USER": "alice"})
	shown := map[string]string{}
	for _, v := range config.AllVars() {
		shown[v.Key] = v.Shown()
	}
	for _, k := range natsVars {
		if _, ok := shown[k]; !ok {
			t.Errorf("config.AllVars lacks %s", k)
		}
	}
	if shown["NATS_PASSWORD"] != "****" || shown["NATS_TOKEN"] != "****" || shown["NATS_USER"] != "alice" {
		t.Errorf("shown: password %q token %q user %q; want the secrets masked", shown["NATS_PASSWORD"], shown["NATS_TOKEN"], shown["NATS_USER"])
	}
}

func readText(t *testing.T, path string) string {
	t.Helper()
	return seedOf(t, path) + "\n"
}

// seedBlock returns the seed line of a creds file.
func seedBlock(t *testing.T, credsFile string) string {
	t.Helper()
	for _, line := range strings.Split(readText(t, credsFile), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "SU") {
			return strings.TrimSpace(line)
		}
	}
	t.Fatalf("no seed in %s", credsFile)
	return ""
}

// seedFileOfCreds writes the seed of a creds file alone, so its value can be checked
// for leaks like a seed file's.
func seedFileOfCreds(t *testing.T, credsFile string) string {
	return writeFile(t, t.TempDir(), "creds-seed", []byte(seedBlock(t, credsFile)))
}

// TestURLsRedacted: a password or token in NATS_URL never reaches an error message.
func TestURLsRedacted(t *testing.T) {
	setNATSEnv(t, nil)
	tests := []struct{ url, secret, want string }{
		{"nats://alice:pw-url-1@127.0.0.1:1", "pw-url-1", "nats://alice:****@127.0.0.1:1"},
		{"nats://tok-url-2@127.0.0.1:1", "tok-url-2", "nats://****@127.0.0.1:1"},
		{"nats://127.0.0.1:1, tls://bob:pw-url-3@127.0.0.1:2", "pw-url-3", "nats://127.0.0.1:1, tls://bob:****@127.0.0.1:2"},
		{"nats://alice:pw%zz-4@127.0.0.1:1", "pw%zz-4", "nats://alice:****@127.0.0.1:1"},
	}
	for _, tt := range tests {
		log, logs := newLog()
		nc, err := natsconn.Connect(tt.url, t.Name(), log)
		if err == nil {
			nc.Close()
			t.Fatalf("%s: connected to a closed port", tt.want)
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("error %q: want the URL shown as %s", err, tt.want)
		}
		noSecrets(t, err.Error()+logs.String(), tt.secret)
	}
}
