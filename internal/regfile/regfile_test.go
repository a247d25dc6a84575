package regfile

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestWriteAtThenOpen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "b")
	if err := WriteAt(p, []byte("world"), 6, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteAt(p, []byte("hello "), 0, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 11)
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, []byte("hello world")) {
		t.Errorf("read %q", buf)
	}
	if f.Name() != p {
		t.Errorf("name %q, want %q", f.Name(), p)
	}
	// A write past the end leaves a hole, and does not truncate.
	if err := WriteAt(p, []byte("!"), 20, 0o600); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(p); st.Size() != 21 {
		t.Errorf("size %d after a write at 20, want 21", st.Size())
	}
}

func TestErrorsNameThePathAndKeepTheirCause(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "no", "such")
	_, err := Open(missing)
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe.Path != missing || pe.Op != "open" || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open of a missing file: %v", err)
	}
	err = WriteAt(missing, []byte("x"), 0, 0o600)
	if !errors.As(err, &pe) || pe.Path != missing || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("WriteAt into a missing directory: %v", err)
	}
	if err := WriteAt(dir, []byte("x"), 0, 0o600); !errors.Is(err, syscall.EISDIR) {
		t.Errorf("WriteAt of a directory: %v, want EISDIR", err)
	}
}

// A full device is reported as ENOSPC, which the cache takes for a full
// tier.
func TestWriteAtFullDevice(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Fatalf("this test needs /dev/full: %v", err)
	}
	err := WriteAt("/dev/full", []byte("x"), 0, 0o600)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write to /dev/full: %v, want ENOSPC", err)
	}
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe.Op != "write" {
		t.Errorf("error %v does not say it was the write", err)
	}
}
