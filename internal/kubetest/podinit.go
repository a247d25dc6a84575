package kubetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The runtime side of RunPod. RunPod starts this test binary again, as
// argv[0] podInitName, in new mount, PID, UTS and IPC namespaces (the
// network stays the machine's); init below sees that name and runs podInit
// instead of the tests: it builds the container's root from an initSpec
// (overlay, /proc, /dev, /sys, /tmp, volumes), sets the hostname, chroots,
// changes credentials and capabilities and execs the container's program,
// which thus keeps the PID that RunPod stops: PID 1 of its namespace.

const podInitName = "kubetest-pod-init"

func init() {
	if len(os.Args) == 2 && os.Args[0] == podInitName {
		err := podInit(os.Args[1])
		fmt.Fprintf(os.Stderr, "kubetest: container start failed: %v\n", err)
		os.Exit(128)
	}
}

// initSpec is what podInit does, written by RunPod as JSON.
type initSpec struct {
	Lower  string // the image's root file system (read-only)
	Upper  string // the container's writable layer
	Work   string // overlayfs' work directory
	Root   string // where the overlay is mounted
	Mounts []mountSpec
	// NodeMounts are the mount points (of this machine) that must keep
	// their propagation: the node roots, shared with the machine, so that
	// Bidirectional mounts reach it and HostToContainer ones see its mounts.
	NodeMounts []string

	Privileged   bool
	ReadOnlyRoot bool
	Hostname     string
	ShmSize      int64
	Dir          string // working directory, in the container
	Argv         []string
	Env          []string
	UID, GID     *int64
	Groups       []int64
	Caps         []int // capabilities kept (all when Privileged)
	NoNewPrivs   bool
	TmpfsTmp     bool // mount a tmpfs at /tmp
}

// mountSpec is a bind mount into the container.
type mountSpec struct {
	Source   string // on this machine
	Target   string // in the container
	ReadOnly bool
	// Propagation: "private", "rslave" or "rshared" (Kubernetes' None,
	// HostToContainer, Bidirectional).
	Propagation string
}

func podInit(specFile string) error {
	// Capability and no_new_privs settings are per thread: do them, and
	// exec, on this one.
	runtime.LockOSThread()
	b, err := os.ReadFile(specFile)
	if err != nil {
		return err
	}
	var s initSpec
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	if err := isolateMounts(s.NodeMounts); err != nil {
		return err
	}
	if err := buildRoot(&s); err != nil {
		return err
	}
	if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
		return fmt.Errorf("sethostname: %w", err)
	}
	if err := unix.Chroot(s.Root); err != nil {
		return fmt.Errorf("chroot %s: %w", s.Root, err)
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return fmt.Errorf("working directory: %w", err)
	}
	if err := unix.Chdir(s.Dir); err != nil {
		return fmt.Errorf("working directory: %w", err)
	}
	prog, err := lookPath(s.Argv[0], s.Env)
	if err != nil {
		return err
	}
	if err := dropPrivileges(&s); err != nil {
		return err
	}
	err = unix.Exec(prog, s.Argv, s.Env)
	return fmt.Errorf("exec %s: %w", prog, err)
}

// isolateMounts makes every mount of this new namespace a slave of the
// machine's, so that what is mounted here never propagates out — except
// the node roots, which stay shared peers of the machine's.
func isolateMounts(nodeMounts []string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for _, m := range parseMountinfo(string(b)) {
		if underAny(m.Point, nodeMounts) {
			continue
		}
		// Mount points that cannot be reached (over-mounted) fail: they
		// cannot take new mounts either.
		unix.Mount("", m.Point, "", unix.MS_SLAVE, "")
	}
	return nil
}

