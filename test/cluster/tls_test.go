package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/promtest"
	"github.com/granary-cache/granary/internal/tlstest"
	"github.com/granary-cache/granary/internal/worker"
)

// workerName is the DNS name every worker certificate holds beside
// 127.0.0.1 (what auth.tls.server_name names).
const workerName = "worker.granary.test"

// tlsCluster is a cluster whose workers speak TLS (auth.tls), each with a
// certificate of its own signed by the test's CA, serving dataset d (the
// tree tr; fallback: none, so that what a client reads went through a
// worker).
type tlsCluster struct {
	*cluster
	ca        *tlstest.CA
	certs     string // the directory of the certificates
	caFile    string
	cert, key string // a client certificate of the CA
	tr        *tree
}

// startTLSCluster starts the workers; authExtra is more of their auth
// section (such as a token_file line).
func startTLSCluster(t *testing.T, workers, small int, authExtra string) *tlsCluster {
	tc := &tlsCluster{ca: tlstest.NewCA(t), certs: t.TempDir()}
	tc.caFile = tc.ca.WriteCA(t, tc.certs)
	loopback := []net.IP{net.IPv4(127, 0, 0, 1)}
	files := make([][2]string, workers)
	for i := range files {
		files[i][0], files[i][1] = tc.ca.Issue(t, tc.certs, fmt.Sprintf("w%d", i+1), loopback, []string{workerName})
	}
	tc.cert, tc.key = tc.ca.Issue(t, tc.certs, "client", loopback, []string{"client.granary.test"})
	data := t.TempDir()
	tc.tr = makeTree(11, small)
	tc.tr.writeDir(t, data)
	tc.cluster = startCluster(t, clusterOpts{
		workers:  workers,
		datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\", fallback: none}\n", data),
		// The tiers end the worker's config: an auth section after them
		// gives each worker its own certificate.
		tiers: func(i int, dir string) string {
			return defaultTiers(i, dir) + tlstest.AuthYAML(files[i][0], files[i][1], tc.caFile) + authExtra
		},
	})
	return tc
}

// auth is the client's auth.tls section, with a server_name if given.
func (tc *tlsCluster) auth(serverName string) string {
	a := tlstest.AuthYAML(tc.cert, tc.key, tc.caFile)
	if serverName != "" {
		a = strings.Replace(a, "}\n", fmt.Sprintf(", server_name: %s}\n", serverName), 1)
	}
	return a
}

// clientYAML is a client config of the cluster (HTTP only, no
// short-circuit) with the auth section given.
func (tc *tlsCluster) clientYAML(auth string) string {
	doc := tc.base + "membership:\n  workers:\n"
	for _, p := range tc.workers {
		doc += fmt.Sprintf("    - {id: %s, addr: %q, socket: %q}\n", p.id, p.addr, p.socket)
	}
	return doc + fmt.Sprintf("worker:\n  block_size: %d\n  page_size: %d\nclient:\n  short_circuit: false\n  timeout: 10s\n", tc.blockSize, tc.pageSize) + auth
}

