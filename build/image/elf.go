package main

import (
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// binaryInfo is what the builder needs to know about a granary binary.
type binaryInfo struct {
	arch   string   // GOARCH-style: amd64, arm64
	interp string   // PT_INTERP, the dynamic loader ("" for a static binary)
	needed []string // DT_NEEDED sonames
}

func (b binaryInfo) static() bool { return b.interp == "" && len(b.needed) == 0 }

// inspectBinary reads the ELF headers of path.
func inspectBinary(path string) (binaryInfo, error) {
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return binaryInfo{}, fmt.Errorf("binary %s does not exist (build it first: see build/image/README.md)", path)
		}
		return binaryInfo{}, fmt.Errorf("binary: %w", err)
	}
	if !st.Mode().IsRegular() {
		return binaryInfo{}, fmt.Errorf("binary %s is not a regular file", path)
	}
	if st.Mode().Perm()&0o111 == 0 {
		return binaryInfo{}, fmt.Errorf("binary %s is not executable", path)
	}
	f, err := elf.Open(path)
	if err != nil {
		return binaryInfo{}, fmt.Errorf("binary %s is not an ELF file: %w", path, err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return binaryInfo{}, fmt.Errorf("binary %s is an ELF %s, not an executable", path, f.Type)
	}
	var info binaryInfo
	switch f.Machine {
	case elf.EM_X86_64:
		info.arch = "amd64"
	case elf.EM_AARCH64:
		info.arch = "arm64"
	default:
		return binaryInfo{}, fmt.Errorf("binary %s is for %s: only amd64 and arm64 images are built", path, f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return binaryInfo{}, fmt.Errorf("binary %s: reading PT_INTERP: %w", path, err)
		}
		info.interp = strings.TrimRight(string(b), "\x00")
	}
	// ImportedLibraries fails with ErrNoSymbols when there is no dynamic
	// section at all, which is what a static Go binary looks like.
	libs, err := f.ImportedLibraries()
	if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
		return binaryInfo{}, fmt.Errorf("binary %s: reading DT_NEEDED: %w", path, err)
	}
	info.needed = libs
	return info, nil
}

// checkVariant says whether a binary fits the variant's image.
func checkVariant(variant, path string, info binaryInfo) error {
	switch variant {
	case "static":
		if !info.static() {
			return fmt.Errorf("binary %s is dynamically linked (interpreter %q, needs %s): the static image takes a CGO_ENABLED=0 build (make granary)",
				path, info.interp, strings.Join(info.needed, ", "))
		}
	case "cephfs":
		if info.static() {
			return fmt.Errorf("binary %s is static: the cephfs image takes the cgo build with -tags cephfs (make granary-cephfs)", path)
		}
		if info.interp == "" {
			return fmt.Errorf("binary %s has no dynamic loader (PT_INTERP)", path)
		}
		found := false
		for _, n := range info.needed {
			if strings.HasPrefix(n, "libcephfs.so") {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("binary %s does not link libcephfs (needs %s): build it with -tags cephfs (make granary-cephfs)",
				path, strings.Join(info.needed, ", "))
		}
	default:
		return fmt.Errorf("unknown variant %q (static or cephfs)", variant)
	}
	return nil
}
