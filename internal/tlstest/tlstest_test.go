package tlstest

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
)

// TestTLSMutual: a server and a client with certificates of one CA complete
// a mutual handshake (over 127.0.0.1 and over the DNS name); a client of
// another CA is refused by the server, and refuses the server itself.
func TestTLSMutual(t *testing.T) {
	dir := t.TempDir()
	ca, other := NewCA(t), NewCA(t)
	caFile, otherFile := ca.WriteCA(t, dir), other.WriteCA(t, dir)
	if caFile == otherFile {
		t.Fatalf("two CAs written to the same file %s", caFile)
	}
	if b, err := os.ReadFile(caFile); err != nil || !strings.Contains(string(b), "BEGIN CERTIFICATE") {
		t.Fatalf("CA file: %v\n%s", err, b)
	}
	srvCert, srvKey := ca.Issue(t, dir, "server", []net.IP{net.IPv4(127, 0, 0, 1)}, []string{"granary.test"})
	if st, err := os.Stat(srvKey); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file %s: %v %v", srvKey, st, err)
	}
	cliCert, cliKey := ca.Loopback(t, dir, "client")
	strangerCert, strangerKey := other.Loopback(t, dir, "stranger")

	load := func(cert, key string) tls.Certificate {
		c, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		io.WriteString(rw, r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{load(srvCert, srvKey)}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert}
	srv.StartTLS()
	defer srv.Close()

	get := func(cert tls.Certificate, roots *CA, serverName string) (string, error) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots.Pool(), ServerName: serverName}}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr}).Get(srv.URL)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	for _, name := range []string{"", "granary.test"} {
		if got, err := get(load(cliCert, cliKey), ca, name); err != nil || got != "client" {
			t.Errorf("client of the CA (server name %q): %q, %v", name, got, err)
		}
	}
	if _, err := get(load(cliCert, cliKey), ca, "elsewhere.test"); err == nil {
		t.Error("a name the server's certificate does not hold was accepted")
	}
	if got, err := get(load(strangerCert, strangerKey), ca, ""); err == nil {
		t.Errorf("a client of another CA was served: %q", got)
	}
	var unknown x509.UnknownAuthorityError
	if _, err := get(load(cliCert, cliKey), other, ""); err == nil || !errors.As(err, &unknown) {
		t.Errorf("a client trusting another CA accepted the server: %v", err)
	}
	if y := AuthYAML(srvCert, srvKey, caFile); !strings.Contains(y, "auth:\n  tls: {cert: \""+srvCert) {
		t.Errorf("AuthYAML = %q", y)
	}
}