// writeClientConfig writes a client config for the CLI.
func (tc *tlsCluster) writeClientConfig(t *testing.T, auth string) string {
	p := filepath.Join(t.TempDir(), "client.yaml")
	if err := os.WriteFile(p, []byte(tc.clientYAML(auth)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func newTLSClient(t *testing.T, doc string) *client.Client {
	t.Helper()
	cfg, err := config.Parse("client.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// https is an HTTP client that presents certs (none if nil) and trusts
// roots.
func https(t *testing.T, roots *x509.CertPool, certs ...tls.Certificate) *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{Certificates: certs, RootCAs: roots}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// presenting is an HTTPS client that presents cert whatever the server
// asks for: Go's client leaves out a certificate that the server's list of
// acceptable CAs does not hold, which would make a foreign certificate a
// missing one.
func presenting(t *testing.T, roots *x509.CertPool, cert tls.Certificate) *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func keyPair(t *testing.T, cert, key string) tls.Certificate {
	c, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// admin is an HTTPS client of the workers' admin endpoints, with the
// client certificate.
func (tc *tlsCluster) admin(t *testing.T) *http.Client {
	return https(t, tc.ca.Pool(), keyPair(t, tc.cert, tc.key))
}

// tlsMetric sums the samples of a metric of worker p whose labels include
// every match, scraped over HTTPS.
func tlsMetric(t *testing.T, hc *http.Client, p *proc, name string, match ...string) float64 {
	t.Helper()
	v, err := promtest.Scrape(hc, "https://"+p.admin+"/metrics", name, match...)
	if err != nil {
		t.Fatalf("scrape %s: %v", p.id, err)
	}
	return v
}

// TestTLSCluster: three workers with auth.tls serve a client of the same
// CA every file with the right sha256; the workers' requests to each other
// (the dataset's measure lists each directory through its owner) go over
// TLS with their own certificates; granary status and cat work through the
// binary with a config that has auth.tls.
func TestTLSCluster(t *testing.T) {
	tc := startTLSCluster(t, 3, 300, "")
	cl := newTLSClient(t, tc.clientYAML(tc.auth("")))
	readTree(t, cl, "d", tc.tr, 16, 1)
	if st := cl.Stats(); st.RemoteReads == 0 || st.ShortCircuitReads != 0 || st.FallbackReads != 0 || st.Retries != 0 {
		t.Errorf("client stats %+v; want remote reads only, no retries", st)
	}
	// The same with server_name: the name all the workers' certificates share.
	readTree(t, newTLSClient(t, tc.clientYAML(tc.auth(workerName))), "d", tc.tr, 8, 2)

	// Peer requests: the worker that owns the dataset's root measures it
	// (once someone asks for status) by listing every directory through
	// the worker that owns it. The listings are cached there, so the UFS
	// sees no new listing, and the owners count the requests.
	admin := tc.admin(t)
	peerLists := func() (total float64, by map[string]float64) {
		by = map[string]float64{}
		for _, p := range tc.workers {
			by[p.id] = tlsMetric(t, admin, p, "granary_worker_requests_total", `op="list"`, `code="200"`)
			total += by[p.id]
		}
		return total, by
	}
	ufsLists := func() (n float64) {
		for _, p := range tc.workers {
			n += tlsMetric(t, admin, p, "granary_ufs_operations_total", `dataset="d"`, `op="list"`)
		}
		return n
	}
	listsBefore, byBefore := peerLists()
	ufsBefore := ufsLists()
	var usage *client.DatasetStatus
	for deadline := time.Now().Add(30 * time.Second); ; {
		st := cl.ClusterStatus(context.Background())
		for _, m := range st.Members {
			if m.Error != "" {
				t.Fatalf("status of %s over TLS: %s", m.ID, m.Error)
			}
		}
		if u := st.Datasets[0].Usage; u != nil && u.Complete {
			usage = &st.Datasets[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dataset's measure did not finish: %+v", st.Datasets[0].Usage)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if u := usage.Usage; u.Files != int64(len(tc.tr.files)) || u.Error != "" {
		t.Errorf("measure: %d files (error %q); want %d", u.Files, u.Error, len(tc.tr.files))
	}
	listsAfter, byAfter := peerLists()
	var served int
	for id := range byAfter {
		if byAfter[id] > byBefore[id] {
			served++
		}
	}
	// 15 directories over 3 workers: the root's owner asks the other two.
	if listsAfter <= listsBefore || served < 2 {
		t.Errorf("no listing requests between workers over TLS: list requests %v -> %v", byBefore, byAfter)
	}
	t.Logf("list requests by worker before the measure %v, after %v; UFS listings %v", byBefore, byAfter, ufsBefore)
	if n := ufsLists(); n != ufsBefore {
		t.Errorf("the measure listed the UFS itself (%v -> %v listings): the peers did not answer", ufsBefore, n)
	}

	// The CLI with the same config.
	cfgFile := tc.writeClientConfig(t, tc.auth(""))
	out, err := exec.Command(granary, "status", "--json", "--config", cfgFile).CombinedOutput()
	if err != nil {
		t.Fatalf("granary status over TLS: %v\n%s", err, out)
	}
	var st client.ClusterStatus
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("granary status --json: %v\n%s", err, out)
	}
	if len(st.Members) != 3 {
		t.Errorf("granary status shows %d members; want 3:\n%s", len(st.Members), out)
	}
	for _, m := range st.Members {
		if m.Error != "" || m.Status == nil || m.Status.ID != m.ID {
			t.Errorf("granary status: member %s: error %q, status %+v", m.ID, m.Error, m.Status)
		}
	}
	if out, err := exec.Command(granary, "status", "--config", cfgFile).CombinedOutput(); err != nil || !strings.Contains(string(out), "w3") {
		t.Errorf("granary status (table) over TLS: %v\n%s", err, out)
	}
	for _, name := range []string{"big/five-blocks.bin", "names/with space ü#%.dat", "edge/empty"} {
		cmd := exec.Command(granary, "cat", "--config", cfgFile, "/d/"+name)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		got, err := cmd.Output()
		if err != nil {
			t.Errorf("granary cat %s over TLS: %v\n%s", name, err, stderr.String())
			continue
		}
		if string(got) != string(tc.tr.files[name]) {
			t.Errorf("granary cat %s: %d bytes, not the file's %d", name, len(got), len(tc.tr.files[name]))
		}
	}

	// No worker marked a peer down (a failed TLS request to a peer would).
	for _, p := range tc.workers {
		tc.stop(p, syscall.SIGTERM)
		if log := p.log.String(); strings.Contains(log, "marked down") {
			t.Errorf("worker %s logged:\n%s", p.id, log)
		}
	}
}

// TestTLSRefused: a worker with auth.tls serves nobody without a
// certificate of its CA, and a client of another CA refuses the worker;
// each fails at once with an error that says why, and the worker serves
// nothing. The admin endpoint answers /metrics and /healthz to anyone over
// HTTPS, and /v1/status only to a certificate of the CA.
func TestTLSRefused(t *testing.T) {
	tc := startTLSCluster(t, 2, 10, "")
	w := tc.workers[0]
	other := tlstest.NewCA(t)
	strangerCert, strangerKey := other.Loopback(t, tc.certs, "stranger")
	mine, stranger := keyPair(t, tc.cert, tc.key), keyPair(t, strangerCert, strangerKey)
	stat := "/v1/stat?ds=d&path=edge/one"
	served := func() float64 {
		return tlsMetric(t, tc.admin(t), w, "granary_worker_requests_total", `op="stat"`) +
			tlsMetric(t, tc.admin(t), w, "granary_worker_unauthorized_total")
	}

	t.Run("raw", func(t *testing.T) {
		// Plain HTTP to the TLS port: the worker answers 400 and closes.
		resp, err := http.Get("http://" + w.addr + stat)
		if err != nil {
			t.Fatalf("plain HTTP: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "speaks TLS only") {
			t.Errorf("plain HTTP: HTTP %d %q; want 400 from the TLS listener", resp.StatusCode, body)
		}
		for _, c := range []struct {
			name string
			hc   *http.Client
			want string
		}{
			{"no certificate", https(t, tc.ca.Pool()), "certificate required"},
			{"certificate of another CA", https(t, tc.ca.Pool(), stranger), "certificate required"}, // not sent: see presenting
			{"certificate of another CA presented", presenting(t, tc.ca.Pool(), stranger), "tls: unknown certificate authority"},
			{"trusting another CA", https(t, other.Pool(), mine), "certificate signed by unknown authority"},
		} {
			start := time.Now()
			resp, err := c.hc.Get("https://" + w.addr + stat)
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				t.Errorf("%s: served: HTTP %d %s", c.name, resp.StatusCode, body)
				continue
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: %v; want an error containing %q", c.name, err, c.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("%s: refused after %v", c.name, d)
			}
			if c.name == "trusting another CA" {
				var unknown x509.UnknownAuthorityError
				if !errors.As(err, &unknown) {
					t.Errorf("%s: %v is not an unknown authority", c.name, err)
				}
			}
		}
		if n := served(); n != 0 {
			t.Errorf("the worker served or counted %v requests of clients it should have refused", n)
		}
		// The control: with a certificate of the CA, the same request is
		// served and counted.
		resp, err = https(t, tc.ca.Pool(), mine).Get("https://" + w.addr + stat)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || served() != 1 {
			t.Errorf("with a certificate of the CA: HTTP %d, %v requests counted; want 200, 1", resp.StatusCode, served())
		}
	})

	t.Run("client", func(t *testing.T) {
		// A granary client without auth.tls: plain HTTP to TLS ports.
		cases := []struct{ name, auth, want string }{
			{"no auth.tls", "", "speaks TLS only"},
			{"another CA", tlstest.AuthYAML(strangerCert, strangerKey, other.WriteCA(t, tc.certs)), "certificate signed by unknown authority"},
			{"wrong server_name", tc.auth("elsewhere.granary.test"), "elsewhere.granary.test"},
		}
		for _, c := range cases {
			cl := newTLSClient(t, tc.clientYAML(c.auth))
			start := time.Now()
			_, err := cl.Stat(context.Background(), "/d/edge/one")
			if err == nil {
				t.Errorf("%s: the client read through the workers", c.name)
				continue
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: %v; want an error containing %q", c.name, err, c.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("%s: failed after %v", c.name, d)
			}
			for _, ws := range cl.Status(context.Background()) {
				if ws.Status != nil || !strings.Contains(ws.Error, c.want) {
					t.Errorf("%s: status of %s: %+v", c.name, ws.ID, ws)
				}
			}
		}
		// granary status says so too, and fails.
		out, err := exec.Command(granary, "status", "--config", tc.writeClientConfig(t, "")).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "speaks TLS only") || !strings.Contains(string(out), "did not answer") {
			t.Errorf("granary status without auth.tls: %v\n%s", err, out)
		}
	})

	t.Run("admin", func(t *testing.T) {
		anyone := https(t, tc.ca.Pool())
		for _, path := range []string{"/metrics", "/healthz"} {
			resp, err := anyone.Get("https://" + w.admin + path)
			if err != nil {
				t.Fatalf("%s without a certificate: %v", path, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("%s without a certificate: HTTP %d; want 200", path, resp.StatusCode)
			}
		}
		before := tlsMetric(t, anyone, w, "granary_worker_unauthorized_total")
		resp, err := anyone.Get("https://" + w.admin + "/v1/status")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || strings.Contains(string(body), `"tiers"`) {
			t.Errorf("/v1/status without a certificate: HTTP %d %s; want 401", resp.StatusCode, body)
		}
		if n := tlsMetric(t, anyone, w, "granary_worker_unauthorized_total"); n != before+1 {
			t.Errorf("unauthorized requests %v -> %v; want one more", before, n)
		}
		resp, err = tc.admin(t).Get("https://" + w.admin + "/v1/status")
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"id":"w1"`) {
			t.Errorf("/v1/status with a certificate: HTTP %d %s; want 200", resp.StatusCode, body)
		}
		// A certificate is checked when given: another CA's is refused.
		if resp, err := presenting(t, tc.ca.Pool(), stranger).Get("https://" + w.admin + "/healthz"); err == nil {
			resp.Body.Close()
			t.Errorf("admin endpoint accepted a certificate of another CA: HTTP %d", resp.StatusCode)
		}
	})
}

// TestTLSWithToken: with both auth.tls and auth.token_file, either a
// certificate of the CA or the token is enough: on the data endpoint (whose
// handshake wants the certificate anyway) and on the admin endpoint, where
// the token reaches /v1/status without a certificate.
func TestTLSWithToken(t *testing.T) {
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("tls-and-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tc := startTLSCluster(t, 1, 5, fmt.Sprintf("  token_file: %q\n", token))
	w := tc.workers[0]
	get := func(hc *http.Client, url, auth string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", url, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	anyone, withCert := https(t, tc.ca.Pool()), tc.admin(t)
	status := "https://" + w.admin + "/v1/status"
	for _, c := range []struct {
		name string
		hc   *http.Client
		auth string
		want int
	}{
		{"neither", anyone, "", http.StatusUnauthorized},
		{"wrong token", anyone, "Bearer nope", http.StatusUnauthorized},
		{"token", anyone, "Bearer tls-and-token", http.StatusOK},
		{"certificate", withCert, "", http.StatusOK},
		{"both", withCert, "Bearer tls-and-token", http.StatusOK},
	} {
		if code, body := get(c.hc, status, c.auth); code != c.want {
			t.Errorf("admin /v1/status with %s: HTTP %d %s; want %d", c.name, code, body, c.want)
		} else if code == http.StatusUnauthorized && !strings.Contains(body, "certificate of the cluster's CA or the token") {
			t.Errorf("admin /v1/status with %s: %q does not say what is missing", c.name, body)
		}
	}
	if code, body := get(withCert, "https://"+w.addr+"/v1/stat?ds=d&path=edge/one", ""); code != http.StatusOK {
		t.Errorf("data endpoint with a certificate and no token: HTTP %d %s", code, body)
	}
	// A client whose config has both reads.
	tokenAuth := fmt.Sprintf("  token_file: %q\n", token)
	if err := checkFile(newTLSClient(t, tc.clientYAML(tc.auth("")+tokenAuth)), "/d/edge/one", tc.tr.files["edge/one"]); err != nil {
		t.Error(err)
	}
}

// TestTLSRequiredOffLoopback: a worker whose data or admin endpoint is off
// loopback does not start without auth.token_file or auth.tls, and says
// so; with auth.tls it does.
func TestTLSRequiredOffLoopback(t *testing.T) {
	ca := tlstest.NewCA(t)
	dir := t.TempDir()
	cert, key := ca.Loopback(t, dir, "w")
	workerConfig := func(listen, admin, auth string) *config.Config {
		state := t.TempDir()
		doc := fmt.Sprintf("datasets:\n  - {name: d, ufs: \"file://%s\"}\nworker:\n  id: w\n  listen: %q\n  admin: %q\n  advertise: \"127.0.0.1:1\"\n  state_dir: %s\n  tiers: [{name: SSD, path: %s/ssd, quota: 64MiB}]\n%s",
			t.TempDir(), listen, admin, state, state, auth)
		cfg, err := config.Parse("worker.yaml", []byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, c := range []struct{ listen, admin, field string }{
		{"0.0.0.0:0", "127.0.0.1:0", "worker.listen"},
		{"127.0.0.1:0", "0.0.0.0:0", "worker.admin"},
		{":0", "127.0.0.1:0", "worker.listen"},
	} {
		w, err := worker.New(workerConfig(c.listen, c.admin, ""), quiet)
		if err == nil {
			w.Close()
			t.Errorf("listen %s, admin %s, no auth: the worker started", c.listen, c.admin)
			continue
		}
		for _, want := range []string{c.field, "not loopback", "auth.token_file", "auth.tls"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("listen %s, admin %s: %q does not name %q", c.listen, c.admin, err, want)
			}
		}
	}
	w, err := worker.New(workerConfig("0.0.0.0:0", "0.0.0.0:0", tlstest.AuthYAML(cert, key, ca.WriteCA(t, dir))), quiet)
	if err != nil {
		t.Fatalf("off loopback with auth.tls: %v", err)
	}
	w.Close()
}

// TestTLSUp: granary up with auth.tls starts workers that speak TLS and
// writes a client configuration that reaches them (it carries auth.tls).
func TestTLSUp(t *testing.T) {
	ca := tlstest.NewCA(t)
	certs, data, state := t.TempDir(), t.TempDir(), t.TempDir()
	cert, key := ca.Loopback(t, certs, "up")
	tr := makeTree(12, 5)
	tr.writeDir(t, data)
	cfg := filepath.Join(certs, "up.yaml")
	doc := fmt.Sprintf("datasets:\n  - {name: d, ufs: \"file://%s\", fallback: none}\n", data) + tlstest.AuthYAML(cert, key, ca.WriteCA(t, certs))
	if err := os.WriteFile(cfg, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	outFile := filepath.Join(certs, "up.out")
	out, err := os.Create(outFile)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	up := exec.Command(granary, "up", "--workers", "2", "--config", cfg, "--state-dir", state, "--mem-dir", t.TempDir(), "--mem", "0", "--ssd", "64MiB")
	up.Stdout, up.Stderr = out, out
	up.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- up.Wait() }()
	defer func() {
		up.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			up.Process.Kill()
			<-done
		}
	}()
	clientCfg := filepath.Join(state, "granary.yaml")
	var status []byte
	for deadline := time.Now().Add(20 * time.Second); ; {
		if _, err := os.Stat(clientCfg); err == nil {
			if status, err = exec.Command(granary, "status", "--config", clientCfg).CombinedOutput(); err == nil {
				break
			}
		}
		select {
		case err := <-done:
			log, _ := os.ReadFile(outFile)
			t.Fatalf("granary up exited: %v\n%s", err, log)
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(outFile)
			t.Fatalf("granary status with the configuration up wrote: %s\nup:\n%s", status, log)
		}
	}
	got, err := exec.Command(granary, "cat", "--config", clientCfg, "/d/edge/page+1").Output()
	if err != nil || string(got) != string(tr.files["edge/page+1"]) {
		t.Errorf("granary cat through up's workers: %d bytes, %v", len(got), err)
	}
	if log, _ := os.ReadFile(outFile); !strings.Contains(string(log), "admin https://") {
		t.Errorf("up does not print the admin endpoints as https:\n%s", log)
	}
}
