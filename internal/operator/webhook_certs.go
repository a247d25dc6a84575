package operator

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// The webhook's TLS: the operator makes a CA of its own and a serving
// certificate for the webhook Service's DNS names, keeps both in a Secret
// (every replica serves the same certificate), writes the serving pair into
// the webhook server's CertDir (which it reloads from disk) and puts the CA
// into the MutatingWebhookConfiguration's caBundle. Both are renewed at two
// thirds of their life; a replaced CA stays in the bundle until it expires,
// so that a replica still serving a certificate it signed is trusted.

// Secret keys.
const (
	secretCACert = "ca.crt"
	secretCAKey  = "ca.key"
	secretCert   = "tls.crt"
	secretKey    = "tls.key"
	secretBundle = "ca-bundle.crt" // the CA and the replaced ones still valid
)

// Default lifetimes.
const (
	DefaultWebhookCAValidity   = 365 * 24 * time.Hour
	DefaultWebhookCertValidity = 90 * 24 * time.Hour
)

// certBundle is the webhook's TLS material, PEM encoded.
type certBundle struct {
	CACert, CAKey []byte
	Cert, Key     []byte
	// Bundle is the caBundle: CACert and the replaced CAs not yet expired.
	Bundle []byte
}

func bundleFromSecret(data map[string][]byte) certBundle {
	return certBundle{CACert: data[secretCACert], CAKey: data[secretCAKey], Cert: data[secretCert], Key: data[secretKey], Bundle: data[secretBundle]}
}

func (b certBundle) secretData() map[string][]byte {
	return map[string][]byte{secretCACert: b.CACert, secretCAKey: b.CAKey, secretCert: b.Cert, secretKey: b.Key, secretBundle: b.Bundle}
}

// backdate is how far before now a certificate starts (for clocks behind
// ours): a tenth of its life, at most an hour.
func backdate(validity time.Duration) time.Duration { return min(validity/10, time.Hour) }

// renewAt is when a certificate is due for renewal: at two thirds of its
// life.
func renewAt(c *x509.Certificate) time.Time {
	return c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) * 2 / 3)
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func encodeKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// newCA makes a self-signed CA valid for validity from now.
func newCA(now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	return issue(&x509.Certificate{
		Subject:               pkix.Name{CommonName: fmt.Sprintf("granary-webhook-ca@%d", now.Unix())},
		NotBefore:             now.Add(-backdate(validity)),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}, nil, nil)
}