func underAny(p string, dirs []string) bool {
	for _, d := range dirs {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

func buildRoot(s *initSpec) error {
	for _, p := range []string{s.Lower, s.Upper, s.Work} {
		if strings.ContainsAny(p, ",:") {
			return fmt.Errorf("overlay: path %q has a ',' or ':'", p)
		}
	}
	opts := "lowerdir=" + s.Lower + ",upperdir=" + s.Upper + ",workdir=" + s.Work
	if err := unix.Mount("overlay", s.Root, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay on %s: %w", s.Root, err)
	}
	if err := unix.Mount("", s.Root, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make root private: %w", err)
	}
	in := func(p string) string { return filepath.Join(s.Root, filepath.FromSlash(path.Clean("/"+p))) }

	if err := mkMount("proc", in("/proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	if err := setupDev(in("/dev"), s.Privileged); err != nil {
		return err
	}
	if err := mkMount("shm", in("/dev/shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777,size="+strconv.FormatInt(s.ShmSize, 10)); err != nil {
		return err
	}
	// Unprivileged: no submounts (cgroups), and read-only.
	if err := bind("/sys", in("/sys"), s.Privileged); err != nil {
		return err
	}
	if !s.Privileged {
		if err := unix.Mount("", in("/sys"), "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("remount /sys read-only: %w", err)
		}
	}
	if s.TmpfsTmp {
		if err := mkMount("tmpfs", in("/tmp"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
			return err
		}
	}
	for _, m := range s.Mounts {
		target := in(m.Target)
		st, err := os.Stat(m.Source)
		if err != nil {
			return fmt.Errorf("volume mount %s: %w", m.Target, err)
		}
		if err := mkTarget(target, st.IsDir()); err != nil {
			return err
		}
		if err := unix.Mount(m.Source, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s on %s: %w", m.Source, m.Target, err)
		}
		flag := unix.MS_PRIVATE
		switch m.Propagation {
		case "rslave":
			flag = unix.MS_SLAVE
		case "rshared":
			flag = unix.MS_SHARED
		}
		if err := unix.Mount("", target, "", uintptr(flag|unix.MS_REC), ""); err != nil {
			return fmt.Errorf("propagation of %s: %w", m.Target, err)
		}
		if m.ReadOnly {
			if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
				return fmt.Errorf("remount %s read-only: %w", m.Target, err)
			}
		}
	}
	if s.ReadOnlyRoot {
		if err := unix.Mount("", s.Root, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("remount root read-only: %w", err)
		}
	}
	return nil
}

// setupDev makes the container's /dev as runtimes do: a tmpfs with the
// usual character devices (all of the machine's devices when privileged:
// FUSE needs /dev/fuse), a pts instance of its own and the usual links.
// Devices are bind-mounted from the machine's /dev, never created there.
func setupDev(dev string, privileged bool) error {
	if err := mkMount("tmpfs", dev, "tmpfs", unix.MS_NOSUID, "mode=755,size=65536k"); err != nil {
		return err
	}
	var devices []string
	if privileged {
		var err error
		if devices, err = hostDevices("/dev"); err != nil {
			return err
		}
	} else {
		for _, n := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
			devices = append(devices, "/dev/"+n)
		}
	}
	for _, d := range devices {
		target := filepath.Join(dev, strings.TrimPrefix(d, "/dev/"))
		if err := mkTarget(target, false); err != nil {
			return err
		}
		if err := unix.Mount(d, target, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", d, err)
		}
	}
	if err := mkMount("devpts", filepath.Join(dev, "pts"), "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return err
	}
	for name, target := range map[string]string{
		"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
		"stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2", "core": "/proc/kcore",
	} {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	return nil
}

// hostDevices lists the device files under dir (not those of pts, shm and
// mqueue, which the container gets its own of).
func hostDevices(dir string) ([]string, error) {
	var out []string
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		switch {
		case p == "/dev/pts" || p == "/dev/shm" || p == "/dev/mqueue" || p == "/dev/ptmx" || p == "/dev/console":
		case e.IsDir():
			sub, err := hostDevices(p)
			if err != nil {
				return nil, err
			}
			out = append(out, sub...)
		case e.Type()&os.ModeDevice != 0:
			out = append(out, p)
		}
	}
	return out, nil
}

func mkMount(source, target, fstype string, flags uintptr, data string) error {
	if err := mkTarget(target, true); err != nil {
		return err
	}
	if err := unix.Mount(source, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", fstype, target, err)
	}
	return nil
}

func bind(source, target string, recursive bool) error {
	if err := mkTarget(target, true); err != nil {
		return err
	}
	flags := uintptr(unix.MS_BIND)
	if recursive {
		flags |= unix.MS_REC
	}
	if err := unix.Mount(source, target, "", flags, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", source, target, err)
	}
	return nil
}

// mkTarget makes a mount point: a directory, or an empty file to mount a
// file on.
func mkTarget(p string, dir bool) error {
	if dir {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("mount point: %w", err)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("mount point: %w", err)
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDONLY, 0o644)
	if err != nil {
		return fmt.Errorf("mount point: %w", err)
	}
	return f.Close()
}

// lookPath finds a program as execvp would with the container's PATH
// (runtimes resolve it in the container's root).
func lookPath(prog string, env []string) (string, error) {
	if strings.Contains(prog, "/") {
		return prog, nil
	}
	pathVar := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathVar = v
		}
	}
	for _, dir := range filepath.SplitList(pathVar) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, prog)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("executable %q not found in $PATH (%s)", prog, pathVar)
}

