package kubetest

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// file is one file of a configMap, secret, downwardAPI or projected volume.
type file struct {
	data []byte
	mode os.FileMode
}

// payload is the content of such a volume: relative path -> file.
type payload map[string]file

const defaultFileMode = 0o644

func fileMode(item *int32, def *int32) os.FileMode {
	switch {
	case item != nil:
		return os.FileMode(*item)
	case def != nil:
		return os.FileMode(*def)
	}
	return defaultFileMode
}

// keyFiles maps an object's keys to files: every key, or only the items
// (key -> path, mode), a missing item key being an error unless optional.
func keyFiles(out payload, data map[string][]byte, items []corev1.KeyToPath, def *int32, optional bool, what string) error {
	if len(items) == 0 {
		for k, v := range data {
			out[k] = file{data: v, mode: fileMode(nil, def)}
		}
		return nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if optional {
				continue
			}
			return fmt.Errorf("%s has no key %q", what, it.Key)
		}
		out[it.Path] = file{data: v, mode: fileMode(it.Mode, def)}
	}
	return nil
}

func configMapData(cm *corev1.ConfigMap) map[string][]byte {
	m := make(map[string][]byte, len(cm.Data)+len(cm.BinaryData))
	for k, v := range cm.Data {
		m[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		m[k] = v
	}
	return m
}

func configMapFiles(out payload, src *corev1.ConfigMapProjection, def *int32, objs objects) error {
	cm, err := objs.ConfigMap(src.Name)
	if err != nil {
		if apierrors.IsNotFound(err) && isTrue(src.Optional) {
			return nil
		}
		return fmt.Errorf("configMap %q: %w", src.Name, err)
	}
	return keyFiles(out, configMapData(cm), src.Items, def, isTrue(src.Optional), "configMap "+src.Name)
}

func secretFiles(out payload, src *corev1.SecretProjection, def *int32, objs objects) error {
	s, err := objs.Secret(src.Name)
	if err != nil {
		if apierrors.IsNotFound(err) && isTrue(src.Optional) {
			return nil
		}
		return fmt.Errorf("secret %q: %w", src.Name, err)
	}
	return keyFiles(out, s.Data, src.Items, def, isTrue(src.Optional), "secret "+src.Name)
}

func downwardFiles(out payload, pod *corev1.Pod, node *corev1.Node, items []corev1.DownwardAPIVolumeFile, def *int32) error {
	for _, it := range items {
		var v string
		var err error
		switch {
		case it.FieldRef != nil:
			v, err = podField(pod, it.FieldRef.FieldPath)
		case it.ResourceFieldRef != nil:
			c := findContainer(pod, it.ResourceFieldRef.ContainerName)
			if c == nil {
				return fmt.Errorf("downwardAPI %s: no container %q", it.Path, it.ResourceFieldRef.ContainerName)
			}
			v, err = resourceField(pod, c, node, it.ResourceFieldRef)
		default:
			return fmt.Errorf("downwardAPI %s: neither fieldRef nor resourceFieldRef", it.Path)
		}
		if err != nil {
			return fmt.Errorf("downwardAPI %s: %w", it.Path, err)
		}
		out[it.Path] = file{data: []byte(v), mode: fileMode(it.Mode, def)}
	}
	return nil
}

// volumePayload computes the files of a configMap, secret, downwardAPI or
// projected volume, reading objects and tokens through objs. It returns
// (nil, nil) for other kinds of volumes.
func volumePayload(pod *corev1.Pod, node *corev1.Node, v *corev1.Volume, objs objects) (payload, error) {
	out := payload{}
	var err error
	switch {
	case v.ConfigMap != nil:
		src := &corev1.ConfigMapProjection{LocalObjectReference: v.ConfigMap.LocalObjectReference, Items: v.ConfigMap.Items, Optional: v.ConfigMap.Optional}
		err = configMapFiles(out, src, v.ConfigMap.DefaultMode, objs)
	case v.Secret != nil:
		src := &corev1.SecretProjection{LocalObjectReference: corev1.LocalObjectReference{Name: v.Secret.SecretName}, Items: v.Secret.Items, Optional: v.Secret.Optional}
		err = secretFiles(out, src, v.Secret.DefaultMode, objs)
	case v.DownwardAPI != nil:
		err = downwardFiles(out, pod, node, v.DownwardAPI.Items, v.DownwardAPI.DefaultMode)
	case v.Projected != nil:
		def := v.Projected.DefaultMode
		for _, s := range v.Projected.Sources {
			switch {
			case s.ConfigMap != nil:
				err = configMapFiles(out, s.ConfigMap, def, objs)
			case s.Secret != nil:
				err = secretFiles(out, s.Secret, def, objs)
			case s.DownwardAPI != nil:
				err = downwardFiles(out, pod, node, s.DownwardAPI.Items, def)
			case s.ServiceAccountToken != nil:
				exp := int64(3600)
				if s.ServiceAccountToken.ExpirationSeconds != nil {
					exp = *s.ServiceAccountToken.ExpirationSeconds
				}
				var tok string
				tok, err = objs.Token(s.ServiceAccountToken.Audience, exp)
				if err == nil {
					out[s.ServiceAccountToken.Path] = file{data: []byte(tok), mode: fileMode(nil, def)}
				}
			default:
				err = errors.New("unsupported projected source (only configMap, secret, downwardAPI, serviceAccountToken)")
			}
			if err != nil {
				break
			}
		}
	default:
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("volume %q: %w", v.Name, err)
	}
	for p := range out {
		if err := checkRelPath(p); err != nil {
			return nil, fmt.Errorf("volume %q: %w", v.Name, err)
		}
	}
	return out, nil
}

// checkRelPath rejects paths that are absolute, climb out with "..", or
// start with ".." (the names the atomic writer keeps for itself).
func checkRelPath(p string) error {
	if p == "" || path.IsAbs(p) || strings.HasPrefix(p, "..") || slices.Contains(strings.Split(p, "/"), "..") {
		return fmt.Errorf("invalid file path %q", p)
	}
	return nil
}

// writeAtomic writes a payload into dir as the kubelet's atomic writer does,
// so that readers see a whole version or the next: the files are in a
// timestamped directory "..TIMESTAMP", the symlink "..data" points to it,
// and each top-level name of the payload is a symlink into "..data". A new
// version replaces "..data" with rename(2). It reports whether anything
// changed (false when the payload is what dir already holds).
func writeAtomic(dir string, p payload) (bool, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	dataLink := filepath.Join(dir, "..data")
	old, err := os.Readlink(dataLink)
	if err == nil && samePayload(filepath.Join(dir, old), p) {
		return false, nil
	}
	ts := "..kubetest_" + time.Now().UTC().Format("2006_01_02_15_04_05.000000000")
	tsDir := filepath.Join(dir, ts)
	if err := os.Mkdir(tsDir, 0o755); err != nil {
		return false, err
	}
	for rel, f := range p {
		full := filepath.Join(tsDir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return false, err
		}
		if err := os.WriteFile(full, f.data, f.mode.Perm()); err != nil {
			return false, err
		}
		if err := os.Chmod(full, f.mode.Perm()); err != nil { // not the umask's
			return false, err
		}
	}
	tmpLink := filepath.Join(dir, "..data_tmp")
	os.Remove(tmpLink)
	if err := os.Symlink(ts, tmpLink); err != nil {
		return false, err
	}
	if err := os.Rename(tmpLink, dataLink); err != nil {
		return false, err
	}
	// Top-level names: a symlink for each, stale ones removed.
	top := map[string]bool{}
	for rel := range p {
		first, _, _ := strings.Cut(rel, "/")
		top[first] = true
	}
	for name := range top {
		link := filepath.Join(dir, name)
		if target, err := os.Readlink(link); err == nil && target == filepath.Join("..data", name) {
			continue
		}
		os.RemoveAll(link)
		if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
			return false, err
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		n := e.Name()
		switch {
		case n == "..data" || n == ts:
		case strings.HasPrefix(n, ".."):
			os.RemoveAll(filepath.Join(dir, n)) // older versions
		case !top[n]:
			os.RemoveAll(filepath.Join(dir, n))
		}
	}
	return true, nil
}

// samePayload reports whether directory dir holds exactly payload p.
func samePayload(dir string, p payload) bool {
	n := 0
	err := filepath.WalkDir(dir, func(full string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(dir, full)
		f, ok := p[filepath.ToSlash(rel)]
		if !ok {
			return errors.New("extra file")
		}
		info, err := d.Info()
		if err != nil || info.Mode().Perm() != f.mode.Perm() {
			return errors.New("mode differs")
		}
		b, err := os.ReadFile(full)
		if err != nil || !bytes.Equal(b, f.data) {
			return errors.New("data differs")
		}
		n++
		return nil
	})
	return err == nil && n == len(p)
}

// prepareHostPath checks (and for the *OrCreate types, makes) the host
// path of a hostPath volume as the kubelet does. For no type, a missing
// path is made a directory, as container runtimes do for bind mounts.
func prepareHostPath(p string, typ *corev1.HostPathType) error {
	t := corev1.HostPathUnset
	if typ != nil {
		t = *typ
	}
	info, err := os.Stat(p)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	want := func(ok bool, what string) error {
		if !exists {
			return fmt.Errorf("hostPath type check failed: %s does not exist (type %s)", p, t)
		}
		if !ok {
			return fmt.Errorf("hostPath type check failed: %s is not a %s", p, what)
		}
		return nil
	}
	mode := fs.FileMode(0)
	if exists {
		mode = info.Mode()
	}
	switch t {
	case corev1.HostPathUnset:
		if !exists {
			return os.MkdirAll(p, 0o755)
		}
		return nil
	case corev1.HostPathDirectoryOrCreate:
		if !exists {
			return os.MkdirAll(p, 0o755)
		}
		return want(mode.IsDir(), "directory")
	case corev1.HostPathDirectory:
		return want(mode.IsDir(), "directory")
	case corev1.HostPathFileOrCreate:
		if !exists {
			f, err := os.OpenFile(p, os.O_CREATE, 0o644)
			if err != nil {
				return err
			}
			return f.Close()
		}
		return want(mode.IsRegular(), "file")
	case corev1.HostPathFile:
		return want(mode.IsRegular(), "file")
	case corev1.HostPathSocket:
		return want(mode&fs.ModeSocket != 0, "socket file")
	case corev1.HostPathCharDev:
		return want(mode&fs.ModeCharDevice != 0, "character device")
	case corev1.HostPathBlockDev:
		return want(mode&fs.ModeDevice != 0 && mode&fs.ModeCharDevice == 0, "block device")
	}
	return fmt.Errorf("%s is an invalid hostPath type", t)
}

// hostPathSource maps the path of a hostPath volume on the fake node to a
// path of this machine: under the node's root directory, except paths
// under one of shared (such as /dev), which are the machine's own.
func hostPathSource(nodeRoot, p string, shared []string) string {
	p = path.Clean("/" + p)
	for _, s := range shared {
		s = path.Clean("/" + s)
		if p == s || strings.HasPrefix(p, s+"/") || s == "/" {
			return p
		}
	}
	return filepath.Join(nodeRoot, filepath.FromSlash(p))
}

// subPathIn resolves a volumeMount's subPath (or subPathExpr, expanded with
// the container's env) to a path inside the volume at src. It must stay
// inside the volume: no absolute path and no "..". The path is created as
// a directory if missing, as the kubelet does.
func subPathIn(src string, m *corev1.VolumeMount, env *envList) (string, error) {
	sub := m.SubPath
	if m.SubPathExpr != "" {
		sub = Expand(m.SubPathExpr, lookupIn(env.vals))
		if strings.Contains(sub, "$(") {
			return "", fmt.Errorf("volumeMount %s: subPathExpr %q has an undefined reference: %q", m.Name, m.SubPathExpr, sub)
		}
	}
	if sub == "" {
		return src, nil
	}
	if path.IsAbs(sub) || slices.Contains(strings.Split(sub, "/"), "..") {
		return "", fmt.Errorf("volumeMount %s: invalid subPath %q", m.Name, sub)
	}
	full := filepath.Join(src, filepath.FromSlash(sub))
	// Symlinks must not lead out of the volume either (the atomic writer's
	// links stay inside it).
	real, err := filepath.EvalSymlinks(full)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(full, 0o755); err != nil {
			return "", err
		}
		real, err = filepath.EvalSymlinks(full)
	}
	if err != nil {
		return "", err
	}
	root, err := filepath.EvalSymlinks(src)
	if err != nil {
		return "", err
	}
	if real != root && !strings.HasPrefix(real, root+"/") {
		return "", fmt.Errorf("volumeMount %s: subPath %q leads out of the volume (%s)", m.Name, sub, real)
	}
	return real, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
