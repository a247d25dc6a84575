package main

// The cephfs image carries libcephfs and everything it needs at run time,
// taken from Debian's packages. How that closure is found:
//
//  1. What the binary loads when it starts. The build machine's dynamic
//     loader (the binary's PT_INTERP, /lib64/ld-linux-x86-64.so.2) is run
//     as `LOADER --list BINARY`. It resolves DT_NEEDED recursively as it
//     would at run time (RUNPATHs included: libcephfs finds
//     libceph-common.so.2 in <libdir>/ceph that way) and prints the path
//     where it found each soname, without running any code of the binary.
//     A soname it cannot find is an error. So libcephfs2 (libcephfs-dev for
//     the build) must be installed on the build machine.
//  2. What Ceph loads later with dlopen. libceph-common loads plugins from
//     its plugin directory, the directory libceph-common itself is in
//     (/usr/lib/x86_64-linux-gnu/ceph): compressor/ (snappy, zlib, zstd,
//     lz4: compressed messenger connections) and crypto/ (isal, openssl).
//     Every file of those directories is taken, from the packages that own
//     them (ceph-common in Debian 12, which must be installed too), and
//     step 1 is run on each plugin for the libraries it needs in turn.
//     Other dlopen users are left out on purpose: erasure-code, class and
//     object-store plugins run in OSDs, and libibverbs' providers are only
//     for the RDMA messenger.
//  3. Each path is mapped to the installed Debian package that owns it with
//     `dpkg-query -S`. The path is tried as the loader printed it and with
//     /usr added or removed: on a merged-/usr machine the loader says
//     /lib/x86_64-linux-gnu/libcephfs.so.2 where the package says
//     /usr/lib/x86_64-linux-gnu/libcephfs.so.2. The package's installed
//     version comes from `dpkg-query -W`.
//  4. Those exact versions are fetched with `apt-get download
//     PKG:ARCH=VERSION` into a cache directory (a .deb already there, or in
//     /var/cache/apt/archives, is used as it is) and unpacked with
//     `dpkg-deb -x`.
//  5. Each path is copied from the unpacked package to the same path in the
//     image. A symlink is copied as a symlink and its target is added too,
//     from whichever package owns it, so libfoo.so.1 -> libfoo.so.1.2.3
//     chains (and /lib64/ld-linux-x86-64.so.2) stay whole. Every regular
//     file is compared with the installed one: what the image gets is what
//     the loader resolved in step 1.
//  6. For every package used, its copyright file (/usr/share/doc/PKG/,
//     following the doc directory's symlink to another package where
//     Debian has one) and its control fields as /var/lib/dpkg/status.d/PKG,
//     where vulnerability scanners (trivy, syft) look in distroless images.
//
// image_test.go checks the result where it counts: in a chroot of the
// unpacked image, the image's own loader resolves every library.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// debPkg is one Debian package the image takes files from.
type debPkg struct {
	name    string // as dpkg prints it: libc6:amd64, or ceph-common
	version string
	arch    string
	deb     string // the .deb
	root    string // where it is unpacked
}

// bare is the package name without its architecture qualifier.
func (p *debPkg) bare() string { name, _, _ := strings.Cut(p.name, ":"); return name }

// debian collects the cephfs image's library layer.
type debian struct {
	interp   string // the build machine's loader, the binary's PT_INTERP
	cacheDir string
	log      io.Writer
	tree     *tree
	pkgs     map[string]*debPkg // by name
	owners   map[string][]string
	added    map[string]bool
}

