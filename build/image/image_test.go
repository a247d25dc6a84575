package main

// The images, tested as a container runtime would see them: each variant's
// binary is built as a release is (make granary, make granary-cephfs), its
// image written, read back from the OCI layout with go-containerregistry,
// its layers unpacked in order into a fresh directory, and granary run
// chrooted there. The log has each image's size (for the release notes):
//
//	cd build/image && go test -v -count=1 ./...
//
// Running granary in a chroot takes root: without it the tests skip, or
// fail when $GRANARY_REQUIRE_SERVERS is set (test/run.sh). The cephfs
// image needs libcephfs-dev, ceph-common and libsnappy1v5 installed
// (test/lib.sh installs them), and reads the test cluster's CephFS from
// inside the image when $GRANARY_CEPH_DIR names one (test/run.sh starts it).

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	testVersion = "v0.0.0-imagetest"
	testCommit  = "0123456789ab"
)

var shared string // a directory for the whole run: binaries, images

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "granary-image-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	shared = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// required says whether what a test needs must be there ($GRANARY_REQUIRE_SERVERS, as in test/run.sh).
func required() bool { return os.Getenv("GRANARY_REQUIRE_SERVERS") != "" }

// need skips the test for what is missing, or fails it when required.
func need(t *testing.T, format string, args ...any) {
	t.Helper()
	if required() {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		need(t, "running granary chrooted into the image needs root")
	}
}

// needCephFSBuild: the cgo build and the cephfs image need libcephfs-dev
// and Ceph's plugins (ceph-common) on this machine.
func needCephFSBuild(t *testing.T) {
	t.Helper()
	for _, p := range []string{"/usr/include/cephfs/libcephfs.h", "/usr/lib/x86_64-linux-gnu/ceph/compressor"} {
		if _, err := os.Stat(p); err != nil {
			need(t, "%s is missing: the cephfs image needs libcephfs-dev and ceph-common (test/lib.sh installs them)", p)
		}
	}
	if runtime.GOARCH != "amd64" {
		t.Skip("the cephfs image is tested on amd64")
	}
}

// repoRoot is the granary module's directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !bytes.HasPrefix(mod, []byte("module github.com/granary-cache/granary\n")) {
		t.Fatalf("%s is not granary's module root", root)
	}
	return root
}

// once runs each named step once per test run; later callers get its
// result, or its failure.
type onceResult struct {
	once sync.Once
	val  any
	err  error
}

var (
	onceMu sync.Mutex
	onces  = map[string]*onceResult{}
)

func once[T any](t *testing.T, key string, f func() (T, error)) T {
	t.Helper()
	onceMu.Lock()
	r, ok := onces[key]
	if !ok {
		r = &onceResult{}
		onces[key] = r
	}
	onceMu.Unlock()
	r.once.Do(func() { r.val, r.err = f() })
	if r.err != nil {
		t.Fatalf("%s: %v", key, r.err)
	}
	return r.val.(T)
}

// granaryBinary builds the variant's binary as the Makefile does for a
// release (stripped, version stamped), once per run.
func granaryBinary(t *testing.T, variant string) string {
	t.Helper()
	root := repoRoot(t)
	return once(t, "build "+variant, func() (string, error) {
		out := filepath.Join(shared, "granary-"+variant)
		ldflags := "-s -w -X github.com/granary-cache/granary/internal/version.Version=" + testVersion +
			" -X github.com/granary-cache/granary/internal/version.Commit=" + testCommit
		args := []string{"build", "-trimpath", "-ldflags", ldflags, "-o", out}
		env := append(os.Environ(), "CGO_ENABLED=0")
		if variant == "cephfs" {
			args = append(args, "-tags", "cephfs")
			env = append(os.Environ(), "CGO_ENABLED=1")
		}
		cmd := exec.Command("go", append(args, "./cmd/granary")...)
		cmd.Dir = root
		cmd.Env = env
		start := time.Now()
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		t.Logf("built %s in %v", out, time.Since(start).Round(time.Second))
		return out, nil
	})
}

