package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseMD5Sums(t *testing.T) {
	sums, err := parseMD5Sums([]byte("0123456789abcdef0123456789abcdef  usr/lib/x86_64-linux-gnu/libz.so.1.2.13\nfedcba9876543210fedcba9876543210  usr/share/doc/zlib1g/copyright\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := sums["/usr/lib/x86_64-linux-gnu/libz.so.1.2.13"]; got != "0123456789abcdef0123456789abcdef" {
		t.Errorf("libz sum %q", got)
	}
	if len(sums) != 2 {
		t.Errorf("%d sums, want 2", len(sums))
	}
	for _, bad := range []string{"nothex  usr/lib/x\n", "0123456789abcdef0123456789abcdef usr/one-space\n", "0123456789abcdef0123456789abcdef  \n"} {
		if _, err := parseMD5Sums([]byte(bad)); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("%q: error %v, want one naming line 1", bad, err)
		}
	}
}

func TestControlFields(t *testing.T) {
	status := "Package: libfoo1\nStatus: install ok installed\nVersion: 1.0-1\nConffiles:\n /etc/foo.conf 0123 \n /etc/bar.conf 4567\nDescription: a library\n with a long description\n .\n and a second paragraph\n"
	got := string(controlFields([]byte(status)))
	want := "Package: libfoo1\nVersion: 1.0-1\nDescription: a library\n with a long description\n .\n and a second paragraph\n"
	if got != want {
		t.Errorf("controlFields:\n%s\nwant\n%s", got, want)
	}
}

func TestVerify(t *testing.T) {
	f := filepath.Join(t.TempDir(), "libx.so.1")
	if err := os.WriteFile(f, []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &debPkg{name: "libx1:amd64", version: "1-1", md5: map[string]string{f: "b1946ac92492d2347c6235b4d2611184"}}
	if err := p.verify(f); err != nil {
		t.Errorf("the shipped file: %v", err)
	}
	if err := os.WriteFile(f, []byte("changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := p.verify(f); err == nil || !strings.Contains(err.Error(), "differs from what the package shipped") {
		t.Errorf("a modified file: error %v", err)
	}
	p.md5 = nil
	if err := p.verify(f); err == nil || !strings.Contains(err.Error(), "no checksum") {
		t.Errorf("a file dpkg has no checksum for: error %v", err)
	}
}
