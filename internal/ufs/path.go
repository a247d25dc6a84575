package ufs

import (
	"fmt"
	"path"
	"strings"
)

// CleanPath turns a path inside a dataset into the canonical form every
// backend expects: slash-separated, relative to the dataset root, without ".",
// "..", empty or trailing components; "" names the root. A leading slash is
// accepted ("/a/b" is "a/b"). It refuses, rather than silently rewrites, a
// path whose ".." would climb above the root, and any NUL byte (which no
// backend can store and which truncates C strings). Percent signs are not
// decoded: "a%2Fb" is a file named "a%2Fb", never "a/b".
func CleanPath(p string) (string, error) {
	if strings.IndexByte(p, 0) >= 0 {
		return "", fmt.Errorf("%w %q: contains a NUL byte", ErrInvalidPath, p)
	}
	depth := 0
	for seg := range strings.SplitSeq(p, "/") {
		switch seg {
		case "", ".":
		case "..":
			depth--
			if depth < 0 {
				return "", fmt.Errorf("%w %q: escapes the dataset root", ErrInvalidPath, p)
			}
		default:
			depth++
		}
	}
	c := path.Clean("/" + p)
	return strings.TrimPrefix(c, "/"), nil
}

// Join joins a cleaned directory and one base name from a listing.
func Join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// ValidName reports whether a name found in a listing can be shown as one
// path component: not empty, not "." or "..", no slash, no NUL.
func ValidName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00")
}