// builtImage is an image written, read back and unpacked.
type builtImage struct {
	variant  string
	layout   string
	img      v1.Image
	res      *result
	rootfs   string
	unpacked unpackStats
	output   string // the builder's
}

// image builds the variant's image and unpacks it, once per run.
func image(t *testing.T, variant string) *builtImage {
	t.Helper()
	if variant == "cephfs" {
		needCephFSBuild(t)
	}
	bin := granaryBinary(t, variant)
	return once(t, "image "+variant, func() (*builtImage, error) {
		b := &builtImage{variant: variant, layout: filepath.Join(shared, "layout-"+variant), rootfs: filepath.Join(shared, "rootfs-"+variant)}
		var out bytes.Buffer
		start := time.Now()
		res, err := buildWith(&out, "-variant", variant, "-binary", bin, "-out", b.layout)
		b.output = out.String()
		if err != nil {
			return nil, fmt.Errorf("%v\n%s", err, b.output)
		}
		t.Logf("wrote the %s image in %v:\n%s", variant, time.Since(start).Round(time.Second), b.output)
		b.res = res
		if b.img, err = readLayout(b.layout); err != nil {
			return nil, err
		}
		if b.unpacked, err = unpack(b.img, b.rootfs); err != nil {
			return nil, fmt.Errorf("unpacking the %s image: %w", variant, err)
		}
		return b, nil
	})
}

// buildWith runs the command with args and returns what it built.
func buildWith(out io.Writer, args ...string) (*result, error) {
	return run(args, out, out)
}

// readLayout reads the one image of an OCI layout the way a tool that
// consumes it would: through index.json.
func readLayout(dir string) (v1.Image, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	if len(im.Manifests) != 1 {
		return nil, fmt.Errorf("%s/index.json lists %d manifests, want 1", dir, len(im.Manifests))
	}
	desc := im.Manifests[0]
	if desc.MediaType != types.OCIManifestSchema1 {
		return nil, fmt.Errorf("index.json: manifest media type %s", desc.MediaType)
	}
	if desc.Platform == nil || desc.Platform.OS != "linux" || desc.Platform.Architecture != runtime.GOARCH {
		return nil, fmt.Errorf("index.json: platform %v, want linux/%s", desc.Platform, runtime.GOARCH)
	}
	return idx.Image(desc.Digest)
}

// unpackStats are the sizes of an unpacked image.
type unpackStats struct {
	compressed   int64 // layer blobs
	uncompressed int64 // layer tars
	files        int   // regular files (hard links not counted again)
	bytes        int64 // their bytes
	paths        []string
}

// unpack extracts the image's layers in order into dir as a container
// runtime would (whiteouts aside: these images have none). Every entry must
// be owned by 0:0 and stay inside dir (os.Root refuses anything that
// leads out of it).
func unpack(img v1.Image, dir string) (unpackStats, error) {
	var st unpackStats
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return st, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return st, err
	}
	defer root.Close()
	layers, err := img.Layers()
	if err != nil {
		return st, err
	}
	for i, l := range layers {
		size, err := l.Size()
		if err != nil {
			return st, err
		}
		st.compressed += size
		rc, err := l.Uncompressed()
		if err != nil {
			return st, err
		}
		n, err := unpackLayer(root, rc, &st)
		rc.Close()
		if err != nil {
			return st, fmt.Errorf("layer %d: %w", i, err)
		}
		st.uncompressed += n
	}
	return st, nil
}