// debianClosure returns the tree of the libraries (and plugins) binary
// needs at run time and the packages they came from; see the top of this
// file.
func debianClosure(binary string, info binaryInfo, pluginDirs []string, cacheDir string, log io.Writer) (*tree, []*debPkg, error) {
	for _, tool := range []string{"dpkg-query", "dpkg-deb", "apt-get"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, nil, fmt.Errorf("the cephfs image is built from Debian packages and needs %s: %w", tool, err)
		}
	}
	if _, err := os.Stat(info.interp); err != nil {
		return nil, nil, fmt.Errorf("the binary's loader %s is not on this machine (%w): build the cephfs image on the Debian machine (and architecture) it was built on", info.interp, err)
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, nil, err
	}
	d := &debian{interp: info.interp, cacheDir: cacheDir, log: log, tree: newTree(),
		pkgs: map[string]*debPkg{}, owners: map[string][]string{}, added: map[string]bool{}}

	// 1: what the binary loads at start.
	libs, err := d.loaderList(binary)
	if err != nil {
		return nil, nil, err
	}
	// 2: the plugin directories of libceph-common and what their plugins load.
	cephDir := ""
	for _, l := range libs {
		if strings.HasPrefix(path.Base(l), "libceph-common.so") {
			cephDir = path.Dir(l)
		}
	}
	if len(pluginDirs) > 0 && cephDir == "" {
		return nil, nil, fmt.Errorf("%s does not load libceph-common.so: cannot tell Ceph's plugin directory", binary)
	}
	var plugins []string // host directories
	for _, sub := range pluginDirs {
		dir := path.Join(cephDir, sub)
		ents, err := os.ReadDir(dir)
		if err != nil {
			return nil, nil, fmt.Errorf("the Ceph plugin directory %s is not on this machine (%w): install the package that ships it (ceph-common in Debian 12), or leave it out with -ceph-plugins", dir, err)
		}
		plugins = append(plugins, dir)
		for _, e := range ents {
			if !e.Type().IsRegular() || !strings.Contains(e.Name(), ".so") {
				continue
			}
			more, err := d.loaderList(path.Join(dir, e.Name()))
			if err != nil {
				return nil, nil, err
			}
			libs = append(libs, more...)
		}
	}
	libs = uniq(libs)

	// 3-5: the owners of the libraries, fetched, and the files copied.
	if err := d.lookupOwners(append(append([]string{}, libs...), plugins...)); err != nil {
		return nil, nil, err
	}
	var owners []string
	for _, names := range d.owners {
		owners = append(owners, names...)
	}
	sort.Strings(owners)
	if err := d.fetch(owners); err != nil {
		return nil, nil, err
	}
	for _, l := range libs {
		if err := d.addPath(l); err != nil {
			return nil, nil, err
		}
	}
	for _, dir := range plugins {
		if err := d.addDir(dir); err != nil {
			return nil, nil, err
		}
	}
	if err := d.ensureInterp(); err != nil {
		return nil, nil, err
	}
	// 6: copyright and package metadata, for every package used (which can
	// bring in the package a doc directory's symlink points into).
	done := map[string]bool{}
	for {
		var todo []*debPkg
		for _, p := range d.sortedPkgs() {
			if !done[p.name] {
				todo = append(todo, p)
			}
		}
		if len(todo) == 0 {
			break
		}
		for _, p := range todo {
			done[p.name] = true
			if err := d.addMetadata(p); err != nil {
				return nil, nil, err
			}
		}
	}
	pkgs := d.sortedPkgs()
	var names []string
	for _, p := range pkgs {
		names = append(names, p.bare()+"="+p.version)
	}
	fmt.Fprintf(log, "cephfs: %d libraries and %d plugin directories from %d Debian packages: %s\n",
		len(libs), len(plugins), len(pkgs), strings.Join(names, " "))
	return d.tree, pkgs, nil
}

func (d *debian) sortedPkgs() []*debPkg {
	var ps []*debPkg
	for _, p := range d.pkgs {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].name < ps[j].name })
	return ps
}

