package natsconn_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/internal/natsconn"
)

// TestTLS connects to servers that require TLS, and one that verifies client
// certificates, with the right CA and certificate and with each piece missing or
// wrong: every failure is immediate and says which variable to set or fix.
func TestTLS(t *testing.T) {
	ours, theirs := newPKI(t, "ours"), newPKI(t, "theirs")
	const password = "pw-tls-51ab"
	requireTLS := func(verifyClients bool) func(*server.Options) {
		return func(o *server.Options) {
			o.TLSConfig = ours.serverTLS(t, verifyClients)
			o.TLS, o.TLSVerify = true, verifyClients
			o.TLSTimeout = 2
		}
	}
	tests := []struct {
		name   string
		server func(*server.Options)
		auth   config.NATS
		want   []string // in the error; none: the dial succeeds
	}{
		{"CA", requireTLS(false), config.NATS{TLSCA: ours.CA}, nil},
		{"CA and client certificate", requireTLS(true),
			config.NATS{TLSCA: ours.CA, TLSCert: ours.ClientCert, TLSKey: ours.ClientKey}, nil},
		{"TLS and a password", func(o *server.Options) {
			requireTLS(true)(o)
			o.Users = []*server.User{{Username: "alice", Password: password}}
		}, config.NATS{TLSCA: ours.CA, TLSCert: ours.ClientCert, TLSKey: ours.ClientKey, User: "alice", Password: password}, nil},
		{"no CA", requireTLS(false), config.NATS{},
			[]string{"certificate signed by unknown authority", "set NATS_TLS_CA to the CA that signed the server's certificate"}},
		{"another CA", requireTLS(false), config.NATS{TLSCA: theirs.CA},
			[]string{"certificate signed by unknown authority", "NATS_TLS_CA " + theirs.CA + " did not sign the server's certificate"}},
		{"no client certificate", requireTLS(true), config.NATS{TLSCA: ours.CA},
			[]string{"the server refused the TLS client: if it verifies clients, set NATS_TLS_CERT and NATS_TLS_KEY"}},
		{"client certificate from another CA", requireTLS(true),
			config.NATS{TLSCA: ours.CA, TLSCert: theirs.ClientCert, TLSKey: theirs.ClientKey}, []string{"the server refused the TLS client: is NATS_TLS_CERT " + theirs.ClientCert + " signed by a CA the server trusts?"}},
		{"TLS asked of a server without it", nil, config.NATS{TLSCA: ours.CA},
			[]string{nats.ErrSecureConnWanted.Error(), "NATS_TLS_* asks for TLS but the server does not offer it"}},
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
				if _, err := nc.TLSConnectionState(); err != nil {
					t.Fatalf("connection is not encrypted: %v", err)
				}
				if err := nc.Flush(); err != nil {
					t.Fatalf("flush: %v", err)
				}
				return
			}
			if err == nil {
				nc.Close()
				t.Fatal("connected; want a TLS failure")
			}
			var ce *config.Error
			if errors.As(err, &ce) {
				t.Errorf("a failed handshake is not a configuration error: %v", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q: want it to contain %q", err, w)
				}
			}
			if elapsed > failFast {
				t.Errorf("failed dial took %s: want it to fail at once", elapsed)
			}
			noSecrets(t, err.Error()+logs.String(), password)
		})
	}
}
