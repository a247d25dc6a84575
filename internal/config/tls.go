package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
)

// TLS names the files of a certificate, its key and the CA that signs the
// peers' certificates. Both ends of a connection present a certificate of
// that CA and verify the other's.
type TLS struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	CA   string `yaml:"ca"`
	// ServerName is the name a client checks in a worker's certificate
	// (default: the host of the address it dials). Set it when workers share
	// one certificate with a DNS name, such as on Kubernetes where pod
	// addresses change.
	ServerName string `yaml:"server_name"`

	// Certificate and Pool are read by Load from Cert, Key and CA.
	Certificate *tls.Certificate `yaml:"-"`
	Pool        *x509.CertPool   `yaml:"-"`
}

// Enabled reports whether a certificate is configured.
func (t TLS) Enabled() bool { return t.Cert != "" || t.Key != "" || t.CA != "" }

// load checks the three files and reads them.
func (t *TLS) load(field string, bad badFunc) {
	if !t.Enabled() {
		if t.ServerName != "" {
			bad(field+".server_name", "is set without cert, key and ca")
		}
		return
	}
	ok := true
	files := []struct{ name, path string }{{"cert", t.Cert}, {"key", t.Key}, {"ca", t.CA}}
	for _, f := range files {
		switch {
		case f.path == "":
			bad(field+"."+f.name, "missing: TLS needs cert, key and ca")
			ok = false
		case !filepath.IsAbs(f.path):
			bad(field+"."+f.name, "%q is not an absolute path", f.path)
			ok = false
		}
	}
	if !ok {
		return
	}
	data := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f.path)
		if err != nil {
			bad(field+"."+f.name, "cannot read: %v", err)
			ok = false
		}
		data[f.name] = b
	}
	if !ok {
		return
	}
	cert, err := tls.X509KeyPair(data["cert"], data["key"])
	if err != nil {
		// Name the file at fault: the certificate when it holds none,
		// else the key (not a key, or not the certificate's).
		if !holdsCert(data["cert"]) {
			bad(field+".cert", "%s holds no PEM certificate", t.Cert)
		} else {
			bad(field+".key", "%s is not the private key of the certificate in %s: %v", t.Key, t.Cert, err)
		}
		return
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data["ca"]) {
		bad(field+".ca", "%s holds no PEM certificate", t.CA)
		return
	}
	t.Certificate, t.Pool = &cert, pool
}

// holdsCert reports whether the first certificate of a PEM file parses.
func holdsCert(data []byte) bool {
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			return false
		}
		if b.Type == "CERTIFICATE" {
			_, err := x509.ParseCertificate(b.Bytes)
			return err == nil
		}
	}
}

// ServerConfig is the TLS of a worker's endpoint: it requires a client
// certificate signed by the CA. Nil when TLS is not configured.
func (t TLS) ServerConfig() *tls.Config {
	if t.Certificate == nil {
		return nil
	}
	return &tls.Config{
		Certificates: []tls.Certificate{*t.Certificate},
		ClientCAs:    t.Pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}
}

// ClientConfig is the TLS of a connection to a worker (or to etcd): it
// presents the certificate and trusts only the CA. Nil when TLS is not
// configured.
func (t TLS) ClientConfig() *tls.Config {
	if t.Certificate == nil {
		return nil
	}
	return &tls.Config{
		Certificates: []tls.Certificate{*t.Certificate},
		RootCAs:      t.Pool,
		ServerName:   t.ServerName,
		MinVersion:   tls.VersionTLS12,
	}
}
