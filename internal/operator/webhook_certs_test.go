package operator

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

var testNames = []string{"granary-webhook.granary-system.svc", "granary-webhook", "127.0.0.1"}

func TestCertGeneration(t *testing.T) {
	now := time.Now()
	b, err := rotate(certBundle{}, certRotation{CA: true, Serving: true}, testNames, now, 365*24*time.Hour, 90*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, _, err := parsePair(b.CACert, b.CAKey)
	if err != nil || !ca.IsCA {
		t.Fatalf("CA: %v %+v", err, ca)
	}
	cert, _, err := parsePair(b.Cert, b.Key)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cert.DNSNames, testNames[:2]) || len(cert.IPAddresses) != 1 || cert.IPAddresses[0].String() != "127.0.0.1" {
		t.Errorf("names %v %v", cert.DNSNames, cert.IPAddresses)
	}
	if d := cert.NotAfter.Sub(now); d < 89*24*time.Hour || d > 90*24*time.Hour+time.Second {
		t.Errorf("serving certificate valid for %v", d)
	}
	// It verifies against the bundle for each name, as a server cert.
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b.Bundle) {
		t.Fatal("bundle unreadable")
	}
	for _, n := range testNames {
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: n, Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("verify %s: %v", n, err)
		}
	}
	if _, err := tls.X509KeyPair(b.Cert, b.Key); err != nil {
		t.Errorf("TLS pair: %v", err)
	}
	// A serving certificate never outlives its CA.
	short, err := rotate(certBundle{}, certRotation{CA: true, Serving: true}, testNames, now, time.Hour, 90*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sc, _ := parseCert(short.Cert)
	sca, _ := parseCert(short.CACert)
	if sc.NotAfter.After(sca.NotAfter) {
		t.Errorf("serving until %v, CA until %v", sc.NotAfter, sca.NotAfter)
	}
}

func TestRotationDecisions(t *testing.T) {
	now := time.Now()
	caLife, certLife := 300*24*time.Hour, 90*24*time.Hour
	b, err := rotate(certBundle{}, certRotation{CA: true, Serving: true}, testNames, now, caLife, certLife)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, b certBundle, at time.Time, names []string, ca, serving bool) {
		t.Helper()
		r := needsRotation(b, names, at)
		if r.CA != ca || r.Serving != serving {
			t.Errorf("%s: rotation %+v, want CA %v serving %v", what, r, ca, serving)
		}
	}
	check("fresh", b, now, testNames, false, false)
	check("empty", certBundle{}, now, testNames, true, true)
	check("half the serving life", b, now.Add(certLife/2), testNames, false, false)
	check("past 2/3 of the serving life", b, now.Add(certLife*2/3+time.Hour), testNames, false, true)
	check("past 2/3 of the CA's life", b, now.Add(caLife*2/3+time.Hour), testNames, true, true)
	check("other names", b, now, []string{"other.ns.svc"}, false, true)
	mixed := b
	mixed.Key = b.CAKey
	check("a key not of the certificate", mixed, now, testNames, false, true)
	other, _ := rotate(certBundle{}, certRotation{CA: true, Serving: true}, testNames, now, caLife, certLife)
	foreign := b
	foreign.Cert, foreign.Key = other.Cert, other.Key
	check("signed by another CA", foreign, now, testNames, false, true)
	noBundle := b
	noBundle.Bundle = nil
	if r := needsRotation(noBundle, testNames, now); r.CA || r.Serving || r.Reason == "" {
		t.Errorf("a bundle without the CA: %+v", r)
	}

	// Serving renewal keeps the CA; CA renewal keeps the old CA in the
	// bundle while it is valid.
	later := now.Add(certLife*2/3 + time.Hour)
	s, err := rotate(b, needsRotation(b, testNames, later), testNames, later, caLife, certLife)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s.CACert, b.CACert) || bytes.Equal(s.Cert, b.Cert) || !bytes.Equal(s.Bundle, b.CACert) {
		t.Error("serving renewal changed the CA or bundle, or not the certificate")
	}
	later = now.Add(caLife*2/3 + time.Hour)
	c, err := rotate(s, needsRotation(s, testNames, later), testNames, later, caLife, certLife)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(c.CACert, s.CACert) || countCerts(c.Bundle) != 2 || !bytes.HasPrefix(c.Bundle, c.CACert) || !bytes.Contains(c.Bundle, s.CACert) {
		t.Errorf("CA renewal: bundle of %d certificates", countCerts(c.Bundle))
	}
	check("after CA renewal", c, later, testNames, false, false)
	// Once the old CA expired, it leaves the bundle at the next renewal.
	end := now.Add(caLife + time.Hour)
	d, err := rotate(c, certRotation{Serving: true}, testNames, end, caLife, certLife)
	if err != nil {
		t.Fatal(err)
	}
	if countCerts(d.Bundle) != 1 {
		t.Errorf("an expired CA stayed in the bundle: %d", countCerts(d.Bundle))
	}
}

func countCerts(b []byte) int {
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return n
		}
		n++
	}
}

func TestWriteCertFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	b, err := rotate(certBundle{}, certRotation{CA: true, Serving: true}, testNames, time.Now(), time.Hour, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if wrote, err := writeCertFiles(dir, b.Cert, b.Key); err != nil || !wrote {
		t.Fatalf("write: %v %v", wrote, err)
	}
	if wrote, err := writeCertFiles(dir, b.Cert, b.Key); err != nil || wrote {
		t.Fatalf("write the same again: %v %v", wrote, err)
	}
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "tls.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v %v", fi.Mode(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("files left behind: %v", entries)
	}
}

func TestWebhookOptions(t *testing.T) {
	w := WebhookOptions{ServiceNamespace: "granary-system", CertDir: "/tmp/x", URL: "https://127.0.0.1:9443"}
	if err := w.setDefaults(); err != nil {
		t.Fatal(err)
	}
	names, err := w.certNames()
	if err != nil || names[0] != "granary-webhook.granary-system.svc" || names[len(names)-1] != "127.0.0.1" {
		t.Errorf("names %v %v", names, err)
	}
	cfg := w.webhookConfig([]byte("CA"))
	wh := cfg.Webhooks[0]
	if *wh.ClientConfig.URL != "https://127.0.0.1:9443"+WebhookPath || wh.ClientConfig.Service != nil || string(wh.ClientConfig.CABundle) != "CA" ||
		*wh.FailurePolicy != "Ignore" || *wh.SideEffects != "None" || *wh.TimeoutSeconds > 10 {
		t.Errorf("webhook %+v", wh)
	}
	w.URL = ""
	if cc := w.webhookConfig(nil).Webhooks[0].ClientConfig; cc.Service == nil || cc.Service.Name != "granary-webhook" || *cc.Service.Path != WebhookPath {
		t.Errorf("client config %+v", cc)
	}
	if err := (&WebhookOptions{CertDir: "/x"}).setDefaults(); err == nil {
		t.Error("no namespace accepted")
	}
	w.URL = "http://x"
	if _, err := w.certNames(); err == nil {
		t.Error("an http URL accepted")
	}
}
