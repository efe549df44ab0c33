package main

import (
	"image/color"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

var (
	circuitColor = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	otherColor   = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
)

// plotScale draws connect latency against the peers already on the
// network: every measurement as a dot, and a running median as a line.
func plotScale(runs []*scaleResult, file string) error {
	p := plot.New()
	p.Title.Text = "Connect latency as a network fills up"
	p.X.Label.Text = "peers already on the network"
	p.Y.Label.Text = "ms"
	p.Y.Min = 0
	for i, s := range runs {
		dash := []vg.Length(nil)
		if i > 0 {
			dash = []vg.Length{vg.Points(6), vg.Points(3)}
		}
		for _, series := range []struct {
			name string
			v    sample
			c    color.Color
		}{
			{"circuit network connect, " + s.shape, s.connect, circuitColor},
			{"plugin ADD by hand, " + s.shape, s.add, otherColor},
		} {
			if len(series.v) == 0 {
				continue
			}
			dots, err := plotter.NewScatter(points(series.v))
			if err != nil {
				return err
			}
			dots.GlyphStyle = draw.GlyphStyle{Color: faded(series.c), Radius: vg.Points(1.2), Shape: draw.CircleGlyph{}}
			line, err := plotter.NewLine(points(runningMedian(series.v, 25)))
			if err != nil {
				return err
			}
			line.Color, line.Width, line.Dashes = series.c, vg.Points(2), dash
			p.Add(dots, line)
			p.Legend.Add(series.name, line)
		}
	}
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.YOffs = -vg.Points(4)
	p.Add(plotter.NewGrid())
	return p.Save(7*vg.Inch, 4.5*vg.Inch, file)
}

// points puts v[i] at x = i.
func points(v sample) plotter.XYs {
	xys := make(plotter.XYs, len(v))
	for i, y := range v {
		xys[i] = plotter.XY{X: float64(i), Y: y}
	}
	return xys
}

// runningMedian is the median of each window of w values around i
// (smaller at the ends): a line that shows the trend, not the outliers.
func runningMedian(v sample, w int) sample {
	out := make(sample, len(v))
	for i := range v {
		lo, hi := max(0, i-w/2), min(len(v), i+w/2+1)
		out[i] = v[lo:hi].median()
	}
	return out
}

func faded(c color.Color) color.Color {
	r, g, b, _ := c.RGBA()
	return color.NRGBA{R: uint8(r >> 8), G: uint8(g >> 8), B: uint8(b >> 8), A: 0x50}
}
