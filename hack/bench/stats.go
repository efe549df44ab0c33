package main

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// sample is a set of measurements in one unit (ms, ratios, Mbit/s).
type sample []float64

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// quantile is the nearest-rank q-quantile (0.5 is the median, with the
// mean of the two middle values for an even count).
func (s sample) quantile(q float64) float64 {
	if len(s) == 0 {
		return math.NaN()
	}
	v := slices.Clone(s)
	slices.Sort(v)
	if q == 0.5 {
		n := len(v)
		if n%2 == 1 {
			return v[n/2]
		}
		return (v[n/2-1] + v[n/2]) / 2
	}
	i := int(math.Ceil(q*float64(len(v)))) - 1
	return v[max(0, min(i, len(v)-1))]
}

func (s sample) median() float64 { return s.quantile(0.5) }
func (s sample) p90() float64    { return s.quantile(0.9) }
func (s sample) p99() float64    { return s.quantile(0.99) }

// paired returns a[i] op b[i] for each round.
func paired(a, b sample, op func(x, y float64) float64) sample {
	out := make(sample, 0, len(a))
	for i := range min(len(a), len(b)) {
		out = append(out, op(a[i], b[i]))
	}
	return out
}

func ratio(x, y float64) float64 { return x / y }
func minus(x, y float64) float64 { return x - y }

// f formats a number the way the report does: one decimal, "-" for none.
func f(v float64) string {
	if math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf("%.1f", v)
}

func f2(v float64) string {
	if math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}