// loaderList runs `LOADER --list OBJ` and returns the paths of the
// libraries it resolved (the loader included), or an error naming those it
// could not find.
func (d *debian) loaderList(obj string) ([]string, error) {
	cmd := exec.Command(d.interp, "--list", obj)
	cmd.Env = loaderEnv()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, runErr := cmd.Output()
	var libs, missing []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		if name, rest, ok := strings.Cut(line, " => "); ok {
			if strings.HasPrefix(rest, "not found") {
				missing = append(missing, name)
				continue
			}
			if f := strings.Fields(rest); len(f) > 0 && strings.HasPrefix(f[0], "/") {
				libs = append(libs, path.Clean(f[0]))
			}
			continue
		}
		// "/lib64/ld-linux-x86-64.so.2 (0x...)" is the loader;
		// "linux-vdso.so.1 (0x...)" is the kernel's and not a file.
		if f := strings.Fields(line); strings.HasPrefix(f[0], "/") {
			libs = append(libs, path.Clean(f[0]))
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("library not found: %s needs %s, which the loader of this machine cannot find: install the Debian packages that ship them",
			obj, strings.Join(missing, ", "))
	}
	if runErr != nil {
		// For a shared object (a plugin) the loader stops at the first
		// missing library instead of listing it.
		if m := loaderMissing.FindStringSubmatch(stderr.String()); m != nil {
			return nil, fmt.Errorf("library not found: %s needs %s, which the loader of this machine cannot find: install the Debian package that ships it",
				obj, m[1])
		}
		return nil, fmt.Errorf("%s --list %s: %v: %s", d.interp, obj, runErr, strings.TrimSpace(stderr.String()))
	}
	return libs, nil
}

var loaderMissing = regexp.MustCompile(`error while loading shared libraries: (\S+): cannot open shared object file`)

// loaderEnv is the environment without what steers the loader.
func loaderEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LD_") {
			env = append(env, kv)
		}
	}
	return env
}

// aliases are the names a path may have in dpkg's database: as it is, and
// with /usr added or removed (merged /usr).
func aliases(p string) []string {
	if rest, ok := strings.CutPrefix(p, "/usr/"); ok {
		return []string{p, "/" + rest}
	}
	return []string{p, "/usr" + p}
}

// lookupOwners asks dpkg which packages own paths (under any alias), in one
// call, and remembers the answers.
func (d *debian) lookupOwners(paths []string) error {
	var ask []string
	for _, p := range paths {
		for _, a := range aliases(p) {
			if _, ok := d.owners[a]; !ok {
				ask = append(ask, a)
			}
		}
	}
	if len(ask) == 0 {
		return nil
	}
	ask = uniq(ask)
	cmd := exec.Command("dpkg-query", append([]string{"-S"}, ask...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	// Exit status 1 means some paths belong to no package; they are
	// looked at by the caller.
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 1) {
		return fmt.Errorf("dpkg-query -S: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	for _, a := range ask {
		d.owners[a] = nil
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "diversion by ") {
			continue
		}
		pkgs, p, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		for _, name := range strings.Split(pkgs, ", ") {
			d.owners[p] = append(d.owners[p], strings.TrimSpace(name))
		}
	}
	return nil
}

// owner returns the package that ships p (under one of its aliases) and
// the path the package has it under.
func (d *debian) owner(p string) (*debPkg, string, error) {
	if err := d.lookupOwners([]string{p}); err != nil {
		return nil, "", err
	}
	for _, a := range aliases(p) {
		for _, name := range d.owners[a] {
			pkg, err := d.pkg(name)
			if err != nil {
				return nil, "", err
			}
			if _, err := os.Lstat(filepath.Join(pkg.root, a)); err == nil {
				return pkg, a, nil
			}
		}
	}
	return nil, "", fmt.Errorf("%s is needed at run time but belongs to no installed Debian package (dpkg-query -S %s)", p, strings.Join(aliases(p), " "))
}

// pkg returns the installed package name, fetched and unpacked.
func (d *debian) pkg(name string) (*debPkg, error) {
	if err := d.fetch([]string{name}); err != nil {
		return nil, err
	}
	return d.pkgs[name], nil
}

// fetch makes sure the installed versions of the packages names are
// downloaded (with one apt-get call for all that are not yet) and unpacked.
func (d *debian) fetch(names []string) error {
	var todo []*debPkg
	var specs []string
	for _, name := range uniq(names) {
		if _, ok := d.pkgs[name]; ok {
			continue
		}
		out, err := exec.Command("dpkg-query", "-W", "-f", "${binary:Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n", name).Output()
		if err != nil {
			return fmt.Errorf("dpkg-query -W %s: %w", name, err)
		}
		f := strings.Split(strings.TrimSpace(string(out)), "\t")
		if len(f) != 4 || strings.TrimSpace(f[3]) != "ii" {
			return fmt.Errorf("package %s is not installed properly (dpkg-query says %q)", name, strings.TrimSpace(string(out)))
		}
		p := &debPkg{name: name, version: f[1], arch: f[2]}
		// apt names a .deb NAME_VERSION_ARCH.deb, the epoch's colon escaped.
		file := fmt.Sprintf("%s_%s_%s.deb", p.bare(), strings.ReplaceAll(p.version, ":", "%3a"), p.arch)
		p.deb = filepath.Join(d.cacheDir, file)
		if _, err := os.Stat(p.deb); err != nil {
			if _, err := os.Stat(filepath.Join("/var/cache/apt/archives", file)); err == nil {
				p.deb = filepath.Join("/var/cache/apt/archives", file)
			} else {
				spec := p.bare() + ":" + p.arch + "=" + p.version
				if p.arch == "all" {
					spec = p.bare() + "=" + p.version
				}
				specs = append(specs, spec)
			}
		}
		todo = append(todo, p)
	}
	if len(specs) > 0 {
		fmt.Fprintf(d.log, "apt-get download %s\n", strings.Join(specs, " "))
		cmd := exec.Command("apt-get", append([]string{"download", "-q"}, specs...)...)
		cmd.Dir = d.cacheDir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get download %s: %v: %s", strings.Join(specs, " "), err, strings.TrimSpace(string(out)))
		}
	}
	for _, p := range todo {
		if _, err := os.Stat(p.deb); err != nil {
			return fmt.Errorf("apt-get download did not write %s", p.deb)
		}
		if err := d.unpack(p); err != nil {
			return err
		}
		d.pkgs[p.name] = p
	}
	return nil
}

