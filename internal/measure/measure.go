// Package measure holds the two figures every benchmark of granary takes:
// the CPU this process has used, and the median of repeated rounds.
package measure

import (
	"cmp"
	"slices"
	"syscall"
	"time"
)

// ProcessCPU is the user and system CPU time this process has used so far
// (0 when getrusage fails).
func ProcessCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Median is the middle value of xs (the upper one of an even count; the
// zero value for none). xs is left as it was.
func Median[T cmp.Ordered](xs []T) T {
	if len(xs) == 0 {
		var zero T
		return zero
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
