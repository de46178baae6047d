package itest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/internal/devca"
	"github.com/mlproxy/mlproxy/itest/cluster"
)

// TestLinksEncrypted: the cluster runs as the README tells operators to,
// each link TLS with a client certificate that the peer's replication
// account requires (REQUIRE SUBJECT ... AND ISSUER ...), and the proxy
// offering TLS to clients. A region whose tailer presents another
// certificate, or that does not trust the peer's server certificate, does
// not get the peer's changes, and `mlproxy status` says why.
func TestLinksEncrypted(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t, cluster.Options{Names: []string{"eu", "us"}})
	eu, us := c.Regions[0], c.Regions[1]

	// A client that verifies the proxy's certificate against the CA.
	pem, err := os.ReadFile(c.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	if err := mysql.RegisterTLSConfig("itest-ca", &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}); err != nil {
		t.Fatal(err)
	}
	cfg, err := mysql.ParseDSN(eu.DSN("app"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLSConfig = "itest-ca"
	tdb, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer tdb.Close()
	// The driver refuses a server that does not offer TLS (ErrNoTLS) and
	// one whose certificate the CA did not sign.
	if _, err := tdb.Exec("INSERT INTO kv (k, v, n) VALUES (1, 'over tls', 1)"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.WaitConverged(wctx, map[string]string{"app.kv": "k"}, "k, v, n, _mlr_hlc, _mlr_origin"); err != nil {
		t.Fatalf("the certificate-authenticated link did not replicate: %v", err)
	}

	orig := mustRead(t, us.ConfigPath)
	defer os.WriteFile(us.ConfigPath, []byte(orig), 0o600)
	ca, err := devca.New(filepath.Join(c.Dir, "other-ca"), "some other CA")
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := ca.Client("mlproxy-us") // right name, wrong issuer
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, config, wantErr string
	}{
		{"a client certificate eu's account does not name",
			strings.ReplaceAll(strings.ReplaceAll(orig, us.ReplCert.Cert, eu.ReplCert.Cert), us.ReplCert.Key, eu.ReplCert.Key), "Access denied"},
		{"a certificate from another CA with the right subject",
			strings.ReplaceAll(strings.ReplaceAll(orig, us.ReplCert.Cert, stranger.Cert), us.ReplCert.Key, stranger.Key), "unknown certificate authority"},
		{"a CA that did not sign eu's server certificate",
			strings.ReplaceAll(orig, c.CAFile, ca.CAFile()), "certificate signed by unknown authority"},
	}
	if !strings.Contains(orig, us.ReplCert.Cert) || !strings.Contains(orig, c.CAFile) {
		t.Fatalf("us's config does not name its certificates:\n%s", orig)
	}
	n := 100
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := c.StopProxy(us, false); err != nil {
				t.Fatal(err)
			}
			mustWrite(t, us.ConfigPath, tc.config)
			if err := c.StartProxy(us); err != nil {
				t.Fatal(err)
			}
			if err := c.WaitProxy(ctx, us); err != nil {
				t.Fatal(err)
			}
			n++
			if _, err := openProxy(t, eu, 1).Exec("INSERT INTO kv (k, v, n) VALUES (?, 'refused link', 1)", n); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(30 * time.Second)
			var out []byte
			for time.Now().Before(deadline) {
				out, _ = c.Command(ctx, "status", "-c", us.ConfigPath)
				if strings.Contains(string(out), tc.wantErr) {
					break
				}
				time.Sleep(300 * time.Millisecond)
			}
			if !strings.Contains(string(out), tc.wantErr) {
				t.Errorf("mlproxy status on us: want the link to eu to report %q, got:\n%s\nlog:\n%s", tc.wantErr, out, cluster.Tail(us.LogPath, 10))
			}
			var got int
			if err := openDirect(t, us).QueryRow("SELECT COUNT(*) FROM kv WHERE k = ?", n).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != 0 {
				t.Errorf("row %d reached us over a link eu should have refused", n)
			}
		})
	}

	// Back to the right certificate: everything missed arrives.
	if err := c.StopProxy(us, false); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, us.ConfigPath, orig)
	if err := c.StartProxy(us); err != nil {
		t.Fatal(err)
	}
	wctx2, cancel2 := context.WithTimeout(ctx, 30*time.Second)
	defer cancel2()
	if err := c.WaitConverged(wctx2, map[string]string{"app.kv": "k"}, "k, v, n, _mlr_hlc, _mlr_origin"); err != nil {
		t.Fatal(err)
	}
}
