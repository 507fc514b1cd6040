package natsconn_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/refresher/refresher/internal/testtier"
)

// startServer runs a plain nats-server (no JetStream: these tests only connect) on a
// free loopback port, shaped by configure, until the test ends.
func startServer(t *testing.T, configure func(*server.Options)) *server.Server {
	t.Helper()
	testtier.Slow(t, "a nats-server")
	s, err := server.NewServer(serverOptions(configure))
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready for connections")
	}
	return s
}

// serverOptions are startServer's options; ReloadOptions wants all of them again.
func serverOptions(configure func(*server.Options)) *server.Options {
	o := &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true}
	if configure != nil {
		configure(o)
	}
	return o
}

// clientURL is the server's nats:// URL on loopback.
func clientURL(s *server.Server) string {
	return "nats://" + s.Addr().(*net.TCPAddr).String()
}

// logBuffer collects log lines written from the client's callback goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newLog() (*slog.Logger, *logBuffer) {
	buf := &logBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// writeFile writes data to a new file in dir and returns its path.
func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// pki is a CA with a server certificate for 127.0.0.1 and a client certificate, as
// PEM files.
type pki struct {
	CA, ServerCert, ServerKey, ClientCert, ClientKey string
	caCert                                           *x509.Certificate
	caKey                                            *ecdsa.PrivateKey
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	dir := t.TempDir()
	caKey := genKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name + " test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{caCert: caCert, caKey: caKey}
	p.CA = writeFile(t, dir, "ca.pem", pemBlock("CERTIFICATE", caDER))
	p.ServerCert, p.ServerKey = p.issue(t, dir, "server", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	p.ClientCert, p.ClientKey = p.issue(t, dir, "client", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "refresher"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	return p
}

func (p *pki) issue(t *testing.T, dir, name string, tmpl *x509.Certificate) (certFile, keyFile string) {
	t.Helper()
	key := genKey(t)
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, dir, name+".pem", pemBlock("CERTIFICATE", der)),
		writeFile(t, dir, name+"-key.pem", pemBlock("EC PRIVATE KEY", keyDER))
}

// serverTLS is a TLS configuration for nats-server with p's server certificate that,
// when verifyClients is set, requires a client certificate signed by p's CA.
func (p *pki) serverTLS(t *testing.T, verifyClients bool) *tls.Config {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(p.ServerCert, p.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if verifyClients {
		pool := x509.NewCertPool()
		pool.AddCert(p.caCert)
		c.ClientCAs, c.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return c
}

func genKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// nkeyUser makes a user nkey and returns its public key and a seed file.
func nkeyUser(t *testing.T) (pub, seedFile string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, err = kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	return pub, writeFile(t, t.TempDir(), "user.nk", seed)
}

// operator is an operator-mode trust chain: an operator that signs one account,
// whose users connect with creds files.
type operator struct {
	claims  *jwt.OperatorClaims
	account nkeys.KeyPair
	accPub  string
	accJWT  string
}

func newOperator(t *testing.T) *operator {
	t.Helper()
	okp, err := nkeys.CreateOperator()
	if err != nil {
		t.Fatal(err)
	}
	opub, _ := okp.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	oc.Name = "test-operator"
	ojwt, err := oc.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	claims, err := jwt.DecodeOperatorClaims(ojwt)
	if err != nil {
		t.Fatal(err)
	}
	akp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	apub, _ := akp.PublicKey()
	ac := jwt.NewAccountClaims(apub)
	ac.Name = "refresher"
	ajwt, err := ac.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	return &operator{claims: claims, account: akp, accPub: apub, accJWT: ajwt}
}

// configure makes a server trust the operator and know its account.
func (o *operator) configure(t *testing.T) func(*server.Options) {
	return func(so *server.Options) {
		res := &server.MemAccResolver{}
		if err := res.Store(o.accPub, o.accJWT); err != nil {
			t.Fatal(err)
		}
		so.TrustedOperators = []*jwt.OperatorClaims{o.claims}
		so.AccountResolver = res
		so.NoSystemAccount = true
	}
}

// creds writes a creds file for a new user of the operator's account, shaped by edit,
// and signed by signer (the account when nil).
func (o *operator) creds(t *testing.T, signer nkeys.KeyPair, edit func(*jwt.UserClaims)) string {
	t.Helper()
	ukp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	upub, _ := ukp.PublicKey()
	useed, _ := ukp.Seed()
	uc := jwt.NewUserClaims(upub)
	if edit != nil {
		edit(uc)
	}
	if signer == nil {
		signer = o.account
	}
	ujwt, err := uc.Encode(signer)
	if err != nil {
		t.Fatal(err)
	}
	b, err := jwt.FormatUserConfig(ujwt, useed)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, t.TempDir(), "user.creds", b)
}