// dropPrivileges applies the security context: the bounding set of
// capabilities, no_new_privs, then groups, group and user.
func dropPrivileges(s *initSpec) error {
	if !s.Privileged {
		last, err := lastCap()
		if err != nil {
			return err
		}
		for c := 0; c <= last; c++ {
			if slices.Contains(s.Caps, c) {
				continue
			}
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
				return fmt.Errorf("drop capability %d: %w", c, err)
			}
		}
	}
	if s.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("no_new_privs: %w", err)
		}
	}
	if s.UID == nil && s.GID == nil && len(s.Groups) == 0 {
		return nil
	}
	groups := make([]int, 0, len(s.Groups))
	for _, g := range s.Groups {
		groups = append(groups, int(g))
	}
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if s.GID != nil {
		if err := syscall.Setgid(int(*s.GID)); err != nil {
			return fmt.Errorf("setgid: %w", err)
		}
	}
	if s.UID != nil {
		if err := syscall.Setuid(int(*s.UID)); err != nil {
			return fmt.Errorf("setuid: %w", err)
		}
	}
	return nil
}

func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// mountInfo is a line of /proc/PID/mountinfo.
type mountInfo struct {
	ID, Parent int
	Root       string // the root of the mount within its file system
	Point      string // the mount point
	Optional   []string
	FSType     string
	Source     string
}

// parseMountinfo parses /proc/PID/mountinfo (see proc(5)), unescaping the
// octal escapes (\040 for a space) of paths.
func parseMountinfo(s string) []mountInfo {
	var out []mountInfo
	for line := range strings.SplitSeq(s, "\n") {
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if len(f) < 10 || sep < 6 || sep+2 >= len(f) {
			continue
		}
		id, err1 := strconv.Atoi(f[0])
		parent, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, mountInfo{
			ID: id, Parent: parent,
			Root:     unescapeOctal(f[3]),
			Point:    unescapeOctal(f[4]),
			Optional: f[6:sep],
			FSType:   f[sep+1],
			Source:   unescapeOctal(f[sep+2]),
		})
	}
	return out
}

