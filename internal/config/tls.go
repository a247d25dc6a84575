package config

import (
	"crypto/tls"
	"crypto/x509"
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
	for name, p := range map[string]string{"cert": t.Cert, "key": t.Key, "ca": t.CA} {
		switch {
		case p == "":
			bad(field+"."+name, "missing: TLS needs cert, key and ca")
			ok = false
		case !filepath.IsAbs(p):
			bad(field+"."+name, "%q is not an absolute path", p)
			ok = false
		}
	}
	if !ok {
		return
	}
	cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
	if err != nil {
		bad(field+".cert", "cannot load the certificate and key: %v", err)
		return
	}
	pem, err := os.ReadFile(t.CA)
	if err != nil {
		bad(field+".ca", "cannot read: %v", err)
		return
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		bad(field+".ca", "%s holds no PEM certificate", t.CA)
		return
	}
	t.Certificate, t.Pool = &cert, pool
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
