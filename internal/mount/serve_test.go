package mount

import "testing"

func TestWithReaderProcs(t *testing.T) {
	// go-fuse runs at most clamp(GOMAXPROCS, 2, 16) + 1 readers.
	for _, c := range []struct{ n, want int }{{1, 4}, {2, 5}, {4, 9}, {16, 33}, {64, 81}} {
		if got := withReaderProcs(c.n); got != c.want {
			t.Errorf("withReaderProcs(%d) = %d, want %d", c.n, got, c.want)
		}
	}
}
