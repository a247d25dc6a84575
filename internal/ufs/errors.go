package ufs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
)

// Class sorts UFS errors by what a caller should do about them.
type Class int

const (
	// ClassNone is the class of a nil error.
	ClassNone Class = iota
	// ClassNotExist: the path does not exist (errors.Is(err, fs.ErrNotExist)).
	ClassNotExist
	// ClassPermission: the UFS refused (errors.Is(err, fs.ErrPermission)),
	// including a path that tries to leave the dataset root.
	ClassPermission
	// ClassInvalid: the request itself is wrong (a malformed path).
	ClassInvalid
	// ClassVersionChanged: the file changed under a versioned read.
	ClassVersionChanged
	// ClassCanceled: the caller's context ended.
	ClassCanceled
	// ClassRetryable: a transient failure (5xx, throttling, a network error)
	// that outlived the backend's own retries; trying again later may work.
	ClassRetryable
	// ClassFatal: anything else; retrying will not help.
	ClassFatal
)

var classNames = [...]string{"none", "not_exist", "permission", "invalid", "version_changed", "canceled", "retryable", "fatal"}

func (c Class) String() string {
	if c < 0 || int(c) >= len(classNames) {
		return fmt.Sprintf("class(%d)", int(c))
	}
	return classNames[c]
}

// Classes lists every class of a non-nil error, for metrics that want a
// series per class from the start.
func Classes() []Class {
	return []Class{ClassNotExist, ClassPermission, ClassInvalid, ClassVersionChanged, ClassCanceled, ClassRetryable, ClassFatal}
}

// ErrVersionChanged is returned by a read whose IfVersion no longer matches.
var ErrVersionChanged = errors.New("file changed since it was listed")

// ErrInvalidPath is returned for a path that is malformed or leaves the root.
var ErrInvalidPath = errors.New("invalid path")

// Error is the error every backend returns: the operation, the path inside the
// dataset, the class and the underlying cause.
type Error struct {
	Op      string // "stat", "list", "read"
	Dataset string // set by Instrument, so messages name the namespace path
	Path    string
	Class   Class
	Err     error
}

func (e *Error) Error() string {
	p := "/" + e.Path
	if e.Dataset != "" {
		p = "/" + e.Dataset + p
	}
	return fmt.Sprintf("%s %s: %v", e.Op, p, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Is lets errors.Is match the standard sentinels by class, so callers can
// test errors.Is(err, fs.ErrNotExist) whatever the backend said.
func (e *Error) Is(target error) bool {
	switch target {
	case fs.ErrNotExist:
		return e.Class == ClassNotExist
	case fs.ErrPermission:
		return e.Class == ClassPermission
	case fs.ErrInvalid:
		return e.Class == ClassInvalid
	case ErrVersionChanged:
		return e.Class == ClassVersionChanged
	}
	return false
}

// NewError builds an *Error, taking the class from err when cls is ClassNone.
func NewError(op, path string, cls Class, err error) error {
	if err == nil {
		return nil
	}
	if cls == ClassNone {
		cls = ClassOf(err)
	}
	return &Error{Op: op, Path: path, Class: cls, Err: err}
}

// ClassOf returns the class of any error: an *Error's own class, or one
// inferred from the standard sentinels. Unknown errors are fatal.
func ClassOf(err error) Class {
	if err == nil {
		return ClassNone
	}
	var ue *Error
	if errors.As(err, &ue) {
		return ue.Class
	}
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return ClassCanceled
	case errors.Is(err, fs.ErrNotExist):
		return ClassNotExist
	case errors.Is(err, fs.ErrPermission):
		return ClassPermission
	case errors.Is(err, ErrInvalidPath), errors.Is(err, fs.ErrInvalid):
		return ClassInvalid
	case errors.Is(err, ErrVersionChanged):
		return ClassVersionChanged
	}
	return ClassFatal
}

// IsRetryable reports whether trying the same operation again may succeed.
func IsRetryable(err error) bool { return ClassOf(err) == ClassRetryable }