func unpackLayer(root *os.Root, r io.Reader, st *unpackStats) (int64, error) {
	counted := &countingReader{r: r}
	tr := tar.NewReader(counted)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, err
		}
		name := path.Clean(h.Name)
		if !fs.ValidPath(name) || name == "." {
			return 0, fmt.Errorf("entry %q: not a path inside the image", h.Name)
		}
		if h.Uid != 0 || h.Gid != 0 {
			return 0, fmt.Errorf("%s is owned by %d:%d, not 0:0", name, h.Uid, h.Gid)
		}
		st.paths = append(st.paths, "/"+name)
		mode := h.FileInfo().Mode() & (fs.ModePerm | fs.ModeSticky | fs.ModeSetuid | fs.ModeSetgid)
		if d := path.Dir(name); d != "." {
			if err := root.MkdirAll(d, 0o755); err != nil {
				return 0, err
			}
		}
		if h.Typeflag != tar.TypeDir {
			if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return 0, err
			}
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return 0, err
			}
			if err := root.Chmod(name, mode|fs.ModeDir); err != nil {
				return 0, err
			}
		case tar.TypeReg:
			f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return 0, err
			}
			n, err := io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return 0, err
			}
			if err := root.Chmod(name, mode); err != nil {
				return 0, err
			}
			st.files++
			st.bytes += n
		case tar.TypeSymlink:
			if err := root.Symlink(h.Linkname, name); err != nil {
				return 0, err
			}
		case tar.TypeLink:
			target := path.Clean(h.Linkname)
			if !fs.ValidPath(target) {
				return 0, fmt.Errorf("hard link %s -> %q leads out of the image", name, h.Linkname)
			}
			if err := root.Link(target, name); err != nil {
				return 0, err
			}
		default:
			return 0, fmt.Errorf("%s: unexpected tar entry type %q", name, h.Typeflag)
		}
	}
	// The rest of the stream: the tar's end blocks and padding.
	if _, err := io.Copy(io.Discard, counted); err != nil {
		return 0, err
	}
	return counted.n, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// chroot runs a command chrooted into dir, with the image's environment.
func chroot(t *testing.T, dir string, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: dir}
	cmd.Dir = "/"
	cmd.Env = append(env, "HOME=/root")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		return "", err
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		<-done
		return out.String(), fmt.Errorf("chroot %s %s: still running after 2 minutes", dir, strings.Join(args, " "))
	}
}

