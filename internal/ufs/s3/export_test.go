package s3

import (
	"context"
	"io"

	"github.com/granary-cache/granary/internal/ufs"
)

// ReadLean reads by the lean path alone and says how it went: "served",
// "declined" (the SDK would be asked) or "suspect" (the SDK would be asked,
// and the lean path turned off if it succeeded).
func ReadLean(f *FS, ctx context.Context, name string, r ufs.Range) (io.ReadCloser, string, error) {
	rc, outcome, err := f.readLean(ctx, name, r)
	return rc, [...]string{leanServed: "served", leanDeclined: "declined", leanSuspect: "suspect"}[outcome], err
}

// LeanOff reports whether the lean path was turned off.
func LeanOff(f *FS) bool { return f.lean.off.Load() }

// BreakLeanSigner gives the lean path's signer a wrong secret, as a
// signer that got a service's rules wrong.
func BreakLeanSigner(f *FS) { f.lean.signer.secret += "x"; f.lean.signer.keyDate = "" }

// SetLean turns the lean path on or off.
func SetLean(f *FS, on bool) { f.lean.off.Store(!on) }
