package local

import (
	"context"
	"path"

	"github.com/granary-cache/granary/internal/ufs"
)

// Put writes a file below the root, making its directories. granary never
// writes to a UFS; this is for tools that create datasets (granary bench
// gen). A name that would leave the root is refused.
func (f *FS) Put(ctx context.Context, name string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return ufs.NewError("put", name, ufs.ClassCanceled, err)
	}
	clean, err := ufs.CleanPath(name)
	if err != nil || clean == "" {
		return ufs.NewError("put", name, ufs.ClassInvalid, ufs.ErrInvalidPath)
	}
	if dir := path.Dir(clean); dir != "." {
		if err := f.root.MkdirAll(dir, 0o755); err != nil {
			return wrap("put", name, err)
		}
	}
	if err := f.root.WriteFile(clean, data, 0o644); err != nil {
		return wrap("put", name, err)
	}
	return nil
}
