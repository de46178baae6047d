package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// writeCert writes a self-signed certificate for "localhost" as
// dir/name.pem and its key as dir/name-key.pem.
func writeCert(t *testing.T, dir, name string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		DNSNames:              []string{"localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, name+"-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
}

func TestServerTLSConfig(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir, "ca")
	writeCert(t, dir, "client")

	cfg, err := Server{Addr: "db:3306"}.TLSConfig()
	require.NoError(t, err)
	assert.Nil(t, cfg, "no tls section = plain connection")

	s := Server{Addr: "db.eu.internal:3306", TLS: &TLSClient{
		CA:   filepath.Join(dir, "ca.pem"),
		Cert: filepath.Join(dir, "client.pem"),
		Key:  filepath.Join(dir, "client-key.pem"),
	}}
	cfg, err = s.TLSConfig()
	require.NoError(t, err)
	assert.Equal(t, "db.eu.internal", cfg.ServerName, "server name defaults to the host of addr")
	assert.NotNil(t, cfg.RootCAs)
	assert.Len(t, cfg.Certificates, 1)
	assert.False(t, cfg.InsecureSkipVerify)
	assert.Equal(t, uint16(tls.VersionTLS12), cfg.MinVersion)

	s.TLS.ServerName = "other"
	cfg, err = s.TLSConfig()
	require.NoError(t, err)
	assert.Equal(t, "other", cfg.ServerName)

	// A CA file that holds no certificate is named in the error.
	s.TLS.CA = filepath.Join(dir, "client-key.pem")
	_, err = s.TLSConfig()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "client-key.pem: no PEM certificate found")

	s.TLS.CA = filepath.Join(dir, "missing.pem")
	_, err = s.TLSConfig()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "missing.pem")
}

func TestTLSServerConfig(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir, "proxy")
	writeCert(t, dir, "ca")
	ts := &TLSServer{Cert: filepath.Join(dir, "proxy.pem"), Key: filepath.Join(dir, "proxy-key.pem")}
	cfg, err := ts.Config()
	require.NoError(t, err)
	assert.Len(t, cfg.Certificates, 1)
	assert.Equal(t, tls.NoClientCert, cfg.ClientAuth)

	ts.CA = filepath.Join(dir, "ca.pem")
	cfg, err = ts.Config()
	require.NoError(t, err)
	assert.Equal(t, tls.VerifyClientCertIfGiven, cfg.ClientAuth)
	assert.NotNil(t, cfg.ClientCAs)

	// A key that does not match the certificate names both files.
	ts.Key = filepath.Join(dir, "ca-key.pem")
	_, err = ts.Config()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "proxy.pem")
	assert.Contains(t, err.Error(), "ca-key.pem")
}
