// Package demo embeds the tiny dataset that `granary up` serves when it is
// given none, so that a first run needs nothing but the binary.
package demo

import (
	"embed"
	"io/fs"
	"os"
	"path/filepath"
)

//go:embed all:data
var files embed.FS

// Extract writes the demo dataset under dir (replacing what is there) and
// returns the directory to serve.
func Extract(dir string) (string, error) {
	root := filepath.Join(dir, "demo")
	if err := os.RemoveAll(root); err != nil {
		return "", err
	}
	sub, err := fs.Sub(files, "data")
	if err != nil {
		return "", err
	}
	if err := os.CopyFS(root, sub); err != nil {
		return "", err
	}
	return root, nil
}
