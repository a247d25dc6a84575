// Package tlstest makes certificates for tests: a CA and the certificates it
// signs, written as PEM files that a granary config's auth.tls (or
// membership.tls) can name. Keys are ECDSA P-256; every certificate is valid
// from an hour ago for a day, for both server and client authentication, so
// that one certificate serves a worker's endpoints and its requests to its
// peers.
package tlstest

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
	"testing"
	"time"
)

// CA is a certificate authority made for a test.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// PEM is Cert, PEM-encoded.
	PEM []byte
}

// NewCA makes a CA with a fresh key.
func NewCA(t testing.TB) *CA {
	t.Helper()
	key := newKey(t)
	sn := serial(t)
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "granary test CA " + sn.Text(16), Organization: []string{"granary tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("tlstest: create CA: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("tlstest: parse CA: %v", err)
	}
	return &CA{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// WriteCA writes the CA's certificate into dir (a file of its own, so that
// several CAs may share a directory) and returns its path: what auth.tls.ca
// names.
func (ca *CA) WriteCA(t testing.TB, dir string) string {
	t.Helper()
	f, err := os.CreateTemp(dir, "ca-*.pem")
	if err != nil {
		t.Fatalf("tlstest: %v", err)
	}
	defer f.Close()
	if _, err := f.Write(ca.PEM); err != nil {
		t.Fatalf("tlstest: write CA: %v", err)
	}
	return f.Name()
}

// Pool is a pool holding the CA alone.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Issue makes a key and a certificate signed by the CA for name (its common
// name), valid for the IP addresses and DNS names given, writes them to
// dir/name.crt and dir/name.key (mode 0600) and returns their paths.
func (ca *CA) Issue(t testing.TB, dir, name string, ips []net.IP, dnsNames []string) (certFile, keyFile string) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: name, Organization: []string{"granary tests"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  ips,
		DNSNames:     dnsNames,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatalf("tlstest: issue %s: %v", name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("tlstest: %v", err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	write(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	write(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	return certFile, keyFile
}

// Loopback is what a certificate for a process on this machine names:
// 127.0.0.1 and localhost.
func (ca *CA) Loopback(t testing.TB, dir, name string) (certFile, keyFile string) {
	t.Helper()
	return ca.Issue(t, dir, name, []net.IP{net.IPv4(127, 0, 0, 1)}, []string{"localhost"})
}

// AuthYAML is a top-level auth section with these files as auth.tls, to
// append to a granary config.
func AuthYAML(certFile, keyFile, caFile string) string {
	return fmt.Sprintf("auth:\n  tls: {cert: %q, key: %q, ca: %q}\n", certFile, keyFile, caFile)
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("tlstest: key: %v", err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("tlstest: %v", err)
	}
	return n
}

func write(t testing.TB, path string, data []byte) {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatalf("tlstest: %v", err)
	}
}
