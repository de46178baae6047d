// Package devca makes a throwaway certificate authority and the
// certificates a local deployment needs: a server certificate for each
// mariadbd and proxy, and a client certificate per region whose subject a
// replication account can require (REQUIRE SUBJECT '/CN=...'). `make demo`
// and the tests run with TLS everywhere through it, as production should.
//
// Keys are ECDSA P-256, certificates valid for a day. Never use them for
// anything but a local demo or a test: the CA's key is on disk next to the
// certificates.
package devca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CA is a certificate authority whose files live in Dir.
type CA struct {
	Dir  string
	out  string // where issued certificates go ("" = Dir)
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// Pair names a certificate and its key on disk (PEM).
type Pair struct{ Cert, Key string }

// New creates a CA in dir (created if missing) and writes dir/ca.pem.
// name becomes the CA's common name.
func New(dir, name string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("devca: create CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca := &CA{Dir: dir, cert: cert, key: key}
	if err := writePEM(ca.CAFile(), "CERTIFICATE", der); err != nil {
		return nil, err
	}
	return ca, nil
}

// In returns the same CA issuing into dir (created if missing), so that
// several users of one CA keep their certificates apart; CAFile stays the
// original's.
func (ca *CA) In(dir string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	c := *ca
	c.out = dir
	return &c, nil
}

// CAFile is the CA certificate's path, for ssl-ca and tls.ca.
func (ca *CA) CAFile() string { return filepath.Join(ca.Dir, "ca.pem") }

// Server issues a certificate for a listener on 127.0.0.1 / localhost
// (and hosts), written as dir/<name>.pem and dir/<name>-key.pem.
func (ca *CA) Server(name string, hosts ...string) (Pair, error) {
	tmpl := ca.template(name)
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	tmpl.DNSNames = []string{"localhost"}
	tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return ca.issue(name, tmpl)
}

// Client issues a client certificate whose subject is exactly "/CN=<cn>",
// written as dir/<cn>.pem and dir/<cn>-key.pem.
func (ca *CA) Client(cn string) (Pair, error) {
	tmpl := ca.template(cn)
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	return ca.issue(cn, tmpl)
}

// Subject is the subject string MariaDB's REQUIRE SUBJECT compares with a
// client certificate issued by Client(cn).
func Subject(cn string) string { return "/CN=" + cn }

func (ca *CA) template(cn string) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
	}
}

func (ca *CA) issue(name string, tmpl *x509.Certificate) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return Pair{}, fmt.Errorf("devca: issue %s: %w", name, err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Pair{}, err
	}
	dir := ca.out
	if dir == "" {
		dir = ca.Dir
	}
	p := Pair{Cert: filepath.Join(dir, name+".pem"), Key: filepath.Join(dir, name+"-key.pem")}
	if err := writePEM(p.Cert, "CERTIFICATE", der); err != nil {
		return Pair{}, err
	}
	if err := writePEM(p.Key, "PRIVATE KEY", kder); err != nil {
		return Pair{}, err
	}
	return p, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

// writePEM writes one PEM block; keys and certificates alike are 0600 (a
// mariadbd running as the same user reads them).
func writePEM(path, typ string, der []byte) error {
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("devca: write %s: %w", path, err)
	}
	return nil
}