func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// capNumbers maps capability names (without "CAP_") to their numbers.
var capNumbers = map[string]int{
	"CHOWN": unix.CAP_CHOWN, "DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE, "DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH,
	"FOWNER": unix.CAP_FOWNER, "FSETID": unix.CAP_FSETID, "KILL": unix.CAP_KILL, "SETGID": unix.CAP_SETGID,
	"SETUID": unix.CAP_SETUID, "SETPCAP": unix.CAP_SETPCAP, "LINUX_IMMUTABLE": unix.CAP_LINUX_IMMUTABLE,
	"NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE, "NET_BROADCAST": unix.CAP_NET_BROADCAST,
	"NET_ADMIN": unix.CAP_NET_ADMIN, "NET_RAW": unix.CAP_NET_RAW, "IPC_LOCK": unix.CAP_IPC_LOCK,
	"IPC_OWNER": unix.CAP_IPC_OWNER, "SYS_MODULE": unix.CAP_SYS_MODULE, "SYS_RAWIO": unix.CAP_SYS_RAWIO,
	"SYS_CHROOT": unix.CAP_SYS_CHROOT, "SYS_PTRACE": unix.CAP_SYS_PTRACE, "SYS_PACCT": unix.CAP_SYS_PACCT,
	"SYS_ADMIN": unix.CAP_SYS_ADMIN, "SYS_BOOT": unix.CAP_SYS_BOOT, "SYS_NICE": unix.CAP_SYS_NICE,
	"SYS_RESOURCE": unix.CAP_SYS_RESOURCE, "SYS_TIME": unix.CAP_SYS_TIME, "SYS_TTY_CONFIG": unix.CAP_SYS_TTY_CONFIG,
	"MKNOD": unix.CAP_MKNOD, "LEASE": unix.CAP_LEASE, "AUDIT_WRITE": unix.CAP_AUDIT_WRITE,
	"AUDIT_CONTROL": unix.CAP_AUDIT_CONTROL, "SETFCAP": unix.CAP_SETFCAP, "MAC_OVERRIDE": unix.CAP_MAC_OVERRIDE,
	"MAC_ADMIN": unix.CAP_MAC_ADMIN, "SYSLOG": unix.CAP_SYSLOG, "WAKE_ALARM": unix.CAP_WAKE_ALARM,
	"BLOCK_SUSPEND": unix.CAP_BLOCK_SUSPEND, "AUDIT_READ": unix.CAP_AUDIT_READ, "PERFMON": unix.CAP_PERFMON,
	"BPF": unix.CAP_BPF, "CHECKPOINT_RESTORE": unix.CAP_CHECKPOINT_RESTORE,
}

// defaultCaps is the capability set container runtimes (containerd, CRI-O
// with runc) give a container that is not privileged.
var defaultCaps = []string{
	"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
	"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
}

// containerCaps returns the capability numbers an unprivileged container
// keeps: the runtime's default set, minus drop, plus add ("ALL" meaning
// every capability; names with or without "CAP_").
func containerCaps(add, drop []string) ([]int, error) {
	norm := func(names []string) ([]string, bool, error) {
		var out []string
		all := false
		for _, n := range names {
			n = strings.TrimPrefix(strings.ToUpper(n), "CAP_")
			if n == "ALL" {
				all = true
				continue
			}
			if _, ok := capNumbers[n]; !ok {
				return nil, false, fmt.Errorf("unknown capability %q", n)
			}
			out = append(out, n)
		}
		return out, all, nil
	}
	addN, addAll, err := norm(add)
	if err != nil {
		return nil, err
	}
	dropN, dropAll, err := norm(drop)
	if err != nil {
		return nil, err
	}
	keep := map[string]bool{}
	if !dropAll {
		for _, n := range defaultCaps {
			keep[n] = !slices.Contains(dropN, n)
		}
	}
	if addAll {
		for n := range capNumbers {
			keep[n] = true
		}
	}
	for _, n := range addN {
		keep[n] = true
	}
	var out []int
	for n, ok := range keep {
		if ok {
			out = append(out, capNumbers[n])
		}
	}
	slices.Sort(out)
	if len(out) == 0 {
		return []int{}, nil
	}
	return out, nil
}

var errNotRoot = errors.New("RunPod needs root (mount namespaces, overlayfs, chroot)")
