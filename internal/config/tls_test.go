package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/granary-cache/granary/internal/tlstest"
)

// tlsFiles are a CA and a certificate it signed, as files.
type tlsFiles struct {
	dir, cert, key, ca string
}

func newTLSFiles(t *testing.T) tlsFiles {
	dir := t.TempDir()
	ca := tlstest.NewCA(t)
	cert, key := ca.Issue(t, dir, "worker", []net.IP{net.IPv4(127, 0, 0, 1)}, []string{"granary.test"})
	return tlsFiles{dir: dir, cert: cert, key: key, ca: ca.WriteCA(t, dir)}
}

// authTLS is a config whose auth.tls (at line 2) holds the fields given.
func authTLS(fields ...string) string {
	return "auth:\n  tls:\n    " + strings.Join(fields, "\n    ") + "\n"
}

// TestTLSLoad: a valid auth.tls loads its certificate and CA, and gives a
// worker a server config that requires certificates of the CA and a client
// one that trusts only the CA.
func TestTLSLoad(t *testing.T) {
	f := newTLSFiles(t)
	doc := authTLS("cert: "+f.cert, "key: "+f.key, "ca: "+f.ca, "server_name: granary.test")
	cfg, err := Parse("tls.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	tc := cfg.Auth.TLS
	if tc.Certificate == nil || tc.Pool == nil {
		t.Fatalf("auth.tls loaded no certificate (%v) or pool (%v)", tc.Certificate, tc.Pool)
	}
	if !tc.Enabled() || !cfg.Auth.Secured() {
		t.Error("auth.tls set but not Enabled/Secured")
	}
	leaf, err := x509.ParseCertificate(tc.Certificate.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []x509.VerifyOptions{
		{Roots: tc.Pool, DNSName: "granary.test", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
		{Roots: tc.Pool, DNSName: "127.0.0.1", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
	} {
		if _, err := leaf.Verify(v); err != nil {
			t.Errorf("the certificate does not verify against the loaded CA (%s): %v", v.DNSName, err)
		}
	}
	srv := tc.ServerConfig()
	if srv == nil || srv.ClientAuth != tls.RequireAndVerifyClientCert || srv.ClientCAs != tc.Pool || len(srv.Certificates) != 1 {
		t.Errorf("ServerConfig = %+v", srv)
	}
	cl := tc.ClientConfig()
	if cl == nil || cl.RootCAs != tc.Pool || cl.ServerName != "granary.test" || len(cl.Certificates) != 1 {
		t.Errorf("ClientConfig = %+v", cl)
	}

	// The printed config keeps the files and reads back.
	out, err := cfg.YAML()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse("printed.yaml", out)
	if err != nil || back.Auth.TLS.Certificate == nil || back.Auth.TLS.ServerName != "granary.test" {
		t.Errorf("printed config reads back as %+v, %v:\n%s", back, err, out)
	}

	// Without auth.tls: nothing to load, no TLS.
	cfg, err = Parse("plain.yaml", []byte("auth:\n  token_file:\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Auth.TLS.Enabled() || cfg.Auth.TLS.ServerConfig() != nil || cfg.Auth.TLS.ClientConfig() != nil {
		t.Errorf("TLS without auth.tls: %+v", cfg.Auth.TLS)
	}
}

// TestTLSErrors: every mistake in auth.tls is an error naming the file,
// line and field at fault.
func TestTLSErrors(t *testing.T) {
	f := newTLSFiles(t)
	other := newTLSFiles(t) // another CA, another key
	noPEM := filepath.Join(f.dir, "nopem.pem")
	if err := os.WriteFile(noPEM, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(f.dir, "nonexistent.pem")
	cert, key, ca := "cert: "+f.cert, "key: "+f.key, "ca: "+f.ca
	cases := []struct {
		name, doc string
		want      []string
	}{
		{"no cert", authTLS(key, ca), []string{"bad.yaml:3: auth.tls.cert: missing: TLS needs cert, key and ca"}},
		{"no key", authTLS(cert, ca), []string{"bad.yaml:3: auth.tls.key: missing"}},
		{"no ca", authTLS(cert, key), []string{"bad.yaml:3: auth.tls.ca: missing"}},
		{"only ca", authTLS(ca), []string{"bad.yaml:3: auth.tls.cert: missing", "bad.yaml:3: auth.tls.key: missing"}},
		{"relative cert", authTLS("cert: certs/worker.crt", key, ca), []string{`bad.yaml:3: auth.tls.cert: "certs/worker.crt" is not an absolute path`}},
		{"relative key", authTLS(cert, "key: worker.key", ca), []string{`bad.yaml:4: auth.tls.key: "worker.key" is not an absolute path`}},
		{"relative ca", authTLS(cert, key, "ca: ./ca.pem"), []string{`bad.yaml:5: auth.tls.ca: "./ca.pem" is not an absolute path`}},
		{"unreadable cert", authTLS("cert: "+missing, key, ca), []string{"bad.yaml:3: auth.tls.cert: cannot read:", "no such file"}},
		{"unreadable key", authTLS(cert, "key: "+f.dir, ca), []string{"bad.yaml:4: auth.tls.key: cannot read:", "is a directory"}},
		{"unreadable ca", authTLS(cert, key, "ca: "+missing), []string{"bad.yaml:5: auth.tls.ca: cannot read:", "no such file"}},
		{"ca without PEM", authTLS(cert, key, "ca: "+noPEM), []string{"bad.yaml:5: auth.tls.ca: " + noPEM + " holds no PEM certificate"}},
		{"cert without PEM", authTLS("cert: "+noPEM, key, ca), []string{"bad.yaml:3: auth.tls.cert: " + noPEM + " holds no PEM certificate"}},
		{"key of another cert", authTLS(cert, "key: "+other.key, ca), []string{"bad.yaml:4: auth.tls.key: " + other.key + " is not the private key of the certificate in " + f.cert}},
		{"cert as key", authTLS(cert, "key: "+f.cert, ca), []string{"bad.yaml:4: auth.tls.key:"}},
		{"server_name alone", "auth:\n  tls: {server_name: granary.test}\n", []string{"bad.yaml:2: auth.tls.server_name: is set without cert, key and ca"}},
		{"unknown field", authTLS(cert, key, ca, "certificate: /x"), []string{"bad.yaml:6: auth.tls.certificate: unknown field", "server_name"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse("bad.yaml", []byte(c.doc))
			if err == nil {
				t.Fatalf("no error for\n%s(loaded %+v)", c.doc, cfg.Auth.TLS)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			// The error never carries the key itself.
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Errorf("error shows key material: %v", err)
			}
		})
	}
	// The same checks hold for membership.tls (etcd).
	doc := fmt.Sprintf("membership:\n  type: etcd\n  endpoints: [https://127.0.0.1:2379]\n  tls: {cert: %s, ca: %s}\n", f.cert, f.ca)
	if _, err := Parse("bad.yaml", []byte(doc)); err == nil || !strings.Contains(err.Error(), "bad.yaml:4: membership.tls.key: missing") {
		t.Errorf("membership.tls without key: %v", err)
	}
}
