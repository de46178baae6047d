package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
)

// TLSConfig builds the client TLS configuration toward s, loading the PEM
// files named in s.TLS. It returns nil, nil when s.TLS is not set (plain
// connection). Errors name the file that could not be used.
func (s Server) TLSConfig() (*tls.Config, error) {
	t := s.TLS
	if t == nil {
		return nil, nil
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify, //nolint:gosec // the operator's explicit choice
	}
	if cfg.ServerName == "" {
		cfg.ServerName = hostOf(s.Addr)
	}
	if t.CA != "" {
		pool, err := loadPool(t.CA)
		if err != nil {
			return nil, fmt.Errorf("tls for %s: %w", s.Addr, err)
		}
		cfg.RootCAs = pool
	}
	if t.Cert != "" || t.Key != "" {
		cert, err := loadPair(t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("tls for %s: %w", s.Addr, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Config builds the listener's TLS configuration from its PEM files. When
// CA is set, client certificates that are presented are verified against
// it (clients without one are still accepted; MySQL accounts decide
// whether TLS is required). A nil TLSServer (no tls key) gives nil, nil.
func (t *TLSServer) Config() (*tls.Config, error) {
	if t == nil {
		return nil, nil
	}
	cert, err := loadPair(t.Cert, t.Key)
	if err != nil {
		return nil, fmt.Errorf("proxy tls: %w", err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
	}
	if t.CA != "" {
		pool, err := loadPool(t.CA)
		if err != nil {
			return nil, fmt.Errorf("proxy tls: %w", err)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}

func loadPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s: no PEM certificate found", path)
	}
	return pool, nil
}

func loadPair(certFile, keyFile string) (tls.Certificate, error) {
	if certFile == "" || keyFile == "" {
		return tls.Certificate{}, fmt.Errorf("certificate and key files must both be set (cert %q, key %q)", certFile, keyFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load certificate %s with key %s: %w", certFile, keyFile, err)
	}
	return cert, nil
}

// hostOf is the host part of a host:port address, or addr itself.
func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