// unpack unpacks p's .deb once into the cache, after checking it is the
// package and version asked for.
func (d *debian) unpack(p *debPkg) error {
	out, err := exec.Command("dpkg-deb", "-f", p.deb, "Package", "Version", "Architecture").Output()
	if err != nil {
		return fmt.Errorf("dpkg-deb -f %s: %w", p.deb, err)
	}
	want := fmt.Sprintf("Package: %s\nVersion: %s\nArchitecture: %s\n", p.bare(), p.version, p.arch)
	if string(out) != want {
		return fmt.Errorf("%s is not %s %s %s: it says\n%s", p.deb, p.bare(), p.version, p.arch, out)
	}
	p.root = filepath.Join(d.cacheDir, "unpacked", strings.TrimSuffix(filepath.Base(p.deb), ".deb"))
	marker := filepath.Join(p.root, ".unpacked")
	if _, err := os.Stat(marker); err == nil {
		return nil
	}
	tmp := p.root + ".tmp"
	if err := os.MkdirAll(filepath.Dir(tmp), 0o755); err != nil {
		return err
	}
	for _, dir := range []string{p.root, tmp} {
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	}
	if out, err := exec.Command("dpkg-deb", "-x", p.deb, tmp).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %v: %s", p.deb, err, strings.TrimSpace(string(out)))
	}
	if err := os.WriteFile(filepath.Join(tmp, ".unpacked"), nil, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p.root)
}

// addPath adds the file p of the build machine (by any alias) to the image,
// from the package that owns it.
func (d *debian) addPath(p string) error {
	pkg, pp, err := d.owner(p)
	if err != nil {
		return err
	}
	return d.addFromPkg(pkg, pp)
}

// addFromPkg adds pkg's file p to the image at p, and a symlink's target.
func (d *debian) addFromPkg(pkg *debPkg, p string) error {
	if d.added[p] {
		return nil
	}
	d.added[p] = true
	src := filepath.Join(pkg.root, p)
	fi, err := os.Lstat(src)
	if err != nil {
		return fmt.Errorf("%s: %w", pkg.name, err)
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := d.tree.symlink(p, target); err != nil {
			return err
		}
		abs := target
		if !path.IsAbs(abs) {
			abs = path.Join(path.Dir(p), target)
		}
		if _, err := os.Lstat(filepath.Join(pkg.root, abs)); err == nil {
			return d.addFromPkg(pkg, abs)
		}
		return d.addPath(abs)
	case fi.Mode().IsRegular():
		if err := sameAsInstalled(src, p); err != nil {
			return fmt.Errorf("%s from %s %s: %w", p, pkg.bare(), pkg.version, err)
		}
		return d.tree.copyFile(p, fi.Mode()&(fs.ModePerm|fs.ModeSticky|fs.ModeSetuid|fs.ModeSetgid), src)
	case fi.IsDir():
		return d.tree.dir(p, fi.Mode()&fs.ModePerm)
	}
	return fmt.Errorf("%s in %s is neither a file, a directory nor a symlink", p, pkg.name)
}

