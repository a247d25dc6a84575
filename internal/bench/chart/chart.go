// Package chart draws the PNG of `granary bench run --png`: panels of
// lines or grouped bars over the same categories (the epochs).
//
// It stands in for a plotting library on purpose. Every granary process —
// worker, mount, operator, CSI plugin — is the one binary and so runs the
// init of every package linked into it: gonum.org/v1/plot parsed twelve
// Liberation fonts at init and carried 7 MB of fonts and drawing back ends.
// This package needs only the standard library and golang.org/x/image's
// rasterizer and Go font, which do nothing at init; the font is parsed when
// a chart is drawn. The tests check both.
package chart

import (
	"bufio"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"strconv"

	"golang.org/x/image/font"
	"golang.org/x/image/font/gofont/goregular"
	"golang.org/x/image/font/opentype"
	"golang.org/x/image/math/fixed"
	"golang.org/x/image/vector"
)

// Chart is one panel: series over the same categories, as lines with
// points or as bars side by side in each category. Its Y axis starts at 0.
type Chart struct {
	Title, XLabel, YLabel string
	// Categories name the X positions, left to right.
	Categories []string
	// Bars draws every series as bars instead of lines.
	Bars   bool
	Series []Series
}

// Series is one named set of values, one per category; NaN is a value
// that is missing (not drawn, and a line breaks there).
type Series struct {
	Name   string
	Color  color.Color
	Values []float64
}

// WritePNG draws the charts side by side in a width × height image.
func WritePNG(w io.Writer, width, height int, charts ...Chart) error {
	img, err := Draw(width, height, charts...)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(w)
	if err := png.Encode(bw, img); err != nil {
		return err
	}
	return bw.Flush()
}

// Draw draws the charts side by side in a width × height image.
func Draw(width, height int, charts ...Chart) (*image.RGBA, error) {
	if width <= 0 || height <= 0 || len(charts) == 0 {
		return nil, fmt.Errorf("chart: %d charts in %d×%d pixels", len(charts), width, height)
	}
	fonts, err := newFaces()
	if err != nil {
		return nil, err
	}
	c := &canvas{RGBA: image.NewRGBA(image.Rect(0, 0, width, height)), faces: fonts}
	draw.Draw(c.RGBA, c.Bounds(), image.White, image.Point{}, draw.Src)
	for i, ch := range charts {
		tile := image.Rect(i*width/len(charts), 0, (i+1)*width/len(charts), height)
		c.chart(ch, tile.Inset(pad))
	}
	return c.RGBA, nil
}

const (
	pad       = 10  // around every panel, and between its parts
	tickLen   = 5   // of the axes' ticks
	swatch    = 22  // width of a legend's sample
	lineWidth = 1.5 // of a series' line
	markerR   = 3.0 // radius of a line's points
	barFill   = 0.8 // share of a category the bars take
)

var (
	ink  = color.Gray{0x20}
	grid = color.Gray{0xdd}
)

// faces are the sizes of the Go Regular font a chart uses, parsed from the
// font each time a chart is drawn (nothing at init, nothing kept).
type faces struct{ text, title font.Face }

func newFaces() (faces, error) {
	f, err := opentype.Parse(goregular.TTF)
	if err != nil {
		return faces{}, fmt.Errorf("chart: the Go font: %w", err)
	}
	face := func(size float64) (font.Face, error) {
		return opentype.NewFace(f, &opentype.FaceOptions{Size: size, DPI: 96, Hinting: font.HintingFull})
	}
	text, err := face(10)
	if err != nil {
		return faces{}, err
	}
	title, err := face(12)
	return faces{text: text, title: title}, err
}

type canvas struct {
	*image.RGBA
	faces
	z vector.Rasterizer
}

