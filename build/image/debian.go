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
//  4. Each package's file list (`dpkg-query -L`) and dpkg's own checksums
//     of its files (the md5sums control file, `dpkg-query --control-path`)
//     are read. Nothing is downloaded: the image takes the files installed
//     on this machine, which are the ones the loader resolved in step 1,
//     and the Debian archive may no longer serve the installed version (a
//     point release or a security update replaces it).
//  5. Each path is copied to the same path in the image. A symlink is
//     copied as a symlink and its target is added too, from whichever
//     package owns it, so libfoo.so.1 -> libfoo.so.1.2.3 chains (and
//     /lib64/ld-linux-x86-64.so.2) stay whole. Every regular file must
//     match dpkg's checksum for it: a file modified, diverted or replaced
//     after installation is refused, so the image holds exactly what the
//     package shipped.
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
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"regexp"
	"sort"
	"strings"
)

// debPkg is one installed Debian package the image takes files from.
type debPkg struct {
	name    string // as dpkg prints it: libc6:amd64, or ceph-common
	version string
	arch    string
	files   map[string]bool   // the paths it ships, as dpkg lists them
	md5     map[string]string // dpkg's checksums of its regular files, by path
	control []byte            // its control fields
}

// bare is the package name without its architecture qualifier.
func (p *debPkg) bare() string { name, _, _ := strings.Cut(p.name, ":"); return name }

// debian collects the cephfs image's library layer.
type debian struct {
	interp string // the build machine's loader, the binary's PT_INTERP
	log    io.Writer
	tree   *tree
	pkgs   map[string]*debPkg // by name
	owners map[string][]string
	added  map[string]bool
}

// debianClosure returns the tree of the libraries (and plugins) binary
// needs at run time and the packages they came from; see the top of this
// file.
func debianClosure(binary string, info binaryInfo, pluginDirs []string, log io.Writer) (*tree, []*debPkg, error) {
	for _, tool := range []string{"dpkg-query"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, nil, fmt.Errorf("the cephfs image is built from Debian packages and needs %s: %w", tool, err)
		}
	}
	if _, err := os.Stat(info.interp); err != nil {
		return nil, nil, fmt.Errorf("the binary's loader %s is not on this machine (%w): build the cephfs image on the Debian machine (and architecture) it was built on", info.interp, err)
	}
	d := &debian{interp: info.interp, log: log, tree: newTree(),
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

	// 3-5: the owners of the libraries, read, and the files copied.
	if err := d.lookupOwners(append(append([]string{}, libs...), plugins...)); err != nil {
		return nil, nil, err
	}
	var owners []string
	for _, names := range d.owners {
		owners = append(owners, names...)
	}
	sort.Strings(owners)
	for _, name := range uniq(owners) {
		if _, err := d.pkg(name); err != nil {
			return nil, nil, err
		}
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
			if pkg.files[a] {
				return pkg, a, nil
			}
		}
	}
	return nil, "", fmt.Errorf("%s is needed at run time but belongs to no installed Debian package (dpkg-query -S %s)", p, strings.Join(aliases(p), " "))
}

// pkg returns the installed package name with its file list, checksums
// and control fields, read from dpkg's database once.
func (d *debian) pkg(name string) (*debPkg, error) {
	if p, ok := d.pkgs[name]; ok {
		return p, nil
	}
	out, err := exec.Command("dpkg-query", "-W", "-f", "${binary:Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n", name).Output()
	if err != nil {
		return nil, fmt.Errorf("dpkg-query -W %s: %w", name, err)
	}
	f := strings.Split(strings.TrimSpace(string(out)), "\t")
	if len(f) != 4 || strings.TrimSpace(f[3]) != "ii" {
		return nil, fmt.Errorf("package %s is not installed properly (dpkg-query says %q)", name, strings.TrimSpace(string(out)))
	}
	p := &debPkg{name: name, version: f[1], arch: f[2], files: map[string]bool{}, md5: map[string]string{}}
	list, err := exec.Command("dpkg-query", "-L", name).Output()
	if err != nil {
		return nil, fmt.Errorf("dpkg-query -L %s: %w", name, err)
	}
	for _, l := range strings.Split(string(list), "\n") {
		// "diverted by"/"package diverts others to" lines are not paths.
		if strings.HasPrefix(l, "/") && l != "/." {
			p.files[l] = true
		}
	}
	sumsPath, err := exec.Command("dpkg-query", "--control-path", name, "md5sums").Output()
	if err != nil {
		return nil, fmt.Errorf("dpkg-query --control-path %s md5sums: %w", name, err)
	}
	if sp := strings.TrimSpace(string(sumsPath)); sp != "" {
		sums, err := os.ReadFile(sp)
		if err != nil {
			return nil, fmt.Errorf("the checksums of %s: %w", name, err)
		}
		if p.md5, err = parseMD5Sums(sums); err != nil {
			return nil, fmt.Errorf("the checksums of %s (%s): %w", name, sp, err)
		}
	}
	status, err := exec.Command("dpkg-query", "-s", name).Output()
	if err != nil {
		return nil, fmt.Errorf("dpkg-query -s %s: %w", name, err)
	}
	p.control = controlFields(status)
	d.pkgs[name] = p
	return p, nil
}