// checkImage checks what both variants share: the index entry, the
// config, the base files, and granary's version run inside the image.
func checkImage(t *testing.T, b *builtImage) {
	t.Helper()
	wantTag := testVersion
	if b.variant == "cephfs" {
		wantTag += "-cephfs"
	}
	idx, err := layout.ImageIndexFromPath(b.layout)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if got := im.Manifests[0].Annotations["org.opencontainers.image.ref.name"]; got != wantTag {
		t.Errorf("index.json ref.name = %q, want %q", got, wantTag)
	}
	if d, _ := b.img.Digest(); d != b.res.Digest || im.Manifests[0].Digest != d {
		t.Errorf("manifest digest %s, index.json says %s, the builder said %s", d, im.Manifests[0].Digest, b.res.Digest)
	}
	m, err := b.img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIManifestSchema1 || m.Config.MediaType != types.OCIConfigJSON {
		t.Errorf("media types %s, %s: want OCI", m.MediaType, m.Config.MediaType)
	}
	for _, l := range m.Layers {
		if l.MediaType != types.OCILayer {
			t.Errorf("layer %s has media type %s", l.Digest, l.MediaType)
		}
	}
	cf, err := b.img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("config platform %s/%s", cf.OS, cf.Architecture)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{"/usr/bin/granary"}) {
		t.Errorf("entrypoint %q", cf.Config.Entrypoint)
	}
	if !slices.ContainsFunc(cf.Config.Env, func(e string) bool { return strings.HasPrefix(e, "PATH=") && strings.Contains(e, "/usr/bin") }) {
		t.Errorf("env %q has no PATH with /usr/bin", cf.Config.Env)
	}
	for k, v := range map[string]string{
		"org.opencontainers.image.title":    "granary",
		"org.opencontainers.image.version":  testVersion,
		"org.opencontainers.image.source":   sourceURL,
		"org.opencontainers.image.revision": testCommit,
	} {
		if got := cf.Config.Labels[k]; got != v {
			t.Errorf("label %s = %q, want %q", k, got, v)
		}
	}
	if !cf.Created.Time.Equal(time.Unix(0, 0)) {
		t.Errorf("created %v, want the epoch (no SOURCE_DATE_EPOCH)", cf.Created.Time)
	}
	if len(cf.RootFS.DiffIDs) != len(m.Layers) || len(cf.History) != len(m.Layers) {
		t.Errorf("%d layers, %d diff IDs, %d history entries", len(m.Layers), len(cf.RootFS.DiffIDs), len(cf.History))
	}

	// The base files.
	for p, mode := range map[string]fs.FileMode{
		"/etc/passwd": 0o644, "/etc/group": 0o644, caPath: 0o644,
		"/tmp": fs.ModeDir | fs.ModeSticky | 0o777, "/usr/bin/granary": 0o755,
	} {
		fi, err := os.Lstat(filepath.Join(b.rootfs, p))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if fi.Mode() != mode {
			t.Errorf("%s has mode %v, want %v", p, fi.Mode(), mode)
		}
	}
	passwd, _ := os.ReadFile(filepath.Join(b.rootfs, "etc/passwd"))
	group, _ := os.ReadFile(filepath.Join(b.rootfs, "etc/group"))
	for _, w := range []string{"root:x:0:0:", "nobody:x:65534:65534:"} {
		if !strings.Contains(string(passwd), w) {
			t.Errorf("/etc/passwd has no %q:\n%s", w, passwd)
		}
	}
	for _, w := range []string{"root:x:0:", "nobody:x:65534:"} {
		if !strings.Contains(string(group), w) {
			t.Errorf("/etc/group has no %q:\n%s", w, group)
		}
	}
	if ents, err := os.ReadDir(filepath.Join(b.rootfs, "tmp")); err != nil || len(ents) != 0 {
		t.Errorf("/tmp is not empty: %v %v", ents, err)
	}

	// granary runs in the image.
	needRoot(t)
	out, err := chroot(t, b.rootfs, cf.Config.Env, "/usr/bin/granary", "version")
	if err != nil {
		t.Fatalf("chroot %s /usr/bin/granary version: %v\n%s", b.rootfs, err, out)
	}
	features := "pure Go"
	if b.variant == "cephfs" {
		features = "cephfs"
	}
	if !strings.Contains(out, "granary "+testVersion+" (commit "+testCommit) || !strings.Contains(out, ", "+features+")") {
		t.Errorf("granary version in the image printed %q: want %s, commit %s, %s", out, testVersion, testCommit, features)
	}
	t.Logf("in the image: %s", strings.TrimSpace(out))
	out, err = chroot(t, b.rootfs, cf.Config.Env, "/usr/bin/granary", "version", "--json")
	var v struct {
		Version string `json:"version"`
		CephFS  bool   `json:"cephfs"`
	}
	if err != nil || json.Unmarshal([]byte(out), &v) != nil {
		t.Fatalf("granary version --json in the image: %v\n%s", err, out)
	}
	if v.Version != testVersion || v.CephFS != (b.variant == "cephfs") {
		t.Errorf("granary version --json in the image: %+v", v)
	}
}