// chart draws one panel in r.
func (c *canvas) chart(ch Chart, r image.Rectangle) {
	lineH := c.height(c.text)
	top := r.Min.Y
	if ch.Title != "" {
		top += c.height(c.title) + pad
		c.label(c.title, ch.Title, (r.Min.X+r.Max.X)/2, r.Min.Y, 0.5)
	}
	// The legend, right of the plot, one series a line.
	legendW := 0
	for _, s := range ch.Series {
		legendW = max(legendW, swatch+pad/2+c.width(c.text, s.Name))
	}
	right := r.Max.X
	if legendW > 0 {
		right -= legendW + pad
		for i, s := range ch.Series {
			y := top + i*(lineH+2)
			x := right + pad
			mid := float64(y) + float64(lineH)/2
			if ch.Bars {
				c.fill(image.Rect(x+4, y+2, x+swatch-4, y+lineH-2), s.Color)
			} else {
				c.line(float64(x), mid, float64(x+swatch), mid, lineWidth, s.Color)
				c.dot(float64(x+swatch/2), mid, markerR, s.Color)
			}
			c.label(c.text, s.Name, x+swatch+pad/2, y, 0)
		}
	}

	// The Y scale: 0 to a round number above every value.
	highest := 0.0
	for _, s := range ch.Series {
		for _, v := range s.Values {
			if !math.IsNaN(v) && !math.IsInf(v, 0) {
				highest = max(highest, v)
			}
		}
	}
	step, ymax := ticks(highest)
	var tickLabels []string
	tickW := 0
	for v := 0.0; v <= ymax+step/2; v += step {
		l := formatTick(v, step)
		tickLabels = append(tickLabels, l)
		tickW = max(tickW, c.width(c.text, l))
	}

	left := r.Min.X
	if ch.YLabel != "" {
		left += lineH + pad/2
	}
	left += tickW + tickLen + 3
	bottom := r.Max.Y - lineH - tickLen - 3
	if ch.XLabel != "" {
		bottom -= lineH + pad/2
	}
	plot := image.Rect(left, top+lineH/2, right, bottom)
	if plot.Dx() < 10 || plot.Dy() < 10 {
		return // no room
	}
	y := func(v float64) float64 {
		return float64(plot.Max.Y) - v/ymax*float64(plot.Dy())
	}

	// Grid, Y ticks and labels, axes.
	for i, l := range tickLabels {
		py := int(math.Round(y(float64(i) * step)))
		if i > 0 {
			c.fill(image.Rect(plot.Min.X+1, py, plot.Max.X, py+1), grid)
		}
		c.fill(image.Rect(plot.Min.X-tickLen, py, plot.Min.X, py+1), ink)
		c.label(c.text, l, plot.Min.X-tickLen-3-c.width(c.text, l), py-lineH/2, 0)
	}
	if ch.YLabel != "" {
		c.vlabel(c.text, ch.YLabel, r.Min.X, (plot.Min.Y+plot.Max.Y)/2)
	}
	c.fill(image.Rect(plot.Min.X, plot.Min.Y, plot.Min.X+1, plot.Max.Y+1), ink)
	c.fill(image.Rect(plot.Min.X, plot.Max.Y, plot.Max.X, plot.Max.Y+1), ink)
	n := len(ch.Categories)
	for _, s := range ch.Series {
		n = max(n, len(s.Values))
	}
	if n == 0 {
		return
	}
	catW := float64(plot.Dx()) / float64(n)
	x := func(i int) float64 { return float64(plot.Min.X) + (float64(i)+0.5)*catW }
	for i := range n {
		px := int(math.Round(x(i)))
		c.fill(image.Rect(px, plot.Max.Y, px+1, plot.Max.Y+tickLen), ink)
		if i < len(ch.Categories) {
			c.label(c.text, ch.Categories[i], px, plot.Max.Y+tickLen+3, 0.5)
		}
	}
	if ch.XLabel != "" {
		c.label(c.text, ch.XLabel, (plot.Min.X+plot.Max.X)/2, bottom+tickLen+3+lineH+pad/2, 0.5)
	}

	// The data.
	if ch.Bars {
		barW := catW * barFill / float64(len(ch.Series))
		for k, s := range ch.Series {
			for i, v := range s.Values {
				if math.IsNaN(v) || math.IsInf(v, 0) || v <= 0 {
					continue
				}
				x0 := x(i) - catW*barFill/2 + float64(k)*barW
				bar := image.Rect(int(math.Round(x0)), int(math.Round(y(v))), int(math.Round(x0+barW))-1, plot.Max.Y)
				if bar.Dx() < 1 {
					bar.Max.X = bar.Min.X + 1
				}
				c.fill(bar, s.Color)
			}
		}
		return
	}
	for _, s := range ch.Series {
		for i := 1; i < len(s.Values); i++ {
			a, b := s.Values[i-1], s.Values[i]
			if !math.IsNaN(a) && !math.IsNaN(b) && !math.IsInf(a, 0) && !math.IsInf(b, 0) {
				c.line(x(i-1), y(a), x(i), y(b), lineWidth, s.Color)
			}
		}
		for i, v := range s.Values {
			if !math.IsNaN(v) && !math.IsInf(v, 0) {
				c.dot(x(i), y(v), markerR, s.Color)
			}
		}
	}
}