// parseMD5Sums reads a package's md5sums control file: "HEX  PATH" lines,
// paths relative to /.
func parseMD5Sums(b []byte) (map[string]string, error) {
	sums := map[string]string{}
	for i, line := range strings.Split(string(b), "\n") {
		if line == "" {
			continue
		}
		sum, p, ok := strings.Cut(line, "  ")
		if !ok || len(sum) != 2*md5.Size || strings.Trim(sum, "0123456789abcdef") != "" || p == "" {
			return nil, fmt.Errorf("line %d is not \"MD5  PATH\": %q", i+1, line)
		}
		sums["/"+strings.TrimPrefix(p, "/")] = sum
	}
	return sums, nil
}

// controlFields is a package's status entry without what only this
// machine's dpkg database knows (its Status, its conffiles' checksums).
func controlFields(status []byte) []byte {
	var out bytes.Buffer
	skip := false
	for _, line := range strings.SplitAfter(string(status), "\n") {
		if line == "" || line == "\n" {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if !skip {
				out.WriteString(line)
			}
			continue
		}
		field, _, _ := strings.Cut(line, ":")
		skip = field == "Status" || field == "Conffiles"
		if !skip {
			out.WriteString(line)
		}
	}
	return out.Bytes()
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
	src := p // the installed file
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
		if pkg.files[abs] {
			return d.addFromPkg(pkg, abs)
		}
		return d.addPath(abs)
	case fi.Mode().IsRegular():
		if err := pkg.verify(p); err != nil {
			return fmt.Errorf("%s from %s %s: %w", p, pkg.bare(), pkg.version, err)
		}
		return d.tree.copyFile(p, fi.Mode()&(fs.ModePerm|fs.ModeSticky|fs.ModeSetuid|fs.ModeSetgid), src)
	case fi.IsDir():
		return d.tree.dir(p, fi.Mode()&fs.ModePerm)
	}
	return fmt.Errorf("%s in %s is neither a file, a directory nor a symlink", p, pkg.name)
}

// addDir adds everything under the directory dir of the build machine
// that the packages owning it ship.
func (d *debian) addDir(dir string) error {
	n := 0
	for _, a := range aliases(dir) {
		for _, name := range d.owners[a] {
			pkg, err := d.pkg(name)
			if err != nil {
				return err
			}
			var under []string
			for f := range pkg.files {
				if strings.HasPrefix(f, a+"/") {
					under = append(under, f)
				}
			}
			sort.Strings(under)
			for _, f := range under {
				n++
				if err := d.addFromPkg(pkg, f); err != nil {
					return err
				}
			}
		}
	}
	if n == 0 {
		return fmt.Errorf("no Debian package ships anything under %s", dir)
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
	fi, err := os.Lstat(doc)
	switch {
	case err != nil || !pkg.files[doc]:
		fmt.Fprintf(d.log, "warning: %s has no %s\n", pkg.name, doc)
	case fi.Mode()&fs.ModeSymlink != 0:
		// Packages built from one source share a doc directory:
		// libstdc++6's is a symlink into gcc-12-base's.
		target, err := os.Readlink(doc)
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
	return d.tree.file("/var/lib/dpkg/status.d/"+pkg.bare(), 0o644, pkg.control)
}

// verify checks the installed file p against dpkg's checksum for it.
func (p *debPkg) verify(file string) error {
	want, ok := p.md5[file]
	if !ok {
		return fmt.Errorf("dpkg has no checksum for it: cannot tell it is what %s %s shipped", p.bare(), p.version)
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	h := md5.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("differs from what the package shipped (md5 %s, dpkg says %s): a modified or replaced file?", got, want)
	}
	return nil
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