// reportSize logs the image's size, for the release notes.
func reportSize(t *testing.T, b *builtImage) {
	t.Helper()
	if b.unpacked.compressed != b.res.Compressed() {
		t.Errorf("the layers read back are %d bytes, the builder wrote %d", b.unpacked.compressed, b.res.Compressed())
	}
	if b.unpacked.bytes != b.res.Unpacked() {
		t.Errorf("the unpacked files are %d bytes, the builder counted %d", b.unpacked.bytes, b.res.Unpacked())
	}
	var layers []string
	for _, l := range b.res.Layers {
		layers = append(layers, fmt.Sprintf("%s %s", l.Name, mb(l.Compressed)))
	}
	t.Logf("SIZE %s image: %d layers, %s compressed (%d bytes: %s); %s uncompressed tar; %s unpacked (%d bytes in %d files)",
		b.variant, len(b.res.Layers), mb(b.unpacked.compressed), b.unpacked.compressed, strings.Join(layers, ", "),
		mb(b.unpacked.uncompressed), mb(b.unpacked.bytes), b.unpacked.bytes, b.unpacked.files)
}

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

func TestStaticImage(t *testing.T) {
	b := image(t, "static")
	// Nothing but the binary, the CA bundle, the users and /tmp.
	want := []string{"/etc", "/etc/group", "/etc/passwd", "/etc/ssl", "/etc/ssl/certs", caPath, "/tmp", "/usr", "/usr/bin", "/usr/bin/granary"}
	got := slices.Sorted(slices.Values(b.unpacked.paths))
	if !slices.Equal(got, want) {
		t.Errorf("the static image holds\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(b.res.Layers) != 2 {
		t.Errorf("%d layers, want 2 (base, granary)", len(b.res.Layers))
	}
	reportSize(t, b)
	checkImage(t, b)
}

func TestCephFSImage(t *testing.T) {
	b := image(t, "cephfs")
	if len(b.res.Layers) != 3 {
		t.Errorf("%d layers, want 3 (base, libcephfs, granary)", len(b.res.Layers))
	}
	for _, p := range []string{"/var/lib/dpkg/status.d/libcephfs2", "/usr/share/doc/libcephfs2/copyright", "/usr/share/doc/libc6/copyright"} {
		if _, err := os.Stat(filepath.Join(b.rootfs, p)); err != nil {
			t.Errorf("the cephfs image has no %s: %v", p, err)
		}
	}
	reportSize(t, b)
	checkImage(t, b)
	if t.Failed() {
		return
	}
	info, err := inspectBinary(filepath.Join(b.rootfs, "usr/bin/granary"))
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := b.img.ConfigFile()
	// The image's own loader finds every library of the binary, and of
	// every plugin Ceph may dlopen, inside the image.
	objs := []string{"/usr/bin/granary"}
	for _, dir := range []string{"compressor", "crypto"} {
		ents, err := os.ReadDir(filepath.Join(b.rootfs, "usr/lib/x86_64-linux-gnu/ceph", dir))
		if err != nil || len(ents) == 0 {
			t.Errorf("Ceph's %s plugins are not in the image: %v", dir, err)
		}
		for _, e := range ents {
			if e.Type().IsRegular() {
				objs = append(objs, path.Join("/usr/lib/x86_64-linux-gnu/ceph", dir, e.Name()))
			}
		}
	}
	for _, obj := range objs {
		out, err := chroot(t, b.rootfs, cf.Config.Env, info.interp, "--list", obj)
		if err != nil || strings.Contains(out, "not found") {
			t.Errorf("chroot %s %s --list %s: %v\n%s", b.rootfs, info.interp, obj, err, out)
		} else if obj == "/usr/bin/granary" {
			t.Logf("%s --list /usr/bin/granary in the image:\n%s", info.interp, out)
		}
	}
}

// TestCephFSImageReadsCluster reads the test cluster's CephFS with granary
// inside the cephfs image: libcephfs and everything it loads work there.
func TestCephFSImageReadsCluster(t *testing.T) {
	cephDir := os.Getenv("GRANARY_CEPH_DIR")
	if cephDir == "" {
		need(t, "GRANARY_CEPH_DIR is not set: test/run.sh starts a Ceph cluster")
	}
	b := image(t, "cephfs")
	needRoot(t)
	// The client's ceph.conf and keyring, where the conf says, and the
	// directories it logs to and keeps its admin socket in.
	root := t.TempDir()
	if err := exec.Command("cp", "-a", b.rootfs+"/.", root).Run(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ceph.conf", "keyring"} {
		data, err := os.ReadFile(filepath.Join(cephDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(root, cephDir), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, cephDir, f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"log", "run"} {
		if err := os.MkdirAll(filepath.Join(root, cephDir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Something to find there: a directory made through ceph-fuse
	// (CephFS's own client; a mkdir is at the MDS when it returns).
	name := fmt.Sprintf("granary-image-test-%d", time.Now().UnixNano())
	mnt := t.TempDir()
	if out, err := exec.Command("ceph-fuse", "-c", filepath.Join(cephDir, "ceph.conf"), "-n", "client.admin", mnt).CombinedOutput(); err != nil {
		t.Fatalf("ceph-fuse: %v: %s", err, out)
	}
	err := os.Mkdir(filepath.Join(mnt, name), 0o755)
	if uerr := syscall.Unmount(mnt, 0); uerr != nil {
		syscall.Unmount(mnt, syscall.MNT_DETACH)
	}
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("datasets:\n  - name: cf\n    ufs: cephfs://cephfs/\n    options: {conf: %q, op_timeout: 60s}\n", filepath.Join(cephDir, "ceph.conf"))
	if err := os.WriteFile(filepath.Join(root, "tmp/granary.yaml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cf, _ := b.img.ConfigFile()
	for _, args := range [][]string{
		{"/usr/bin/granary", "ls", "--direct", "--config", "/tmp/granary.yaml", "/cf/"},
		{"/usr/bin/granary", "stat", "--direct", "--config", "/tmp/granary.yaml", "/cf/" + name},
	} {
		out, err := chroot(t, root, cf.Config.Env, args...)
		if err != nil {
			t.Fatalf("in the cephfs image: %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		if !strings.Contains(out, name) {
			t.Errorf("in the cephfs image: %s does not show %s:\n%s", strings.Join(args, " "), name, out)
		}
		t.Logf("in the cephfs image: %s:\n%s", strings.Join(args[1:], " "), out)
	}
}

// TestReproducible: the same binary and time give the same image, byte for
// byte; another time another one.
func TestReproducible(t *testing.T) {
	bin := granaryBinary(t, "static")
	var digests []v1.Hash
	var dirs []string
	for _, epoch := range []string{"1700000000", "1700000000", "1700000001"} {
		var out bytes.Buffer
		dirs = append(dirs, t.TempDir())
		res, err := buildWith(&out, "-binary", bin, "-out", dirs[len(dirs)-1], "-epoch", epoch)
		if err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		digests = append(digests, res.Digest)
	}
	if digests[0] != digests[1] {
		t.Errorf("two builds of the same image: %s and %s", digests[0], digests[1])
	}
	if digests[0] == digests[2] {
		t.Errorf("another time gave the same image %s", digests[0])
	}
	img, err := readLayout(dirs[0])
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		var names []string
		for {
			h, err := tr.Next()
			if err != nil {
				break
			}
			if h.ModTime.Unix() != 1700000000 || h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
				t.Errorf("%s: mtime %v, owner %d:%d (%q:%q)", h.Name, h.ModTime, h.Uid, h.Gid, h.Uname, h.Gname)
			}
			names = append(names, h.Name)
		}
		rc.Close()
		if !slices.IsSorted(names) {
			t.Errorf("layer entries are not sorted: %q", names)
		}
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	notELF := filepath.Join(dir, "granary.sh")
	os.WriteFile(notELF, []byte("#!/bin/sh\necho granary\n"), 0o755)
	out := func() string { return filepath.Join(t.TempDir(), "out") }
	full := t.TempDir()
	os.WriteFile(filepath.Join(full, "x"), nil, 0o644)
	dynamic, err := exec.LookPath("ls")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no binary", []string{"-out", out()}, "-binary is required"},
		{"missing binary", []string{"-binary", filepath.Join(dir, "nope"), "-out", out()}, "does not exist"},
		{"not ELF", []string{"-binary", notELF, "-out", out()}, "is not an ELF file"},
		{"dynamic binary, static image", []string{"-binary", dynamic, "-out", out()}, "is dynamically linked"},
		{"binary without libcephfs, cephfs image", []string{"-variant", "cephfs", "-binary", dynamic, "-out", out()}, "does not link libcephfs"},
		{"unknown variant", []string{"-variant", "alpine", "-binary", dynamic, "-out", out()}, `unknown variant "alpine"`},
		{"bad epoch", []string{"-binary", dynamic, "-out", out(), "-epoch", "yesterday"}, "is not a number of seconds"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var log bytes.Buffer
			_, err := run(c.args, &log, &log)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("image %s: error %v, want one saying %q", strings.Join(c.args, " "), err, c.want)
			}
		})
	}
	// These need a real static binary to get past the checks above.
	t.Run("static binary", func(t *testing.T) {
		bin := granaryBinary(t, "static")
		for _, c := range []struct {
			name string
			args []string
			want string
		}{
			{"cephfs image", []string{"-variant", "cephfs", "-binary", bin, "-out", out()}, "is static"},
			{"missing CA bundle", []string{"-binary", bin, "-out", out(), "-ca-certs", filepath.Join(dir, "none.crt")}, "CA certificates"},
			{"not a CA bundle", []string{"-binary", bin, "-out", out(), "-ca-certs", notELF}, "holds no PEM certificate"},
			{"out not empty", []string{"-binary", bin, "-out", full, "-force"}, "not an OCI layout"},
			{"out not empty without force", []string{"-binary", bin, "-out", full}, "is not empty"},
		} {
			var log bytes.Buffer
			_, err := run(c.args, &log, &log)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: image %s: error %v, want one saying %q", c.name, strings.Join(c.args, " "), err, c.want)
			}
		}
	})
	// A cgo binary whose library is not on this machine.
	t.Run("library not found", func(t *testing.T) {
		needCephFSBuild(t)
		if _, err := exec.LookPath("gcc"); err != nil {
			need(t, "gcc is missing")
		}
		src := filepath.Join(dir, "c")
		os.MkdirAll(src, 0o755)
		os.WriteFile(filepath.Join(src, "gone.c"), []byte("int granary_gone(void) { return 1; }\n"), 0o644)
		os.WriteFile(filepath.Join(src, "main.c"), []byte("#include <cephfs/libcephfs.h>\nint granary_gone(void);\nint main(void) { int a, b, c; ceph_version(&a, &b, &c); return granary_gone(); }\n"), 0o644)
		for _, args := range [][]string{
			{"-shared", "-fPIC", "-Wl,-soname,libgranarygone.so.1", "-o", filepath.Join(src, "libgranarygone.so.1"), filepath.Join(src, "gone.c")},
			{"-D_FILE_OFFSET_BITS=64", "-o", filepath.Join(src, "prog"), filepath.Join(src, "main.c"), filepath.Join(src, "libgranarygone.so.1"), "-lcephfs"},
		} {
			if b, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
				t.Fatalf("gcc %s: %v\n%s", strings.Join(args, " "), err, b)
			}
		}
		os.Remove(filepath.Join(src, "libgranarygone.so.1"))
		var log bytes.Buffer
		_, err := run([]string{"-variant", "cephfs", "-binary", filepath.Join(src, "prog"), "-version", "v0", "-out", out()}, &log, &log)
		if err == nil || !strings.Contains(err.Error(), "library not found") || !strings.Contains(err.Error(), "libgranarygone.so.1") {
			t.Errorf("a binary needing a missing library: error %v, want one naming libgranarygone.so.1", err)
		}
	})
}