// ticks returns the step of the Y axis's ticks, 1, 2 or 5 times a power of
// ten that gives about five, and the first tick at or above top.
func ticks(top float64) (step, limit float64) {
	if top <= 0 {
		return 0.2, 1
	}
	raw := top / 5
	pow := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if step = m * pow; step >= raw {
			break
		}
	}
	return step, math.Ceil(top/step-1e-9) * step
}

// formatTick writes v with as many decimals as step needs.
func formatTick(v, step float64) string {
	return strconv.FormatFloat(v, 'f', max(0, -int(math.Floor(math.Log10(step)+1e-9))), 64)
}

func (c *canvas) height(f font.Face) int {
	m := f.Metrics()
	return (m.Ascent + m.Descent).Ceil()
}

func (c *canvas) width(f font.Face, s string) int { return font.MeasureString(f, s).Ceil() }

// label draws s with its top at y; align 0 puts its left at x, 0.5 its
// middle.
func (c *canvas) label(f font.Face, s string, x, y int, align float64) {
	x -= int(align * float64(c.width(f, s)))
	d := font.Drawer{Dst: c.RGBA, Src: image.NewUniform(ink), Face: f,
		Dot: fixed.Point26_6{X: fixed.I(x), Y: fixed.I(y) + f.Metrics().Ascent}}
	d.DrawString(s)
}

// vlabel draws s turned a quarter left, its top at x and its middle at y.
func (c *canvas) vlabel(f font.Face, s string, x, y int) {
	w, h := c.width(f, s), c.height(f)
	flat := image.NewAlpha(image.Rect(0, 0, w, h))
	d := font.Drawer{Dst: flat, Src: image.Opaque, Face: f, Dot: fixed.Point26_6{Y: f.Metrics().Ascent}}
	d.DrawString(s)
	turned := image.NewAlpha(image.Rect(0, 0, h, w))
	for fy := range h {
		for fx := range w {
			turned.SetAlpha(fy, w-1-fx, flat.AlphaAt(fx, fy))
		}
	}
	at := image.Rect(x, y-w/2, x+h, y-w/2+w)
	draw.DrawMask(c.RGBA, at, image.NewUniform(ink), image.Point{}, turned, image.Point{}, draw.Over)
}

// fill paints r with col, over what is there.
func (c *canvas) fill(r image.Rectangle, col color.Color) {
	draw.Draw(c.RGBA, r, image.NewUniform(col), image.Point{}, draw.Over)
}

// line strokes the segment from (x0, y0) to (x1, y1), antialiased.
func (c *canvas) line(x0, y0, x1, y1, width float64, col color.Color) {
	dx, dy := x1-x0, y1-y0
	l := math.Hypot(dx, dy)
	if l == 0 {
		return
	}
	nx, ny := -dy/l*width/2, dx/l*width/2
	c.path(col, [][2]float64{{x0 + nx, y0 + ny}, {x1 + nx, y1 + ny}, {x1 - nx, y1 - ny}, {x0 - nx, y0 - ny}})
}

// dot fills a disc of radius r around (x, y), antialiased.
func (c *canvas) dot(x, y, r float64, col color.Color) {
	const sides = 24
	pts := make([][2]float64, sides)
	for i := range pts {
		a := 2 * math.Pi * float64(i) / sides
		pts[i] = [2]float64{x + r*math.Cos(a), y + r*math.Sin(a)}
	}
	c.path(col, pts)
}

// path fills the closed polygon pts with col, rasterizing only its
// bounding box; a polygon that leaves the image is not drawn.
func (c *canvas) path(col color.Color, pts [][2]float64) {
	minX, minY, maxX, maxY := math.Inf(1), math.Inf(1), math.Inf(-1), math.Inf(-1)
	for _, p := range pts {
		minX, maxX = math.Min(minX, p[0]), math.Max(maxX, p[0])
		minY, maxY = math.Min(minY, p[1]), math.Max(maxY, p[1])
	}
	box := image.Rect(int(math.Floor(minX)), int(math.Floor(minY)), int(math.Ceil(maxX))+1, int(math.Ceil(maxY))+1)
	if !box.In(c.Bounds()) {
		return
	}
	c.z.Reset(box.Dx(), box.Dy())
	for i, p := range pts {
		px, py := float32(p[0]-float64(box.Min.X)), float32(p[1]-float64(box.Min.Y))
		if i == 0 {
			c.z.MoveTo(px, py)
		} else {
			c.z.LineTo(px, py)
		}
	}
	c.z.ClosePath()
	c.z.Draw(c.RGBA, box, image.NewUniform(col), image.Point{})
}
