// Command podcheck runs in pods of kubetest's own test: it looks at what a
// container sees (environment, files, mounts, network, API access),
// prints it as JSON on stdout and exits 1 if an action failed. It is
// built with CGO_ENABLED=0, so it runs in a root file system of its own.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Report is what podcheck prints.
type Report struct {
	Args     []string
	Env      map[string]string
	Hostname string
	PID      int
	UID, GID int
	Cwd      string
	Files    map[string]File // path -> file, of the -ls directories (and below)
	Mounts   map[string]string
	CapBnd   string
	CapEff   string
	Listen   string
	API      map[string]int // request -> HTTP status
	Writes   map[string]string
	Mode     string
	Errors   []string
}

// File is a regular file (through symlinks) podcheck read.
type File struct {
	Mode    string
	Content string
}

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	var ls, writes, roWrites, mountTmpfs, failMount list
	flag.Var(&ls, "ls", "directory whose files to report (repeatable)")
	flag.Var(&writes, "write", "PATH=CONTENT to write (repeatable)")
	flag.Var(&roWrites, "write-fails", "path a write to must fail with EROFS (repeatable)")
	flag.Var(&mountTmpfs, "mount-tmpfs", "directory to mount a tmpfs on, with a file hello in it")
	flag.Var(&failMount, "mount-fails", "directory a tmpfs mount on must fail with EPERM")
	listen := flag.Bool("listen", false, "bind and connect to $POD_IP")
	api := flag.String("api", "", "NAMESPACE/CONFIGMAP: GET it with the in-cluster config (must work), list secrets (must be forbidden)")
	modeFile := flag.String("mode-file", "", "file holding what to do after the checks: sleep (until SIGTERM), wait:PATH=CONTENT, or nothing")
	flag.Parse()

	r := &Report{Args: os.Args, Env: map[string]string{}, PID: os.Getpid(), UID: os.Getuid(), GID: os.Getgid(),
		Files: map[string]File{}, Mounts: map[string]string{}, API: map[string]int{}, Writes: map[string]string{}}
	fail := func(format string, a ...any) { r.Errors = append(r.Errors, fmt.Sprintf(format, a...)) }
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		r.Env[k] = v
	}
	r.Hostname, _ = os.Hostname()
	r.Cwd, _ = os.Getwd()
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
				r.CapBnd = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
				r.CapEff = strings.TrimSpace(v)
			}
		}
	} else {
		fail("/proc: %v", err)
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			for i, x := range f {
				if x == "-" && i+1 < len(f) && len(f) > 5 {
					r.Mounts[f[4]] = f[i+1] + " " + f[5] + " " + f[len(f)-1] // fstype, options, super options
				}
			}
		}
	}
	for _, dir := range ls {
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				fail("ls %s: %v", p, err)
				return nil
			}
			if strings.HasPrefix(d.Name(), "..") {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			st, err := os.Stat(p) // through symlinks
			if err != nil || !st.Mode().IsRegular() {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				fail("read %s: %v", p, err)
			}
			r.Files[p] = File{Mode: fmt.Sprintf("%o", st.Mode().Perm()), Content: string(b)}
			return nil
		})
	}
	for _, w := range writes {
		p, content, _ := strings.Cut(w, "=")
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			fail("write %s: %v", p, err)
		} else {
			r.Writes[p] = "ok"
		}
	}
	for _, p := range roWrites {
		err := os.WriteFile(p, []byte("x"), 0o644)
		if !errors.Is(err, syscall.EROFS) {
			fail("write %s: %v, want EROFS", p, err)
		} else {
			r.Writes[p] = "EROFS"
		}
	}
	for _, p := range mountTmpfs {
		os.MkdirAll(p, 0o755)
		if err := syscall.Mount("tmpfs", p, "tmpfs", 0, "size=1m"); err != nil {
			fail("mount tmpfs on %s: %v", p, err)
		} else if err := os.WriteFile(filepath.Join(p, "hello"), []byte("from "+r.Hostname), 0o644); err != nil {
			fail("write in tmpfs: %v", err)
		}
	}
	for _, p := range failMount {
		os.MkdirAll(p, 0o755)
		if err := syscall.Mount("tmpfs", p, "tmpfs", 0, "size=1m"); !errors.Is(err, syscall.EPERM) {
			fail("mount tmpfs on %s: %v, want EPERM", p, err)
		}
	}
	if *listen {
		if err := checkListen(os.Getenv("POD_IP")); err != nil {
			fail("listen: %v", err)
		} else {
			r.Listen = "ok"
		}
	}
	if *api != "" {
		ns, cm, _ := strings.Cut(*api, "/")
		for _, path := range []string{
			"/api/v1/namespaces/" + ns + "/configmaps/" + cm,
			"/api/v1/namespaces/" + ns + "/secrets",
		} {
			code, err := apiGet(path)
			if err != nil {
				fail("GET %s: %v", path, err)
			}
			r.API[path] = code
		}
	}
	if *modeFile != "" {
		b, _ := os.ReadFile(*modeFile)
		r.Mode = strings.TrimSpace(string(b))
		switch {
		case r.Mode == "sleep":
			// PID 1 gets only the signals it handles.
			c := make(chan os.Signal, 1)
			signal.Notify(c, syscall.SIGTERM)
			fmt.Println("sleeping until SIGTERM")
			<-c
			r.Mode = "sleep: got SIGTERM"
		case strings.HasPrefix(r.Mode, "wait:"):
			p, want, _ := strings.Cut(strings.TrimPrefix(r.Mode, "wait:"), "=")
			deadline := time.Now().Add(60 * time.Second)
			for {
				b, _ := os.ReadFile(p)
				if string(b) == want {
					r.Mode += ": seen"
					break
				}
				if time.Now().After(deadline) {
					fail("%s is %q, not %q, after 60s", p, b, want)
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	os.WriteFile("/dev/termination-log", []byte(fmt.Sprintf("%d errors", len(r.Errors))), 0o644)
	out, _ := json.Marshal(r)
	fmt.Printf("REPORT %s\n", out)
	if len(r.Errors) > 0 {
		fmt.Fprintln(os.Stderr, strings.Join(r.Errors, "\n"))
		os.Exit(1)
	}
}

// checkListen binds ip (its pod IP) and connects to it.
func checkListen(ip string) error {
	if ip == "" {
		return errors.New("no POD_IP")
	}
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return err
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Write([]byte("pong"))
			c.Close()
		}
	}()
	c, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "pong" {
		return fmt.Errorf("read %q: %v", b, err)
	}
	return nil
}

// apiGet does what client-go's in-cluster config does: the API server at
// $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT, its CA and the token
// of the service account directory.
func apiGet(path string) (int, error) {
	const dir = "/var/run/secrets/kubernetes.io/serviceaccount"
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return 0, errors.New("KUBERNETES_SERVICE_HOST/PORT not set")
	}
	token, err := os.ReadFile(dir + "/token")
	if err != nil {
		return 0, err
	}
	ca, err := os.ReadFile(dir + "/ca.crt")
	if err != nil {
		return 0, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return 0, errors.New("ca.crt holds no certificate")
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, err := http.NewRequest("GET", "https://"+net.JoinHostPort(host, port)+path, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
