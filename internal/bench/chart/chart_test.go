package chart_test

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/granary-cache/granary/internal/bench/chart"
)

var (
	blue   = color.RGBA{31, 119, 180, 255}
	orange = color.RGBA{255, 127, 14, 255}
	green  = color.RGBA{44, 160, 44, 255}
)

// TestDraw draws a line chart beside a bar chart, with a missing value,
// and finds every series' colour in the PNG where its data is.
func TestDraw(t *testing.T) {
	nan := math.NaN()
	lines := chart.Chart{Title: "throughput", XLabel: "epoch", YLabel: "MB/s", Categories: []string{"1", "2", "3"},
		Series: []chart.Series{{Name: "a", Color: blue, Values: []float64{100, 250, 400}}, {Name: "b", Color: orange, Values: []float64{50, nan, 80}}}}
	bars := chart.Chart{Title: "latency", XLabel: "epoch", YLabel: "ms", Categories: []string{"1", "2", "3"}, Bars: true,
		Series: []chart.Series{{Name: "a p50", Color: green, Values: []float64{2, 3, nan}}, {Name: "empty", Color: orange}}}
	var buf bytes.Buffer
	if err := chart.WritePNG(&buf, 800, 300, lines, bars); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != 800 || b.Dy() != 300 {
		t.Fatalf("%v; want 800×300", b)
	}
	count := func(r image.Rectangle, c color.RGBA) int {
		n := 0
		for y := r.Min.Y; y < r.Max.Y; y++ {
			for x := r.Min.X; x < r.Max.X; x++ {
				if color.RGBAModel.Convert(img.At(x, y)) == c {
					n++
				}
			}
		}
		return n
	}
	left, right := image.Rect(0, 0, 400, 300), image.Rect(400, 0, 800, 300)
	for _, c := range []struct {
		what  string
		in    image.Rectangle
		col   color.RGBA
		least int
	}{
		{"the line of a", left, blue, 100}, {"the points of b", left, orange, 20},
		{"the bars of a p50", right, green, 500}, {"b on the bars' side", right, blue, 0},
	} {
		if n := count(c.in, c.col); (c.least == 0) != (n == 0) || n < c.least {
			t.Errorf("%s: %d pixels of %v; want at least %d (none for 0)", c.what, n, c.col, c.least)
		}
	}
	if n := count(img.Bounds(), color.RGBA{0x20, 0x20, 0x20, 255}); n < 500 {
		t.Errorf("%d pixels of ink: no axes or text", n)
	}
	if _, err := chart.Draw(0, 300, lines); err == nil {
		t.Error("a chart of no width drew")
	}
	if _, err := chart.Draw(100, 100, chart.Chart{}, chart.Chart{Bars: true}); err != nil {
		t.Errorf("empty charts: %v", err)
	}
}

// TestNoInitWork: every granary process links this package, so neither it
// nor a package it brings in may allocate at init (a plotting library that
// parsed its fonts at init is what this package replaced). This test's
// binary links them all; it runs itself with GODEBUG=inittrace=1, which
// prints a line per package with init work.
func TestNoInitWork(t *testing.T) {
	if os.Getenv("CHART_INIT_CHILD") != "" {
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestNoInitWork$", "-test.count=1")
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1", "CHART_INIT_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	lines := 0
	for _, l := range strings.Split(string(out), "\n") {
		// init golang.org/x/image/vector @15 ms, 0.034 ms clock, 0 bytes, 0 allocs
		f := strings.Fields(l)
		if len(f) != 11 || f[0] != "init" || f[8] != "bytes," {
			continue
		}
		lines++
		pkg := f[1]
		if first, _, _ := strings.Cut(pkg, "/"); !strings.Contains(first, ".") {
			continue // the standard library
		}
		if n, _ := strconv.Atoi(f[7]); n > 0 {
			t.Errorf("%s allocates %d bytes at init", pkg, n)
		}
	}
	if lines == 0 {
		t.Fatalf("no init trace in the output:\n%s", out)
	}
}