// addDir adds everything under the directory dir of the build machine, as
// the packages that own it ship it.
func (d *debian) addDir(dir string) error {
	n := 0
	for _, a := range aliases(dir) {
		for _, name := range d.owners[a] {
			pkg, err := d.pkg(name)
			if err != nil {
				return err
			}
			root := filepath.Join(pkg.root, a)
			err = filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
				if err != nil {
					if p == root && errors.Is(err, fs.ErrNotExist) {
						return nil // a package that owns only a parent
					}
					return err
				}
				rel, err := filepath.Rel(pkg.root, p)
				if err != nil {
					return err
				}
				n++
				return d.addFromPkg(pkg, "/"+filepath.ToSlash(rel))
			})
			if err != nil {
				return err
			}
		}
	}
	if n == 0 {
		return fmt.Errorf("no Debian package ships %s", dir)
	}
	return nil
}

// ensureInterp makes the binary's PT_INTERP path resolve in the image. A
// package that ships the loader under /usr only (a Debian after the /usr
// merge) gets the top directory as a symlink into /usr, as Debian does.
func (d *debian) ensureInterp() error {
	if _, ok := d.tree.entries[d.interp]; ok {
		return nil
	}
	top := "/" + strings.Split(strings.TrimPrefix(d.interp, "/"), "/")[0]
	if _, ok := d.tree.entries["/usr"+d.interp]; ok {
		if _, ok := d.tree.entries[top]; !ok {
			return d.tree.symlink(top, "usr"+top)
		}
	}
	return fmt.Errorf("the loader %s is not in the image", d.interp)
}

// addMetadata adds pkg's copyright file and control fields.
func (d *debian) addMetadata(pkg *debPkg) error {
	doc := "/usr/share/doc/" + pkg.bare()
	fi, err := os.Lstat(filepath.Join(pkg.root, doc))
	switch {
	case err != nil:
		fmt.Fprintf(d.log, "warning: %s has no %s\n", pkg.name, doc)
	case fi.Mode()&fs.ModeSymlink != 0:
		// Packages built from one source share a doc directory:
		// libstdc++6's is a symlink into gcc-12-base's.
		target, err := os.Readlink(filepath.Join(pkg.root, doc))
		if err != nil {
			return err
		}
		if err := d.tree.symlink(doc, target); err != nil {
			return err
		}
		if !path.IsAbs(target) {
			target = path.Join(path.Dir(doc), target)
		}
		if err := d.addPath(path.Join(target, "copyright")); err != nil {
			return err
		}
	default:
		if err := d.addFromPkg(pkg, doc+"/copyright"); err != nil {
			return err
		}
	}
	control, err := exec.Command("dpkg-deb", "-f", pkg.deb).Output()
	if err != nil {
		return fmt.Errorf("dpkg-deb -f %s: %w", pkg.deb, err)
	}
	return d.tree.file("/var/lib/dpkg/status.d/"+pkg.bare(), 0o644, control)
}

// sameAsInstalled checks that the unpacked file src is the build machine's
// file p.
func sameAsInstalled(src, p string) error {
	a, err := fileSum(src)
	if err != nil {
		return err
	}
	b, err := fileSum(p)
	if err != nil {
		return fmt.Errorf("not installed on this machine: %w", err)
	}
	if a != b {
		return fmt.Errorf("differs from the installed %s (a modified or diverted file?)", p)
	}
	return nil
}

func fileSum(p string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	f, err := os.Open(p)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

func uniq(xs []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range xs {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}