// newServing makes a serving certificate for dnsNames (and IP addresses
// among them), signed by the CA, valid for validity but not past the CA.
func newServing(caCertPEM, caKeyPEM []byte, dnsNames []string, now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	ca, caKey, err := parsePair(caCertPEM, caKeyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("the CA: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: dnsNames[0]},
		NotBefore:   now.Add(-backdate(validity)),
		NotAfter:    now.Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if tmpl.NotAfter.After(ca.NotAfter) {
		tmpl.NotAfter = ca.NotAfter
	}
	tmpl.DNSNames, tmpl.IPAddresses = splitHosts(dnsNames)
	return issue(tmpl, ca, caKey)
}

// issue makes a certificate from tmpl for a new P-256 key, with a fresh
// serial number, signed by parent's key (or self-signed when parent is
// nil), and returns both in PEM.
func issue(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	if tmpl.SerialNumber, err = serial(); err != nil {
		return nil, nil, err
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, err
	}
	if keyPEM, err = encodeKey(key); err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

func parseCert(certPEM []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

// parsePair parses a certificate and its EC key, and checks they match.
func parsePair(certPEM, keyPEM []byte) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	c, err := parseCert(certPEM)
	if err != nil {
		return nil, nil, err
	}
	b, _ := pem.Decode(keyPEM)
	if b == nil {
		return nil, nil, errors.New("no PEM key")
	}
	k, err := x509.ParseECPrivateKey(b.Bytes)
	if err != nil {
		return nil, nil, err
	}
	if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&k.PublicKey) {
		return nil, nil, errors.New("the key does not match the certificate")
	}
	return c, k, nil
}

// certRotation says what of a bundle must be made anew, and why.
type certRotation struct {
	CA, Serving bool
	Reason      string
}

// needsRotation decides, from a bundle alone, whether its CA or serving
// certificate must be renewed: missing, unreadable, not matching, past two
// thirds of its life, or (the serving one) not signed by the CA or not for
// these names.
func needsRotation(b certBundle, names []string, now time.Time) certRotation {
	ca, _, err := parsePair(b.CACert, b.CAKey)
	switch {
	case err != nil:
		return certRotation{CA: true, Serving: true, Reason: "no valid CA: " + err.Error()}
	case !now.Before(renewAt(ca)):
		return certRotation{CA: true, Serving: true, Reason: "the CA is due for renewal"}
	}
	c, _, err := parsePair(b.Cert, b.Key)
	switch {
	case err != nil:
		return certRotation{Serving: true, Reason: "no valid serving certificate: " + err.Error()}
	case c.CheckSignatureFrom(ca) != nil:
		return certRotation{Serving: true, Reason: "the serving certificate is not signed by the CA"}
	case !sameNames(c, names):
		return certRotation{Serving: true, Reason: "the serving certificate is for other names"}
	case !now.Before(renewAt(c)):
		return certRotation{Serving: true, Reason: "the serving certificate is due for renewal"}
	case !bytes.Contains(b.Bundle, b.CACert):
		return certRotation{Reason: "the bundle lacks the CA"}
	}
	return certRotation{}
}

func sameNames(c *x509.Certificate, names []string) bool {
	dns, ips := splitHosts(names)
	if !slices.Equal(c.DNSNames, dns) || len(c.IPAddresses) != len(ips) {
		return false
	}
	for i := range ips {
		if !c.IPAddresses[i].Equal(ips[i]) {
			return false
		}
	}
	return true
}

// rotate makes what r says anew. A replaced CA stays in the bundle until
// it expires.
func rotate(b certBundle, r certRotation, names []string, now time.Time, caValidity, certValidity time.Duration) (certBundle, error) {
	out := b
	if r.CA {
		caCert, caKey, err := newCA(now, caValidity)
		if err != nil {
			return b, err
		}
		out.CACert, out.CAKey = caCert, caKey
	}
	if r.CA || r.Serving {
		cert, key, err := newServing(out.CACert, out.CAKey, names, now, certValidity)
		if err != nil {
			return b, err
		}
		out.Cert, out.Key = cert, key
	}
	out.Bundle = makeBundle(out.CACert, [][]byte{b.CACert, b.Bundle}, now)
	return out, nil
}

// makeBundle is the CA followed by the other valid CAs of olds, each once.
func makeBundle(ca []byte, olds [][]byte, now time.Time) []byte {
	out := slices.Clone(ca)
	seen := map[string]bool{}
	if c, err := parseCert(ca); err == nil {
		seen[string(c.Raw)] = true
	}
	for _, old := range olds {
		for rest := old; ; {
			var blk *pem.Block
			blk, rest = pem.Decode(rest)
			if blk == nil {
				break
			}
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil || blk.Type != "CERTIFICATE" || seen[string(c.Raw)] || !now.Before(c.NotAfter) {
				continue
			}
			seen[string(c.Raw)] = true
			out = append(out, pem.EncodeToMemory(blk)...)
		}
	}
	return out
}

// writeCertFiles writes the serving pair into dir as tls.crt and tls.key,
// each replaced at once (a rename), if they differ from what is there. It
// reports whether it wrote.
func writeCertFiles(dir string, cert, key []byte) (bool, error) {
	oldCert, _ := os.ReadFile(filepath.Join(dir, secretCert))
	oldKey, _ := os.ReadFile(filepath.Join(dir, secretKey))
	if bytes.Equal(oldCert, cert) && bytes.Equal(oldKey, key) {
		return false, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, err
	}
	// The key first: the server reloads on the certificate's change too.
	for _, f := range []struct {
		name string
		data []byte
	}{{secretKey, key}, {secretCert, cert}} {
		tmp, err := os.CreateTemp(dir, "."+f.name+"-*")
		if err != nil {
			return false, err
		}
		_, err = tmp.Write(f.data)
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Chmod(tmp.Name(), 0o600)
		}
		if err == nil {
			err = os.Rename(tmp.Name(), filepath.Join(dir, f.name))
		}
		if err != nil {
			os.Remove(tmp.Name())
			return false, err
		}
	}
	return true, nil
}
