package measure

import (
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	in := []float64{3, 1, 2}
	if got := Median(in); got != 2 {
		t.Errorf("Median(3, 1, 2) = %v", got)
	}
	if in[0] != 3 {
		t.Error("Median sorted its argument")
	}
	if got := Median([]time.Duration{4, 1, 3, 2}); got != 3 {
		t.Errorf("Median of four = %v, want the upper middle 3", got)
	}
	if got := Median[int](nil); got != 0 {
		t.Errorf("Median of none = %v", got)
	}
}

func TestProcessCPU(t *testing.T) {
	before := ProcessCPU()
	x := 0
	for start := time.Now(); time.Since(start) < 50*time.Millisecond; x++ {
	}
	if after := ProcessCPU(); after <= before || x == 0 {
		t.Errorf("CPU %v then %v after a busy loop", before, after)
	}
}
